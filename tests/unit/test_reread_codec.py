"""The `read_readings` command of the MQTT contract (re-read, 补抄): `protocols.reread_codec`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import PayloadError, ProtocolError, TopicError
from protocols.mqtt_topics import Topic, TopicKind
from protocols.relay_codec import (
    MAX_PAYLOAD_BYTES,
    RelayAction,
    RelayCommandMessage,
    decode_command,
    encode_command,
)
from protocols.reread_codec import (
    MAX_RANGE,
    ReadReadingsCommand,
    decode_device_command,
    decode_read_readings,
    encode_read_readings,
)

ISSUED = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
EXPIRES = datetime(2026, 11, 22, 8, 10, tzinfo=UTC)
FROM = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)
TO = datetime(2026, 11, 21, 16, 0, tzinfo=UTC)
METER_TOPIC = Topic(TopicKind.METER_COMMANDS, "M000001")
DCU_TOPIC = Topic(TopicKind.CONCENTRATOR_COMMANDS, "dcu-7")
ID_REASON = "does not match [A-Za-z0-9:_.-]{1,96}"
ALL_ACTIONS = "'disconnect', 'reconnect', 'read_relay' or 'read_readings'"

meter_ids = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
command_ids = st.from_regex(r"[A-Za-z0-9:_.-]{1,96}", fullmatch=True)
zones = st.just(UTC) | st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
aware_times = st.datetimes(
    min_value=datetime(1, 1, 2),  # noqa: DTZ001 - the bounds of a naive strategy; the values get a zone
    max_value=datetime(9999, 11, 30),  # noqa: DTZ001 - room for a 31-day range and the offsets
    timezones=zones,
)

COMMAND: dict[str, object] = {
    "command_id": "reread:T7:1",
    "action": "read_readings",
    "meter_id": "M000001",
    "from_at": "2026-11-21T00:00:00+08:00",
    "to_at": "2026-11-22T00:00:00+08:00",
    "issued_at": "2026-11-22T08:00:00+00:00",
    "expires_at": "2026-11-22T08:10:00+00:00",
}


def _command(**fields: object) -> bytes:
    """COMMAND as JSON with `fields` changed; the value `...` removes a field."""
    obj = dict(COMMAND)
    for name, value in fields.items():
        if value is ...:
            obj.pop(name, None)
        else:
            obj[name] = value
    return json.dumps(obj).encode()


def _reason(payload: bytes, topic: Topic = METER_TOPIC) -> str:
    with pytest.raises(PayloadError) as info:
        decode_read_readings(topic, payload)
    return info.value.reason


def _decodes_or_refuses(topic: Topic, payload: bytes) -> None:
    """Both decoders either decode `payload` or refuse it with a ProtocolError that gives a reason."""
    for decode in (decode_read_readings, decode_device_command):
        reason = None
        try:
            decode(topic, payload)
        except ProtocolError as exc:
            reason = exc.reason
        assert reason is None or reason.strip()


@st.composite
def rereads(draw: st.DrawFn) -> ReadReadingsCommand:
    from_at = draw(aware_times)
    span = draw(st.timedeltas(min_value=timedelta(microseconds=1), max_value=MAX_RANGE))
    issued_at = draw(aware_times)
    lifetime = draw(st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=30)))
    return ReadReadingsCommand(
        command_id=draw(command_ids),
        meter_id=draw(st.none() | meter_ids),
        from_at=from_at,
        to_at=(from_at + span).astimezone(draw(zones)),
        issued_at=issued_at,
        expires_at=(issued_at + lifetime).astimezone(draw(zones)),
    )


# --------------------------------------------------------------------------- encoding and decoding


def test_spec_examples_decode() -> None:
    # docs/mqtt.md, "Re-read payload": the local day of 21 November in Beijing, of one meter, then of a concentrator
    payload = b"""{
      "command_id": "reread:T20261122-0007:1",
      "action": "read_readings",
      "meter_id": "M000001",
      "from_at": "2026-11-20T16:00:00+00:00",
      "to_at": "2026-11-21T16:00:00+00:00",
      "issued_at": "2026-11-22T08:00:00+00:00",
      "expires_at": "2026-11-22T08:30:00+00:00"
    }"""
    every = (
        b'{"command_id": "reread:T20261122-0008:1", "action": "read_readings", "from_at": "2026-11-20T16:00:00+00:00",'
        b' "to_at": "2026-11-21T16:00:00+00:00", "issued_at": "2026-11-22T08:00:00+00:00",'
        b' "expires_at": "2026-11-22T08:30:00+00:00"}'
    )
    half_hour = ISSUED + timedelta(minutes=30)

    one = decode_read_readings(METER_TOPIC, payload)

    assert one == ReadReadingsCommand("reread:T20261122-0007:1", "M000001", FROM, TO, ISSUED, half_hour)
    assert decode_read_readings(DCU_TOPIC, payload) == one
    assert decode_read_readings(DCU_TOPIC, every) == ReadReadingsCommand(
        "reread:T20261122-0008:1", None, FROM, TO, ISSUED, half_hour
    )
    assert FROM.astimezone(timezone(timedelta(hours=8))).isoformat() == "2026-11-21T00:00:00+08:00"


def test_offsets_other_than_utc_are_kept() -> None:
    command = decode_read_readings(METER_TOPIC, _command())
    assert (command.from_at, command.to_at) == (FROM, TO)
    assert command.from_at.utcoffset() == timedelta(hours=8)


def test_encodes_compact_iso_and_leaves_out_an_absent_meter() -> None:
    one = ReadReadingsCommand("reread:T7:1", "M000001", FROM, TO, ISSUED, EXPIRES)
    every = ReadReadingsCommand("reread:T7:2", None, FROM, TO, ISSUED, EXPIRES)

    assert encode_read_readings(one) == (
        b'{"command_id":"reread:T7:1","action":"read_readings","meter_id":"M000001",'
        b'"from_at":"2026-11-20T16:00:00+00:00","to_at":"2026-11-21T16:00:00+00:00",'
        b'"issued_at":"2026-11-22T08:00:00+00:00","expires_at":"2026-11-22T08:10:00+00:00"}'
    )
    assert b"meter_id" not in encode_read_readings(every)


@given(rereads(), meter_ids)
def test_round_trip(command: ReadReadingsCommand, dcu_id: str) -> None:
    payload = encode_read_readings(command)
    topic = (
        Topic(TopicKind.CONCENTRATOR_COMMANDS, dcu_id)
        if command.meter_id is None
        else Topic(TopicKind.METER_COMMANDS, command.meter_id)
    )

    decoded = decode_read_readings(topic, payload)

    assert decoded == command
    for name in ("from_at", "to_at", "issued_at", "expires_at"):
        assert getattr(decoded, name).utcoffset() == getattr(command, name).utcoffset()
    assert decode_device_command(topic, payload) == command
    assert len(payload) <= MAX_PAYLOAD_BYTES


@given(rereads(), meter_ids)
def test_a_concentrator_takes_any_meter_or_none(command: ReadReadingsCommand, dcu_id: str) -> None:
    topic = Topic(TopicKind.CONCENTRATOR_COMMANDS, dcu_id)
    assert decode_read_readings(topic, encode_read_readings(command)) == command


@given(st.binary(max_size=600) | st.binary(min_size=4000, max_size=5000), st.sampled_from([METER_TOPIC, DCU_TOPIC]))
def test_any_bytes_decode_or_fail_with_a_protocol_error(payload: bytes, topic: Topic) -> None:
    _decodes_or_refuses(topic, payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@given(
    st.dictionaries(
        st.sampled_from([*COMMAND, "action", "priority"]),
        json_values | st.sampled_from([*map(str, COMMAND.values()), "disconnect", "read_relay", "9999-12-31T23:59Z"]),
    ),
    st.booleans(),
    st.sampled_from([METER_TOPIC, DCU_TOPIC]),
)
def test_any_json_object_decodes_or_fails_with_a_protocol_error(
    changes: dict[str, object], keep: bool, topic: Topic
) -> None:
    obj = dict(COMMAND) if keep else {}
    obj.update(changes)
    payload = json.dumps(obj).encode()
    _decodes_or_refuses(topic, payload)


# --------------------------------------------------------------------------- topics and meters


def test_a_concentrator_may_leave_out_the_meter_or_send_null() -> None:
    assert decode_read_readings(DCU_TOPIC, _command(meter_id=...)).meter_id is None
    assert decode_read_readings(DCU_TOPIC, _command(meter_id=None)).meter_id is None
    assert decode_read_readings(DCU_TOPIC, _command(meter_id="M000002")).meter_id == "M000002"


def test_a_meter_topic_needs_its_own_meter() -> None:
    assert _reason(_command(meter_id=...)) == "missing field(s): meter_id"
    assert _reason(_command(meter_id=None)) == "missing field(s): meter_id"
    assert _reason(_command(meter_id="M000002")) == "meter_id 'M000002' in payload differs from topic 'M000001'"


@pytest.mark.parametrize("kind", [TopicKind.METER_READINGS, TopicKind.CONCENTRATOR_READINGS, TopicKind.METER_EVENTS])
def test_another_topic_kind_is_a_topic_error(kind: TopicKind) -> None:
    for decode in (decode_read_readings, decode_device_command):
        with pytest.raises(TopicError) as info:
            decode(Topic(kind, "M000001"), _command())
        assert info.value.reason == f"{kind.value} topic of 'M000001' does not carry commands"


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"priority": 1}, "unknown field(s): priority"),
        ({"relay": "open", "b": 2}, "unknown field(s): b, relay"),
        ({"command_id": ...}, "missing field(s): command_id"),
        ({"from_at": None, "expires_at": ...}, "missing field(s): from_at, expires_at"),
        ({"to_at": None}, "missing field(s): to_at"),
        ({"command_id": 7}, "command_id must be a string, got 7"),
        ({"command_id": "reread T7"}, f"command_id 'reread T7' {ID_REASON}"),
        ({"command_id": "x" * 97}, f"command_id '{'x' * 97}' {ID_REASON}"),
        ({"action": "disconnect"}, "action must be 'read_readings', got 'disconnect'"),
        ({"action": 3}, "action must be a string, got 3"),
        ({"meter_id": "M 1"}, "meter_id 'M 1' does not match [A-Za-z0-9_-]{1,32}"),
        ({"meter_id": 1}, "meter_id must be a string, got 1"),
        (
            {"from_at": "2026-11-21T00:00:00"},
            "from_at '2026-11-21T00:00:00' has no UTC offset (naive time is rejected)",
        ),
        ({"to_at": "tomorrow"}, "to_at 'tomorrow' is not ISO 8601"),
        ({"to_at": 1795334400}, "to_at must be an ISO 8601 string"),
        (
            {"to_at": "2026-11-20T16:00:00Z"},
            "to_at '2026-11-20T16:00:00Z' is not after from_at '2026-11-21T00:00:00+08:00'",
        ),
        (
            {"to_at": "2026-11-20T15:00:00Z"},
            "to_at '2026-11-20T15:00:00Z' is not after from_at '2026-11-21T00:00:00+08:00'",
        ),
        (
            {"to_at": "2026-12-22T00:00:00.000001+08:00"},
            "from_at '2026-11-21T00:00:00+08:00' to to_at '2026-12-22T00:00:00.000001+08:00' is longer than 31 days",
        ),
        ({"issued_at": "soon"}, "issued_at 'soon' is not ISO 8601"),
        (
            {"expires_at": "2026-11-22T08:00:00+00:00"},
            "expires_at '2026-11-22T08:00:00+00:00' is not after issued_at '2026-11-22T08:00:00+00:00'",
        ),
    ],
)
def test_refusals(fields: dict[str, object], reason: str) -> None:
    assert _reason(_command(**fields)) == reason


def test_a_range_of_exactly_31_days_is_taken() -> None:
    command = decode_read_readings(METER_TOPIC, _command(to_at="2026-12-22T00:00:00+08:00"))
    assert command.to_at - command.from_at == MAX_RANGE


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "payload is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"[1, 2]", "payload is not a JSON object"),
        (b"{}", "missing field(s): command_id, action, meter_id, from_at, to_at, issued_at, expires_at"),
        (b'{"a": "' + b"x" * 5000 + b'"}', "payload of 5009 bytes exceeds the limit of 4096 bytes"),
    ],
)
def test_payload_shape_refusals(payload: bytes, reason: str) -> None:
    assert _reason(payload) == reason


def test_on_a_concentrator_topic_the_meter_is_not_required() -> None:
    assert _reason(b"{}", DCU_TOPIC) == "missing field(s): command_id, action, from_at, to_at, issued_at, expires_at"


# --------------------------------------------------------------------------- one decoder for a commands topic


def test_the_device_decoder_takes_relay_commands_too() -> None:
    relay = RelayCommandMessage("relay:A1:3:disconnect", RelayAction.DISCONNECT, "M000001", ISSUED, EXPIRES)
    assert decode_device_command(METER_TOPIC, encode_command(relay)) == relay
    assert decode_device_command(DCU_TOPIC, encode_command(relay)) == relay
    reread = decode_device_command(METER_TOPIC, _command())
    assert isinstance(reread, ReadReadingsCommand)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_command(action="trip"), f"action must be {ALL_ACTIONS}, got 'trip'"),
        (_command(action=["read_readings"]), f"action must be {ALL_ACTIONS}, got a JSON array"),
        (_command(action="a" * 100), f"action must be {ALL_ACTIONS}, got '{'a' * 62}…"),
        # no action: taken for a relay command, whose fields these are not
        (_command(action=...), "unknown field(s): from_at, to_at"),
        (b'{"command_id": "c1"}', "missing field(s): action, meter_id, issued_at, expires_at"),
        # a relay action with a re-read's fields, and a re-read with a relay command's shape
        (_command(action="disconnect"), "unknown field(s): from_at, to_at"),
        (_command(from_at=..., to_at=...), "missing field(s): from_at, to_at"),
        (_command(meter_id="M000002"), "meter_id 'M000002' in payload differs from topic 'M000001'"),
    ],
)
def test_device_decoder_refusals(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        decode_device_command(METER_TOPIC, payload)
    assert info.value.reason == reason


def test_the_relay_decoder_stays_strict_and_says_what_a_reread_is() -> None:
    with pytest.raises(PayloadError) as info:
        decode_command(METER_TOPIC, _command())
    assert info.value.reason == "action 'read_readings' is a re-read, not a relay command"
    # the other decoder of a re-read refuses a relay command by its action
    relay = RelayCommandMessage("relay:A1:3:read_relay", RelayAction.READ_RELAY, "M000001", ISSUED, EXPIRES)
    assert _reason(encode_command(relay)) == "missing field(s): from_at, to_at"


def test_covers_is_half_open() -> None:
    command = ReadReadingsCommand("reread:T7:1", None, FROM, TO, ISSUED, EXPIRES)
    assert command.covers(FROM)
    assert command.covers(TO - timedelta(microseconds=1))
    assert not command.covers(TO)
    assert not command.covers(FROM - timedelta(seconds=1))
