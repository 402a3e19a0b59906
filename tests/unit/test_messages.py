"""`headend.ingest.messages`: raw MQTT messages into sourced readings and dead letters."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headend.ingest.messages import (
    DeadLetter,
    Decoded,
    InboundMessage,
    SourcedReading,
    decode_message,
    reading_payload,
)
from protocols.mqtt_codec import encode_meter_reading
from protocols.readings import ConcentratorBatch, ItemError, MeterReading, RelayState

CST = timezone(timedelta(hours=8))
RECEIVED = datetime(2026, 11, 20, 4, 1, tzinfo=UTC)
TS = datetime(2026, 11, 20, 12, 0, tzinfo=CST)
TS_TEXT = "2026-11-20T12:00:00+08:00"
SENT_AT = "2026-11-20T12:01:00+08:00"


def _decode(topic: str, payload: bytes) -> Decoded:
    decoded = Decoded()
    decode_message(InboundMessage(topic, payload, RECEIVED, mid=7, qos=1), decoded)
    return decoded


def _entry(meter_id: str, energy: object = 1_000) -> dict[str, object]:
    return {"meter_id": meter_id, "ts": TS_TEXT, "energy_import_wh": energy}


def _batch(entries: list[object]) -> bytes:
    return json.dumps({"sent_at": SENT_AT, "readings": entries}).encode()


# --------------------------------------------------------------------------- single meters


def test_meter_topic_gives_one_reading_with_its_raw_payload() -> None:
    reading = MeterReading("m-1", TS, 1_234_567, power_w=850, relay=RelayState.CLOSED)
    payload = encode_meter_reading(reading)
    decoded = _decode("meters/m-1/readings", payload)
    assert decoded.readings == [SourcedReading(reading, "mqtt:meter", "meters/m-1/readings", RECEIVED, None, payload)]
    assert decoded.dead_letters == []


def test_meter_payload_that_does_not_decode_is_one_dead_letter_keeping_the_bytes() -> None:
    decoded = _decode("meters/m-1/readings", b"{not json")
    assert decoded.readings == []
    [dead] = decoded.dead_letters
    assert dead.topic == "meters/m-1/readings"
    assert dead.payload == b"{not json"
    assert dead.reason.startswith("payload is not valid JSON")
    assert dead.received_at == RECEIVED
    assert dead.item_index is None


def test_meter_id_in_payload_must_match_the_topic() -> None:
    payload = json.dumps(_entry("m-2")).encode()
    [dead] = _decode("meters/m-1/readings", payload).dead_letters
    assert dead.reason == "meter_id 'm-2' in payload differs from topic 'm-1'"
    assert dead.payload == payload


# --------------------------------------------------------------------------- concentrator batches


def test_batch_readings_keep_their_original_index_around_a_bad_entry() -> None:
    entries: list[object] = [_entry("m-0"), _entry("m-1", "lots"), _entry("m-2"), _entry("m-3")]
    decoded = _decode("concentrators/dcu-7/readings", _batch(entries))
    assert [(r.reading.meter_id, r.item_index) for r in decoded.readings] == [("m-0", 0), ("m-2", 2), ("m-3", 3)]
    for item in decoded.readings:
        assert item.source == "mqtt:dcu:dcu-7"
        assert item.topic == "concentrators/dcu-7/readings"
        assert item.received_at == RECEIVED
        assert item.raw == b""
        assert item.reading == MeterReading(item.reading.meter_id, TS, 1_000)
    [dead] = decoded.dead_letters
    assert dead == DeadLetter(
        "concentrators/dcu-7/readings",
        dead.payload,
        "energy_import_wh must be an integer, got 'lots'",
        RECEIVED,
        1,
    )
    assert json.loads(dead.payload) == _entry("m-1", "lots")


def test_several_bad_entries_each_become_a_dead_letter_with_their_index() -> None:
    entries: list[object] = ["not an object", _entry("m-1"), _entry("bad id!"), _entry("m-3"), _entry("m-4", -1)]
    decoded = _decode("concentrators/dcu-7/readings", _batch(entries))
    assert [(r.reading.meter_id, r.item_index) for r in decoded.readings] == [("m-1", 1), ("m-3", 3)]
    assert [(d.item_index, d.reason) for d in decoded.dead_letters] == [
        (0, "entry is not a JSON object"),
        (2, "meter_id 'bad id!' does not match [A-Za-z0-9_-]{1,32}"),
        (4, "energy_import_wh -1 is outside 0..9223372036854775807"),
    ]
    assert [json.loads(d.payload) for d in decoded.dead_letters] == [entries[0], entries[2], entries[4]]


def test_non_ascii_in_a_bad_entry_is_kept_as_utf8() -> None:
    entry = {**_entry("m-0"), "备注": "坏"}
    [dead] = _decode("concentrators/dcu-7/readings", _batch([entry])).dead_letters
    assert "备注".encode() in dead.payload
    assert json.loads(dead.payload) == entry


def test_a_batch_that_does_not_decode_as_a_whole_is_one_dead_letter() -> None:
    payload = json.dumps({"readings": [_entry("m-0")]}).encode()  # no sent_at
    decoded = _decode("concentrators/dcu-7/readings", payload)
    assert decoded.readings == []
    assert decoded.dead_letters == [
        DeadLetter("concentrators/dcu-7/readings", payload, "sent_at must be an ISO 8601 string", RECEIVED, None)
    ]


@given(st.lists(st.booleans(), max_size=40))
def test_batch_indexes_follow_the_message_for_any_mix_of_good_and_bad(good_flags: list[bool]) -> None:
    entries: list[object] = [_entry(f"m-{i}") if good else _entry(f"m-{i}", "x") for i, good in enumerate(good_flags)]
    decoded = _decode("concentrators/dcu-7/readings", _batch(entries))
    good_positions = [i for i, good in enumerate(good_flags) if good]
    bad_positions = [i for i, good in enumerate(good_flags) if not good]
    assert [r.item_index for r in decoded.readings] == good_positions
    assert [r.reading.meter_id for r in decoded.readings] == [f"m-{i}" for i in good_positions]
    assert [d.item_index for d in decoded.dead_letters] == bad_positions
    assert [json.loads(d.payload)["meter_id"] for d in decoded.dead_letters] == [f"m-{i}" for i in bad_positions]


# --------------------------------------------------------------------------- topics that are not ingested


@pytest.mark.parametrize(
    ("topic", "kind"),
    [
        ("meters/m-1/commands", "meter_commands"),
        ("concentrators/dcu-1/commands", "concentrator_commands"),
        ("meters/m-1/events", "meter_events"),
    ],
)
def test_contract_topics_that_are_not_ingested_become_dead_letters(topic: str, kind: str) -> None:
    decoded = _decode(topic, b'{"command": "disconnect"}')
    assert decoded.readings == []
    assert decoded.dead_letters == [
        DeadLetter(topic, b'{"command": "disconnect"}', f"topic kind {kind} is not ingested", RECEIVED, None)
    ]


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("meters/m-1/status", "topic 'meters/m-1/status' is not part of MQTT contract v1"),
        ("gateways/g-1/readings", "topic 'gateways/g-1/readings' is not part of MQTT contract v1"),
        ("meters/m-1", "topic 'meters/m-1' is not of the form <kind>/<id>/<channel>"),
        ("meters/m-1/readings/extra", "topic 'meters/m-1/readings/extra' is not of the form <kind>/<id>/<channel>"),
        ("meters/m 1/readings", "device id 'm 1' does not match [A-Za-z0-9_-]{1,32}"),
    ],
)
def test_unknown_topics_become_dead_letters_with_the_reason(topic: str, reason: str) -> None:
    payload = json.dumps({"ts": TS_TEXT, "energy_import_wh": 1}).encode()
    decoded = _decode(topic, payload)
    assert decoded.readings == []
    assert decoded.dead_letters == [DeadLetter(topic, payload, reason, RECEIVED, None)]


def test_messages_accumulate_into_the_same_decoded() -> None:
    decoded = Decoded()
    good = encode_meter_reading(MeterReading("m-1", TS, 5))
    for topic, payload in [
        ("meters/m-1/readings", good),
        ("meters/m-1/events", b"{}"),
        ("concentrators/dcu-1/readings", _batch([_entry("m-2"), _entry("m-3", None)])),
    ]:
        decode_message(InboundMessage(topic, payload, RECEIVED), decoded)
    assert [(r.reading.meter_id, r.source) for r in decoded.readings] == [
        ("m-1", "mqtt:meter"),
        ("m-2", "mqtt:dcu:dcu-1"),
    ]
    assert [(d.topic, d.item_index) for d in decoded.dead_letters] == [
        ("meters/m-1/events", None),
        ("concentrators/dcu-1/readings", 1),
    ]
    assert decoded.dead_letters[1].reason == "energy_import_wh is required"


# --------------------------------------------------------------------------- reading_payload


def test_reading_payload_of_a_single_meter_message_is_the_message() -> None:
    raw = b'{"ts":"2026-11-20T12:00:00+08:00","energy_import_wh":5,"power_w":1}'
    item = SourcedReading(
        MeterReading("m-1", TS, 5, power_w=1), "mqtt:meter", "meters/m-1/readings", RECEIVED, None, raw
    )
    assert reading_payload(item) == raw


def test_reading_payload_of_a_batch_entry_is_that_entry_with_its_meter_id() -> None:
    reading = MeterReading("m-2", TS, 7, energy_export_wh=3, voltage_v=229.5, relay=RelayState.OPEN, seq=9)
    item = SourcedReading(reading, "mqtt:dcu:dcu-1", "concentrators/dcu-1/readings", RECEIVED, 4)
    assert json.loads(reading_payload(item)) == {
        "meter_id": "m-2",
        "ts": TS_TEXT,
        "energy_import_wh": 7,
        "energy_export_wh": 3,
        "voltage_v": 229.5,
        "seq": 9,
        "relay": "open",
    }


def test_reading_payload_of_a_decoded_batch_entry_round_trips() -> None:
    entry = {**_entry("m-5", 42), "power_w": -12}
    [item] = _decode("concentrators/dcu-1/readings", _batch([entry])).readings
    assert json.loads(reading_payload(item)) == entry


# --------------------------------------------------------------------------- hostile messages
# decode_message must never raise: whatever arrives becomes readings or dead letters, and a message is all of one
# or the other way round, never half decoded.


def test_a_bad_entry_with_lone_surrogates_is_a_dead_letter_with_its_json_escaped() -> None:
    entries = (
        b'[{"meter_id": "\\ud800", "ts": "%s", "energy_import_wh": 1},'
        b' {"meter_id": "m-1", "ts": "%s", "energy_import_wh": 1, "\\udfff": "\\u0000"}]'
    ) % (TS_TEXT.encode(), TS_TEXT.encode())
    payload = b'{"sent_at": "%s", "readings": %s}' % (SENT_AT.encode(), entries)
    decoded = _decode("concentrators/dcu-7/readings", payload)

    assert decoded.readings == []
    assert [(d.item_index, d.reason) for d in decoded.dead_letters] == [
        (0, "meter_id '\\ud800' does not match [A-Za-z0-9_-]{1,32}"),
        (1, "unknown field(s): \\udfff"),
    ]
    entries = json.loads(payload)["readings"]
    assert [json.loads(d.payload) for d in decoded.dead_letters] == entries


def test_a_bad_entry_too_deep_to_write_back_keeps_the_whole_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def too_deep(*args: object, **kwargs: object) -> str:
        raise RecursionError("maximum recursion depth exceeded while encoding a JSON object")

    payload = _batch([_entry("m-0", [[["deep"]]]), _entry("m-1")])
    monkeypatch.setattr("headend.ingest.messages.json.dumps", too_deep)
    decoded = _decode("concentrators/dcu-7/readings", payload)

    [dead] = decoded.dead_letters
    assert (dead.item_index, dead.payload) == (0, payload)
    assert [r.item_index for r in decoded.readings] == [1]


def test_a_message_the_decoder_chokes_on_is_one_dead_letter(monkeypatch: pytest.MonkeyPatch) -> None:
    def choke(*args: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("headend.ingest.messages.decode_meter_reading", choke)
    decoded = _decode("meters/m-1/readings", b"{}")

    assert decoded.readings == []
    assert decoded.dead_letters == [
        DeadLetter("meters/m-1/readings", b"{}", "message could not be decoded: ZeroDivisionError: a bug", RECEIVED)
    ]


def test_a_batch_that_fails_half_way_leaves_no_readings_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    # an entry json.dumps cannot write back (a stand-in for any failure after the good entries are decoded)
    batch = ConcentratorBatch("dcu-7", TS, (MeterReading("m-0", TS, 1),), (ItemError(1, "bad", {(1, 2): 3}),))
    monkeypatch.setattr("headend.ingest.messages.decode_concentrator_batch", lambda *args: batch)
    payload = _batch([_entry("m-0"), _entry("m-1", "x")])
    decoded = _decode("concentrators/dcu-7/readings", payload)

    assert decoded.readings == []
    [dead] = decoded.dead_letters
    assert (dead.payload, dead.item_index) == (payload, None)
    assert dead.reason.startswith("message could not be decoded: TypeError: keys must be")


topics = st.text(max_size=60) | st.sampled_from(["meters/m-1/readings", "concentrators/dcu-7/readings"])
json_text = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(blacklist_categories=())),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(blacklist_categories=()), max_size=8), children, max_size=4)
    ),
    max_leaves=12,
).map(lambda value: json.dumps(value).encode())
batches = st.lists(
    st.fixed_dictionaries(
        {"meter_id": st.sampled_from(["m-1", "\ud800", "m\x00"]), "ts": st.just(TS_TEXT)},
        optional={"energy_import_wh": st.integers(), "\udc80": st.text(), "x\x00": st.none()},
    ),
    max_size=5,
).map(lambda entries: json.dumps({"sent_at": SENT_AT, "readings": entries}).encode())


@given(topics, st.binary(max_size=300) | json_text | batches)
def test_any_message_decodes_into_readings_and_dead_letters_without_raising(topic: str, payload: bytes) -> None:
    decoded = _decode(topic, payload)

    assert decoded.readings or decoded.dead_letters or b'"readings": []' in payload
    for dead in decoded.dead_letters:
        assert dead.reason
        assert isinstance(dead.payload, bytes)
        assert dead.topic == topic


def test_reading_payload_of_a_reading_without_a_message_is_the_reading_as_json() -> None:
    # a polled reading: no message on the wire, so the dead letter keeps the reading itself
    reading = MeterReading("mb-1", TS, 11, power_w=2)
    item = SourcedReading(reading, "modbus:10.0.0.7:502 unit 1", "poll/modbus/mb-1", RECEIVED, None)
    assert json.loads(reading_payload(item)) == {
        "meter_id": "mb-1",
        "ts": TS_TEXT,
        "energy_import_wh": 11,
        "power_w": 2,
    }
