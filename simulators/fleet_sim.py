"""The whole fleet interval by interval: meter states, concentrator batches, faults; MQTT messages out."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from zoneinfo import ZoneInfo

from protocols.mqtt_codec import encode_concentrator_batch, encode_meter_reading
from protocols.mqtt_topics import concentrator_readings_topic, meter_readings_topic
from protocols.readings import MAX_READINGS_PER_BATCH, MeterReading
from simulators.faults import FaultConfig, FaultPlan, MessageFaults, plan_faults
from simulators.fleet import Fleet
from simulators.load_shapes import SHANGHAI
from simulators.meter_sim import MeterSim
from simulators.reading_history import DEFAULT_HISTORY_INTERVALS, ReadingHistory


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One MQTT message to publish, with the number of readings it carries."""

    topic: str
    payload: bytes
    readings: int
    instant: datetime


@dataclass(frozen=True, slots=True)
class SimulationCounts:
    """What the simulation produced so far; `messages`/`readings` are handed out for publishing, copies included."""

    intervals: int = 0
    messages: int = 0
    readings: int = 0
    messages_dropped: int = 0
    readings_dropped: int = 0
    messages_duplicated: int = 0
    readings_duplicated: int = 0
    messages_delayed: int = 0
    readings_offline: int = 0
    offline_meters: int = 0


def meter_message(reading: MeterReading, instant: datetime) -> OutgoingMessage:
    """A direct meter's reading on its own readings topic."""
    return OutgoingMessage(meter_readings_topic(reading.meter_id), encode_meter_reading(reading), 1, instant)


def concentrator_messages(
    dcu_id: str, readings: list[MeterReading], sent_at: datetime, instant: datetime
) -> list[OutgoingMessage]:
    """A concentrator's readings in messages of at most MAX_READINGS_PER_BATCH; none when there are none."""
    messages = []
    for start in range(0, len(readings), MAX_READINGS_PER_BATCH):
        chunk = readings[start : start + MAX_READINGS_PER_BATCH]
        payload = encode_concentrator_batch(dcu_id, sent_at, chunk)
        messages.append(OutgoingMessage(concentrator_readings_topic(dcu_id), payload, len(chunk), instant))
    return messages


class FleetSimulation:
    """Advances every meter of a fleet and turns each interval into MQTT messages, faults applied."""

    def __init__(
        self,
        fleet: Fleet,
        faults: FaultConfig | None = None,
        *,
        zone: ZoneInfo = SHANGHAI,
        history_intervals: int = DEFAULT_HISTORY_INTERVALS,
    ) -> None:
        self.fleet = fleet
        self.zone = zone
        config = faults or FaultConfig()
        self.plan: FaultPlan = plan_faults(config, [m.meter_id for m in fleet.meters], fleet.seed)
        self.meters: dict[str, MeterSim] = {
            m.meter_id: MeterSim(
                m, fleet.seed, self.plan.for_meter(m.meter_id), rollover_limit_wh=config.rollover_limit_wh, zone=zone
            )
            for m in fleet.meters
        }
        self._offline = self.plan.offline_ids
        self._faults: MessageFaults[OutgoingMessage] = MessageFaults(config, fleet.seed)
        self._counts = SimulationCounts(offline_meters=len(self._offline))
        # what the devices hold to send again on a re-read: every reading taken, whatever faults then did to it
        self.history = ReadingHistory(history_intervals, zone=zone)

    @property
    def counts(self) -> SimulationCounts:
        """Totals so far."""
        return self._counts

    @property
    def held(self) -> int:
        """Messages held back by out-of-order delivery, not yet handed out."""
        return self._faults.held

    def readings_at(self, instant: datetime) -> tuple[list[MeterReading], dict[str, list[MeterReading]], int]:
        """Advance every meter to `instant`: direct readings, readings per concentrator, and offline meters skipped.

        The readings are kept in `history`, an offline meter's excepted: it hears no re-read, nor does its concentrator
        hold its readings.
        """
        direct: list[MeterReading] = []
        batches: dict[str, list[MeterReading]] = {c.dcu_id: [] for c in self.fleet.concentrators}
        offline = 0
        for meter in self.fleet.meters:
            # offline meters keep metering; only their messages are lost
            reading = self.meters[meter.meter_id].read(instant, detailed=meter.concentrator_id is None)
            if meter.meter_id in self._offline:
                offline += 1
            elif meter.concentrator_id is None:
                direct.append(reading)
            else:
                batches[meter.concentrator_id].append(reading)
        self.history.record(direct)
        for readings in batches.values():
            self.history.record(readings)
        return direct, batches, offline

    def messages_at(self, instant: datetime) -> tuple[list[OutgoingMessage], int]:
        """The fault-free messages of one interval and the number of offline meters left out."""
        direct, batches, offline = self.readings_at(instant)
        messages = [meter_message(r, instant) for r in direct]
        sent_at = instant.astimezone(self.zone)
        for dcu_id, readings in batches.items():
            messages += concentrator_messages(dcu_id, readings, sent_at, instant)
        return messages, offline

    def step(self, instant: datetime) -> list[OutgoingMessage]:
        """Messages to publish for the interval at `instant`, after drops, duplicates and delays."""
        messages, offline = self.messages_at(instant)
        delivery = self._faults.step(messages)
        c = self._counts
        self._counts = SimulationCounts(
            intervals=c.intervals + 1,
            messages=c.messages + len(delivery.sent),
            readings=c.readings + sum(m.readings for m in delivery.sent),
            messages_dropped=c.messages_dropped + len(delivery.dropped),
            readings_dropped=c.readings_dropped + sum(m.readings for m in delivery.dropped),
            messages_duplicated=c.messages_duplicated + len(delivery.duplicated),
            readings_duplicated=c.readings_duplicated + sum(m.readings for m in delivery.duplicated),
            messages_delayed=c.messages_delayed + len(delivery.delayed),
            readings_offline=c.readings_offline + offline,
            offline_meters=c.offline_meters,
        )
        return delivery.sent

    def finish(self) -> list[OutgoingMessage]:
        """Messages still held back by out-of-order delivery; the run ends after them."""
        released = self._faults.flush()
        self._counts = replace(
            self._counts,
            messages=self._counts.messages + len(released),
            readings=self._counts.readings + sum(m.readings for m in released),
        )
        return released
