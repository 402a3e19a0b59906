"""JSON payload of the `read_readings` command (re-read, 补抄), and the decoder of everything on a commands topic.

A re-read travels on the commands topics of relay commands and follows their rules (`protocols/relay_codec.py`,
whose helpers it uses): the device answers it with ordinary readings on its readings topic, not with an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from protocols.errors import PayloadError, TopicError
from protocols.mqtt_codec import parse_timestamp, shown
from protocols.mqtt_topics import Topic, TopicKind
from protocols.readings import is_valid_id
from protocols.relay_codec import (
    RelayAction,
    RelayCommandMessage,
    check_fields,
    command_from_object,
    command_id_field,
    command_lifetime,
    command_meter_id,
    dump_payload,
    is_valid_command_id,
    load_payload,
    string_field,
)

READ_READINGS = "read_readings"
# a month of load points: 2,976 a meter; longer gaps are re-read in several commands
MAX_RANGE = timedelta(days=31)
_FIELDS = frozenset({"command_id", "action", "meter_id", "from_at", "to_at", "issued_at", "expires_at"})
_REQUIRED = ("command_id", "action", "from_at", "to_at", "issued_at", "expires_at")
_REQUIRED_ON_METER_TOPIC = ("command_id", "action", "meter_id", "from_at", "to_at", "issued_at", "expires_at")
_ACTIONS = (*(a.value for a in RelayAction), READ_READINGS)


@dataclass(frozen=True, slots=True)
class ReadReadingsCommand:
    """Send again the readings held for [from_at, to_at): of `meter_id`, or of every meter behind a concentrator."""

    command_id: str
    meter_id: str | None
    from_at: datetime
    to_at: datetime
    issued_at: datetime
    expires_at: datetime

    def __post_init__(self) -> None:
        assert is_valid_command_id(self.command_id), self.command_id
        assert self.meter_id is None or is_valid_id(self.meter_id), self.meter_id
        for name in ("from_at", "to_at", "issued_at", "expires_at"):
            assert getattr(self, name).utcoffset() is not None, f"{name} must be timezone-aware"
        assert self.from_at < self.to_at, "to_at must be after from_at"
        assert self.to_at - self.from_at <= MAX_RANGE, "the range must not be longer than MAX_RANGE"
        assert self.expires_at > self.issued_at, "expires_at must be after issued_at"

    def covers(self, ts: datetime) -> bool:
        """Whether a reading stamped `ts` lies in [from_at, to_at)."""
        return self.from_at <= ts < self.to_at


def encode_read_readings(command: ReadReadingsCommand) -> bytes:
    """Payload for `meters/{meter_id}/commands` or `concentrators/{dcu_id}/commands`; no meter_id: every meter."""
    body: dict[str, Any] = {"command_id": command.command_id, "action": READ_READINGS}
    if command.meter_id is not None:
        body["meter_id"] = command.meter_id
    body["from_at"] = command.from_at.isoformat()
    body["to_at"] = command.to_at.isoformat()
    body["issued_at"] = command.issued_at.isoformat()
    body["expires_at"] = command.expires_at.isoformat()
    return dump_payload(body)


def _check_topic(topic: Topic) -> None:
    if topic.kind not in (TopicKind.METER_COMMANDS, TopicKind.CONCENTRATOR_COMMANDS):
        raise TopicError(f"{topic.kind.value} topic of {topic.device_id!r} does not carry commands")


def _from_object(topic: Topic, obj: Mapping[str, Any]) -> ReadReadingsCommand:
    # a meter's own topic names its meter, as relay commands do; a concentrator's may leave it out: all its meters
    required = _REQUIRED_ON_METER_TOPIC if topic.kind is TopicKind.METER_COMMANDS else _REQUIRED
    check_fields(obj, _FIELDS, required)
    command_id = command_id_field(obj["command_id"])
    action = string_field(obj["action"], "action")
    if action != READ_READINGS:
        raise PayloadError(f"action must be {READ_READINGS!r}, got {shown(action)}")
    raw_meter_id = obj.get("meter_id")
    meter_id = None if raw_meter_id is None else command_meter_id(topic, raw_meter_id)
    from_at = parse_timestamp(obj["from_at"], "from_at")
    to_at = parse_timestamp(obj["to_at"], "to_at")
    if to_at <= from_at:
        raise PayloadError(f"to_at {shown(obj['to_at'])} is not after from_at {shown(obj['from_at'])}")
    if to_at - from_at > MAX_RANGE:
        raise PayloadError(
            f"from_at {shown(obj['from_at'])} to to_at {shown(obj['to_at'])} is longer than {MAX_RANGE.days} days"
        )
    issued_at, expires_at = command_lifetime(obj)
    return ReadReadingsCommand(command_id, meter_id, from_at, to_at, issued_at, expires_at)


def decode_read_readings(topic: Topic, payload: bytes) -> ReadReadingsCommand:
    """Decode a `read_readings` command received on `meters/{id}/commands` or `concentrators/{id}/commands`."""
    _check_topic(topic)
    return _from_object(topic, load_payload(payload))


def decode_device_command(topic: Topic, payload: bytes) -> RelayCommandMessage | ReadReadingsCommand:
    """Decode any command of a commands topic, relay or re-read, by its `action`."""
    _check_topic(topic)
    obj = load_payload(payload)
    action = obj.get("action")
    if action == READ_READINGS:
        return _from_object(topic, obj)
    if action is not None and action not in _ACTIONS:
        alternatives = ", ".join(repr(a) for a in _ACTIONS[:-1]) + f" or {_ACTIONS[-1]!r}"
        raise PayloadError(f"action must be {alternatives}, got {shown(action)}")
    return command_from_object(topic, obj)
