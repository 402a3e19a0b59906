"""Turn raw MQTT messages into readings to store and dead letters to record."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from protocols.errors import ProtocolError
from protocols.mqtt_codec import decode_concentrator_batch, decode_meter_reading, reading_to_object
from protocols.mqtt_topics import TopicKind, parse_topic
from protocols.readings import MeterReading


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message as received from the broker, before decoding."""

    topic: str
    payload: bytes
    received_at: datetime
    mid: int = 0
    qos: int = 0
    generation: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Something that cannot be stored as a reading, and why."""

    topic: str
    payload: bytes
    reason: str
    received_at: datetime
    item_index: int | None = None
    meter_id: str | None = None  # when known (a decoded reading refused later)


@dataclass(frozen=True, slots=True)
class SourcedReading:
    """A decoded reading with where it came from."""

    reading: MeterReading
    source: str
    topic: str
    received_at: datetime
    item_index: int | None
    raw: bytes = b""


@dataclass(slots=True)
class Decoded:
    """Readings and dead letters decoded from a group of messages."""

    readings: list[SourcedReading] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


def reading_payload(item: SourcedReading) -> bytes:
    """The bytes to keep in a dead letter for one reading: the message, or its own entry of a batch."""
    if item.item_index is None:
        return item.raw
    return json.dumps(reading_to_object(item.reading, with_meter_id=True)).encode()


def decode_message(message: InboundMessage, into: Decoded) -> None:
    """Decode one message, appending its readings and dead letters to `into`."""
    try:
        topic = parse_topic(message.topic)
        if topic.kind is TopicKind.METER_READINGS:
            reading = decode_meter_reading(topic.device_id, message.payload)
            into.readings.append(
                SourcedReading(reading, "mqtt:meter", message.topic, message.received_at, None, message.payload)
            )
            return
        if topic.kind is TopicKind.CONCENTRATOR_READINGS:
            batch = decode_concentrator_batch(topic.device_id, message.payload)
            source = f"mqtt:dcu:{topic.device_id}"
            rejected_positions = {bad.index for bad in batch.rejected}
            positions = (i for i in range(len(batch.readings) + len(batch.rejected)) if i not in rejected_positions)
            into.readings.extend(
                SourcedReading(r, source, message.topic, message.received_at, i)
                for i, r in zip(positions, batch.readings, strict=False)
            )
            into.dead_letters.extend(
                DeadLetter(
                    message.topic,
                    json.dumps(bad.raw, ensure_ascii=False, default=str).encode(),
                    bad.reason,
                    message.received_at,
                    bad.index,
                )
                for bad in batch.rejected
            )
            return
        into.dead_letters.append(
            DeadLetter(message.topic, message.payload, f"topic kind {topic.kind} is not ingested", message.received_at)
        )
    except ProtocolError as exc:
        into.dead_letters.append(DeadLetter(message.topic, message.payload, exc.reason, message.received_at))
