"""MQTT contract v1 topic names: `protocols.mqtt_topics`."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import ProtocolError, TopicError
from protocols.mqtt_topics import (
    READINGS_FILTERS,
    Topic,
    TopicKind,
    concentrator_readings_topic,
    meter_readings_topic,
    parse_topic,
)
from protocols.readings import METER_ID_PATTERN

ids = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)


def _reason(topic: str) -> str:
    with pytest.raises(TopicError) as info:
        parse_topic(topic)
    return info.value.reason


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("meters/m-1/readings", Topic(TopicKind.METER_READINGS, "m-1")),
        ("concentrators/dcu_7/readings", Topic(TopicKind.CONCENTRATOR_READINGS, "dcu_7")),
        ("meters/m-1/commands", Topic(TopicKind.METER_COMMANDS, "m-1")),
        ("concentrators/dcu_7/commands", Topic(TopicKind.CONCENTRATOR_COMMANDS, "dcu_7")),
        ("meters/m-1/events", Topic(TopicKind.METER_EVENTS, "m-1")),
    ],
)
def test_parse_each_kind(topic: str, expected: Topic) -> None:
    assert parse_topic(topic) == expected


def test_topic_kind_values() -> None:
    assert {kind: kind.value for kind in TopicKind} == {
        TopicKind.METER_READINGS: "meter_readings",
        TopicKind.CONCENTRATOR_READINGS: "concentrator_readings",
        TopicKind.METER_COMMANDS: "meter_commands",
        TopicKind.CONCENTRATOR_COMMANDS: "concentrator_commands",
        TopicKind.METER_EVENTS: "meter_events",
    }


@pytest.mark.parametrize("device_id", ["m", "0", "_", "-", "A-z_09", "x" * 32, "9" * 32])
def test_valid_ids_at_the_edges(device_id: str) -> None:
    assert parse_topic(f"meters/{device_id}/readings") == Topic(TopicKind.METER_READINGS, device_id)


def test_builders() -> None:
    assert meter_readings_topic("m-1") == "meters/m-1/readings"
    assert concentrator_readings_topic("dcu-7") == "concentrators/dcu-7/readings"


def test_readings_filters() -> None:
    assert READINGS_FILTERS == ("meters/+/readings", "concentrators/+/readings")


@given(ids)
def test_builders_round_trip(device_id: str) -> None:
    assert parse_topic(meter_readings_topic(device_id)) == Topic(TopicKind.METER_READINGS, device_id)
    assert parse_topic(concentrator_readings_topic(device_id)) == Topic(TopicKind.CONCENTRATOR_READINGS, device_id)


@given(st.text(max_size=40).filter(lambda s: "/" not in s and METER_ID_PATTERN.fullmatch(s) is None))
def test_any_other_id_is_rejected(device_id: str) -> None:
    assert _reason(f"meters/{device_id}/readings") == (f"device id {device_id!r} does not match [A-Za-z0-9_-]{{1,32}}")


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "meters",
        "meters/m-1",
        "meters/m-1/readings/extra",
        "/meters/m-1/readings",
        "meters/m-1/readings/",
        "meters/m/1/readings",  # a "/" inside the id is one level too many
        "$share/headend/meters/m-1/readings",
        "meters/#",
    ],
)
def test_wrong_shape_is_rejected(topic: str) -> None:
    assert _reason(topic) == f"topic {topic!r} is not of the form <kind>/<id>/<channel>"


@pytest.mark.parametrize(
    "topic",
    [
        "meter/m-1/readings",
        "Meters/m-1/readings",
        "meters/m-1/Readings",
        "meters/m-1/reading",
        "meters/m-1/status",
        "concentrators/dcu-7/events",  # events are defined for meters only
        "dcus/dcu-7/readings",
        "readings/m-1/meters",
        "m-1/meters/readings",
    ],
)
def test_unknown_layout_is_rejected(topic: str) -> None:
    assert _reason(topic) == f"topic {topic!r} is not part of MQTT contract v1"


@pytest.mark.parametrize(
    "device_id",
    [
        "x" * 33,
        "",
        "+",
        "#",
        "m 1",
        " m1",
        "m1 ",
        "m.1",
        "m:1",
        "mé",
        "m1\n",
        "\t",
        "电表1",
    ],
)
@pytest.mark.parametrize("template", ["meters/{}/readings", "concentrators/{}/readings", "meters/{}/commands"])
def test_bad_id_is_rejected(template: str, device_id: str) -> None:
    assert _reason(template.format(device_id)) == f"device id {device_id!r} does not match [A-Za-z0-9_-]{{1,32}}"


def test_layout_is_checked_before_the_id() -> None:
    assert _reason("things/+/readings") == "topic 'things/+/readings' is not part of MQTT contract v1"


def test_topic_error_is_a_protocol_error() -> None:
    with pytest.raises(TopicError) as info:
        parse_topic("meters/+/readings")

    assert isinstance(info.value, ProtocolError)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == info.value.reason


def test_topic_is_frozen() -> None:
    topic = parse_topic("meters/m-1/readings")

    with pytest.raises(dataclasses.FrozenInstanceError):
        topic.device_id = "m-2"  # type: ignore[misc]
