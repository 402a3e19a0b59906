"""Unit tests of the meter fleet simulator: load shapes, registers, faults, fleet, clock, CLI."""

from __future__ import annotations

import ast
import csv
import re
import threading
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from statistics import mean
from zoneinfo import ZoneInfo

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from headend.cli.simulate import simulate
from protocols.mqtt_codec import decode_concentrator_batch, decode_meter_reading
from protocols.mqtt_topics import TopicKind, parse_topic
from protocols.readings import MeterReading, RelayState
from simulators.clock import INTERVAL, SimClock, floor_to_grid, is_on_grid, parse_speed
from simulators.faults import FaultConfig, MessageFaults, plan_faults
from simulators.fleet import REGISTRY_HEADER, build_fleet, write_registry_csv
from simulators.fleet_sim import FleetSimulation, OutgoingMessage
from simulators.load_shapes import COMMERCIAL, RESIDENTIAL, MeterKind, interval_energy_wh
from simulators.meter_sim import MeterSim

SHANGHAI = ZoneInfo("Asia/Shanghai")
# a Monday
START = datetime(2026, 11, 23, 0, 0, tzinfo=SHANGHAI)
ROOT = Path(__file__).resolve().parents[2]


def decode(message: OutgoingMessage) -> list[MeterReading]:
    """The readings inside one outgoing message, decoded by the real codec."""
    topic = parse_topic(message.topic)
    if topic.kind is TopicKind.METER_READINGS:
        return [decode_meter_reading(topic.device_id, message.payload)]
    batch = decode_concentrator_batch(topic.device_id, message.payload)
    assert batch.rejected == ()
    return list(batch.readings)


def readings_of(sim: FleetSimulation, instant: datetime) -> list[MeterReading]:
    """Every reading of one interval, direct and via concentrators, before message faults."""
    direct, batches, _ = sim.readings_at(instant)
    return direct + [r for readings in batches.values() for r in readings]


# --- load shapes -------------------------------------------------------------------------


def test_residential_evening_peak_exceeds_night() -> None:
    evening, night = START.replace(hour=19, minute=30), START.replace(hour=3)
    assert RESIDENTIAL.factor(evening) > 3 * RESIDENTIAL.factor(night)
    assert RESIDENTIAL.factor(START.replace(hour=7, minute=30)) > RESIDENTIAL.factor(night)


def test_commercial_plateau_on_weekdays_and_low_at_weekends() -> None:
    weekday_noon = START.replace(hour=11)
    saturday_noon = weekday_noon + timedelta(days=5)
    assert saturday_noon.weekday() == 5
    assert COMMERCIAL.factor(weekday_noon) > 3 * COMMERCIAL.factor(saturday_noon)
    assert COMMERCIAL.factor(weekday_noon) > 5 * COMMERCIAL.factor(START.replace(hour=3))


def test_interval_energy_follows_the_shape_across_many_meters() -> None:
    ids = [f"M{i:05d}" for i in range(300)]

    def avg(kind: MeterKind, at: datetime) -> float:
        return mean(interval_energy_wh(m, kind, at, seed=5) for m in ids)

    evening, night = START.replace(hour=20), START.replace(hour=3, minute=15)
    assert avg(MeterKind.RESIDENTIAL, evening) > 2.5 * avg(MeterKind.RESIDENTIAL, night)
    noon, saturday_noon = START.replace(hour=11), START.replace(hour=11) + timedelta(days=5)
    assert avg(MeterKind.COMMERCIAL, noon) > 2.5 * avg(MeterKind.COMMERCIAL, saturday_noon)
    # commercial customers consume several times what households do
    assert avg(MeterKind.COMMERCIAL, noon) > 4 * avg(MeterKind.RESIDENTIAL, noon)


def test_daily_energy_is_near_the_shape_mean() -> None:
    ids = [f"D{i:04d}" for i in range(40)]
    week = [START + k * INTERVAL for k in range(1, 7 * 96 + 1)]
    for kind, shape in ((MeterKind.RESIDENTIAL, RESIDENTIAL), (MeterKind.COMMERCIAL, COMMERCIAL)):
        daily = mean(sum(interval_energy_wh(m, kind, t, seed=1) for t in week) / 7 for m in ids)
        # the per-meter scale is log-normal, so the fleet mean sits somewhat above the shape's
        assert 0.7 * shape.mean_daily_wh < daily < 1.6 * shape.mean_daily_wh


@settings(max_examples=200, deadline=None)
@given(
    meter_id=st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True),
    kind=st.sampled_from(MeterKind),
    k=st.integers(min_value=-200_000, max_value=200_000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_interval_energy_is_a_deterministic_non_negative_integer(
    meter_id: str, kind: MeterKind, k: int, seed: int
) -> None:
    at = START + k * INTERVAL
    energy = interval_energy_wh(meter_id, kind, at, seed)
    assert isinstance(energy, int)
    assert energy >= 0
    assert interval_energy_wh(meter_id, kind, at.astimezone(ZoneInfo("UTC")), seed) == energy


# --- registers -------------------------------------------------------------------------


def test_registers_monotonic_except_at_injected_rollover() -> None:
    fleet = build_fleet(40, 2, ["north", "south"], seed=3, direct_share=0.3)
    config = FaultConfig(rollover_fraction=0.25, rollover_margin_wh=400)
    sim = FleetSimulation(fleet, config)
    modulus = config.rollover_limit_wh + 1
    rolling = {k for k, v in sim.plan.meters.items() if v.start_register_wh is not None}
    assert len(rolling) == 10
    previous: dict[str, int] = {}
    consumed: dict[str, int] = {}
    wrapped: Counter[str] = Counter()
    for k in range(3 * 96):
        for reading in readings_of(sim, START + k * INTERVAL):
            meter_id, now_wh = reading.meter_id, reading.energy_import_wh
            used_wh = sim.meters[meter_id].consumed_wh
            if meter_id in previous:
                energy_wh = used_wh - consumed[meter_id]
                assert energy_wh >= 0
                if now_wh < previous[meter_id]:
                    wrapped[meter_id] += 1
                    assert (now_wh - previous[meter_id]) % modulus == energy_wh
                    assert previous[meter_id] <= config.rollover_limit_wh
                else:
                    assert now_wh - previous[meter_id] == energy_wh
            previous[meter_id], consumed[meter_id] = now_wh, used_wh
    assert set(wrapped) == rolling, "exactly the rollover meters wrap"
    assert all(n == 1 for n in wrapped.values())


def test_open_relay_meters_nothing() -> None:
    meter = build_fleet(1, 0, ["x"], seed=1).meters[0]
    sim = MeterSim(meter, seed=1)
    first = sim.read(START)
    sim.set_relay(RelayState.OPEN)
    later = sim.read(START + 8 * INTERVAL)
    assert later.energy_import_wh == first.energy_import_wh
    assert later.power_w == 0
    assert later.relay is RelayState.OPEN
    sim.set_relay(RelayState.CLOSED)
    assert sim.read(START + 80 * INTERVAL).energy_import_wh > first.energy_import_wh


def test_meter_refuses_to_go_back_in_time() -> None:
    sim = MeterSim(build_fleet(1, 0, ["x"], seed=1).meters[0], seed=1)
    sim.read(START + INTERVAL)
    with pytest.raises(ValueError, match="not after"):
        sim.read(START)


# --- determinism -------------------------------------------------------------------------


def test_same_seed_same_fleet_and_messages() -> None:
    def run(seed: int) -> list[bytes]:
        fleet = build_fleet(30, 2, ["a", "b"], seed=seed, direct_share=0.5)
        sim = FleetSimulation(fleet, FaultConfig(drop_rate=0.2, duplicate_rate=0.2, drift_fraction=0.3))
        return [m.payload for k in range(6) for m in sim.step(START + k * INTERVAL)]

    assert build_fleet(30, 2, ["a", "b"], 9, 0.5) == build_fleet(30, 2, ["a", "b"], 9, 0.5)
    assert build_fleet(30, 2, ["a", "b"], 9, 0.5) != build_fleet(30, 2, ["a", "b"], 10, 0.5)
    assert run(4) == run(4)
    assert run(4) != run(5)


# --- faults -------------------------------------------------------------------------


def test_drop_and_duplicate_rates_are_honoured_on_a_large_sample() -> None:
    faults: MessageFaults[int] = MessageFaults(FaultConfig(drop_rate=0.1, duplicate_rate=0.2), seed=11)
    n = 40_000
    delivery = faults.step(range(n))
    assert 0.09 * n < len(delivery.dropped) < 0.11 * n
    kept = n - len(delivery.dropped)
    assert 0.18 * kept < len(delivery.duplicated) < 0.22 * kept
    assert len(delivery.sent) == kept + len(delivery.duplicated)
    dropped = set(delivery.dropped)
    assert Counter(delivery.sent) == Counter(x for x in range(n) if x not in dropped) + Counter(delivery.duplicated)


def test_no_faults_delivers_everything_in_order() -> None:
    faults: MessageFaults[int] = MessageFaults(FaultConfig(), seed=1)
    assert faults.step(range(1000)).sent == list(range(1000))
    assert faults.flush() == []


def test_reordered_messages_arrive_later_exactly_once() -> None:
    faults: MessageFaults[tuple[int, int]] = MessageFaults(FaultConfig(reorder_rate=0.3, reorder_window=3), seed=2)
    arrivals: list[tuple[int, int]] = []
    for step in range(20):
        delivery = faults.step((step, i) for i in range(50))
        assert all(m[0] <= step for m in delivery.sent)
        assert all(m[0] == step for m in delivery.delayed)
        arrivals.extend(delivery.sent)
    arrivals.extend(faults.flush())
    assert sorted(arrivals) == [(s, i) for s in range(20) for i in range(50)]
    late = [m for position, m in enumerate(arrivals) if any(o[0] > m[0] for o in arrivals[:position])]
    assert 0.2 * 1000 < len(late) < 0.4 * 1000


def test_a_meter_older_reading_arrives_after_its_newer_one() -> None:
    fleet = build_fleet(20, 0, ["a"], seed=1)
    sim = FleetSimulation(fleet, FaultConfig(reorder_rate=0.3, reorder_window=2))
    seen: dict[str, list[datetime]] = {}
    for k in range(8):
        for message in sim.step(START + k * INTERVAL):
            for reading in decode(message):
                seen.setdefault(reading.meter_id, []).append(reading.ts)
    for message in sim.finish():
        for reading in decode(message):
            seen.setdefault(reading.meter_id, []).append(reading.ts)
    assert all(len(v) == 8 for v in seen.values())
    assert any(v != sorted(v) for v in seen.values())
    assert sim.counts.messages == 160


def test_offline_meters_publish_nothing() -> None:
    fleet = build_fleet(80, 3, ["a", "b"], seed=6, direct_share=0.4)
    explicit = frozenset({fleet.meters[0].meter_id, fleet.meters[1].meter_id})
    sim = FleetSimulation(fleet, FaultConfig(offline_fraction=0.25, offline_ids=explicit))
    offline = sim.plan.offline_ids
    assert explicit <= offline
    assert 20 <= len(offline) <= 22
    published: Counter[str] = Counter()
    for k in range(4):
        for message in sim.step(START + k * INTERVAL):
            published.update(r.meter_id for r in decode(message))
    assert not offline & set(published)
    assert set(published) == {m.meter_id for m in fleet.meters} - offline
    assert all(n == 4 for n in published.values())
    assert sim.counts.readings_offline == 4 * len(offline)
    assert sim.counts.readings == 4 * (80 - len(offline))


def test_unknown_offline_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="NOPE"):
        plan_faults(FaultConfig(offline_ids=frozenset({"NOPE"})), ["A", "B"], seed=1)


def test_drift_moves_timestamps_off_the_grid_and_grows() -> None:
    fleet = build_fleet(50, 1, ["a"], seed=8, direct_share=0.5)
    sim = FleetSimulation(fleet, FaultConfig(drift_fraction=0.2, drift_s_per_day=120))
    drifting = {k for k, v in sim.plan.meters.items() if v.drifting}
    assert len(drifting) == 10
    errors: dict[str, list[float]] = {}
    for k in range(0, 10 * 96, 96):
        instant = START + k * INTERVAL
        for reading in readings_of(sim, instant):
            off = (reading.ts - instant).total_seconds()
            if reading.meter_id in drifting:
                assert not is_on_grid(reading.ts)
                errors.setdefault(reading.meter_id, []).append(off)
            else:
                assert is_on_grid(reading.ts)
                assert off == 0
    for series in errors.values():
        assert abs(series[-1] - series[0]) > 9 * 120 * 0.5 - 1


def test_fault_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="drop_rate"):
        FaultConfig(drop_rate=1.5)
    with pytest.raises(ValueError, match="reorder_window"):
        FaultConfig(reorder_window=0)


# --- fleet and registry -------------------------------------------------------------------------


def test_registry_csv_has_header_and_one_row_per_meter(tmp_path: Path) -> None:
    fleet = build_fleet(57, 3, ["north", "south"], seed=2, direct_share=0.3)
    path = tmp_path / "meters.csv"
    assert write_registry_csv(fleet, path) == 57
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == REGISTRY_HEADER
    assert rows[0] == ["meter_id", "protocol", "concentrator_id", "region", "model", "multiplier"]
    body = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert [r["meter_id"] for r in body] == [m.meter_id for m in fleet.meters]
    dcus = {c.dcu_id: c for c in fleet.concentrators}
    direct = [r for r in body if r["concentrator_id"] == ""]
    assert len(direct) == round(0.3 * 57) == len(fleet.direct_meters)
    for row in body:
        assert row["protocol"] == "mqtt"
        assert row["multiplier"] == "1"
        if row["concentrator_id"]:
            assert row["concentrator_id"] in dcus
            assert row["region"] == dcus[row["concentrator_id"]].region
            assert any(m.meter_id == row["meter_id"] for m in fleet.meters_of(row["concentrator_id"]))
    assert sum(len(fleet.meters_of(d)) for d in dcus) == 57 - len(direct)
    assert all(len(fleet.meters_of(d)) in (13, 14) for d in dcus)


def test_fleet_without_concentrators_is_all_direct() -> None:
    fleet = build_fleet(10, 0, ["a"], seed=1, direct_share=0.0)
    assert len(fleet.direct_meters) == 10


def test_fleet_has_both_kinds_and_valid_ids() -> None:
    fleet = build_fleet(400, 4, ["a"], seed=1, id_prefix="X-")
    kinds = Counter(m.kind for m in fleet.meters)
    assert 30 < kinds[MeterKind.COMMERCIAL] < 100
    assert all(m.meter_id.startswith("X-") for m in fleet.meters)
    with pytest.raises(ValueError, match="does not match"):
        build_fleet(10, 1, ["a"], seed=1, id_prefix="bad prefix")
    with pytest.raises(ValueError, match="regions"):
        build_fleet(10, 1, [], seed=1)


def test_concentrator_batches_split_at_1024() -> None:
    fleet = build_fleet(1500, 1, ["a"], seed=1, direct_share=0.0)
    messages, offline = FleetSimulation(fleet).messages_at(START)
    assert offline == 0
    assert [m.readings for m in messages] == [1024, 476]
    assert [len(decode(m)) for m in messages] == [1024, 476]
    assert {m.topic for m in messages} == {f"concentrators/{fleet.concentrators[0].dcu_id}/readings"}


def test_direct_readings_carry_details_and_batches_only_registers() -> None:
    fleet = build_fleet(10, 1, ["a"], seed=1, direct_share=0.5)
    sim = FleetSimulation(fleet)
    sim.step(START)
    readings = [r for m in sim.step(START + INTERVAL) for r in decode(m)]
    direct_ids = {m.meter_id for m in fleet.direct_meters}
    for reading in readings:
        assert reading.ts == START + INTERVAL
        if reading.meter_id in direct_ids:
            assert reading.relay is RelayState.CLOSED
            assert reading.seq == 2
            assert reading.voltage_v is not None
            assert 200 < reading.voltage_v < 240
        else:
            assert (reading.power_w, reading.relay, reading.seq) == (None, None, None)


# --- clock -------------------------------------------------------------------------


def test_clock_grid_and_speed() -> None:
    assert floor_to_grid(datetime(2026, 1, 1, 10, 14, 59, 999, tzinfo=SHANGHAI)) == datetime(
        2026, 1, 1, 10, 0, tzinfo=SHANGHAI
    )
    assert SimClock(START).interval_ends(3) == [START, START + INTERVAL, START + 2 * INTERVAL]
    assert parse_speed("max") is None
    assert parse_speed("60") == 60.0
    with pytest.raises(ValueError, match="positive"):
        parse_speed("-3")
    with pytest.raises(ValueError, match="grid"):
        SimClock(START + timedelta(minutes=7))
    with pytest.raises(ValueError, match="aware"):
        SimClock(datetime(2026, 1, 1))  # noqa: DTZ001 - the naive time is the point


def test_clock_paces_in_real_time_and_stops_on_request() -> None:
    fake_now = [0.0]
    waits: list[float] = []

    class RecordingEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            assert timeout is not None
            waits.append(timeout)
            fake_now[0] += timeout
            return len(waits) >= 3

    ticks = list(SimClock(START, speed=900.0).ticks(10, RecordingEvent(), monotonic=lambda: fake_now[0]))
    # one interval per real second at 900x: the first at once, then one a second until stopped
    assert ticks == [START, START + INTERVAL, START + 2 * INTERVAL]
    assert waits == pytest.approx([1.0, 1.0, 1.0])
    assert len(list(SimClock(START).ticks(500))) == 500


# --- boundaries and CLI -------------------------------------------------------------------------


def test_simulators_import_only_protocols() -> None:
    for path in sorted((ROOT / "simulators").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("headend", "prepay_engine"), f"{path.name} imports {name}"


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(simulate)
    return app


def test_cli_writes_registry_only(tmp_path: Path) -> None:
    path = tmp_path / "fleet.csv"
    result = CliRunner().invoke(
        _app(), ["--meters", "25", "--concentrators", "2", "--registry-csv", str(path), "--registry-only"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 25 meters" in result.output
    assert len(path.read_text(encoding="utf-8").splitlines()) == 26


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--meters", "0"], "--meters"),
        (["--drop-rate", "1.5"], "--drop-rate"),
        (["--intervals", "4", "--days", "1"], "not both"),
        (["--start", "2026-11-22T10:00"], "offset"),
        (["--start", "2026-11-22T10:07+08:00"], "grid"),
        (["--speed", "fast"], "--speed"),
        (["--regions", "a,,b"], "--regions"),
        (["--registry-only"], "--registry-csv"),
        (["--port", "70000"], "--port"),
        (["--meters", "5", "--offline-ids", "SIM000001,NOPE"], "NOPE"),
    ],
)
def test_cli_rejects_bad_arguments(args: list[str], message: str) -> None:
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2
    # the error is drawn in a wrapped box: compare its words, not its layout
    words = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
    assert "Invalid value" in words
    assert message in words
