"""Relay commands and meter events of the MQTT contract: `protocols.relay_codec` and its topics."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prepay_engine.account import RelayAction as EngineRelayAction
from prepay_engine.account import command_request_id
from protocols.errors import PayloadError, ProtocolError, TopicError
from protocols.mqtt_topics import (
    COMMAND_FILTERS,
    EVENTS_FILTER,
    Topic,
    TopicKind,
    concentrator_commands_topic,
    meter_commands_topic,
    meter_events_topic,
    parse_topic,
)
from protocols.readings import RelayState
from protocols.relay_codec import (
    COMMAND_ID_MAX_LEN,
    DETAIL_MAX_LEN,
    MAX_PAYLOAD_BYTES,
    CommandResult,
    EventCause,
    MeterEvent,
    RelayAction,
    RelayCommandMessage,
    decode_command,
    decode_event,
    encode_command,
    encode_event,
    is_valid_command_id,
)

CST = timezone(timedelta(hours=8))
ISSUED = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
EXPIRES = datetime(2026, 11, 22, 8, 10, tzinfo=UTC)
METER_TOPIC = Topic(TopicKind.METER_COMMANDS, "M000001")
DCU_TOPIC = Topic(TopicKind.CONCENTRATOR_COMMANDS, "dcu-7")
EVENTS_TOPIC = Topic(TopicKind.METER_EVENTS, "M000001")
ID_REASON = "does not match [A-Za-z0-9:_.-]{1,96}"

meter_ids = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
command_ids = st.from_regex(r"[A-Za-z0-9:_.-]{1,96}", fullmatch=True)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
aware_times = st.datetimes(
    min_value=datetime(1, 1, 2),  # noqa: DTZ001 - the bounds of a naive strategy; the values get a zone
    max_value=datetime(9999, 11, 30),  # noqa: DTZ001 - room for a 30-day lifetime and the offsets
    timezones=st.just(UTC) | offsets,
)
details = st.none() | st.text(max_size=DETAIL_MAX_LEN)


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def _changed(base: dict[str, object], fields: dict[str, object]) -> bytes:
    """`base` as JSON with `fields` changed; the value `...` removes a field."""
    obj = dict(base)
    for name, value in fields.items():
        if value is ...:
            obj.pop(name, None)
        else:
            obj[name] = value
    return _json(obj)


COMMAND: dict[str, object] = {
    "command_id": "relay:A1:3:disconnect",
    "action": "disconnect",
    "meter_id": "M000001",
    "issued_at": "2026-11-22T08:00:00+00:00",
    "expires_at": "2026-11-22T08:10:00+00:00",
}
ANSWER: dict[str, object] = {
    "command_id": "relay:A1:3:disconnect",
    "result": "executed",
    "relay": "open",
    "ts": "2026-11-22T08:00:02+00:00",
}
SPONTANEOUS: dict[str, object] = {"cause": "button_pressed", "relay": "closed", "ts": "2026-11-22T09:12:00+00:00"}


def _command(**fields: object) -> bytes:
    return _changed(COMMAND, fields)


def _answer(**fields: object) -> bytes:
    return _changed(ANSWER, fields)


def _spontaneous(**fields: object) -> bytes:
    return _changed(SPONTANEOUS, fields)


def _command_reason(payload: bytes, topic: Topic = METER_TOPIC) -> str:
    with pytest.raises(PayloadError) as info:
        decode_command(topic, payload)
    return info.value.reason


def _event_reason(payload: bytes) -> str:
    with pytest.raises(PayloadError) as info:
        decode_event(EVENTS_TOPIC, payload)
    return info.value.reason


@st.composite
def commands(draw: st.DrawFn) -> RelayCommandMessage:
    issued_at = draw(aware_times)
    lifetime = draw(st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=30)))
    expires_at = (issued_at + lifetime).astimezone(draw(st.just(UTC) | offsets))
    return RelayCommandMessage(
        command_id=draw(command_ids),
        action=draw(st.sampled_from(RelayAction)),
        meter_id=draw(meter_ids),
        issued_at=issued_at,
        expires_at=expires_at,
    )


@st.composite
def events(draw: st.DrawFn) -> MeterEvent:
    answers = draw(st.booleans())
    return MeterEvent(
        meter_id=draw(meter_ids),
        relay=draw(st.sampled_from(RelayState)),
        ts=draw(aware_times),
        command_id=draw(command_ids) if answers else None,
        result=draw(st.sampled_from(CommandResult)) if answers else None,
        ready_for_reconnection=draw(st.booleans()),
        cause=None if answers else draw(st.sampled_from(EventCause)),
        detail=draw(details),
    )


# --------------------------------------------------------------------------- topics


def test_topic_builders() -> None:
    assert meter_commands_topic("M000001") == "meters/M000001/commands"
    assert concentrator_commands_topic("dcu-7") == "concentrators/dcu-7/commands"
    assert meter_events_topic("M000001") == "meters/M000001/events"


def test_filters() -> None:
    assert COMMAND_FILTERS == ("meters/+/commands", "concentrators/+/commands")
    assert EVENTS_FILTER == "meters/+/events"


@given(meter_ids)
def test_topic_builders_round_trip(device_id: str) -> None:
    assert parse_topic(meter_commands_topic(device_id)) == Topic(TopicKind.METER_COMMANDS, device_id)
    assert parse_topic(concentrator_commands_topic(device_id)) == Topic(TopicKind.CONCENTRATOR_COMMANDS, device_id)
    assert parse_topic(meter_events_topic(device_id)) == Topic(TopicKind.METER_EVENTS, device_id)


# --------------------------------------------------------------------------- enums and ids


def test_enum_values() -> None:
    assert [a.value for a in RelayAction] == ["disconnect", "reconnect", "read_relay"]
    assert [r.value for r in CommandResult] == ["executed", "rejected", "failed"]
    assert [c.value for c in EventCause] == ["button_pressed", "local_operation", "power_restored"]
    assert (COMMAND_ID_MAX_LEN, DETAIL_MAX_LEN, MAX_PAYLOAD_BYTES) == (96, 256, 4096)


@pytest.mark.parametrize(
    "command_id",
    ["relay:A1:3:disconnect", "a", "0", ":", ".", "-", "_", "x" * 96, "a.b-c_d:E9", "relay:A-1:1:read_relay"],
)
def test_valid_command_ids(command_id: str) -> None:
    assert is_valid_command_id(command_id)


@pytest.mark.parametrize(
    "command_id",
    ["", "x" * 97, "a b", " a", "a ", "a/b", "a+b", "a#b", "a,b", "a;b", "a\n", "\n", "é", "电表1", "a\x00", "a@b"],
)
def test_invalid_command_ids(command_id: str) -> None:
    assert not is_valid_command_id(command_id)


@given(command_ids)
def test_every_id_of_the_charset_is_valid(command_id: str) -> None:
    assert is_valid_command_id(command_id)


@given(
    st.text(max_size=100).filter(
        lambda s: not (1 <= len(s) <= 96 and all(c.isascii() and (c.isalnum() or c in ":_.-") for c in s))
    )
)
def test_any_other_id_is_invalid(command_id: str) -> None:
    assert not is_valid_command_id(command_id)


@given(meter_ids, st.integers(min_value=0, max_value=2**63 - 1), st.sampled_from(EngineRelayAction))
def test_the_engines_command_ids_fit_the_wire(account_id: str, sequence: int, action: EngineRelayAction) -> None:
    assert is_valid_command_id(command_request_id(account_id, sequence, action))


# --------------------------------------------------------------------------- commands


def test_spec_command_example_decodes() -> None:
    payload = (
        b'{"command_id": "relay:A1:3:disconnect", "action": "disconnect", "meter_id": "M000001",'
        b' "issued_at": "2026-11-22T08:00:00+00:00", "expires_at": "2026-11-22T08:10:00+00:00"}'
    )

    message = decode_command(METER_TOPIC, payload)

    assert message == RelayCommandMessage("relay:A1:3:disconnect", RelayAction.DISCONNECT, "M000001", ISSUED, EXPIRES)
    assert message.action is RelayAction.DISCONNECT
    assert message.issued_at.utcoffset() == timedelta(0)


def test_command_encodes_compact_utc_iso() -> None:
    message = RelayCommandMessage("relay:A1:3:disconnect", RelayAction.DISCONNECT, "M000001", ISSUED, EXPIRES)

    assert encode_command(message) == (
        b'{"command_id":"relay:A1:3:disconnect","action":"disconnect","meter_id":"M000001",'
        b'"issued_at":"2026-11-22T08:00:00+00:00","expires_at":"2026-11-22T08:10:00+00:00"}'
    )


@given(commands())
def test_command_round_trip(message: RelayCommandMessage) -> None:
    payload = encode_command(message)
    decoded = decode_command(Topic(TopicKind.METER_COMMANDS, message.meter_id), payload)

    assert decoded == message
    assert decoded.issued_at.utcoffset() == message.issued_at.utcoffset()
    assert decoded.expires_at.utcoffset() == message.expires_at.utcoffset()
    assert len(payload) <= MAX_PAYLOAD_BYTES


@given(commands(), meter_ids)
def test_concentrator_topic_accepts_any_meter(message: RelayCommandMessage, dcu_id: str) -> None:
    assert decode_command(Topic(TopicKind.CONCENTRATOR_COMMANDS, dcu_id), encode_command(message)) == message


def test_concentrator_topic_with_a_different_meter_id() -> None:
    message = decode_command(DCU_TOPIC, _command(meter_id="M000002"))

    assert message.meter_id == "M000002"


def test_meter_topic_with_a_different_meter_id_is_refused() -> None:
    assert _command_reason(_command(meter_id="M000002")) == "meter_id 'M000002' in payload differs from topic 'M000001'"


@pytest.mark.parametrize("action", list(RelayAction))
def test_every_action_decodes(action: RelayAction) -> None:
    assert decode_command(METER_TOPIC, _command(action=action.value)).action is action


def test_other_offsets_are_kept() -> None:
    message = decode_command(
        METER_TOPIC, _command(issued_at="2026-11-22T16:00:00+08:00", expires_at="2026-11-22T08:10:00Z")
    )

    assert message.issued_at == ISSUED
    assert message.issued_at.utcoffset() == timedelta(hours=8)
    assert message.expires_at == EXPIRES


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"priority": 1}, "unknown field(s): priority"),
        ({"b": 1, "a": 2}, "unknown field(s): a, b"),
        ({"command_id": ...}, "missing field(s): command_id"),
        ({"issued_at": ..., "action": ...}, "missing field(s): action, issued_at"),
        ({"meter_id": None}, "missing field(s): meter_id"),
        ({"command_id": 7}, "command_id must be a string, got 7"),
        ({"command_id": True}, "command_id must be a string, got True"),
        ({"command_id": ["a"]}, "command_id must be a string, got ['a']"),
        ({"command_id": ""}, f"command_id '' {ID_REASON}"),
        ({"command_id": "x" * 97}, f"command_id '{'x' * 97}' {ID_REASON}"),
        ({"command_id": "relay A1"}, f"command_id 'relay A1' {ID_REASON}"),
        ({"command_id": "relay/A1"}, f"command_id 'relay/A1' {ID_REASON}"),
        ({"action": "trip"}, "action must be 'disconnect', 'reconnect' or 'read_relay', got 'trip'"),
        ({"action": "Disconnect"}, "action must be 'disconnect', 'reconnect' or 'read_relay', got 'Disconnect'"),
        ({"action": 1}, "action must be 'disconnect', 'reconnect' or 'read_relay', got 1"),
        ({"action": ["disconnect"]}, "action must be 'disconnect', 'reconnect' or 'read_relay', got ['disconnect']"),
        ({"meter_id": True}, "meter_id must be a string, got True"),
        ({"meter_id": "M 1"}, "meter_id 'M 1' does not match [A-Za-z0-9_-]{1,32}"),
        ({"meter_id": "M:1"}, "meter_id 'M:1' does not match [A-Za-z0-9_-]{1,32}"),
        (
            {"issued_at": "2026-11-22T08:00:00"},
            "issued_at '2026-11-22T08:00:00' has no UTC offset (naive time is rejected)",
        ),
        ({"expires_at": "2026-11-22"}, "expires_at '2026-11-22' has no UTC offset (naive time is rejected)"),
        ({"issued_at": "soon"}, "issued_at 'soon' is not ISO 8601"),
        ({"expires_at": 1795334400}, "expires_at must be an ISO 8601 string"),
        ({"expires_at": False}, "expires_at must be an ISO 8601 string"),
        (
            {"expires_at": "2026-11-22T08:00:00+00:00"},
            "expires_at '2026-11-22T08:00:00+00:00' is not after issued_at '2026-11-22T08:00:00+00:00'",
        ),
        (
            {"expires_at": "2026-11-22T15:59:59+08:00"},
            "expires_at '2026-11-22T15:59:59+08:00' is not after issued_at '2026-11-22T08:00:00+00:00'",
        ),
    ],
)
def test_command_refusals(fields: dict[str, object], reason: str) -> None:
    assert _command_reason(_command(**fields)) == reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "payload is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (b'{"command_id": ', "payload is not valid JSON: Expecting value: line 1 column 16 (char 15)"),
        (b"[1, 2]", "payload is not a JSON object"),
        (b'"disconnect"', "payload is not a JSON object"),
        (b"null", "payload is not a JSON object"),
        (b"{}", "missing field(s): command_id, action, meter_id, issued_at, expires_at"),
    ],
)
def test_command_payload_shape_refusals(payload: bytes, reason: str) -> None:
    assert _command_reason(payload) == reason


def test_invalid_utf8_is_refused() -> None:
    assert _command_reason(b'{"command_id": "\xff"}').startswith("payload is not valid JSON: ")


@pytest.mark.parametrize("kind", [TopicKind.METER_READINGS, TopicKind.CONCENTRATOR_READINGS, TopicKind.METER_EVENTS])
def test_command_on_another_topic_kind_is_a_topic_error(kind: TopicKind) -> None:
    with pytest.raises(TopicError) as info:
        decode_command(Topic(kind, "M000001"), _command())

    assert info.value.reason == f"{kind.value} topic of 'M000001' does not carry relay commands"


# --------------------------------------------------------------------------- events


def test_spec_answer_example_decodes() -> None:
    payload = (
        b'{"command_id": "relay:A1:3:disconnect", "result": "executed", "relay": "open",'
        b' "ts": "2026-11-22T08:00:02+00:00"}'
    )

    event = decode_event(EVENTS_TOPIC, payload)

    assert event == MeterEvent(
        meter_id="M000001",
        relay=RelayState.OPEN,
        ts=datetime(2026, 11, 22, 8, 0, 2, tzinfo=UTC),
        command_id="relay:A1:3:disconnect",
        result=CommandResult.EXECUTED,
    )
    assert event.ready_for_reconnection is False
    assert event.cause is None
    assert event.detail is None


def test_spec_spontaneous_example_decodes() -> None:
    payload = b'{"cause": "button_pressed", "relay": "closed", "ts": "2026-11-22T09:12:00+00:00"}'

    event = decode_event(EVENTS_TOPIC, payload)

    assert event == MeterEvent(
        meter_id="M000001",
        relay=RelayState.CLOSED,
        ts=datetime(2026, 11, 22, 9, 12, tzinfo=UTC),
        cause=EventCause.BUTTON_PRESSED,
    )


def test_reconnect_allowed_answer() -> None:
    event = decode_event(
        EVENTS_TOPIC, _answer(command_id="relay:A1:4:reconnect", ready_for_reconnection=True, relay="open")
    )

    assert event.result is CommandResult.EXECUTED
    assert event.relay is RelayState.OPEN
    assert event.ready_for_reconnection is True


def test_rejected_answer_with_detail() -> None:
    event = decode_event(EVENTS_TOPIC, _answer(result="rejected", detail="expired", relay="closed"))

    assert event.result is CommandResult.REJECTED
    assert event.detail == "expired"


def test_null_optional_fields_are_absent() -> None:
    event = decode_event(
        EVENTS_TOPIC, _spontaneous(command_id=None, result=None, ready_for_reconnection=None, detail=None)
    )

    assert event == decode_event(EVENTS_TOPIC, _spontaneous())
    assert event.ready_for_reconnection is False


def test_event_encodes_compact_without_meter_id() -> None:
    answer = MeterEvent(
        meter_id="M000001",
        relay=RelayState.OPEN,
        ts=datetime(2026, 11, 22, 8, 0, 2, tzinfo=UTC),
        command_id="relay:A1:4:reconnect",
        result=CommandResult.EXECUTED,
        ready_for_reconnection=True,
    )
    spontaneous = MeterEvent(
        meter_id="M000001",
        relay=RelayState.CLOSED,
        ts=datetime(2026, 11, 22, 17, 12, tzinfo=CST),
        cause=EventCause.BUTTON_PRESSED,
    )

    assert encode_event(answer) == (
        b'{"command_id":"relay:A1:4:reconnect","result":"executed","relay":"open",'
        b'"ready_for_reconnection":true,"ts":"2026-11-22T08:00:02+00:00"}'
    )
    assert encode_event(spontaneous) == b'{"cause":"button_pressed","relay":"closed","ts":"2026-11-22T17:12:00+08:00"}'


@given(events())
def test_event_round_trip(event: MeterEvent) -> None:
    payload = encode_event(event)
    decoded = decode_event(Topic(TopicKind.METER_EVENTS, event.meter_id), payload)

    assert decoded == event
    assert decoded.ts.utcoffset() == event.ts.utcoffset()
    assert "meter_id" not in json.loads(payload)


@given(
    st.text(
        alphabet=st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF),
        min_size=DETAIL_MAX_LEN,
        max_size=DETAIL_MAX_LEN,
    )
)
def test_largest_event_fits_the_limit(detail: str) -> None:
    event = MeterEvent(
        meter_id="x" * 32,
        relay=RelayState.OPEN,
        ts=datetime(2026, 11, 22, 8, 0, 0, 123456, tzinfo=timezone(timedelta(hours=-9, minutes=-30, seconds=-15))),
        command_id="x" * COMMAND_ID_MAX_LEN,
        result=CommandResult.FAILED,
        ready_for_reconnection=True,
        detail=detail,
    )

    payload = encode_event(event)

    assert len(payload) <= MAX_PAYLOAD_BYTES
    assert decode_event(Topic(TopicKind.METER_EVENTS, event.meter_id), payload) == event


def test_detail_in_chinese_round_trips() -> None:
    event = decode_event(EVENTS_TOPIC, _answer(result="rejected", detail="已过期"))

    assert event.detail == "已过期"
    assert decode_event(EVENTS_TOPIC, encode_event(event)) == event


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_answer(meter_id="M000001"), "unknown field(s): meter_id"),
        (_answer(temperature_c=21), "unknown field(s): temperature_c"),
        (_answer(relay=...), "missing field(s): relay"),
        (_answer(relay=..., ts=...), "missing field(s): relay, ts"),
        (_answer(ts=None), "missing field(s): ts"),
        (_answer(relay="on"), "relay must be 'closed' or 'open', got 'on'"),
        (_answer(relay="OPEN"), "relay must be 'closed' or 'open', got 'OPEN'"),
        (_answer(relay=False), "relay must be 'closed' or 'open', got False"),
        (_answer(ts="2026-11-22T08:00:02"), "ts '2026-11-22T08:00:02' has no UTC offset (naive time is rejected)"),
        (_answer(ts="later"), "ts 'later' is not ISO 8601"),
        (_answer(ts=1795334402), "ts must be an ISO 8601 string"),
        (_answer(command_id=3), "command_id must be a string, got 3"),
        (_answer(command_id="a b"), f"command_id 'a b' {ID_REASON}"),
        (_answer(command_id="x" * 97), f"command_id '{'x' * 97}' {ID_REASON}"),
        (_answer(result="ok"), "result must be 'executed', 'rejected' or 'failed', got 'ok'"),
        (_answer(result=True), "result must be 'executed', 'rejected' or 'failed', got True"),
        (
            _spontaneous(cause="tamper"),
            "cause must be 'button_pressed', 'local_operation' or 'power_restored', got 'tamper'",
        ),
        (_answer(ready_for_reconnection="true"), "ready_for_reconnection must be true or false, got 'true'"),
        (_answer(ready_for_reconnection=1), "ready_for_reconnection must be true or false, got 1"),
        (_answer(ready_for_reconnection=0), "ready_for_reconnection must be true or false, got 0"),
        (_answer(detail=5), "detail must be a string, got 5"),
        (_answer(detail=True), "detail must be a string, got True"),
        (_answer(detail="x" * 257), "detail of 257 characters exceeds the limit of 256"),
        (_answer(result=...), "command_id without result: an answer to a command needs both"),
        (_answer(result=None), "command_id without result: an answer to a command needs both"),
        (_spontaneous(result="executed"), "result without command_id: an answer to a command needs both"),
        (_answer(command_id=...), "result without command_id: an answer to a command needs both"),
        (_answer(cause="button_pressed"), "cause with command_id: an answer to a command has no cause"),
        (_spontaneous(cause=...), "cause is required when there is no command_id"),
        (_spontaneous(cause=None), "cause is required when there is no command_id"),
        (b"[]", "payload is not a JSON object"),
        (
            b"{",
            "payload is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
    ],
)
def test_event_refusals(payload: bytes, reason: str) -> None:
    assert _event_reason(payload) == reason


def test_detail_at_the_limit_is_accepted() -> None:
    assert decode_event(EVENTS_TOPIC, _answer(detail="x" * 256)).detail == "x" * 256


def test_detail_with_a_lone_surrogate_is_refused() -> None:
    payload = b'{"cause": "local_operation", "relay": "open", "ts": "2026-11-22T09:12:00+00:00", "detail": "\\ud800"}'

    assert _event_reason(payload) == "detail is not valid Unicode: it holds a lone surrogate"


@pytest.mark.parametrize(
    "kind",
    [
        TopicKind.METER_READINGS,
        TopicKind.CONCENTRATOR_READINGS,
        TopicKind.METER_COMMANDS,
        TopicKind.CONCENTRATOR_COMMANDS,
    ],
)
def test_event_on_another_topic_kind_is_a_topic_error(kind: TopicKind) -> None:
    with pytest.raises(TopicError) as info:
        decode_event(Topic(kind, "M000001"), _answer())

    assert info.value.reason == f"{kind.value} topic of 'M000001' does not carry meter events"


def test_event_takes_its_meter_from_the_topic() -> None:
    assert decode_event(Topic(TopicKind.METER_EVENTS, "M000009"), _answer()).meter_id == "M000009"


# --------------------------------------------------------------------------- size limit


def _padded(payload: bytes, size: int) -> bytes:
    """`payload` with spaces before its closing brace, `size` bytes long."""
    return payload[:-1] + b" " * (size - len(payload)) + b"}"


def test_payload_at_the_limit_is_accepted() -> None:
    command = _padded(_command(), MAX_PAYLOAD_BYTES)
    event = _padded(_answer(), MAX_PAYLOAD_BYTES)

    assert len(command) == len(event) == MAX_PAYLOAD_BYTES
    assert decode_command(METER_TOPIC, command).command_id == "relay:A1:3:disconnect"
    assert decode_event(EVENTS_TOPIC, event).result is CommandResult.EXECUTED


def test_payload_over_the_limit_is_refused() -> None:
    reason = "payload of 4097 bytes exceeds the limit of 4096 bytes"

    assert _command_reason(_padded(_command(), MAX_PAYLOAD_BYTES + 1)) == reason
    assert _event_reason(_padded(_answer(), MAX_PAYLOAD_BYTES + 1)) == reason


def test_size_is_checked_before_parsing() -> None:
    assert _event_reason(b"x" * 10_000) == "payload of 10000 bytes exceeds the limit of 4096 bytes"


# --------------------------------------------------------------------------- the types themselves


def test_errors_are_protocol_errors() -> None:
    with pytest.raises(PayloadError) as info:
        decode_event(EVENTS_TOPIC, b"[]")

    assert isinstance(info.value, ProtocolError)
    assert str(info.value) == info.value.reason


def test_messages_are_frozen() -> None:
    message = RelayCommandMessage("c-1", RelayAction.READ_RELAY, "M000001", ISSUED, EXPIRES)
    event = MeterEvent("M000001", RelayState.OPEN, ISSUED, cause=EventCause.POWER_RESTORED)

    with pytest.raises(dataclasses.FrozenInstanceError):
        message.action = RelayAction.RECONNECT  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.relay = RelayState.CLOSED  # type: ignore[misc]


@pytest.mark.parametrize(
    "fields",
    [
        {"command_id": "a b"},
        {"command_id": ""},
        {"meter_id": "M 1"},
        {"issued_at": datetime(2026, 11, 22, 8, 0)},  # noqa: DTZ001 - a naive time is the point
        {"expires_at": datetime(2026, 11, 22, 8, 10)},  # noqa: DTZ001
        {"expires_at": ISSUED},
        {"expires_at": ISSUED - timedelta(seconds=1)},
    ],
)
def test_command_invariants(fields: dict[str, object]) -> None:
    valid: dict[str, object] = {
        "command_id": "c-1",
        "action": RelayAction.DISCONNECT,
        "meter_id": "M000001",
        "issued_at": ISSUED,
        "expires_at": EXPIRES,
    }
    with pytest.raises(AssertionError):
        RelayCommandMessage(**(valid | fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        {"command_id": "c-1"},  # no result
        {"result": CommandResult.EXECUTED},  # no command_id
        {"cause": EventCause.BUTTON_PRESSED, "command_id": "c-1", "result": CommandResult.EXECUTED},
        {"cause": None},  # neither command nor cause
        {"detail": "x" * 257},
        {"detail": "\ud800"},
        {"meter_id": "M/1"},
        {"ts": datetime(2026, 11, 22, 8, 0)},  # noqa: DTZ001 - a naive time is the point
        {"command_id": "a b", "result": CommandResult.EXECUTED, "cause": None},
    ],
)
def test_event_invariants(fields: dict[str, object]) -> None:
    valid: dict[str, object] = {
        "meter_id": "M000001",
        "relay": RelayState.OPEN,
        "ts": ISSUED,
        "cause": EventCause.LOCAL_OPERATION,
    }
    with pytest.raises(AssertionError):
        MeterEvent(**(valid | fields))  # type: ignore[arg-type]
