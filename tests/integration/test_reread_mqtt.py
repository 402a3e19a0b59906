"""Re-reads over MQTT against the real broker and database: `read_readings` sent, the simulated devices answer.

A simulated fleet whose faults dropped readings on the way, the ingest worker storing what arrived; then a
`read_readings` command, sent as the head-end sends it (RereadSender), makes the meter or its concentrator send its
readings again: the missing ones are stored, the others are duplicates and stored once.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from headend.mqtt.embedded_broker import free_port
from headend.mqtt.reread_sender import RereadSender, RereadSendError
from headend.settings import Settings
from protocols.mqtt_topics import concentrator_commands_topic, meter_commands_topic
from protocols.relay_codec import RelayAction, RelayCommandMessage, encode_command
from protocols.reread_codec import ReadReadingsCommand, encode_read_readings
from simulators.clock import INTERVAL, SimClock, floor_to_grid
from simulators.command_responder import CommandResponder
from simulators.faults import FaultConfig
from simulators.fleet import Fleet, build_fleet
from simulators.fleet_sim import FleetSimulation
from simulators.publisher import BrokerConfig, run_simulation
from simulators.relay_sim import RelayFault
from tests.integration.conftest import MQTT_HOST, MQTT_PORT, Publisher, count, register, wait_for
from tests.integration.ingest_support import RunningWorker, dead_letters

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ZONE = ZoneInfo("Asia/Shanghai")
INTERVALS = 8
# a day back: well inside the head-end's window of reading times, and no reading in the future
START = floor_to_grid(datetime.now(ZONE) - timedelta(days=1))
END = START + INTERVALS * INTERVAL
LOAD_POINTS = set(SimClock(START).interval_ends(INTERVALS))


@pytest.fixture
def prefix() -> str:
    """Ids unique to this test, so parallel runs on the same broker do not collide."""
    return f"Q{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(settings_for: Callable[..., Settings], database_url: str) -> Settings:
    return settings_for(database_url)


@pytest.fixture
def worker(settings: Settings, database_url: str) -> Iterator[RunningWorker]:
    running = RunningWorker(settings, database_url)
    yield running
    running.stop()


def broker() -> BrokerConfig:
    return BrokerConfig(MQTT_HOST, MQTT_PORT, connect_timeout_s=10, ack_timeout_s=10)


def stored(db: psycopg.Connection[Any], meter_id: str) -> set[datetime]:
    """The times of the readings stored for `meter_id`."""
    return {ts for (ts,) in db.execute("SELECT ts FROM readings WHERE meter_id = %s", (meter_id,)).fetchall()}


def run_with_drops(db: psycopg.Connection[Any], fleet: Fleet, prefix: str, drop_rate: float) -> FleetSimulation:
    """Publish INTERVALS intervals of `fleet` with messages dropped; return once ingest has stored what arrived."""
    simulation = FleetSimulation(fleet, FaultConfig(drop_rate=drop_rate), zone=ZONE)
    stats = run_simulation(simulation, SimClock(START), INTERVALS, broker())
    assert stats.readings_dropped > 0
    assert stats.messages_unconfirmed == 0
    delivered = len(fleet.meters) * INTERVALS - stats.readings_dropped
    wait_for(
        lambda: count(db, "SELECT count(*) FROM readings WHERE meter_id LIKE %s", f"{prefix}%") == delivered,
        20,
        f"{delivered} readings stored",
    )
    return simulation


def reread(meter_id: str | None, from_at: datetime = START, to_at: datetime = END) -> ReadReadingsCommand:
    """A re-read issued now, valid for five minutes."""
    now = datetime.now(UTC)
    return ReadReadingsCommand(
        f"reread:T:{uuid.uuid4().hex[:8]}", meter_id, from_at, to_at, now, now + timedelta(minutes=5)
    )


def counted_once(db: psycopg.Connection[Any], prefix: str) -> None:
    """The daily statistics count each stored reading once, and nothing of the fleet became a dead letter."""
    rows = count(db, "SELECT count(*) FROM readings WHERE meter_id LIKE %s", f"{prefix}%")
    in_days = count(
        db, "SELECT coalesce(sum(readings_count), 0) FROM meter_day_collection WHERE meter_id LIKE %s", f"{prefix}%"
    )
    assert in_days == rows
    assert dead_letters(db, f"meters/{prefix}%") == []
    assert dead_letters(db, f"concentrators/{prefix}%") == []


def test_a_meter_sends_again_what_was_dropped_and_only_that_is_new(
    db: psycopg.Connection[Any], prefix: str, settings: Settings, worker: RunningWorker
) -> None:
    fleet = build_fleet(6, 0, ["north"], seed=21, id_prefix=prefix)
    ids = [m.meter_id for m in fleet.meters]
    register(db, ids)
    simulation = run_with_drops(db, fleet, prefix, 0.3)
    before = {m: stored(db, m) for m in ids}
    target = min(ids, key=lambda m: len(before[m]))
    assert len(before[target]) < INTERVALS
    duplicates = worker.worker.stats.duplicates

    with (
        CommandResponder(fleet, broker(), history=simulation.history) as responder,
        RereadSender(settings, f"test-reread-{prefix}") as sender,
    ):
        assert sender.send(reread(target), None) == meter_commands_topic(target)
        wait_for(lambda: responder.counts.readings_republished == INTERVALS, 10, "the meter's readings sent again")
        wait_for(lambda: stored(db, target) == LOAD_POINTS, 10, "every load point of the meter stored")
        wait_for(
            lambda: worker.worker.stats.duplicates == duplicates + len(before[target]),
            10,
            "the readings ingest had already counted as duplicates",
        )
        assert responder.counts.rereads_received == 1
        assert responder.counts.rereads_ignored == 0

    assert {m: stored(db, m) for m in ids if m != target} == {m: before[m] for m in ids if m != target}
    counted_once(db, prefix)


def test_a_concentrator_sends_again_the_range_of_all_its_meters_or_of_one(
    db: psycopg.Connection[Any], prefix: str, settings: Settings, worker: RunningWorker
) -> None:
    # seed 2 drops the concentrator's messages of intervals 3 and 7: one inside the first range, one outside
    fleet = build_fleet(12, 1, ["north"], seed=2, direct_share=0.0, id_prefix=prefix)
    dcu = fleet.concentrators[0].dcu_id
    ids = [m.meter_id for m in fleet.meters]
    register(db, ids, concentrator=dcu)
    simulation = run_with_drops(db, fleet, prefix, 0.4)
    lost = LOAD_POINTS - stored(db, ids[0])
    assert lost == {START + 3 * INTERVAL, START + 7 * INTERVAL}
    assert all(stored(db, m) == LOAD_POINTS - lost for m in ids)
    middle = (START + INTERVAL, END - INTERVAL)

    with (
        CommandResponder(fleet, broker(), history=simulation.history) as responder,
        RereadSender(settings, f"test-reread-{prefix}") as sender,
    ):
        assert sender.send(reread(None, *middle), dcu) == concentrator_commands_topic(dcu)
        sent = len(ids) * (INTERVALS - 2)
        wait_for(lambda: responder.counts.readings_republished == sent, 10, "the middle of the range sent again")
        wait_for(
            lambda: all(stored(db, m) == LOAD_POINTS - {START + 7 * INTERVAL} for m in ids), 10, "interval 3 stored"
        )
        # the last interval was not asked for; now it is, of one meter only
        sender.send(reread(ids[0]), dcu)
        wait_for(lambda: responder.counts.readings_republished == sent + INTERVALS, 10, "one meter sent again")
        wait_for(lambda: stored(db, ids[0]) == LOAD_POINTS, 10, "every load point of the one meter")
        assert responder.counts.rereads_received == 2

    assert all(stored(db, m) == LOAD_POINTS - {START + 7 * INTERVAL} for m in ids[1:])
    wait_for(
        lambda: (
            count(db, "SELECT count(*) FROM readings WHERE meter_id LIKE %s", f"{prefix}%")
            == len(ids) * (INTERVALS - 1) + 1
        ),
        10,
        "no reading stored twice",
    )
    counted_once(db, prefix)


def test_malformed_expired_and_foreign_rereads_are_counted_and_ignored(prefix: str, publisher: Publisher) -> None:
    fleet = build_fleet(6, 1, ["north"], seed=4, direct_share=0.5, id_prefix=prefix)
    direct = [m.meter_id for m in fleet.direct_meters]
    dcu = fleet.concentrators[0].dcu_id
    simulation = FleetSimulation(fleet, zone=ZONE)
    for instant in SimClock(START).interval_ends(INTERVALS):
        simulation.step(instant)
    now = datetime.now(UTC)
    good = reread(direct[0])

    def payload(**fields: Any) -> bytes:
        return encode_read_readings(dataclasses.replace(good, **fields))

    with CommandResponder(
        fleet, broker(), history=simulation.history, faults={direct[1]: RelayFault.OFFLINE}
    ) as responder:
        mine = meter_commands_topic(direct[0])
        # refused by the decoder
        publisher.publish(mine, b"not json")
        publisher.publish(mine, encode_read_readings(good)[:-1] + b',"priority":1}')
        publisher.publish(mine, encode_read_readings(good).replace(b'"to_at"', b'"too_at"'))
        publisher.publish(mine, payload(meter_id=direct[2]))
        publisher.publish(mine, encode_read_readings(good).replace(START.isoformat().encode(), b"2020-01-01T00:00:00Z"))
        publisher.flush()
        wait_for(lambda: responder.counts.undecodable == 5, 10, "five undecodable commands")
        # decoded, and not carried out: expired, a meter the concentrator does not have, an offline meter
        publisher.publish(mine, payload(issued_at=now - timedelta(minutes=10), expires_at=now - timedelta(minutes=5)))
        publisher.publish(concentrator_commands_topic(dcu), payload(meter_id=direct[0]))
        publisher.publish(meter_commands_topic(direct[1]), payload(meter_id=direct[1]))
        publisher.flush()
        wait_for(lambda: responder.counts.rereads_ignored == 3, 10, "three re-reads ignored")
        assert responder.counts.readings_republished == 0

        # the meters keep working: a relay command, then a valid re-read
        relay = RelayCommandMessage(
            "relay:T:1:read_relay", RelayAction.READ_RELAY, direct[0], now, now + timedelta(minutes=5)
        )
        publisher.publish(mine, encode_command(relay))
        publisher.publish(mine, encode_read_readings(good))
        publisher.flush()
        wait_for(lambda: responder.counts.readings_republished == INTERVALS, 10, "the valid re-read answered")
        wait_for(lambda: responder.counts.events_published == 1, 10, "the relay command answered")
        counts = responder.counts
        assert (counts.undecodable, counts.rereads_received, counts.rereads_ignored) == (5, 4, 3)
        assert counts.commands_received == 1
        assert counts.errors == 0


def test_a_sender_says_why_it_could_not_hand_a_command_to_the_broker() -> None:
    unreachable = Settings(mqtt_host="127.0.0.1", mqtt_port=free_port())
    with RereadSender(unreachable, connect_timeout_s=0.5) as sender, pytest.raises(RereadSendError) as info:
        sender.send(reread("M1"), None)
    assert "not connected to the broker" in str(info.value)
    assert "connection refused" in str(info.value)
    with RereadSender(Settings(mqtt_host=MQTT_HOST, mqtt_port=MQTT_PORT)) as sender:
        with pytest.raises(ValueError, match="must name the meter"):
            sender.send(reread(None), None)
        with pytest.raises(ValueError, match="concentrator id 'a/b'"):
            sender.send(reread(None), "a/b")
