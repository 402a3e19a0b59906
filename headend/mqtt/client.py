"""A paho-mqtt client configured from settings: persistent session, QoS 1, optional manual acknowledgement."""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from headend.settings import MqttProtocol, Settings

# paho's wait between connection attempts: doubled after each failure, from the least to the most
RECONNECT_MIN_DELAY_S = 1
RECONNECT_MAX_DELAY_S = 30


def broker_address(settings: Settings) -> tuple[str, int]:
    """Host and port of the broker; an unset host means the embedded broker on localhost."""
    return (settings.mqtt_host or "127.0.0.1", settings.mqtt_port)


def make_client(settings: Settings, client_id: str, *, manual_ack: bool, persistent: bool) -> mqtt.Client:
    """A paho client (callback API v2) with the credentials, TLS and protocol version of `settings`."""
    v5 = settings.mqtt_protocol is MqttProtocol.V5
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else not persistent,
        manual_ack=manual_ack,
    )
    if settings.mqtt_username:
        client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
    if settings.mqtt_tls_enabled:
        # the broker's certificate is verified against the CA file (the system's CAs without one), its name too
        client.tls_set(
            ca_certs=settings.mqtt_tls_ca_file,
            certfile=settings.mqtt_tls_cert_file,
            keyfile=settings.mqtt_tls_key_file,
        )
        client.tls_insecure_set(settings.mqtt_tls_insecure)
    client.reconnect_delay_set(min_delay=RECONNECT_MIN_DELAY_S, max_delay=RECONNECT_MAX_DELAY_S)
    client.on_socket_open = _no_delay
    return client


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # paho leaves Nagle on: an ack followed by a small publish then waits ~40 ms for the broker's delayed ACK
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect(client: mqtt.Client, settings: Settings, *, persistent: bool, keepalive_s: int = 30) -> None:
    """Connect asynchronously (the network loop completes it), keeping the session when `persistent`."""
    host, port = broker_address(settings)
    if settings.mqtt_protocol is MqttProtocol.V5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.ReceiveMaximum = settings.mqtt_receive_maximum
        if persistent:
            properties.SessionExpiryInterval = settings.mqtt_session_expiry_s
        client.connect_async(host, port, keepalive=keepalive_s, clean_start=not persistent, properties=properties)
    else:
        client.connect_async(host, port, keepalive=keepalive_s)


def describe_connect_error(exc: BaseException | None, host: str) -> str:
    """Why a connection to the broker could not be opened, in words."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host!r} ({exc.strerror})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate is not trusted ({getattr(exc, 'verify_message', None) or exc})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {getattr(exc, 'reason', None) or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) if exc is not None else "connection failed"


class ConnectionWatch:
    """Logs a client's connection attempts and their outcome, and says what is wrong while it is not connected.

    paho retries on its own (`reconnect_delay_set`) but tells only its callbacks why an attempt failed: a worker
    whose broker is out of reach would otherwise say nothing for as long as it fails. The owner's `on_connect` and
    `on_disconnect` pass their reason codes to `connect_result` and `disconnected`; failures to open a connection
    arrive through `on_connect_fail`, which this installs.
    """

    def __init__(
        self, client: mqtt.Client, settings: Settings, log: logging.Logger, clock: Callable[[], float] = time.monotonic
    ) -> None:
        host, port = broker_address(settings)
        self._host = host
        self._address = f"{host}:{port}"
        self._log = log
        self._clock = clock
        self.connected = False
        self._failures = 0  # failed attempts since the last connection
        self._down_since = clock()
        self._last_error = "not connected yet"
        client.on_connect_fail = self._on_connect_fail

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this while handling the OSError of the attempt; the error is not passed, but it is current
        self._failed(describe_connect_error(sys.exc_info()[1], self._host))

    def _failed(self, reason: str) -> None:
        self._failures += 1
        self._last_error = reason
        # paho's next wait is not exposed (and its first waits depend on how the attempt failed): only the bound
        self._log.warning(
            "cannot connect to the broker %s: %s (attempt %d; retrying, at most %d s apart)",
            self._address,
            reason,
            self._failures,
            RECONNECT_MAX_DELAY_S,
            extra={"broker": self._address, "attempt": self._failures},
        )

    def connect_result(self, reason: ReasonCode, session_present: bool) -> bool:
        """Log the broker's answer to a connection (CONNACK); whether it accepted it."""
        if reason.is_failure:
            self._failed(f"refused by the broker: {reason} (CONNACK reason code {reason.value})")
            return False
        after = ""
        if self._failures:
            after = f" after {self._failures} failed attempt(s) in {self._clock() - self._down_since:.0f} s"
        self._log.info(
            "connected to the broker %s%s (session present: %s)",
            self._address,
            after,
            session_present,
            extra={"broker": self._address},
        )
        self.connected = True
        self._failures = 0
        return True

    def disconnected(self, reason: ReasonCode, *, stopping: bool) -> None:
        """Log the loss of a connection (a refused connection ends here too, already logged as refused)."""
        if not self.connected:
            return
        self.connected = False
        self._down_since = self._clock()
        self._last_error = f"disconnected ({reason})"
        if not stopping:
            self._log.warning(
                "disconnected from the broker %s (%s); reconnecting",
                self._address,
                reason,
                extra={"broker": self._address},
            )

    def problem(self) -> str | None:
        """What is wrong while not connected, for a status line; None when connected."""
        if self.connected:
            return None
        return (
            f"not connected to the broker {self._address} for {self._clock() - self._down_since:.0f} s: "
            f"{self._last_error} ({self._failures} failed attempt(s))"
        )
