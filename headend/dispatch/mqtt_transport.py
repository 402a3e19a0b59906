"""The MQTT executor: publishes relay commands to meters or their concentrators, receives meter events.

Events are acknowledged to the broker only after the dispatcher has committed what they mean (manual ack), so a
crash loses none; an event received before a reconnection is not acknowledged on the new connection (its packet id
may name another message there): the broker delivers it again if it kept the session. Every connection subscribes
again, as a broker that restarted without its sessions has forgotten the subscription. A command is published only
while connected and counts as sent only once the broker has acknowledged it; paho would otherwise queue it and
deliver it later, after the send-time check went stale.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from headend.mqtt.client import ConnectionWatch, connect, make_client
from headend.settings import Settings
from protocols.mqtt_topics import EVENTS_FILTER, concentrator_commands_topic, meter_commands_topic
from protocols.relay_codec import RelayCommandMessage, encode_command

log = logging.getLogger(__name__)


class SendError(RuntimeError):
    """A command could not be handed to the broker; nothing is known to have been sent."""


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """A message received on a meter's events topic, with what its acknowledgement needs."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    connection: int  # which connection to the broker it came on (counted from 1)


def _topic_text(message: mqtt.MQTTMessage) -> str:
    try:
        return message.topic
    except UnicodeDecodeError:
        # brokers refuse topics that are not UTF-8, but the dispatcher must not depend on it
        return message._topic.decode("utf-8", "backslashreplace")


class MqttTransport:
    """One paho client: command publisher and event subscriber (QoS 1, persistent session, manual ack)."""

    def __init__(self, settings: Settings, client_id: str, *, publish_timeout_s: float = 5.0) -> None:
        self._settings = settings
        self._timeout_s = publish_timeout_s
        self._client = make_client(settings, client_id, manual_ack=True, persistent=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._broker = ConnectionWatch(self._client, settings, log)
        self._closing = False
        self._inbox: queue.Queue[InboundEvent | None] = queue.Queue()  # None: `wake`
        self._subscribed = threading.Event()
        self._connection = 0  # connections accepted by the broker so far
        self._subscription_problem: str | None = None
        group = settings.mqtt_shared_group
        self._filter = f"$share/{group}-dispatch/{EVENTS_FILTER}" if group else EVENTS_FILTER

    def __enter__(self) -> MqttTransport:
        connect(self._client, self._settings, persistent=True)
        self._client.loop_start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Whether the broker acknowledged the events subscription within the timeout."""
        return self._subscribed.wait(timeout_s)

    def problem(self) -> str | None:
        """What is wrong with the connection to the broker, for a status line; None when connected."""
        return self._broker.problem() or self._subscription_problem

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        if self._broker.connect_result(reason, flags.session_present):
            self._connection += 1
            client.subscribe(self._filter, qos=1)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self._broker.disconnected(reason, stopping=self._closing)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        refused = [r for r in reasons if isinstance(r, ReasonCode) and r.is_failure]
        if refused:
            self._subscription_problem = f"the broker refused the subscription to {self._filter}: {refused[0]}"
            log.error("%s", self._subscription_problem)
            return
        self._subscription_problem = None
        log.info("subscribed to %s", self._filter)
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._inbox.put(
            InboundEvent(_topic_text(message), bytes(message.payload), message.mid, message.qos, self._connection)
        )

    def send(self, message: RelayCommandMessage, concentrator_id: str | None) -> str:
        """Publish one command (QoS 1) and wait for the broker's acknowledgement; the topic used."""
        topic = (
            meter_commands_topic(message.meter_id)
            if concentrator_id is None
            else concentrator_commands_topic(concentrator_id)
        )
        if not self._client.is_connected():
            raise SendError("not connected to the broker")
        info = self._client.publish(topic, encode_command(message), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise SendError(f"publish refused: {mqtt.error_string(info.rc)}")
        try:
            info.wait_for_publish(self._timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise SendError(f"publish failed: {exc}") from None
        if not info.is_published():
            raise SendError(f"no broker acknowledgement within {self._timeout_s} s")
        return topic

    def wake(self) -> None:
        """End a wait in `events` now (from any thread): there is work besides meter events."""
        self._inbox.put(None)

    def events(self, timeout_s: float, limit: int = 500) -> list[InboundEvent]:
        """Meter events received so far (waiting up to `timeout_s` for the first, or for a `wake`)."""
        try:
            first = self._inbox.get(timeout=timeout_s)
        except queue.Empty:
            return []
        batch = [] if first is None else [first]
        while len(batch) < limit:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            if message is not None:
                batch.append(message)
        return batch

    def ack(self, message: InboundEvent) -> None:
        """Acknowledge an event to the broker once what it means is committed (on the connection it came on)."""
        if message.qos > 0 and message.connection == self._connection:
            self._client.ack(message.mid, message.qos)
