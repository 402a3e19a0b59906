"""JSON payloads of relay commands and meter events (MQTT contract v1 addition): typed messages and bytes."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from protocols.errors import PayloadError, TopicError
from protocols.mqtt_codec import load_object, parse_timestamp
from protocols.mqtt_topics import Topic, TopicKind
from protocols.readings import RelayState, is_valid_id

COMMAND_ID_MAX_LEN = 96
DETAIL_MAX_LEN = 256
MAX_PAYLOAD_BYTES = 4096
_COMMAND_ID_CHARS = "[A-Za-z0-9:_.-]"
_COMMAND_ID_PATTERN = re.compile(f"{_COMMAND_ID_CHARS}{{1,{COMMAND_ID_MAX_LEN}}}")
_COMMAND_REQUIRED = ("command_id", "action", "meter_id", "issued_at", "expires_at")
_COMMAND_FIELDS = frozenset(_COMMAND_REQUIRED)
_EVENT_FIELDS = frozenset({"command_id", "result", "relay", "ready_for_reconnection", "cause", "detail", "ts"})
_EVENT_REQUIRED = ("relay", "ts")


class RelayAction(StrEnum):
    """What a command asks the meter's relay to do."""

    DISCONNECT = "disconnect"
    RECONNECT = "reconnect"
    READ_RELAY = "read_relay"


class CommandResult(StrEnum):
    """How a device answered a command."""

    EXECUTED = "executed"
    REJECTED = "rejected"
    FAILED = "failed"


class EventCause(StrEnum):
    """Why a meter reports an event that answers no command."""

    BUTTON_PRESSED = "button_pressed"
    LOCAL_OPERATION = "local_operation"
    POWER_RESTORED = "power_restored"


def is_valid_command_id(s: str) -> bool:
    """Whether `s` is a valid command id: 1..96 characters of [A-Za-z0-9:_.-]."""
    return _COMMAND_ID_PATTERN.fullmatch(s) is not None


def _is_unicode(s: str) -> bool:
    # json.loads turns an escaped lone surrogate ("\ud800") into a str that no UTF-8 encoder accepts
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class RelayCommandMessage:
    """A relay command from the head-end to one meter, valid from issued_at until expires_at."""

    command_id: str
    action: RelayAction
    meter_id: str
    issued_at: datetime
    expires_at: datetime

    def __post_init__(self) -> None:
        assert is_valid_command_id(self.command_id), self.command_id
        assert is_valid_id(self.meter_id), self.meter_id
        assert self.issued_at.utcoffset() is not None, "issued_at must be timezone-aware"
        assert self.expires_at.utcoffset() is not None, "expires_at must be timezone-aware"
        assert self.expires_at > self.issued_at, "expires_at must be after issued_at"


@dataclass(frozen=True, slots=True)
class MeterEvent:
    """A meter's answer to a command (command_id and result) or a spontaneous relay event (cause)."""

    meter_id: str
    relay: RelayState
    ts: datetime
    command_id: str | None = None
    result: CommandResult | None = None
    ready_for_reconnection: bool = False
    cause: EventCause | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        assert is_valid_id(self.meter_id), self.meter_id
        assert self.ts.utcoffset() is not None, "event time must be timezone-aware"
        assert self.command_id is None or is_valid_command_id(self.command_id), self.command_id
        assert (self.command_id is None) == (self.result is None), "command_id and result go together"
        assert (self.cause is None) == (self.command_id is not None), "an event has a cause iff it answers no command"
        assert self.detail is None or (len(self.detail) <= DETAIL_MAX_LEN and _is_unicode(self.detail))


# --------------------------------------------------------------------------- encoding


def dump_payload(body: Mapping[str, Any]) -> bytes:
    """Compact ASCII JSON of a command or an event; the field limits keep it within MAX_PAYLOAD_BYTES."""
    data = json.dumps(body, separators=(",", ":")).encode()
    # the field limits keep every message under the limit; an excess is a bug here, not a device's fault
    assert len(data) <= MAX_PAYLOAD_BYTES, len(data)
    return data


def encode_command(message: RelayCommandMessage) -> bytes:
    """Payload for `meters/{meter_id}/commands` or `concentrators/{dcu_id}/commands`."""
    return dump_payload(
        {
            "command_id": message.command_id,
            "action": message.action.value,
            "meter_id": message.meter_id,
            "issued_at": message.issued_at.isoformat(),
            "expires_at": message.expires_at.isoformat(),
        }
    )


def encode_event(event: MeterEvent) -> bytes:
    """Payload for `meters/{meter_id}/events`; the meter id travels in the topic, not here."""
    body: dict[str, Any] = {}
    if event.command_id is not None and event.result is not None:
        body["command_id"] = event.command_id
        body["result"] = event.result.value
    if event.cause is not None:
        body["cause"] = event.cause.value
    body["relay"] = event.relay.value
    if event.ready_for_reconnection:
        body["ready_for_reconnection"] = True
    if event.detail is not None:
        body["detail"] = event.detail
    body["ts"] = event.ts.isoformat()
    return dump_payload(body)


# --------------------------------------------------------------------------- decoding

_E = TypeVar("_E", bound=StrEnum)


def load_payload(payload: bytes) -> dict[str, Any]:
    """The JSON object of a command or event payload of at most MAX_PAYLOAD_BYTES; PayloadError otherwise."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds the limit of {MAX_PAYLOAD_BYTES} bytes")
    return load_object(payload)


def check_fields(obj: Mapping[str, Any], fields: frozenset[str], required: tuple[str, ...]) -> None:
    """Refuse a field not in `fields`, and a `required` one absent or null."""
    unknown = obj.keys() - fields
    if unknown:
        raise PayloadError(f"unknown field(s): {', '.join(sorted(unknown))}")
    # null is the same as absent, as for readings
    missing = [field for field in required if obj.get(field) is None]
    if missing:
        raise PayloadError(f"missing field(s): {', '.join(missing)}")


def load_fields(payload: bytes, fields: frozenset[str], required: tuple[str, ...]) -> dict[str, Any]:
    """The JSON object of a payload of at most MAX_PAYLOAD_BYTES, with only `fields` and every `required` not null."""
    obj = load_payload(payload)
    check_fields(obj, fields, required)
    return obj


def string_field(value: object, field: str) -> str:
    """`value` if it is a string; PayloadError naming `field` otherwise."""
    if not isinstance(value, str):
        raise PayloadError(f"{field} must be a string, got {value!r}")
    return value


def _choice(value: object, field: str, enum: type[_E]) -> _E:
    values = [member.value for member in enum]
    if not isinstance(value, str) or value not in values:
        alternatives = ", ".join(repr(v) for v in values[:-1]) + f" or {values[-1]!r}"
        raise PayloadError(f"{field} must be {alternatives}, got {value!r}")
    return enum(value)


def command_id_field(value: object) -> str:
    """`value` if it is a valid command id; PayloadError otherwise."""
    command_id = string_field(value, "command_id")
    if not is_valid_command_id(command_id):
        raise PayloadError(f"command_id {command_id!r} does not match {_COMMAND_ID_CHARS}{{1,{COMMAND_ID_MAX_LEN}}}")
    return command_id


def check_command_topic(topic: Topic) -> None:
    """Refuse a topic other than `meters/{id}/commands` and `concentrators/{id}/commands`."""
    if topic.kind not in (TopicKind.METER_COMMANDS, TopicKind.CONCENTRATOR_COMMANDS):
        raise TopicError(f"{topic.kind.value} topic of {topic.device_id!r} does not carry relay commands")


def command_meter_id(topic: Topic, value: object) -> str:
    """A command's valid meter id, which on `meters/{id}/commands` must be the topic's."""
    meter_id = string_field(value, "meter_id")
    if not is_valid_id(meter_id):
        raise PayloadError(f"meter_id {meter_id!r} does not match [A-Za-z0-9_-]{{1,32}}")
    if topic.kind is TopicKind.METER_COMMANDS and meter_id != topic.device_id:
        raise PayloadError(f"meter_id {meter_id!r} in payload differs from topic {topic.device_id!r}")
    return meter_id


def command_lifetime(obj: Mapping[str, Any]) -> tuple[datetime, datetime]:
    """A command's `issued_at` and `expires_at`, the second strictly after the first."""
    issued_at = parse_timestamp(obj["issued_at"], "issued_at")
    expires_at = parse_timestamp(obj["expires_at"], "expires_at")
    if expires_at <= issued_at:
        raise PayloadError(f"expires_at {obj['expires_at']!r} is not after issued_at {obj['issued_at']!r}")
    return issued_at, expires_at


def decode_command(topic: Topic, payload: bytes) -> RelayCommandMessage:
    """Decode a relay command received on `meters/{id}/commands` or `concentrators/{id}/commands`.

    Strict: a `read_readings` command on the same topics is refused here; a device that takes both kinds decodes
    with `protocols.reread_codec.decode_device_command`.
    """
    check_command_topic(topic)
    return command_from_object(topic, load_payload(payload))


def command_from_object(topic: Topic, obj: Mapping[str, Any]) -> RelayCommandMessage:
    """The relay command in the JSON object of a payload received on the commands topic `topic`."""
    check_command_topic(topic)
    if obj.get("action") == "read_readings":
        # its fields would be refused as unknown; say what it is instead
        raise PayloadError("action 'read_readings' is a re-read, not a relay command")
    check_fields(obj, _COMMAND_FIELDS, _COMMAND_REQUIRED)
    command_id = command_id_field(obj["command_id"])
    action = _choice(obj["action"], "action", RelayAction)
    meter_id = command_meter_id(topic, obj["meter_id"])
    issued_at, expires_at = command_lifetime(obj)
    return RelayCommandMessage(command_id, action, meter_id, issued_at, expires_at)


def decode_event(topic: Topic, payload: bytes) -> MeterEvent:
    """Decode an event received on `meters/{meter_id}/events`."""
    if topic.kind is not TopicKind.METER_EVENTS:
        raise TopicError(f"{topic.kind.value} topic of {topic.device_id!r} does not carry meter events")
    obj = load_fields(payload, _EVENT_FIELDS, _EVENT_REQUIRED)
    relay = _choice(obj["relay"], "relay", RelayState)
    ts = parse_timestamp(obj["ts"], "ts")
    raw_command_id, raw_result, raw_cause = obj.get("command_id"), obj.get("result"), obj.get("cause")
    command_id = None if raw_command_id is None else command_id_field(raw_command_id)
    result = None if raw_result is None else _choice(raw_result, "result", CommandResult)
    cause = None if raw_cause is None else _choice(raw_cause, "cause", EventCause)
    ready = obj.get("ready_for_reconnection")
    if ready is not None and not isinstance(ready, bool):
        raise PayloadError(f"ready_for_reconnection must be true or false, got {ready!r}")
    detail = obj.get("detail")
    if detail is not None:
        detail = string_field(detail, "detail")
        if len(detail) > DETAIL_MAX_LEN:
            raise PayloadError(f"detail of {len(detail)} characters exceeds the limit of {DETAIL_MAX_LEN}")
        if not _is_unicode(detail):
            raise PayloadError("detail is not valid Unicode: it holds a lone surrogate")
    if command_id is not None and result is None:
        raise PayloadError("command_id without result: an answer to a command needs both")
    if result is not None and command_id is None:
        raise PayloadError("result without command_id: an answer to a command needs both")
    if command_id is not None and cause is not None:
        raise PayloadError("cause with command_id: an answer to a command has no cause")
    if command_id is None and cause is None:
        raise PayloadError("cause is required when there is no command_id")
    return MeterEvent(
        meter_id=topic.device_id,
        relay=relay,
        ts=ts,
        command_id=command_id,
        result=result,
        ready_for_reconnection=bool(ready),
        cause=cause,
        detail=detail,
    )
