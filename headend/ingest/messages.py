"""Turn raw MQTT messages into readings to store and dead letters to record."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime

from protocols.errors import ProtocolError
from protocols.mqtt_codec import decode_concentrator_batch, decode_meter_reading, reading_to_object
from protocols.mqtt_topics import TopicKind, parse_topic
from protocols.readings import MeterReading

log = logging.getLogger(__name__)


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
    # the concentrator whose batch carried it: the meter must be registered behind it
    concentrator_id: str | None = None


@dataclass(slots=True)
class Decoded:
    """Readings and dead letters decoded from a group of messages."""

    readings: list[SourcedReading] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


def reading_payload(item: SourcedReading) -> bytes:
    """The bytes to keep in a dead letter for one reading: its message, or else (an entry of a batch, a polled
    reading) the reading as JSON, written only when it is needed."""
    if item.item_index is None and item.raw:
        return item.raw
    return json.dumps(reading_to_object(item.reading, with_meter_id=True)).encode()


def decode_message(message: InboundMessage, into: Decoded) -> None:
    """Decode one message, appending its readings and dead letters to `into`; never raises.

    A message the decoder fails on in a way it does not foresee becomes one dead letter naming the error: a bug met by
    one message must not stop the worker, nor bring the message back after every restart.
    """
    decoded = Decoded()
    try:
        _decode(message, decoded)
    except Exception as exc:
        log.debug("decoding a message on %r failed", message.topic, exc_info=True)
        decoded = Decoded(
            dead_letters=[
                DeadLetter(
                    message.topic,
                    message.payload,
                    f"message could not be decoded: {type(exc).__name__}: {exc}",
                    message.received_at,
                )
            ]
        )
    into.readings.extend(decoded.readings)
    into.dead_letters.extend(decoded.dead_letters)


def _entry_payload(raw: object, message_payload: bytes) -> bytes:
    """The bytes of one bad entry of a batch: its JSON, or the whole message when it cannot be written back."""
    try:
        return json.dumps(raw, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate: escaped as \udXXX, the JSON reads back the same
        return json.dumps(raw).encode()
    except RecursionError:  # nested deeper than json.dumps goes from here; the item index still points at it
        return message_payload


def _decode(message: InboundMessage, into: Decoded) -> None:
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
                SourcedReading(r, source, message.topic, message.received_at, i, concentrator_id=topic.device_id)
                for i, r in zip(positions, batch.readings, strict=False)
            )
            into.dead_letters.extend(
                DeadLetter(
                    message.topic,
                    _entry_payload(bad.raw, message.payload),
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
