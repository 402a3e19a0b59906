"""The simulated devices' side of a re-read: the readings they hold, and what they send for a `read_readings`."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from headend.cli.simulate import simulate
from protocols.mqtt_codec import MAX_CONCENTRATOR_PAYLOAD_BYTES, decode_concentrator_batch, decode_meter_reading
from protocols.mqtt_topics import Topic, TopicKind, parse_topic
from protocols.readings import MAX_READINGS_PER_BATCH, MeterReading, RelayState
from protocols.reread_codec import ReadReadingsCommand
from simulators.clock import INTERVAL, SimClock
from simulators.faults import FaultConfig
from simulators.fleet import Fleet, SimConcentrator, SimMeter, build_fleet
from simulators.fleet_sim import FleetSimulation, OutgoingMessage
from simulators.load_shapes import MeterKind
from simulators.reading_history import DEFAULT_HISTORY_INTERVALS, ReadingHistory
from simulators.reread_answers import (
    REFUSED_EXPIRED,
    REFUSED_UNKNOWN_DEVICE,
    REFUSED_UNKNOWN_METER,
    RereadAnswers,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 11, 23, 0, 0, tzinfo=SHANGHAI)
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def reading(meter_id: str, k: int, **fields: object) -> MeterReading:
    """A reading of `meter_id` at the k-th interval from START."""
    return MeterReading(meter_id, START + k * INTERVAL, 1000 + k, **fields)  # type: ignore[arg-type]


def command(
    meter_id: str | None, first: int = 0, end: int = 10_000, *, expires_at: datetime = NOW + timedelta(minutes=5)
) -> ReadReadingsCommand:
    """A re-read of intervals [first, end) from START (at most 31 days), issued just before NOW."""
    to_at = min(START + end * INTERVAL, START + first * INTERVAL + timedelta(days=31))
    return ReadReadingsCommand(
        "reread:T1:1", meter_id, START + first * INTERVAL, to_at, NOW - timedelta(minutes=1), expires_at
    )


def decoded(messages: list[OutgoingMessage]) -> list[MeterReading]:
    """The readings in `messages`, decoded by the real codec, in order."""
    found: list[MeterReading] = []
    for message in messages:
        topic = parse_topic(message.topic)
        if topic.kind is TopicKind.METER_READINGS:
            found.append(decode_meter_reading(topic.device_id, message.payload))
        else:
            batch = decode_concentrator_batch(topic.device_id, message.payload)
            assert batch.rejected == ()
            found += batch.readings
    return found


# --- the history --------------------------------------------------------------------------------------------


def test_a_reading_comes_back_with_every_field() -> None:
    history = ReadingHistory(8)
    full = reading("m1", 0, energy_export_wh=7, power_w=-1500, voltage_v=229.7, relay=RelayState.OPEN, seq=42)
    bare = reading("m1", 1)
    closed = reading("m1", 2, relay=RelayState.CLOSED, power_w=0)
    history.record([full, bare, closed])

    back = history.between("m1", START, START + 3 * INTERVAL)

    assert back == [full, bare, closed]
    assert [r.ts.utcoffset() for r in back] == [timedelta(hours=8)] * 3
    assert history.held("m1") == 3
    assert history.between("m2", START, START + INTERVAL) == []
    assert history.held("m2") == 0


def test_the_range_is_half_open_and_the_oldest_are_forgotten() -> None:
    history = ReadingHistory(4)
    history.record(reading("m1", k) for k in range(10))

    assert [r.energy_import_wh for r in history.between("m1", START, START + 20 * INTERVAL)] == [1006, 1007, 1008, 1009]
    assert [r.energy_import_wh for r in history.between("m1", START + 7 * INTERVAL, START + 9 * INTERVAL)] == [
        1007,
        1008,
    ]
    assert history.held("m1") == 4


def test_no_capacity_holds_nothing_and_a_negative_one_is_refused() -> None:
    history = ReadingHistory(0)
    history.record([reading("m1", 0)])
    assert history.between("m1", START, START + INTERVAL) == []
    with pytest.raises(ValueError, match="negative"):
        ReadingHistory(-1)
    assert DEFAULT_HISTORY_INTERVALS == 7 * 96


readings_lists = st.lists(
    st.builds(
        lambda meter, k, export, power, relay: reading(meter, k, energy_export_wh=export, power_w=power, relay=relay),
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 200),
        st.none() | st.integers(0, 2**63 - 1),
        st.none() | st.integers(-(2**31), 2**31 - 1),
        st.none() | st.sampled_from(RelayState),
    ),
    max_size=60,
)


@given(readings_lists, st.integers(1, 12))
def test_the_history_is_the_last_readings_of_each_meter(readings: list[MeterReading], capacity: int) -> None:
    history = ReadingHistory(capacity)
    history.record(readings)
    for meter in "abc":
        expected = [r for r in readings if r.meter_id == meter][-capacity:]
        assert history.between(meter, START, START + 201 * INTERVAL) == expected
        assert history.held(meter) == len(expected)


def test_the_simulation_keeps_what_faults_dropped_but_nothing_of_offline_meters() -> None:
    fleet = build_fleet(20, 2, ["north"], seed=9, direct_share=0.3)
    offline = fleet.meters[0].meter_id
    sim = FleetSimulation(fleet, FaultConfig(drop_rate=0.5, offline_ids=frozenset({offline})), history_intervals=6)
    sent: list[MeterReading] = []
    for instant in SimClock(START).interval_ends(8):
        sent += decoded(sim.step(instant))
    assert sim.counts.readings_dropped > 0

    for meter in fleet.meters[1:]:
        held = sim.history.between(meter.meter_id, START, START + 8 * INTERVAL)
        assert [r.ts for r in held] == SimClock(START).interval_ends(8)[2:]
        # what was delivered is what is held
        assert {r for r in sent if r.meter_id == meter.meter_id and r.ts >= START + 2 * INTERVAL} <= set(held)
    assert sim.history.held(offline) == 0


# --- the answers --------------------------------------------------------------------------------------------


def small_fleet() -> Fleet:
    """Direct meters M0 and M1, meters B0 and B1 behind DCU1, and an empty DCU2."""
    meters = tuple(
        SimMeter(meter_id, dcu, "north", "DDZY1710-Z", MeterKind.RESIDENTIAL, 1000)
        for meter_id, dcu in [("M0", None), ("M1", None), ("B0", "DCU1"), ("B1", "DCU1")]
    )
    return Fleet(meters, (SimConcentrator("DCU1", "north"), SimConcentrator("DCU2", "north")), seed=1)


def answers_with(*meters: str, count: int = 10) -> RereadAnswers:
    history = ReadingHistory(max(count, DEFAULT_HISTORY_INTERVALS))
    for meter_id in meters:
        history.record(reading(meter_id, k) for k in range(count))
    return RereadAnswers(small_fleet(), history)


def test_a_meter_sends_its_readings_of_the_range_on_its_own_topic() -> None:
    answer = answers_with("M0", "M1").answer(Topic(TopicKind.METER_COMMANDS, "M0"), command("M0", 3, 6), NOW)

    assert answer.refused is None
    assert [m.topic for m in answer.messages] == ["meters/M0/readings"] * 3
    assert decoded(answer.messages) == [reading("M0", k) for k in (3, 4, 5)]
    assert answer.readings == 3


def test_a_concentrator_sends_every_meter_in_batches_interval_by_interval() -> None:
    answer = answers_with("B0", "B1").answer(Topic(TopicKind.CONCENTRATOR_COMMANDS, "DCU1"), command(None, 8), NOW)

    assert [m.topic for m in answer.messages] == ["concentrators/DCU1/readings"]
    assert decoded(answer.messages) == [reading(m, k) for k in (8, 9) for m in ("B0", "B1")]
    batch = decode_concentrator_batch("DCU1", answer.messages[0].payload)
    assert batch.sent_at == NOW


def test_a_concentrator_sends_one_meter_when_asked_for_it() -> None:
    answer = answers_with("B0", "B1").answer(Topic(TopicKind.CONCENTRATOR_COMMANDS, "DCU1"), command("B1", 9), NOW)
    assert decoded(answer.messages) == [reading("B1", 9)]


def test_a_large_answer_is_split_within_the_payload_limits() -> None:
    count = MAX_READINGS_PER_BATCH + 100
    answer = answers_with("B0", "B1", count=count).answer(
        Topic(TopicKind.CONCENTRATOR_COMMANDS, "DCU1"), command(None), NOW
    )
    assert [m.readings for m in answer.messages] == [MAX_READINGS_PER_BATCH, MAX_READINGS_PER_BATCH, 200]
    assert all(len(m.payload) <= MAX_CONCENTRATOR_PAYLOAD_BYTES for m in answer.messages)
    assert len(decoded(answer.messages)) == 2 * count


@pytest.mark.parametrize(
    ("topic", "reread", "refused"),
    [
        (
            Topic(TopicKind.METER_COMMANDS, "M0"),
            command("M0", expires_at=NOW - timedelta(microseconds=1)),
            REFUSED_EXPIRED,
        ),
        (Topic(TopicKind.METER_COMMANDS, "B0"), command("B0"), REFUSED_UNKNOWN_DEVICE),
        (Topic(TopicKind.METER_COMMANDS, "X9"), command("X9"), REFUSED_UNKNOWN_DEVICE),
        (Topic(TopicKind.CONCENTRATOR_COMMANDS, "DCU9"), command(None), REFUSED_UNKNOWN_DEVICE),
        (Topic(TopicKind.CONCENTRATOR_COMMANDS, "DCU2"), command("B0"), REFUSED_UNKNOWN_METER),
        (Topic(TopicKind.CONCENTRATOR_COMMANDS, "DCU1"), command("M0"), REFUSED_UNKNOWN_METER),
    ],
)
def test_what_a_device_does_not_carry_out(topic: Topic, reread: ReadReadingsCommand, refused: str) -> None:
    answer = answers_with("M0", "B0").answer(topic, reread, NOW)
    assert (answer.refused, answer.messages) == (refused, [])


def test_nothing_held_sends_nothing() -> None:
    answers = answers_with("M0")
    assert answers.answer(Topic(TopicKind.METER_COMMANDS, "M1"), command("M1"), NOW).messages == []
    assert answers.answer(Topic(TopicKind.CONCENTRATOR_COMMANDS, "DCU2"), command(None), NOW).messages == []
    at_expiry = answers.answer(Topic(TopicKind.METER_COMMANDS, "M0"), command("M0", 0, 1, expires_at=NOW), NOW)
    assert at_expiry.refused is None, "expired only after expires_at"


# --- headend simulate ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("days", ["-1", "93"])
def test_simulate_refuses_a_history_outside_the_reading_window(days: str) -> None:
    app = typer.Typer()
    app.command()(simulate)
    result = CliRunner().invoke(app, ["--history-days", days])
    assert result.exit_code == 2
    words = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
    assert f"{days} is outside 0..92" in words
