"""What a simulated meter or concentrator sends for a `read_readings` command: the readings it holds, again.

Pure: no I/O, no clock reads. The answer is ordinary readings on the device's readings topic, so the head-end
checks and de-duplicates them as any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from protocols.mqtt_topics import Topic, TopicKind
from protocols.readings import MeterReading
from protocols.reread_codec import ReadReadingsCommand
from simulators.fleet import Fleet
from simulators.fleet_sim import OutgoingMessage, concentrator_messages, meter_message
from simulators.load_shapes import SHANGHAI
from simulators.reading_history import ReadingHistory

REFUSED_EXPIRED = "expired"
REFUSED_UNKNOWN_DEVICE = "unknown device"
REFUSED_UNKNOWN_METER = "unknown meter"


@dataclass(frozen=True, slots=True)
class RereadAnswer:
    """The messages that answer a re-read, or why it is not carried out (`refused`, and no messages)."""

    messages: list[OutgoingMessage] = field(default_factory=list)
    refused: str | None = None

    @property
    def readings(self) -> int:
        """Readings in the messages."""
        return sum(m.readings for m in self.messages)


class RereadAnswers:
    """Turns a fleet's `read_readings` commands into the readings its devices hold for the range."""

    def __init__(self, fleet: Fleet, history: ReadingHistory, *, zone: ZoneInfo = SHANGHAI) -> None:
        self.fleet = fleet
        self.history = history
        self.zone = zone
        self._direct = frozenset(m.meter_id for m in fleet.direct_meters)
        self._behind = {c.dcu_id: [m.meter_id for m in fleet.meters_of(c.dcu_id)] for c in fleet.concentrators}

    def answer(self, topic: Topic, command: ReadReadingsCommand, now: datetime) -> RereadAnswer:
        """The messages a device sends for `command` received on `topic` at `now` (its own clock)."""
        if now > command.expires_at:
            return RereadAnswer(refused=REFUSED_EXPIRED)
        if topic.kind is TopicKind.METER_COMMANDS:
            if topic.device_id not in self._direct:
                # a meter behind a concentrator has no commands topic of its own
                return RereadAnswer(refused=REFUSED_UNKNOWN_DEVICE)
            readings = self.history.between(topic.device_id, command.from_at, command.to_at)
            return RereadAnswer([meter_message(r, now) for r in readings])
        behind = self._behind.get(topic.device_id)
        if behind is None:
            return RereadAnswer(refused=REFUSED_UNKNOWN_DEVICE)
        if command.meter_id is not None:
            if command.meter_id not in behind:
                return RereadAnswer(refused=REFUSED_UNKNOWN_METER)
            behind = [command.meter_id]
        held: list[MeterReading] = []
        for meter_id in behind:
            held += self.history.between(meter_id, command.from_at, command.to_at)
        # interval by interval, as the concentrator collected them (sorted is stable: meters keep their order)
        held.sort(key=lambda r: r.ts)
        return RereadAnswer(concentrator_messages(topic.device_id, held, now.astimezone(self.zone), now))
