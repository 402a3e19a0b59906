"""Hands `read_readings` commands (re-reads, 补抄) to the broker: QoS 1, not retained, confirmed by its PUBACK.

The device answers with readings on its readings topic, which ingest stores as any others; this module only
delivers the question. A command is published only while connected and counts as sent once the broker has
acknowledged it. One not acknowledged in time is an error to the caller, though the client may still deliver it
later: harmless, as its answer is readings the head-end de-duplicates and a device drops it once it has expired.
"""

from __future__ import annotations

import logging
import threading
import uuid
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from headend.mqtt.client import ConnectionWatch, connect, make_client
from headend.settings import Settings
from protocols.mqtt_topics import concentrator_commands_topic, meter_commands_topic
from protocols.readings import is_valid_id
from protocols.reread_codec import ReadReadingsCommand, encode_read_readings

log = logging.getLogger(__name__)


class RereadSendError(RuntimeError):
    """A re-read command was not acknowledged by the broker: it may or may not have reached the device."""


class RereadSender:
    """A connected publisher of re-read commands; use it as a context manager, one `send` at a time."""

    def __init__(
        self,
        settings: Settings,
        client_id: str | None = None,
        *,
        connect_timeout_s: float = 10.0,
        publish_timeout_s: float = 5.0,
    ) -> None:
        self._settings = settings
        self._connect_timeout_s = connect_timeout_s
        self._publish_timeout_s = publish_timeout_s
        # a clean session: it only publishes, so there is nothing for the broker to keep while it is away
        self._client = make_client(
            settings, client_id or f"headend-reread-{uuid.uuid4().hex[:8]}", manual_ack=False, persistent=False
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._broker = ConnectionWatch(self._client, settings, log)
        self._connected = threading.Event()
        self._closing = False
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._refused: dict[int, str] = {}  # mid -> the reason code of a PUBACK that refused it (MQTT 5)

    def __enter__(self) -> RereadSender:
        connect(self._client, self._settings, persistent=False)
        self._client.loop_start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        if self._broker.connect_result(reason, flags.session_present):
            self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self._connected.clear()
        self._broker.disconnected(reason, stopping=self._closing)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            with self._lock:
                self._refused[mid] = f"{reason} (PUBACK reason code {reason.value})"

    def send(self, command: ReadReadingsCommand, concentrator_id: str | None) -> str:
        """Publish `command` to its meter, or to concentrator `concentrator_id`, and wait for the PUBACK; the topic."""
        if concentrator_id is None:
            if command.meter_id is None:
                raise ValueError("a re-read sent to a meter's own topic must name the meter")
            topic = meter_commands_topic(command.meter_id)
        else:
            if not is_valid_id(concentrator_id):
                raise ValueError(f"concentrator id {concentrator_id!r} does not match [A-Za-z0-9_-]{{1,32}}")
            topic = concentrator_commands_topic(concentrator_id)
        payload = encode_read_readings(command)
        with self._send_lock:
            if not self._connected.wait(self._connect_timeout_s):
                raise RereadSendError(self._broker.problem() or "not connected to the broker")
            with self._lock:
                # what earlier sends that timed out left behind
                self._refused.clear()
            info = self._client.publish(topic, payload, qos=1, retain=False)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise RereadSendError(f"publish to {topic} refused by the client: {mqtt.error_string(info.rc)}")
            try:
                info.wait_for_publish(self._publish_timeout_s)
            except (RuntimeError, ValueError) as exc:
                raise RereadSendError(f"publish to {topic} failed: {exc}") from None
            if not info.is_published():
                raise RereadSendError(
                    f"no acknowledgement of the publish to {topic} within {self._publish_timeout_s} s"
                )
            with self._lock:
                refused = self._refused.pop(info.mid, None)
            if refused is not None:
                raise RereadSendError(f"the broker refused the publish to {topic}: {refused}")
        log.info("re-read %s handed to the broker on %s", command.command_id, topic)
        return topic
