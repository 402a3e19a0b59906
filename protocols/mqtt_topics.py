"""MQTT topic names of contract v1 and their parsing."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from protocols.errors import TopicError
from protocols.readings import is_valid_id


class TopicKind(StrEnum):
    """What a topic carries."""

    METER_READINGS = "meter_readings"
    CONCENTRATOR_READINGS = "concentrator_readings"
    METER_COMMANDS = "meter_commands"
    CONCENTRATOR_COMMANDS = "concentrator_commands"
    METER_EVENTS = "meter_events"


_LAYOUT: dict[tuple[str, str], TopicKind] = {
    ("meters", "readings"): TopicKind.METER_READINGS,
    ("concentrators", "readings"): TopicKind.CONCENTRATOR_READINGS,
    ("meters", "commands"): TopicKind.METER_COMMANDS,
    ("concentrators", "commands"): TopicKind.CONCENTRATOR_COMMANDS,
    ("meters", "events"): TopicKind.METER_EVENTS,
}

READINGS_FILTERS = ("meters/+/readings", "concentrators/+/readings")
COMMAND_FILTERS = ("meters/+/commands", "concentrators/+/commands")
EVENTS_FILTER = "meters/+/events"


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic: its kind and the device id in it."""

    kind: TopicKind
    device_id: str


def parse_topic(topic: str) -> Topic:
    """Parse `meters/{id}/readings` and its siblings; raise TopicError otherwise."""
    parts = topic.split("/")
    if len(parts) != 3:
        raise TopicError(f"topic {topic!r} is not of the form <kind>/<id>/<channel>")
    kind = _LAYOUT.get((parts[0], parts[2]))
    if kind is None:
        raise TopicError(f"topic {topic!r} is not part of MQTT contract v1")
    if not is_valid_id(parts[1]):
        raise TopicError(f"device id {parts[1]!r} does not match [A-Za-z0-9_-]{{1,32}}")
    return Topic(kind, parts[1])


def meter_readings_topic(meter_id: str) -> str:
    """Topic on which a meter publishes its own readings."""
    return f"meters/{meter_id}/readings"


def concentrator_readings_topic(dcu_id: str) -> str:
    """Topic on which a concentrator publishes the readings of its meters."""
    return f"concentrators/{dcu_id}/readings"


def meter_commands_topic(meter_id: str) -> str:
    """Topic on which the head-end sends relay commands to a meter that speaks MQTT itself."""
    return f"meters/{meter_id}/commands"


def concentrator_commands_topic(dcu_id: str) -> str:
    """Topic on which the head-end sends relay commands for the meters behind a concentrator."""
    return f"concentrators/{dcu_id}/commands"


def meter_events_topic(meter_id: str) -> str:
    """Topic on which a meter, or its concentrator on its behalf, reports relay events."""
    return f"meters/{meter_id}/events"
