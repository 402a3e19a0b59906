"""The fleet simulator against the real Mosquitto on 127.0.0.1:1883, checked by an independent subscriber."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from protocols.errors import ProtocolError
from protocols.mqtt_codec import decode_concentrator_batch, decode_meter_reading
from protocols.mqtt_topics import READINGS_FILTERS, TopicKind, parse_topic
from protocols.readings import MeterReading
from simulators.clock import SimClock, is_on_grid
from simulators.faults import FaultConfig
from simulators.fleet import build_fleet
from simulators.fleet_sim import FleetSimulation
from simulators.publisher import BrokerConfig, BrokerError, MqttPublisher, run_simulation

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

HOST, PORT = "127.0.0.1", 1883
START = datetime(2026, 11, 22, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai"))


class Collector:
    """A QoS 1 subscriber to the readings topics that keeps the readings of one id prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.readings: list[MeterReading] = []
        self.dcu_of: dict[str, str] = {}
        self.messages = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{uuid.uuid4().hex[:12]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        assert not any(r.is_failure for r in reasons), reasons
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = parse_topic(message.topic)
        except ProtocolError:
            return  # another test's hostile topic on the same broker
        payload = bytes(message.payload)
        if not topic.device_id.startswith(self.prefix):
            return  # another test run on the same broker
        if topic.kind is TopicKind.METER_READINGS:
            readings = [decode_meter_reading(topic.device_id, payload)]
        else:
            batch = decode_concentrator_batch(topic.device_id, payload)
            assert batch.rejected == ()
            readings = list(batch.readings)
        with self._lock:
            self.messages += 1
            self.readings.extend(readings)
            if topic.kind is TopicKind.CONCENTRATOR_READINGS:
                self.dcu_of.update((r.meter_id, topic.device_id) for r in readings)

    def start(self) -> None:
        self.client.connect(HOST, PORT)
        self.client.loop_start()
        self.client.subscribe([(f, 1) for f in READINGS_FILTERS])
        assert self._subscribed.wait(10), "no SUBACK from the broker"

    def wait_for(self, count: int, timeout_s: float = 20.0) -> int:
        """Wait until `count` readings arrived, then a little longer to catch any surplus."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(self.readings) < count:
            time.sleep(0.05)
        time.sleep(0.5)
        with self._lock:
            return len(self.readings)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def prefix() -> str:
    """Ids unique to this run, so parallel runs on the same broker do not collide."""
    return f"T{uuid.uuid4().hex[:10]}"


@pytest.fixture
def collector(prefix: str) -> Iterator[Collector]:
    collector = Collector(prefix)
    collector.start()
    yield collector
    collector.stop()


def broker() -> BrokerConfig:
    return BrokerConfig(HOST, PORT, connect_timeout_s=10, ack_timeout_s=20)


def test_every_reading_reaches_a_subscriber(prefix: str, collector: Collector) -> None:
    fleet = build_fleet(20, 2, ["north", "south"], seed=12, direct_share=0.3, id_prefix=prefix)
    stats = run_simulation(FleetSimulation(fleet), SimClock(START), 4, broker())

    expected = 20 * 4
    assert stats.readings_published == expected
    assert stats.messages_published == 6 * 4 + 2 * 4
    assert stats.messages_unconfirmed == 0
    assert not stats.interrupted
    assert collector.wait_for(expected) == expected
    assert collector.messages == stats.messages_published

    by_meter: dict[str, list[MeterReading]] = {}
    for reading in collector.readings:
        by_meter.setdefault(reading.meter_id, []).append(reading)
    assert set(by_meter) == {m.meter_id for m in fleet.meters}
    for meter in fleet.meters:
        series = by_meter[meter.meter_id]
        assert [r.ts for r in series] == SimClock(START).interval_ends(4)
        assert all(is_on_grid(r.ts) for r in series)
        registers = [r.energy_import_wh for r in series]
        assert registers == sorted(registers)
        assert registers[0] == meter.start_register_wh
        assert collector.dcu_of.get(meter.meter_id) == meter.concentrator_id


def test_fault_counts_match_what_the_broker_delivers(prefix: str, collector: Collector) -> None:
    fleet = build_fleet(40, 0, ["north"], seed=3, id_prefix=prefix)
    faults = FaultConfig(drop_rate=0.2, duplicate_rate=0.2, reorder_rate=0.2, offline_fraction=0.1)
    stats = run_simulation(FleetSimulation(fleet, faults), SimClock(START), 4, broker())

    assert stats.offline_meters == 4
    assert stats.readings_offline == 16
    assert stats.readings_dropped > 0
    assert stats.readings_duplicated > 0
    assert stats.messages_delayed > 0
    expected = 36 * 4 - stats.readings_dropped + stats.readings_duplicated
    assert stats.readings_published == expected
    assert stats.messages_unconfirmed == 0
    assert collector.wait_for(expected) == expected
    # delayed messages arrive after a newer reading of the same meter
    last_seen: dict[str, datetime] = {}
    late = 0
    for reading in collector.readings:
        if reading.ts < last_seen.get(reading.meter_id, reading.ts):
            late += 1
        last_seen[reading.meter_id] = max(reading.ts, last_seen.get(reading.meter_id, reading.ts))
    assert late > 0


def test_unreachable_broker_is_a_clear_error() -> None:
    with pytest.raises(BrokerError, match="cannot connect"), MqttPublisher(BrokerConfig(HOST, 1)):
        pass


def test_a_paced_run_stops_when_asked(prefix: str, collector: Collector) -> None:
    fleet = build_fleet(10, 1, ["north"], seed=4, direct_share=0.5, id_prefix=prefix)
    stop = threading.Event()
    timer = threading.Timer(0.45, stop.set)
    timer.start()
    started = time.monotonic()
    try:
        # 9000x: one 15-minute interval every 0.1 s of real time
        stats = run_simulation(FleetSimulation(fleet), SimClock(START, speed=9000), 1000, broker(), stop=stop)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 5
    assert stats.interrupted
    assert 3 <= stats.intervals <= 7
    assert stats.readings_published == 10 * stats.intervals
    assert collector.wait_for(stats.readings_published) == stats.readings_published
