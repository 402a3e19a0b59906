"""JSON payloads of MQTT contract v1: decode to typed readings and encode them back."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from protocols.errors import PayloadError
from protocols.readings import (
    MAX_READINGS_PER_BATCH,
    ConcentratorBatch,
    ItemError,
    MeterReading,
    RelayState,
    is_valid_id,
)

MAX_REGISTER_WH = 2**63 - 1
MAX_VOLTAGE_V = 100_000.0
# one reading, with every field, is under 400 bytes; 1,024 of them in a concentrator message under 400 KiB
MAX_METER_PAYLOAD_BYTES = 4096
MAX_CONCENTRATOR_PAYLOAD_BYTES = 1_048_576
MAX_REASON_VALUE_CHARS = 64  # of a value quoted in a reason: what was sent, recognisably, not all of it
MAX_REASON_NAMES = 10  # unknown field names listed in a reason, each cut to MAX_REASON_NAME_CHARS
MAX_REASON_NAME_CHARS = 32
_BATCH_FIELDS = frozenset({"sent_at", "readings"})
_READING_FIELDS = frozenset(
    {"meter_id", "ts", "energy_import_wh", "energy_export_wh", "power_w", "voltage_v", "relay", "seq"}
)


def shown(value: object) -> str:
    """`value` as a reason quotes it: a scalar's repr cut to MAX_REASON_VALUE_CHARS, a container by its kind."""
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, dict):
        return "a JSON object"
    text = repr(value)  # escapes NUL, control characters and lone surrogates
    if len(text) > MAX_REASON_VALUE_CHARS:
        return text[: MAX_REASON_VALUE_CHARS - 1] + "…"
    return text


def _names(names: Iterable[str]) -> str:
    """Field names for a reason: sorted, the first MAX_REASON_NAMES of them, each escaped and cut."""
    ordered = sorted(names)
    listed = []
    for name in ordered[:MAX_REASON_NAMES]:
        text = name if name.isprintable() else repr(name)[1:-1]
        listed.append(text if len(text) <= MAX_REASON_NAME_CHARS else text[: MAX_REASON_NAME_CHARS - 1] + "…")
    more = len(ordered) - len(listed)
    return ", ".join(listed) + (f" and {more} more" if more else "")


def _check_size(payload: bytes, limit: int) -> None:
    if len(payload) > limit:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds the limit of {limit} bytes")


def load_object(payload: bytes) -> dict[str, Any]:
    """Parse a payload that must be one JSON object; raise PayloadError otherwise."""
    try:
        value = json.loads(payload)
    except RecursionError:
        raise PayloadError("payload is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        # JSONDecodeError, UnicodeDecodeError, and int() refusing an integer of thousands of digits
        raise PayloadError(f"payload is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise PayloadError("payload is not a JSON object")
    return value


def parse_timestamp(value: object, field: str = "ts") -> datetime:
    """Parse an ISO 8601 timestamp that carries an offset; naive times are rejected."""
    if not isinstance(value, str):
        raise PayloadError(f"{field} must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise PayloadError(f"{field} {shown(value)} is not ISO 8601") from None
    if parsed.utcoffset() is None:
        raise PayloadError(f"{field} {shown(value)} has no UTC offset (naive time is rejected)")
    return parsed


def _int_field(obj: Mapping[str, Any], field: str, *, required: bool, low: int, high: int) -> int | None:
    value = obj.get(field)
    if value is None:
        if required:
            raise PayloadError(f"{field} is required")
        return None
    # bool is an int subclass in Python; true/false is never a register value
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{field} must be an integer, got {shown(value)}")
    if not low <= value <= high:
        raise PayloadError(f"{field} {shown(value)} is outside {low}..{high}")
    return value


def _reading_from_object(obj: Mapping[str, Any], meter_id: str) -> MeterReading:
    unknown = obj.keys() - _READING_FIELDS
    if unknown:
        raise PayloadError(f"unknown field(s): {_names(unknown)}")
    energy_import_wh = _int_field(obj, "energy_import_wh", required=True, low=0, high=MAX_REGISTER_WH)
    assert energy_import_wh is not None
    voltage = obj.get("voltage_v")
    if voltage is not None:
        if isinstance(voltage, bool) or not isinstance(voltage, int | float):
            raise PayloadError(f"voltage_v must be a number, got {shown(voltage)}")
        if not 0 <= voltage <= MAX_VOLTAGE_V:
            raise PayloadError(f"voltage_v {shown(voltage)} is outside 0..{MAX_VOLTAGE_V:g}")
    relay = obj.get("relay")
    if relay is not None and relay not in ("closed", "open"):
        raise PayloadError(f"relay must be 'closed' or 'open', got {shown(relay)}")
    return MeterReading(
        meter_id=meter_id,
        ts=parse_timestamp(obj.get("ts")),
        energy_import_wh=energy_import_wh,
        energy_export_wh=_int_field(obj, "energy_export_wh", required=False, low=0, high=MAX_REGISTER_WH),
        power_w=_int_field(obj, "power_w", required=False, low=-(2**31), high=2**31 - 1),
        voltage_v=None if voltage is None else float(voltage),
        relay=None if relay is None else RelayState(relay),
        seq=_int_field(obj, "seq", required=False, low=0, high=MAX_REGISTER_WH),
    )


def decode_meter_reading(meter_id: str, payload: bytes) -> MeterReading:
    """Decode the payload of `meters/{meter_id}/readings`."""
    _check_size(payload, MAX_METER_PAYLOAD_BYTES)
    obj = load_object(payload)
    if "meter_id" in obj and obj["meter_id"] != meter_id:
        raise PayloadError(f"meter_id {shown(obj['meter_id'])} in payload differs from topic {meter_id!r}")
    return _reading_from_object(obj, meter_id)


def decode_concentrator_batch(dcu_id: str, payload: bytes) -> ConcentratorBatch:
    """Decode the payload of `concentrators/{dcu_id}/readings`, keeping bad entries apart."""
    _check_size(payload, MAX_CONCENTRATOR_PAYLOAD_BYTES)
    obj = load_object(payload)
    unknown = obj.keys() - _BATCH_FIELDS
    if unknown:
        raise PayloadError(f"unknown field(s): {_names(unknown)}")
    sent_at = parse_timestamp(obj.get("sent_at"), "sent_at")
    items = obj.get("readings")
    if not isinstance(items, list):
        raise PayloadError("readings must be a list")
    if len(items) > MAX_READINGS_PER_BATCH:
        raise PayloadError(f"{len(items)} readings exceed the limit of {MAX_READINGS_PER_BATCH} a message")
    good: list[MeterReading] = []
    bad: list[ItemError] = []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise PayloadError("entry is not a JSON object")
            meter_id = item.get("meter_id")
            if not isinstance(meter_id, str) or not is_valid_id(meter_id):
                raise PayloadError(f"meter_id {shown(meter_id)} does not match [A-Za-z0-9_-]{{1,32}}")
            good.append(_reading_from_object(item, meter_id))
        except PayloadError as exc:
            bad.append(ItemError(index, exc.reason, item))
    return ConcentratorBatch(dcu_id, sent_at, tuple(good), tuple(bad))


def reading_to_object(reading: MeterReading, *, with_meter_id: bool) -> dict[str, Any]:
    """The JSON object of one reading; optional fields left out when unset."""
    obj: dict[str, Any] = {}
    if with_meter_id:
        obj["meter_id"] = reading.meter_id
    obj["ts"] = reading.ts.isoformat()
    obj["energy_import_wh"] = reading.energy_import_wh
    for field in ("energy_export_wh", "power_w", "voltage_v", "seq"):
        value = getattr(reading, field)
        if value is not None:
            obj[field] = value
    if reading.relay is not None:
        obj["relay"] = reading.relay.value
    return obj


def encode_meter_reading(reading: MeterReading) -> bytes:
    """Payload for `meters/{meter_id}/readings`."""
    return json.dumps(reading_to_object(reading, with_meter_id=False), separators=(",", ":")).encode()


def encode_concentrator_batch(dcu_id: str, sent_at: datetime, readings: list[MeterReading]) -> bytes:
    """Payload for `concentrators/{dcu_id}/readings`."""
    assert sent_at.utcoffset() is not None
    assert len(readings) <= MAX_READINGS_PER_BATCH
    assert is_valid_id(dcu_id)
    body = {
        "sent_at": sent_at.isoformat(),
        "readings": [reading_to_object(r, with_meter_id=True) for r in readings],
    }
    return json.dumps(body, separators=(",", ":")).encode()
