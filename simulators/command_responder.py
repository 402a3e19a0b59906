"""Simulated meters and concentrators that obey commands over MQTT (paho-mqtt 2.x, QoS 1).

Relay commands are answered with events; a `read_readings` command (re-read) with the readings the device holds
for the range, sent again on its readings topic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from protocols.errors import ProtocolError
from protocols.mqtt_topics import (
    Topic,
    TopicKind,
    concentrator_commands_topic,
    meter_commands_topic,
    meter_events_topic,
    parse_topic,
)
from protocols.readings import RelayState
from protocols.relay_codec import CommandResult, MeterEvent, RelayCommandMessage, encode_event
from protocols.reread_codec import ReadReadingsCommand, decode_device_command
from simulators.fleet import Fleet
from simulators.meter_sim import MeterSim
from simulators.publisher import QOS, BrokerConfig, BrokerError
from simulators.reading_history import ReadingHistory
from simulators.relay_sim import DEFAULT_DELAY_S, RelayFault, RelaySim, RelayStatus
from simulators.reread_answers import RereadAnswer, RereadAnswers

log = logging.getLogger(__name__)

DETAIL_UNKNOWN_METER = "unknown meter"
# topics per SUBSCRIBE packet: a large fleet subscribes in several packets
SUBSCRIBE_CHUNK = 500
# longest wait of the event thread, so an injected clock that jumps is noticed soon
DEFAULT_TICK_S = 0.05


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ResponderCounts:
    """What the responder did so far."""

    commands_received: int = 0
    commands_dropped: int = 0
    undecodable: int = 0
    events_published: int = 0
    events_dropped: int = 0
    rereads_received: int = 0
    rereads_ignored: int = 0  # expired, for a meter the device does not have, or the device offline
    readings_republished: int = 0  # readings sent again for re-reads, in messages the broker acknowledged
    errors: int = 0

    def lines(self) -> list[str]:
        """Human-readable summary, one count a line."""
        return [f"{f.name}: {getattr(self, f.name)}" for f in fields(self)]


class CommandResponder:
    """Answers the relay commands and re-reads of a fleet's meters and concentrators; use it as a context manager.

    `meters` (the MeterSims of a running FleetSimulation) follow the relay model, so an open relay meters
    nothing. `history` (the FleetSimulation's) holds the readings a re-read sends again; without it a re-read
    finds nothing. `faults` maps meter ids to relay faults, and concentrator ids to OFFLINE: an offline device
    hears no command of either kind.
    """

    def __init__(
        self,
        fleet: Fleet,
        broker: BrokerConfig,
        *,
        faults: Mapping[str, RelayFault] | None = None,
        meters: Mapping[str, MeterSim] | None = None,
        history: ReadingHistory | None = None,
        delay_s: tuple[float, float] = DEFAULT_DELAY_S,
        button_delay_s: float | None = None,
        clock: Callable[[], datetime] = _utc_now,
        tick_s: float = DEFAULT_TICK_S,
    ) -> None:
        if tick_s <= 0:
            raise ValueError(f"tick_s must be positive, got {tick_s}")
        self.fleet = fleet
        self.broker = broker
        self._clock = clock
        self._tick_s = tick_s
        self._meters = meters or {}
        self._dcu_of = {m.meter_id: m.concentrator_id for m in fleet.meters}
        self._behind = {c.dcu_id: frozenset(m.meter_id for m in fleet.meters_of(c.dcu_id)) for c in fleet.concentrators}
        self._models = {
            m.meter_id: RelaySim(
                m.meter_id,
                seed=fleet.seed,
                reconnect_mode=m.reconnect_mode,
                relay=self._meters[m.meter_id].relay if m.meter_id in self._meters else RelayState.CLOSED,
                delay_s=delay_s,
                button_delay_s=button_delay_s,
            )
            for m in fleet.meters
        }
        held = history if history is not None else ReadingHistory(0)
        self._rereads = RereadAnswers(fleet, held, zone=held.zone)
        self._lock = threading.Lock()
        self._acked = threading.Condition(self._lock)
        self._offline_dcus: set[str] = set()
        for device_id, fault in (faults or {}).items():
            self.set_fault(device_id, fault)
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            # a client id of its own: the broker would disconnect a readings publisher sharing it
            client_id=f"{broker.client_id}-relay",
            clean_session=True,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        broker.configure(self._client)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._connect_error: str | None = None
        self._subscribe_error: str | None = None
        self._subscribe_mids: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy: set[str] = set()
        self._outstanding = 0
        self._reading_mids: dict[int, int] = {}  # re-read messages awaiting their PUBACK: readings in each
        self._tally = dict.fromkeys((f.name for f in fields(ResponderCounts)), 0)

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> CommandResponder:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Connect, subscribe to every command topic of the fleet, and start sending due events."""
        try:
            self._client.connect(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        except OSError as exc:
            raise BrokerError(f"cannot connect to MQTT broker {self.broker.host}:{self.broker.port}: {exc}") from exc
        self._client.loop_start()
        timeout = self.broker.connect_timeout_s
        if not self._connected.wait(timeout) or self._connect_error:
            reason = self._connect_error or f"no CONNACK within {timeout:g} s"
            self._shutdown()
            raise BrokerError(f"MQTT broker {self.broker.host}:{self.broker.port} refused the connection: {reason}")
        if not self._subscribed.wait(timeout) or self._subscribe_error:
            reason = self._subscribe_error or f"no SUBACK within {timeout:g} s"
            self._shutdown()
            raise BrokerError(f"MQTT broker {self.broker.host}:{self.broker.port} refused a subscription: {reason}")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="relay-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop answering, wait for the broker to acknowledge the events sent, and disconnect."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        deadline = time.monotonic() + self.broker.ack_timeout_s
        with self._acked:
            while self._outstanding and (left := deadline - time.monotonic()) > 0:
                self._acked.wait(left)
            if self._outstanding:
                log.error("%d event(s) unacknowledged after %g s", self._outstanding, self.broker.ack_timeout_s)
        self._shutdown()

    def _shutdown(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # --- public controls ---------------------------------------------------------------------

    @property
    def counts(self) -> ResponderCounts:
        """Totals so far."""
        with self._lock:
            return ResponderCounts(**self._tally)

    @property
    def commands_received(self) -> int:
        """Commands decoded, whatever became of them."""
        return self.counts.commands_received

    @property
    def events_published(self) -> int:
        """Events the broker acknowledged."""
        return self.counts.events_published

    @property
    def undecodable(self) -> int:
        """Messages on a command topic that are not a valid command."""
        return self.counts.undecodable

    def set_fault(self, device_id: str, fault: RelayFault) -> None:
        """Change a meter's relay fault, or take a concentrator offline (OFFLINE) or back (NONE)."""
        with self._lock:
            if device_id in self._models:
                self._models[device_id].set_fault(fault)
            elif device_id in self._behind:
                if fault not in (RelayFault.NONE, RelayFault.OFFLINE):
                    raise ValueError(f"a concentrator is only offline or not, got {fault.value} for {device_id}")
                if fault is RelayFault.OFFLINE:
                    self._offline_dcus.add(device_id)
                else:
                    self._offline_dcus.discard(device_id)
            else:
                raise KeyError(f"{device_id} is not a meter or concentrator of the fleet")

    def press_button(self, meter_id: str) -> bool:
        """The customer presses the meter's button now; True when an armed relay will close."""
        with self._lock:
            scheduled = self._model(meter_id).press_button(self._clock())
            if scheduled:
                self._busy.add(meter_id)
            return bool(scheduled)

    def status(self, meter_id: str) -> RelayStatus:
        """Relay position and arming of a meter now."""
        with self._lock:
            return self._model(meter_id).status_at(self._clock())

    def relay(self, meter_id: str) -> RelayState:
        """Relay position of a meter now."""
        return self.status(meter_id).relay

    # --- internals -----------------------------------------------------------------------------

    def _model(self, meter_id: str) -> RelaySim:
        model = self._models.get(meter_id)
        if model is None:
            raise KeyError(f"{meter_id} is not a meter of the fleet")
        return model

    def _count(self, **increments: int) -> None:
        # callers hold self._lock
        for name, n in increments.items():
            self._tally[name] += n

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            self._connect_error = str(reason)
            log.error("broker refused the connection: %s", reason)
            self._connected.set()
            return
        topics = [meter_commands_topic(m.meter_id) for m in self.fleet.direct_meters]
        topics += [concentrator_commands_topic(c.dcu_id) for c in self.fleet.concentrators]
        # a clean session forgets the subscriptions, so every (re)connect makes them again; the SUBACKs
        # come later on this same network thread, so the mids need no lock
        for start in range(0, len(topics), SUBSCRIBE_CHUNK):
            result, mid = client.subscribe([(t, QOS) for t in topics[start : start + SUBSCRIBE_CHUNK]])
            if result is MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                self._subscribe_mids.add(mid)
            else:
                self._subscribe_error = mqtt.error_string(result)
        if not self._subscribe_mids:
            self._subscribed.set()
        log.info("connected to %s:%s, %d command topic(s)", self.broker.host, self.broker.port, len(topics))
        self._connected.set()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            self._subscribe_error = f"{len(refused)} topic(s) refused: {refused[0]}"
            log.error("broker refused %d command subscription(s): %s", len(refused), refused[0])
        self._subscribe_mids.discard(mid)
        if not self._subscribe_mids:
            self._subscribed.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        with self._acked:
            self._outstanding -= 1
            readings = self._reading_mids.pop(mid, None)
            if reason.is_failure:
                self._count(errors=1)
            elif readings is not None:
                self._count(readings_republished=readings)
            else:
                self._count(events_published=1)
            self._acked.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            answer = self._handle(message.topic, bytes(message.payload))
        except Exception:
            # a bug here must not end paho's network thread, and with it every meter
            log.exception("cannot handle the message on %s", message.topic)
            with self._lock:
                self._count(errors=1)
            return
        if isinstance(answer, MeterEvent):
            self._publish(answer)
        elif answer is not None:
            self._republish(answer)

    def _handle(self, topic_name: str, payload: bytes) -> MeterEvent | RereadAnswer | None:
        """Hand a command to its meter's model; return an immediate answer of a concentrator, or a re-read's."""
        now = self._clock()
        try:
            topic = parse_topic(topic_name)
            command = decode_device_command(topic, payload)
        except ProtocolError as exc:
            log.warning("undecodable command on %s: %s", topic_name, exc.reason)
            with self._lock:
                self._count(undecodable=1)
            return None
        if isinstance(command, ReadReadingsCommand):
            return self._reread(topic, command, now)
        with self._lock:
            self._count(commands_received=1)
            if topic.kind is TopicKind.CONCENTRATOR_COMMANDS:
                return self._via_concentrator(topic.device_id, command, now)
            if command.meter_id not in self._models or self._dcu_of[command.meter_id] is not None:
                # only direct meters have a command topic of their own
                self._count(commands_dropped=1)
                return None
            self._deliver(command, now)
            return None

    def _via_concentrator(self, dcu_id: str, command: RelayCommandMessage, now: datetime) -> MeterEvent | None:
        if dcu_id in self._offline_dcus or dcu_id not in self._behind:
            self._count(commands_dropped=1)
            return None
        if command.meter_id not in self._behind[dcu_id]:
            # decode_command has checked the meter id, so the concentrator can name it in its answer
            relay = RelayState.CLOSED
            if command.meter_id in self._models:
                relay = self._models[command.meter_id].relay_at(now)
            return MeterEvent(
                command.meter_id,
                relay,
                now,
                command_id=command.command_id,
                result=CommandResult.REJECTED,
                detail=DETAIL_UNKNOWN_METER,
            )
        self._deliver(command, now)
        return None

    def _reread(self, topic: Topic, command: ReadReadingsCommand, now: datetime) -> RereadAnswer | None:
        with self._lock:
            self._count(rereads_received=1)
            model = self._models.get(topic.device_id)
            offline = topic.device_id in self._offline_dcus or (model is not None and model.fault is RelayFault.OFFLINE)
            if offline:
                self._count(rereads_ignored=1)
                return None
        # outside the lock: the history has a lock of its own, and the range may hold a great many readings
        answer = self._rereads.answer(topic, command, now)
        if answer.refused is not None:
            log.warning("re-read %s on %s not carried out: %s", command.command_id, topic.device_id, answer.refused)
            with self._lock:
                self._count(rereads_ignored=1)
            return None
        log.info("re-read %s: %d reading(s) sent again by %s", command.command_id, answer.readings, topic.device_id)
        return answer

    def _republish(self, answer: RereadAnswer) -> None:
        # called on paho's network thread (on_message), which also runs on_publish: no PUBACK of these messages
        # can be handled before its mid is noted below
        for message in answer.messages:
            with self._lock:
                self._outstanding += 1
            info = self._client.publish(message.topic, message.payload, qos=QOS)
            with self._acked:
                if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    self._reading_mids[info.mid] = message.readings
                else:
                    log.error("publish of re-read readings to %s failed: %s", message.topic, mqtt.error_string(info.rc))
                    self._outstanding -= 1
                    self._count(errors=1)
                    self._acked.notify_all()

    def _deliver(self, command: RelayCommandMessage, now: datetime) -> None:
        if self._models[command.meter_id].receive(command, now):
            self._busy.add(command.meter_id)

    def _publish(self, event: MeterEvent) -> None:
        dcu_id = self._dcu_of.get(event.meter_id)
        with self._lock:
            if dcu_id is not None and dcu_id in self._offline_dcus:
                self._count(events_dropped=1)
                return
            self._outstanding += 1
        # never call into paho holding our lock: its network thread takes that lock in on_publish
        info = self._client.publish(meter_events_topic(event.meter_id), encode_event(event), qos=QOS)
        # NO_CONN: paho keeps the message and sends it once reconnected
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.error("publish of an event of %s failed: %s", event.meter_id, mqtt.error_string(info.rc))
            with self._acked:
                self._outstanding -= 1
                self._count(errors=1)
                self._acked.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait_s = self._send_due()
            except Exception:
                log.exception("cannot send the due relay events")
                with self._lock:
                    self._count(errors=1)
                wait_s = self._tick_s
            self._stop.wait(wait_s)

    def _send_due(self) -> float:
        """Apply and publish every event due now; return how long to wait for the next one."""
        now = self._clock()
        due: list[MeterEvent] = []
        with self._lock:
            for meter_id in sorted(self._busy):
                model = self._models[meter_id]
                due.extend(s.event for s in model.pop_due(now))
                sim = self._meters.get(meter_id)
                if sim is not None and sim.relay is not model.relay:
                    sim.set_relay(model.relay)
                if model.next_due() is None:
                    self._busy.discard(meter_id)
            next_due = min((d for m in self._busy if (d := self._models[m].next_due()) is not None), default=None)
        for event in due:
            self._publish(event)
        if next_due is None:
            return self._tick_s
        return min(self._tick_s, max(0.0, (next_due - self._clock()).total_seconds()))
