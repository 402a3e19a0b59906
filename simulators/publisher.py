"""Run a fleet simulation against an MQTT broker (paho-mqtt 2.x, QoS 1, every publish confirmed)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from simulators.clock import SimClock
from simulators.fleet_sim import FleetSimulation, OutgoingMessage, SimulationCounts

log = logging.getLogger(__name__)

QOS = 1


class BrokerError(RuntimeError):
    """The broker cannot be reached, refused us, or refused a publish."""


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Where and how to connect; `max_inflight` bounds the publishes awaiting their PUBACK."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = field(default_factory=lambda: f"simulator-{uuid.uuid4().hex[:12]}")
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    keepalive_s: int = 60
    connect_timeout_s: float = 10.0
    ack_timeout_s: float = 60.0
    max_inflight: int = 1000

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is outside 1..65535")
        if not 1 <= self.max_inflight <= 60000:
            raise ValueError(f"max_inflight {self.max_inflight} is outside 1..60000")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")

    @property
    def uses_tls(self) -> bool:
        """Whether to connect over TLS: asked for, or implied by a CA or client certificate file."""
        return self.tls or self.ca_file is not None or self.cert_file is not None

    def configure(self, client: mqtt.Client) -> None:
        """Give a paho client this config's credentials and TLS (the broker's certificate and name verified)."""
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.uses_tls:
            client.tls_set(ca_certs=self.ca_file, certfile=self.cert_file, keyfile=self.key_file)
            client.tls_insecure_set(self.tls_insecure)


@dataclass(frozen=True, slots=True)
class PublishStats:
    """Outcome of a run: messages and readings the broker acknowledged, and what fault injection did."""

    intervals: int
    messages_published: int
    readings_published: int
    messages_dropped: int
    readings_dropped: int
    messages_duplicated: int
    readings_duplicated: int
    messages_delayed: int
    readings_offline: int
    offline_meters: int
    messages_unconfirmed: int
    interrupted: bool

    def lines(self) -> list[str]:
        """Human-readable summary, one count a line."""
        return [f"{f.name}: {getattr(self, f.name)}" for f in fields(self)]


class MqttPublisher:
    """A connected paho client that publishes at QoS 1 and counts PUBACKs; use it as a context manager."""

    def __init__(self, broker: BrokerConfig) -> None:
        self.broker = broker
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=broker.client_id,
            clean_session=True,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        broker.configure(self._client)
        self._client.max_inflight_messages_set(broker.max_inflight)
        # our own bound (below) keeps memory in check; paho must never refuse a publish
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._connect_error: str | None = None
        self._pending: dict[int, int] = {}
        self._early: set[int] = set()
        self._outstanding = 0
        self._rejected = 0
        self.messages_confirmed = 0
        self.readings_confirmed = 0

    def __enter__(self) -> MqttPublisher:
        try:
            self._client.connect(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        except OSError as exc:
            raise BrokerError(f"cannot connect to MQTT broker {self.broker.host}:{self.broker.port}: {exc}") from exc
        self._client.loop_start()
        if not self._connected.wait(self.broker.connect_timeout_s) or self._connect_error:
            reason = self._connect_error or f"no CONNACK within {self.broker.connect_timeout_s:g} s"
            self._shutdown()
            raise BrokerError(f"MQTT broker {self.broker.host}:{self.broker.port} refused the connection: {reason}")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            self._connect_error = str(reason)
            log.error("broker refused the connection: %s", reason)
        else:
            log.info("connected to %s:%s", self.broker.host, self.broker.port)
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            # paho reconnects by itself and resends every unacknowledged QoS 1 message
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        with self._cond:
            readings = self._pending.pop(mid, None)
            if readings is None:
                # the PUBACK overtook publish() returning its mid
                self._early.add(mid)
                return
            self._settle(readings, failed=reason.is_failure)

    def _settle(self, readings: int, *, failed: bool) -> None:
        if failed:
            self._rejected += 1
        else:
            self.messages_confirmed += 1
            self.readings_confirmed += readings
        self._outstanding -= 1
        self._cond.notify_all()

    @property
    def outstanding(self) -> int:
        """Publishes not yet acknowledged by the broker."""
        with self._cond:
            return self._outstanding

    def publish(self, message: OutgoingMessage) -> None:
        """Publish at QoS 1, first waiting while `max_inflight` publishes await their PUBACK."""
        with self._cond:
            while self._outstanding >= self.broker.max_inflight:
                self._cond.wait()
            self._outstanding += 1
        try:
            # never call into paho holding our lock: its network thread takes that lock in on_publish
            info = self._client.publish(message.topic, message.payload, qos=QOS)
        except BaseException:
            with self._cond:
                self._outstanding -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            # NO_CONN: paho keeps the message and sends it once reconnected
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                self._outstanding -= 1
                self._cond.notify_all()
                raise BrokerError(f"publish to {message.topic} failed: {mqtt.error_string(info.rc)}")
            if info.mid in self._early:
                self._early.discard(info.mid)
                self._settle(message.readings, failed=False)
            else:
                self._pending[info.mid] = message.readings
            if self._rejected:
                raise BrokerError(f"the broker rejected {self._rejected} publish(es)")

    def drain(self, timeout_s: float) -> int:
        """Wait until every publish is acknowledged or `timeout_s` passes; return how many are not."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._outstanding:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._outstanding


def run_simulation(
    simulation: FleetSimulation,
    clock: SimClock,
    intervals: int,
    broker: BrokerConfig,
    *,
    stop: threading.Event | None = None,
    progress: Callable[[datetime, SimulationCounts], None] | None = None,
) -> PublishStats:
    """Publish `intervals` intervals of the simulation paced by `clock`; stops early when `stop` is set."""
    if intervals < 1:
        raise ValueError(f"intervals must be at least 1, got {intervals}")
    stop = stop or threading.Event()
    interrupted = False
    with MqttPublisher(broker) as publisher:
        try:
            for instant in clock.ticks(intervals, stop):
                for message in simulation.step(instant):
                    publisher.publish(message)
                if progress is not None:
                    progress(instant, simulation.counts)
            for message in simulation.finish():
                publisher.publish(message)
        except KeyboardInterrupt:
            stop.set()
        interrupted = stop.is_set()
        unconfirmed = publisher.drain(broker.ack_timeout_s)
        if unconfirmed:
            log.error("%d publish(es) unacknowledged after %g s", unconfirmed, broker.ack_timeout_s)
        confirmed_messages, confirmed_readings = publisher.messages_confirmed, publisher.readings_confirmed
    counts = simulation.counts
    return PublishStats(
        intervals=counts.intervals,
        messages_published=confirmed_messages,
        readings_published=confirmed_readings,
        messages_dropped=counts.messages_dropped,
        readings_dropped=counts.readings_dropped,
        messages_duplicated=counts.messages_duplicated,
        readings_duplicated=counts.readings_duplicated,
        messages_delayed=counts.messages_delayed,
        readings_offline=counts.readings_offline,
        offline_meters=counts.offline_meters,
        messages_unconfirmed=unconfirmed,
        interrupted=interrupted,
    )
