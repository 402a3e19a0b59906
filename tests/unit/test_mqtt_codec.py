"""MQTT contract v1 payloads: `protocols.mqtt_codec` and the types of `protocols.readings`."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import PayloadError, ProtocolError
from protocols.mqtt_codec import (
    MAX_CONCENTRATOR_PAYLOAD_BYTES,
    MAX_METER_PAYLOAD_BYTES,
    MAX_REASON_VALUE_CHARS,
    MAX_REGISTER_WH,
    decode_concentrator_batch,
    decode_meter_reading,
    encode_concentrator_batch,
    encode_meter_reading,
    parse_timestamp,
    reading_to_object,
)
from protocols.readings import (
    MAX_READINGS_PER_BATCH,
    ConcentratorBatch,
    ItemError,
    MeterReading,
    RelayState,
    is_valid_id,
)

CST = timezone(timedelta(hours=8))  # Asia/Shanghai has no DST: a fixed +08:00
TS = "2024-03-01T12:00:00+08:00"
TS_VALUE = datetime(2024, 3, 1, 12, 0, tzinfo=CST)
SENT_AT = "2024-03-01T12:05:00+08:00"
INT64_MAX = 2**63 - 1


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def _reading(**fields: object) -> bytes:
    """A single-meter payload: a valid minimal one, with `fields` changed (None removes a field)."""
    obj: dict[str, object] = {"ts": TS, "energy_import_wh": 1_234_567}
    for name, value in fields.items():
        if value is None:
            obj.pop(name, None)
        else:
            obj[name] = value
    return _json(obj)


def _reason(meter_id: str, payload: bytes) -> str:
    with pytest.raises(PayloadError) as info:
        decode_meter_reading(meter_id, payload)
    return info.value.reason


# --------------------------------------------------------------------------- single meter


def test_minimal_payload_decodes_with_optional_fields_unset() -> None:
    reading = decode_meter_reading("m-1", b'{"ts": "2024-03-01T12:00:00+08:00", "energy_import_wh": 1234567}')

    assert reading == MeterReading(meter_id="m-1", ts=TS_VALUE, energy_import_wh=1_234_567)
    assert reading.energy_export_wh is None
    assert reading.power_w is None
    assert reading.voltage_v is None
    assert reading.relay is None
    assert reading.seq is None
    assert reading.ts.utcoffset() == timedelta(hours=8)


def test_full_payload_decodes_every_field() -> None:
    payload = _json(
        {
            "meter_id": "m-1",
            "ts": TS,
            "energy_import_wh": 1_234_567,
            "energy_export_wh": 89,
            "power_w": -1500,
            "voltage_v": 229.7,
            "relay": "open",
            "seq": 42,
        }
    )

    reading = decode_meter_reading("m-1", payload)

    assert reading == MeterReading(
        meter_id="m-1",
        ts=TS_VALUE,
        energy_import_wh=1_234_567,
        energy_export_wh=89,
        power_w=-1500,
        voltage_v=229.7,
        relay=RelayState.OPEN,
        seq=42,
    )
    assert reading.relay is RelayState.OPEN


def test_integer_voltage_becomes_float() -> None:
    reading = decode_meter_reading("m-1", _reading(voltage_v=230))

    assert reading.voltage_v == 230.0
    assert type(reading.voltage_v) is float


def test_relay_closed() -> None:
    assert decode_meter_reading("m-1", _reading(relay="closed")).relay is RelayState.CLOSED


def test_null_optional_field_is_the_same_as_absent() -> None:
    payload = b'{"ts": "2024-03-01T12:00:00+08:00", "energy_import_wh": 5, "power_w": null, "relay": null}'

    assert decode_meter_reading("m-1", payload) == MeterReading("m-1", TS_VALUE, 5)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("energy_import_wh", 0),
        ("energy_import_wh", INT64_MAX),
        ("energy_export_wh", 0),
        ("energy_export_wh", INT64_MAX),
        ("power_w", -(2**31)),
        ("power_w", 2**31 - 1),
        ("voltage_v", 0),
        ("voltage_v", 100_000),
        ("seq", 0),
        ("seq", INT64_MAX),
    ],
)
def test_range_boundaries_are_accepted(field: str, value: int) -> None:
    reading = decode_meter_reading("m-1", _reading(**{field: value}))

    assert getattr(reading, field) == value


def test_z_suffix_is_utc() -> None:
    reading = decode_meter_reading("m-1", _reading(ts="2024-03-01T04:00:00Z"))

    assert reading.ts == datetime(2024, 3, 1, 4, 0, tzinfo=UTC)
    assert reading.ts.utcoffset() == timedelta(0)


def test_offset_is_kept_as_sent() -> None:
    reading = decode_meter_reading("m-1", _reading(ts="2024-03-01T12:00:00.250+05:30"))

    assert reading.ts.isoformat() == "2024-03-01T12:00:00.250000+05:30"
    assert reading.ts == datetime(2024, 3, 1, 6, 30, 0, 250_000, tzinfo=UTC)


def test_naive_timestamp_is_rejected() -> None:
    assert (
        _reason("m-1", _reading(ts="2024-03-01T12:00:00"))
        == "ts '2024-03-01T12:00:00' has no UTC offset (naive time is rejected)"
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2024-03-01", "ts '2024-03-01' has no UTC offset (naive time is rejected)"),
        ("yesterday", "ts 'yesterday' is not ISO 8601"),
        ("2024-13-01T00:00:00Z", "ts '2024-13-01T00:00:00Z' is not ISO 8601"),
        ("", "ts '' is not ISO 8601"),
        (1_709_265_600, "ts must be an ISO 8601 string"),
        ([TS], "ts must be an ISO 8601 string"),
    ],
)
def test_bad_timestamp_is_rejected(value: object, reason: str) -> None:
    assert _reason("m-1", _reading(ts=value)) == reason


def test_missing_timestamp_is_rejected() -> None:
    assert _reason("m-1", _reading(ts=None)) == "ts must be an ISO 8601 string"


def test_parse_timestamp_names_the_field() -> None:
    with pytest.raises(PayloadError) as info:
        parse_timestamp("2024-03-01T12:00:00", "sent_at")

    assert info.value.reason == "sent_at '2024-03-01T12:00:00' has no UTC offset (naive time is rejected)"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[1, 2]", "payload is not a JSON object"),
        (b'"text"', "payload is not a JSON object"),
        (b"42", "payload is not a JSON object"),
        (b"null", "payload is not a JSON object"),
        (b"true", "payload is not a JSON object"),
    ],
)
def test_non_object_payload_is_rejected(payload: bytes, reason: str) -> None:
    assert _reason("m-1", payload) == reason


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{not json",
        b'{"ts": "2024-03-01T12:00:00+08:00", "energy_import_wh": 1',
        b'{"ts": "2024-03-01T12:00:00+08:00", "energy_import_wh": 1,}',
        b"\xc3\x28",  # not UTF-8
        b"\xff\xfe\xfd",  # a UTF-16 byte-order mark, then a truncated code unit
        b'{"ts": "\xff"}',
    ],
)
def test_bad_json_is_rejected(payload: bytes) -> None:
    assert _reason("m-1", payload).startswith("payload is not valid JSON: ")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        # energy_import_wh is required and an integer number of Wh
        ({"energy_import_wh": None}, "energy_import_wh is required"),
        ({"energy_import_wh": 1.5}, "energy_import_wh must be an integer, got 1.5"),
        ({"energy_import_wh": 1000.0}, "energy_import_wh must be an integer, got 1000.0"),
        ({"energy_import_wh": "1000"}, "energy_import_wh must be an integer, got '1000'"),
        ({"energy_import_wh": True}, "energy_import_wh must be an integer, got True"),
        ({"energy_import_wh": False}, "energy_import_wh must be an integer, got False"),
        ({"energy_import_wh": -1}, f"energy_import_wh -1 is outside 0..{INT64_MAX}"),
        ({"energy_import_wh": 2**63}, f"energy_import_wh {2**63} is outside 0..{INT64_MAX}"),
        # the other integers
        ({"energy_export_wh": -5}, f"energy_export_wh -5 is outside 0..{INT64_MAX}"),
        ({"energy_export_wh": 0.5}, "energy_export_wh must be an integer, got 0.5"),
        ({"power_w": 2**31}, f"power_w {2**31} is outside {-(2**31)}..{2**31 - 1}"),
        ({"power_w": -(2**31) - 1}, f"power_w {-(2**31) - 1} is outside {-(2**31)}..{2**31 - 1}"),
        ({"power_w": 12.5}, "power_w must be an integer, got 12.5"),
        ({"seq": -1}, f"seq -1 is outside 0..{INT64_MAX}"),
        ({"seq": True}, "seq must be an integer, got True"),
        # voltage is a number in 0..100000 V
        ({"voltage_v": 100_000.5}, "voltage_v 100000.5 is outside 0..100000"),
        ({"voltage_v": -0.1}, "voltage_v -0.1 is outside 0..100000"),
        ({"voltage_v": 10**6}, "voltage_v 1000000 is outside 0..100000"),
        ({"voltage_v": "230"}, "voltage_v must be a number, got '230'"),
        ({"voltage_v": True}, "voltage_v must be a number, got True"),
        # relay is "closed" or "open", nothing else
        ({"relay": "on"}, "relay must be 'closed' or 'open', got 'on'"),
        ({"relay": "CLOSED"}, "relay must be 'closed' or 'open', got 'CLOSED'"),
        ({"relay": 1}, "relay must be 'closed' or 'open', got 1"),
        ({"relay": True}, "relay must be 'closed' or 'open', got True"),
        # unknown fields are an error, not ignored
        ({"temperature_c": 21}, "unknown field(s): temperature_c"),
        ({"zeta": 1, "alpha": 2}, "unknown field(s): alpha, zeta"),
        ({"Energy_Import_Wh": 5}, "unknown field(s): Energy_Import_Wh"),
        ({"sent_at": TS}, "unknown field(s): sent_at"),
    ],
)
def test_bad_field_is_rejected_with_reason(fields: dict[str, object], reason: str) -> None:
    assert _reason("m-1", _reading(**fields)) == reason


def test_non_finite_voltage_is_rejected() -> None:
    # Python's json accepts the non-standard NaN / Infinity literals; the range check must still catch them.
    assert _reason("m-1", b'{"ts": "2024-03-01T12:00:00Z", "energy_import_wh": 1, "voltage_v": NaN}') == (
        "voltage_v nan is outside 0..100000"
    )
    assert _reason("m-1", b'{"ts": "2024-03-01T12:00:00Z", "energy_import_wh": 1, "voltage_v": Infinity}') == (
        "voltage_v inf is outside 0..100000"
    )


def test_meter_id_in_payload_must_match_topic() -> None:
    assert _reason("m-1", _reading(meter_id="m-2")) == "meter_id 'm-2' in payload differs from topic 'm-1'"
    assert _reason("m-1", _reading(meter_id="M-1")) == "meter_id 'M-1' in payload differs from topic 'm-1'"
    assert _reason("m-1", _reading(meter_id=1)) == "meter_id 1 in payload differs from topic 'm-1'"


def test_meter_id_in_payload_equal_to_topic_is_accepted() -> None:
    assert decode_meter_reading("m-1", _reading(meter_id="m-1")).meter_id == "m-1"


def test_errors_are_typed() -> None:
    with pytest.raises(PayloadError) as info:
        decode_meter_reading("m-1", b"[]")

    assert isinstance(info.value, ProtocolError)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == info.value.reason == "payload is not a JSON object"


# --------------------------------------------------------------------------- encoding


def test_encode_leaves_unset_fields_out() -> None:
    reading = MeterReading("m-1", TS_VALUE, 5)

    assert encode_meter_reading(reading) == b'{"ts":"2024-03-01T12:00:00+08:00","energy_import_wh":5}'


def test_encode_full_reading() -> None:
    reading = MeterReading(
        "m-1", TS_VALUE, 5, energy_export_wh=6, power_w=-7, voltage_v=231.5, relay=RelayState.CLOSED, seq=9
    )

    assert json.loads(encode_meter_reading(reading)) == {
        "ts": "2024-03-01T12:00:00+08:00",
        "energy_import_wh": 5,
        "energy_export_wh": 6,
        "power_w": -7,
        "voltage_v": 231.5,
        "seq": 9,
        "relay": "closed",
    }


def test_reading_to_object_with_meter_id() -> None:
    reading = MeterReading("m-1", TS_VALUE, 5)

    assert reading_to_object(reading, with_meter_id=True) == {
        "meter_id": "m-1",
        "ts": "2024-03-01T12:00:00+08:00",
        "energy_import_wh": 5,
    }


def test_encode_concentrator_batch_shape() -> None:
    sent_at = datetime(2024, 3, 1, 12, 5, tzinfo=CST)
    payload = encode_concentrator_batch("dcu-7", sent_at, [MeterReading("m-1", TS_VALUE, 5)])

    assert payload == (
        b'{"sent_at":"2024-03-01T12:05:00+08:00",'
        b'"readings":[{"meter_id":"m-1","ts":"2024-03-01T12:00:00+08:00","energy_import_wh":5}]}'
    )


# --------------------------------------------------------------------------- round trips (Hypothesis)

ids = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
# Whole-minute offsets, as real clocks use; st.timezones() adds the second-precision LMT offsets of old dates.
# (Sub-second offsets are left out: CPython 3.11 parses "+00:00:00.000001" back as +00:00.)
fixed_offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
aware_datetimes = st.datetimes(timezones=st.timezones() | fixed_offsets | st.just(UTC))
registers = st.integers(min_value=0, max_value=MAX_REGISTER_WH)
readings = st.builds(
    MeterReading,
    meter_id=ids,
    ts=aware_datetimes,
    energy_import_wh=registers,
    energy_export_wh=st.none() | registers,
    power_w=st.none() | st.integers(min_value=-(2**31), max_value=2**31 - 1),
    voltage_v=st.none() | st.floats(min_value=0.0, max_value=100_000.0, allow_nan=False),
    relay=st.none() | st.sampled_from(RelayState),
    seq=st.none() | registers,
)


def _assert_same_reading(decoded: MeterReading, original: MeterReading) -> None:
    # Only the offset travels on the wire, not the zone name, and PEP 495 makes inter-zone equality of
    # ambiguous local times False: compare the wall time and offset instead of `==` on the datetimes.
    assert decoded.ts.isoformat() == original.ts.isoformat()
    assert decoded.ts.utcoffset() == original.ts.utcoffset()
    assert decoded == dataclasses.replace(original, ts=decoded.ts)


@given(readings)
def test_single_reading_round_trip(reading: MeterReading) -> None:
    decoded = decode_meter_reading(reading.meter_id, encode_meter_reading(reading))

    _assert_same_reading(decoded, reading)


@given(ids, aware_datetimes, st.lists(readings, max_size=20))
def test_concentrator_batch_round_trip(dcu_id: str, sent_at: datetime, batch: list[MeterReading]) -> None:
    decoded = decode_concentrator_batch(dcu_id, encode_concentrator_batch(dcu_id, sent_at, batch))

    assert decoded.dcu_id == dcu_id
    assert decoded.sent_at.isoformat() == sent_at.isoformat()
    assert decoded.rejected == ()
    assert len(decoded.readings) == len(batch)
    for got, sent in zip(decoded.readings, batch, strict=True):
        _assert_same_reading(got, sent)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children),
    max_leaves=10,
)
reading_keys = st.sampled_from(
    ["meter_id", "ts", "energy_import_wh", "energy_export_wh", "power_w", "voltage_v", "relay", "seq"]
)
field_values = json_values | st.sampled_from([TS, "2024-03-01T12:00:00", "m-1", "open", "closed", 0, 2**63])
reading_like = st.dictionaries(reading_keys | st.text(max_size=8), field_values, max_size=9)


@given(st.binary(max_size=200) | reading_like.map(lambda obj: json.dumps(obj).encode()))
def test_decoding_garbage_raises_only_payload_error(payload: bytes) -> None:
    def decode() -> MeterReading | str:
        try:
            return decode_meter_reading("m-1", payload)
        except PayloadError as exc:
            return exc.reason

    outcome = decode()  # anything but PayloadError propagates and fails the test

    if isinstance(outcome, str):
        assert outcome.strip()
    else:
        assert outcome.meter_id == "m-1"


@given(st.lists(reading_like | json_values, max_size=5))
def test_batch_entries_are_either_kept_or_rejected(entries: list[Any]) -> None:
    payload = _json({"sent_at": SENT_AT, "readings": entries})

    batch = decode_concentrator_batch("dcu-1", payload)

    assert len(batch.readings) + len(batch.rejected) == len(entries)
    assert [error.index for error in batch.rejected] == sorted(error.index for error in batch.rejected)
    for error in batch.rejected:
        assert json.dumps(error.raw) == json.dumps(entries[error.index])  # via JSON text: NaN != NaN
        assert error.reason


# --------------------------------------------------------------------------- concentrator batches


def _entry(meter_id: str, energy: object = 100, **extra: object) -> dict[str, object]:
    return {"meter_id": meter_id, "ts": TS, "energy_import_wh": energy, **extra}


def test_batch_keeps_good_entries_and_lists_bad_ones() -> None:
    entries: list[object] = [
        _entry("m-1", 100),
        _entry("m-2", 1.5),
        42,
        {"ts": TS, "energy_import_wh": 1},
        _entry("m 4"),
        _entry("m-5", relay="on"),
        _entry("m-6", 600, temperature_c=20),
        _entry("m-7", 700, ts="2024-03-01T12:00:00"),
        _entry("m-8", 800, voltage_v=230.5, relay="closed"),
    ]
    payload = _json({"sent_at": SENT_AT, "readings": entries})

    batch = decode_concentrator_batch("dcu-1", payload)

    assert batch == ConcentratorBatch(
        dcu_id="dcu-1",
        sent_at=datetime(2024, 3, 1, 12, 5, tzinfo=CST),
        readings=(
            MeterReading("m-1", TS_VALUE, 100),
            MeterReading("m-8", TS_VALUE, 800, voltage_v=230.5, relay=RelayState.CLOSED),
        ),
        rejected=(
            ItemError(1, "energy_import_wh must be an integer, got 1.5", entries[1]),
            ItemError(2, "entry is not a JSON object", 42),
            ItemError(3, "meter_id None does not match [A-Za-z0-9_-]{1,32}", entries[3]),
            ItemError(4, "meter_id 'm 4' does not match [A-Za-z0-9_-]{1,32}", entries[4]),
            ItemError(5, "relay must be 'closed' or 'open', got 'on'", entries[5]),
            ItemError(6, "unknown field(s): temperature_c", entries[6]),
            ItemError(7, "ts '2024-03-01T12:00:00' has no UTC offset (naive time is rejected)", entries[7]),
        ),
    )


@pytest.mark.parametrize(
    ("meter_id", "reason"),
    [
        ("x" * 33, f"meter_id '{'x' * 33}' does not match [A-Za-z0-9_-]{{1,32}}"),
        ("", "meter_id '' does not match [A-Za-z0-9_-]{1,32}"),
        ("a/b", "meter_id 'a/b' does not match [A-Za-z0-9_-]{1,32}"),
        ("+", "meter_id '+' does not match [A-Za-z0-9_-]{1,32}"),
        (7, "meter_id 7 does not match [A-Za-z0-9_-]{1,32}"),
    ],
)
def test_batch_entry_meter_id_is_checked(meter_id: object, reason: str) -> None:
    batch = decode_concentrator_batch(
        "dcu-1", _json({"sent_at": SENT_AT, "readings": [_entry("ok"), {**_entry("x"), "meter_id": meter_id}]})
    )

    assert batch.readings == (MeterReading("ok", TS_VALUE, 100),)
    assert [(e.index, e.reason) for e in batch.rejected] == [(1, reason)]


def test_batch_allows_the_same_meter_twice() -> None:
    # deduplication on (meter, time) is the head-end's job, not the codec's
    batch = decode_concentrator_batch("dcu-1", _json({"sent_at": SENT_AT, "readings": [_entry("m-1"), _entry("m-1")]}))

    assert batch.readings == (MeterReading("m-1", TS_VALUE, 100),) * 2


def test_empty_batch_is_accepted() -> None:
    batch = decode_concentrator_batch("dcu-1", _json({"sent_at": SENT_AT, "readings": []}))

    assert batch == ConcentratorBatch("dcu-1", datetime(2024, 3, 1, 4, 5, tzinfo=UTC), (), ())


def test_batch_of_exactly_the_limit_is_accepted() -> None:
    entries = [_entry(f"m-{i}", i) for i in range(MAX_READINGS_PER_BATCH)]

    batch = decode_concentrator_batch("dcu-1", _json({"sent_at": SENT_AT, "readings": entries}))

    assert MAX_READINGS_PER_BATCH == 1024
    assert len(batch.readings) == 1024
    assert batch.readings[-1] == MeterReading("m-1023", TS_VALUE, 1023)
    assert batch.rejected == ()


def test_batch_over_the_limit_is_rejected_whole() -> None:
    entries = [_entry(f"m-{i}", i) for i in range(MAX_READINGS_PER_BATCH + 1)]

    with pytest.raises(PayloadError) as info:
        decode_concentrator_batch("dcu-1", _json({"sent_at": SENT_AT, "readings": entries}))

    assert info.value.reason == "1025 readings exceed the limit of 1024 a message"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[]", "payload is not a JSON object"),
        (_json({"readings": []}), "sent_at must be an ISO 8601 string"),
        (
            _json({"sent_at": "2024-03-01T12:05:00", "readings": []}),
            "sent_at '2024-03-01T12:05:00' has no UTC offset (naive time is rejected)",
        ),
        (_json({"sent_at": SENT_AT}), "readings must be a list"),
        (_json({"sent_at": SENT_AT, "readings": {"m-1": _entry("m-1")}}), "readings must be a list"),
        (_json({"sent_at": SENT_AT, "readings": None}), "readings must be a list"),
    ],
)
def test_bad_batch_envelope_is_rejected_whole(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        decode_concentrator_batch("dcu-1", payload)

    assert info.value.reason == reason


def test_bad_batch_json_is_rejected() -> None:
    with pytest.raises(PayloadError) as info:
        decode_concentrator_batch("dcu-1", b'{"sent_at": ')

    assert info.value.reason.startswith("payload is not valid JSON: ")


# --------------------------------------------------------------------------- readings.py


def test_reading_types_hold_their_invariants() -> None:
    with pytest.raises(AssertionError):
        MeterReading("m-1", datetime(2024, 3, 1, 12, 0), 5)  # noqa: DTZ001 - the naive time is the point
    with pytest.raises(AssertionError):
        MeterReading("m 1", TS_VALUE, 5)
    with pytest.raises(AssertionError):
        MeterReading("m-1", TS_VALUE, -1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        MeterReading("m-1", TS_VALUE, 5).energy_import_wh = 6  # type: ignore[misc]


def test_relay_state_values() -> None:
    assert [state.value for state in RelayState] == ["closed", "open"]


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("m", True),
        ("A-z_09", True),
        ("x" * 32, True),
        ("x" * 33, False),
        ("", False),
        ("a b", False),
        ("a/b", False),
        ("+", False),
        ("#", False),
        ("m.1", False),
        ("mé", False),
        ("m1\n", False),
        ("１", False),  # fullwidth digit: \d would take it, the contract does not
    ],
)
def test_is_valid_id(value: str, valid: bool) -> None:
    assert is_valid_id(value) is valid


# --------------------------------------------------------------------------- hostile payloads
# A payload must never make the decoder raise anything but PayloadError: ingest records it as a dead letter
# and goes on, where any other exception would stop the worker and bring the message back after every restart.


def test_deeply_nested_json_is_a_payload_error() -> None:
    assert _reason("m-1", b"[" * MAX_METER_PAYLOAD_BYTES) == "payload is not valid JSON: nested too deeply"
    with pytest.raises(PayloadError) as info:
        decode_concentrator_batch("dcu-1", b'{"readings": ' + b"[" * 100_000)
    assert info.value.reason == "payload is not valid JSON: nested too deeply"


def test_overlong_integer_is_a_payload_error() -> None:
    # CPython refuses to convert integers of more than 4300 digits (sys.get_int_max_str_digits) with a ValueError
    entry = b'{"meter_id": "m-1", "ts": "2024-03-01T12:00:00Z", "energy_import_wh": ' + b"1" * 5000 + b"}"

    with pytest.raises(PayloadError) as info:
        decode_concentrator_batch("dcu-1", b'{"sent_at": "%s", "readings": [%s]}' % (SENT_AT.encode(), entry))
    assert info.value.reason.startswith("payload is not valid JSON: ")


def test_unknown_batch_envelope_field_is_rejected() -> None:
    with pytest.raises(PayloadError) as info:
        decode_concentrator_batch("dcu-1", _json({"sent_at": SENT_AT, "readings": [], "dcu": "dcu-1", "alpha": 0}))

    assert info.value.reason == "unknown field(s): alpha, dcu"


def test_a_payload_over_its_size_limit_is_refused_before_it_is_parsed() -> None:
    assert MAX_METER_PAYLOAD_BYTES == 4096
    assert MAX_CONCENTRATOR_PAYLOAD_BYTES == 1_048_576
    at_limit = _reading().ljust(MAX_METER_PAYLOAD_BYTES)  # JSON allows the trailing blanks

    assert decode_meter_reading("m-1", at_limit).energy_import_wh == 1_234_567
    assert _reason("m-1", at_limit + b" ") == "payload of 4097 bytes exceeds the limit of 4096 bytes"
    assert _reason("m-1", b"[" * 100_000) == "payload of 100000 bytes exceeds the limit of 4096 bytes"
    batch = _json({"sent_at": SENT_AT, "readings": [_entry("m-1")]})
    assert decode_concentrator_batch("dcu-1", batch.ljust(MAX_CONCENTRATOR_PAYLOAD_BYTES)).readings
    with pytest.raises(PayloadError) as info:
        decode_concentrator_batch("dcu-1", batch.ljust(MAX_CONCENTRATOR_PAYLOAD_BYTES + 1))
    assert info.value.reason == "payload of 1048577 bytes exceeds the limit of 1048576 bytes"


def test_the_largest_valid_batch_fits_in_the_size_limit() -> None:
    longest = MeterReading(
        "x" * 32,
        datetime(2024, 3, 1, 12, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=-23, minutes=-59))),
        INT64_MAX,
        INT64_MAX,
        -(2**31),
        99_999.99999999999,
        RelayState.CLOSED,
        INT64_MAX,
    )
    compact = encode_concentrator_batch("y" * 32, longest.ts, [longest] * MAX_READINGS_PER_BATCH)
    # room for the blanks of a pretty-printed message as well
    assert len(json.dumps(json.loads(compact), indent=4).encode()) < MAX_CONCENTRATOR_PAYLOAD_BYTES


_HUGE = "\ud800\x00" + "x" * 100_000  # a lone surrogate and NUL, as json.loads gives them from \ud800 and \u0000


def _entry_reason(**fields: object) -> str:
    """The reason the one entry of a batch is rejected for: a valid entry with `fields` changed."""
    batch = decode_concentrator_batch("dcu-1", _json({"sent_at": SENT_AT, "readings": [{**_entry("m-1"), **fields}]}))
    [error] = batch.rejected
    return error.reason


@pytest.mark.parametrize(
    ("fields", "start"),
    [
        ({"ts": _HUGE}, r"ts '\ud800\x00xxx"),
        ({"relay": _HUGE}, r"relay must be 'closed' or 'open', got '\ud800\x00xxx"),
        ({"energy_import_wh": _HUGE}, r"energy_import_wh must be an integer, got '\ud800\x00xxx"),
        ({"voltage_v": _HUGE}, r"voltage_v must be a number, got '\ud800\x00xxx"),
        ({"meter_id": _HUGE}, r"meter_id '\ud800\x00xxx"),
        ({"energy_import_wh": 10**4000}, "energy_import_wh 1000000000"),
        ({"voltage_v": 10**4000}, "voltage_v 1000000000"),
        ({"energy_import_wh": [[[[1]]]]}, "energy_import_wh must be an integer, got a JSON array"),
        ({"relay": {"a": 1}}, "relay must be 'closed' or 'open', got a JSON object"),
        ({"meter_id": ["m-1"]}, "meter_id a JSON array does not match"),
        ({_HUGE: 1}, r"unknown field(s): \ud800"),
        ({f"f{i:03d}" + "y" * 1000: i for i in range(500)}, "unknown field(s): f000yyy"),
    ],
)
def test_a_value_in_a_reason_is_shown_in_a_bounded_length(fields: dict[str, object], start: str) -> None:
    reason = _entry_reason(**fields)

    assert reason.startswith(start), reason[:200]
    assert len(reason) < 500


def test_many_unknown_fields_are_named_up_to_a_limit_and_counted() -> None:
    reason = _entry_reason(**{f"f{i:02d}": i for i in range(30)})

    assert reason == "unknown field(s): " + ", ".join(f"f{i:02d}" for i in range(10)) + " and 20 more"


def test_a_reason_keeps_short_values_whole() -> None:
    fits = "x" * (MAX_REASON_VALUE_CHARS - 2)  # with its quotes
    assert _reason("m-1", _reading(relay=fits)).endswith(repr(fits))
    assert _reason("m-1", _reading(relay=fits + "x")).endswith(f"got '{fits}…")
