"""Simulated meters and concentrators answering relay commands over the real Mosquitto on 127.0.0.1:1883."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from protocols.mqtt_topics import (
    EVENTS_FILTER,
    concentrator_commands_topic,
    meter_commands_topic,
    parse_topic,
)
from protocols.readings import RelayState
from protocols.relay_codec import (
    CommandResult,
    EventCause,
    MeterEvent,
    RelayAction,
    RelayCommandMessage,
    decode_event,
    encode_command,
)
from simulators.command_responder import CommandResponder
from simulators.fleet import Fleet, SimConcentrator, SimMeter
from simulators.fleet_sim import FleetSimulation
from simulators.load_shapes import MeterKind
from simulators.publisher import BrokerConfig
from simulators.relay_sim import RelayFault
from tests.integration.conftest import MQTT_HOST, MQTT_PORT, Publisher, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DELAY_S = (0.2, 0.4)
# longer than any answer can take: the longest delay plus the broker's round trips
NO_ANSWER_WAIT_S = 1.5


class EventCollector:
    """A QoS 1 subscriber to every meter's events that keeps those of one id prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.events: list[tuple[float, MeterEvent]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"events-{uuid.uuid4().hex[:12]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        assert not any(r.is_failure for r in reasons), reasons
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        topic = parse_topic(message.topic)
        if not topic.device_id.startswith(self.prefix):
            return  # another test on the same broker
        event = decode_event(topic, bytes(message.payload))
        with self._lock:
            self.events.append((time.monotonic(), event))

    def start(self) -> None:
        self.client.connect(MQTT_HOST, MQTT_PORT)
        self.client.loop_start()
        self.client.subscribe(EVENTS_FILTER, qos=1)
        assert self._subscribed.wait(10), "no SUBACK from the broker"

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def of(self, meter_id: str) -> list[MeterEvent]:
        """Events of one meter so far, in arrival order."""
        with self._lock:
            return [e for _, e in self.events if e.meter_id == meter_id]

    def wait(self, meter_id: str, count: int = 1, timeout_s: float = 10.0) -> list[MeterEvent]:
        """Wait until `count` events of `meter_id` arrived; return them."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            events = self.of(meter_id)
            if len(events) >= count:
                return events
            time.sleep(0.02)
        pytest.fail(f"{meter_id}: {len(self.of(meter_id))} of {count} event(s) after {timeout_s} s")

    def arrival(self, meter_id: str, index: int = 0) -> float:
        """Monotonic time at which an event of `meter_id` arrived."""
        with self._lock:
            return [t for t, e in self.events if e.meter_id == meter_id][index]


@pytest.fixture
def prefix() -> str:
    """Ids unique to this test, so parallel runs on the same broker do not collide."""
    return f"R{uuid.uuid4().hex[:10]}"


@pytest.fixture
def events(prefix: str) -> Iterator[EventCollector]:
    collector = EventCollector(prefix)
    collector.start()
    yield collector
    collector.stop()


def make_fleet(prefix: str, *, allowed: bool = False) -> Fleet:
    """Two direct meters and two behind concentrator DCU1, plus an empty concentrator DCU2."""
    mode: Any = "allowed" if allowed else "direct"
    meters = tuple(
        SimMeter(f"{prefix}M{i}", dcu, "north", "DDZY1710-Z", MeterKind.RESIDENTIAL, 1000, reconnect_mode=mode)
        for i, dcu in enumerate([None, None, f"{prefix}DCU1", f"{prefix}DCU1"])
    )
    dcus = (SimConcentrator(f"{prefix}DCU1", "north"), SimConcentrator(f"{prefix}DCU2", "north"))
    return Fleet(meters, dcus, seed=7)


@pytest.fixture
def responder_for() -> Iterator[Callable[..., CommandResponder]]:
    """Start a responder for a fleet; stopped after the test."""
    started: list[CommandResponder] = []

    def start(fleet: Fleet, **kwargs: Any) -> CommandResponder:
        kwargs.setdefault("delay_s", DELAY_S)
        responder = CommandResponder(fleet, BrokerConfig(MQTT_HOST, MQTT_PORT, ack_timeout_s=5), **kwargs)
        responder.start()
        started.append(responder)
        return responder

    yield start
    for responder in started:
        responder.stop()


def command(meter_id: str, action: RelayAction, command_id: str | None = None, ttl_s: float = 600) -> bytes:
    """A command payload issued now."""
    now = datetime.now(UTC)
    cid = command_id or f"relay:{meter_id}:{uuid.uuid4().hex[:6]}:{action.value}"
    return encode_command(RelayCommandMessage(cid, action, meter_id, now, now + timedelta(seconds=ttl_s)))


def send(publisher: Publisher, topic: str, payload: bytes) -> float:
    """Publish and wait for the broker's PUBACK; return when it was sent."""
    sent = time.monotonic()
    publisher.publish(topic, payload)
    publisher.flush()
    return sent


def test_a_direct_meter_disconnects_after_a_delay(
    prefix: str, events: EventCollector, publisher: Publisher, responder_for: Callable[..., CommandResponder]
) -> None:
    fleet = make_fleet(prefix)
    simulation = FleetSimulation(fleet)
    responder = responder_for(fleet, meters=simulation.meters)
    meter = fleet.direct_meters[0].meter_id
    sent = send(publisher, meter_commands_topic(meter), command(meter, RelayAction.DISCONNECT, "relay:A1:3:disconnect"))

    [event] = events.wait(meter)
    assert events.arrival(meter) - sent >= DELAY_S[0]
    assert (event.command_id, event.result, event.relay) == (
        "relay:A1:3:disconnect",
        CommandResult.EXECUTED,
        RelayState.OPEN,
    )
    assert not event.ready_for_reconnection
    assert responder.relay(meter) is RelayState.OPEN
    assert simulation.meters[meter].relay is RelayState.OPEN, "the metering follows the relay"
    assert responder.relay(fleet.direct_meters[1].meter_id) is RelayState.CLOSED
    assert responder.commands_received == 1
    wait_for(lambda: responder.events_published == 1, 5, "the PUBACK of the event")


def test_a_concentrator_forwards_to_its_meter_and_refuses_others(
    prefix: str, events: EventCollector, publisher: Publisher, responder_for: Callable[..., CommandResponder]
) -> None:
    fleet = make_fleet(prefix)
    responder = responder_for(fleet)
    behind = fleet.meters_of(f"{prefix}DCU1")[0].meter_id
    send(publisher, concentrator_commands_topic(f"{prefix}DCU1"), command(behind, RelayAction.DISCONNECT))
    [event] = events.wait(behind)
    assert (event.result, event.relay) == (CommandResult.EXECUTED, RelayState.OPEN)
    assert responder.relay(behind) is RelayState.OPEN

    # DCU2 has no meters: it answers for the meter it does not know, on that meter's topic
    stranger = f"{prefix}X9"
    send(publisher, concentrator_commands_topic(f"{prefix}DCU2"), command(stranger, RelayAction.DISCONNECT))
    [refused] = events.wait(stranger)
    assert (refused.result, refused.detail) == (CommandResult.REJECTED, "unknown meter")
    # a meter of the fleet, but not behind DCU2
    send(publisher, concentrator_commands_topic(f"{prefix}DCU2"), command(behind, RelayAction.RECONNECT))
    assert events.wait(behind, 2)[1].detail == "unknown meter"
    assert responder.relay(behind) is RelayState.OPEN


def test_reconnect_allowed_arms_and_the_button_closes(
    prefix: str, events: EventCollector, publisher: Publisher, responder_for: Callable[..., CommandResponder]
) -> None:
    fleet = make_fleet(prefix, allowed=True)
    responder = responder_for(fleet)
    meter = fleet.direct_meters[0].meter_id
    send(publisher, meter_commands_topic(meter), command(meter, RelayAction.DISCONNECT))
    send(publisher, meter_commands_topic(meter), command(meter, RelayAction.RECONNECT))
    off, armed = events.wait(meter, 2)
    assert (off.relay, off.ready_for_reconnection) == (RelayState.OPEN, False)
    assert (armed.result, armed.relay, armed.ready_for_reconnection) == (CommandResult.EXECUTED, "open", True)
    assert responder.relay(meter) is RelayState.OPEN
    assert responder.status(meter).armed

    assert responder.press_button(meter)
    pressed = events.wait(meter, 3)[2]
    assert (pressed.cause, pressed.relay, pressed.command_id) == (EventCause.BUTTON_PRESSED, RelayState.CLOSED, None)
    assert responder.relay(meter) is RelayState.CLOSED
    assert not responder.press_button(meter), "no longer armed"


def test_the_simulated_customer_presses_the_button(
    prefix: str, events: EventCollector, publisher: Publisher, responder_for: Callable[..., CommandResponder]
) -> None:
    fleet = make_fleet(prefix, allowed=True)
    responder_for(fleet, button_delay_s=0.3)
    meter = fleet.meters_of(f"{prefix}DCU1")[1].meter_id
    send(publisher, concentrator_commands_topic(f"{prefix}DCU1"), command(meter, RelayAction.DISCONNECT))
    send(publisher, concentrator_commands_topic(f"{prefix}DCU1"), command(meter, RelayAction.RECONNECT))
    off, armed, pressed = events.wait(meter, 3)
    assert (off.relay, armed.relay, armed.ready_for_reconnection) == (RelayState.OPEN, RelayState.OPEN, True)
    assert (pressed.cause, pressed.relay) == (EventCause.BUTTON_PRESSED, RelayState.CLOSED)


@pytest.mark.parametrize(
    ("fault", "result", "relay", "detail"),
    [
        (RelayFault.STUCK, CommandResult.EXECUTED, RelayState.CLOSED, None),
        (RelayFault.REJECT, CommandResult.REJECTED, RelayState.CLOSED, "rejected by meter"),
    ],
)
def test_faulty_meters_answer_what_their_fault_says(
    prefix: str,
    events: EventCollector,
    publisher: Publisher,
    responder_for: Callable[..., CommandResponder],
    fault: RelayFault,
    result: CommandResult,
    relay: RelayState,
    detail: str | None,
) -> None:
    fleet = make_fleet(prefix)
    meter = fleet.direct_meters[0].meter_id
    responder = responder_for(fleet, faults={meter: fault})
    send(publisher, meter_commands_topic(meter), command(meter, RelayAction.DISCONNECT))
    [event] = events.wait(meter)
    assert (event.result, event.relay, event.detail) == (result, relay, detail)
    assert responder.relay(meter) is RelayState.CLOSED


@pytest.mark.parametrize("fault", [RelayFault.SILENT, RelayFault.OFFLINE])
def test_silent_and_offline_meters_do_not_answer(
    prefix: str,
    events: EventCollector,
    publisher: Publisher,
    responder_for: Callable[..., CommandResponder],
    fault: RelayFault,
) -> None:
    fleet = make_fleet(prefix)
    direct, behind = fleet.direct_meters[0].meter_id, fleet.meters_of(f"{prefix}DCU1")[0].meter_id
    responder = responder_for(fleet, faults={direct: fault, behind: fault})
    send(publisher, meter_commands_topic(direct), command(direct, RelayAction.DISCONNECT))
    send(publisher, concentrator_commands_topic(f"{prefix}DCU1"), command(behind, RelayAction.DISCONNECT))
    time.sleep(NO_ANSWER_WAIT_S)
    assert events.of(direct) == []
    assert events.of(behind) == []
    assert responder.commands_received == 2
    assert responder.relay(direct) is RelayState.CLOSED
    assert responder.relay(behind) is RelayState.CLOSED

    # back to normal at run time: the next command is answered
    responder.set_fault(direct, RelayFault.NONE)
    send(publisher, meter_commands_topic(direct), command(direct, RelayAction.DISCONNECT))
    assert events.wait(direct)[0].relay is RelayState.OPEN


def test_an_offline_concentrator_neither_forwards_nor_answers(
    prefix: str, events: EventCollector, publisher: Publisher, responder_for: Callable[..., CommandResponder]
) -> None:
    fleet = make_fleet(prefix)
    dcu = f"{prefix}DCU1"
    behind = fleet.meters_of(dcu)[0].meter_id
    responder = responder_for(fleet, faults={dcu: RelayFault.OFFLINE})
    send(publisher, concentrator_commands_topic(dcu), command(behind, RelayAction.DISCONNECT))
    time.sleep(NO_ANSWER_WAIT_S)
    assert events.of(behind) == []
    assert responder.relay(behind) is RelayState.CLOSED
    assert responder.counts.commands_dropped == 1
    with pytest.raises(ValueError, match="only offline or not"):
        responder.set_fault(dcu, RelayFault.STUCK)


def test_a_repeated_command_id_is_answered_again_and_not_executed_twice(
    prefix: str, events: EventCollector, publisher: Publisher, responder_for: Callable[..., CommandResponder]
) -> None:
    fleet = make_fleet(prefix)
    responder = responder_for(fleet)
    meter = fleet.direct_meters[1].meter_id
    disconnect = command(meter, RelayAction.DISCONNECT, "cmd-off-1")
    send(publisher, meter_commands_topic(meter), disconnect)
    assert events.wait(meter)[0].relay is RelayState.OPEN
    send(publisher, meter_commands_topic(meter), command(meter, RelayAction.RECONNECT, "cmd-on-1"))
    assert events.wait(meter, 2)[1].relay is RelayState.CLOSED

    send(publisher, meter_commands_topic(meter), disconnect)  # the dispatcher's retry, same id
    again = events.wait(meter, 3)[2]
    assert (again.command_id, again.result) == ("cmd-off-1", CommandResult.EXECUTED)
    assert again.relay is RelayState.CLOSED, "answered with the current relay, not opened again"
    assert responder.relay(meter) is RelayState.CLOSED


def test_bad_messages_are_counted_and_the_meters_keep_working(
    prefix: str, events: EventCollector, publisher: Publisher, responder_for: Callable[..., CommandResponder]
) -> None:
    fleet = make_fleet(prefix)
    responder = responder_for(fleet)
    meter = fleet.direct_meters[0].meter_id
    send(publisher, meter_commands_topic(meter), b"not json")
    # a command for another meter on this meter's topic
    send(publisher, meter_commands_topic(meter), command(fleet.direct_meters[1].meter_id, RelayAction.DISCONNECT))
    send(publisher, meter_commands_topic(meter), command(meter, RelayAction.READ_RELAY))
    [event] = events.wait(meter)
    assert (event.result, event.relay) == (CommandResult.EXECUTED, RelayState.CLOSED)
    assert responder.undecodable == 2
    assert responder.commands_received == 1


def test_an_expired_command_is_rejected(
    prefix: str, events: EventCollector, publisher: Publisher, responder_for: Callable[..., CommandResponder]
) -> None:
    fleet = make_fleet(prefix)
    now = datetime.now(UTC)
    late = responder_for(fleet, clock=lambda: datetime.now(UTC) + timedelta(hours=1))
    meter = fleet.direct_meters[0].meter_id
    payload = encode_command(
        RelayCommandMessage("old-1", RelayAction.DISCONNECT, meter, now, now + timedelta(minutes=10))
    )
    send(publisher, meter_commands_topic(meter), payload)
    [event] = events.wait(meter)
    assert (event.result, event.detail, event.relay) == (CommandResult.REJECTED, "expired", RelayState.CLOSED)
    assert late.relay(meter) is RelayState.CLOSED
