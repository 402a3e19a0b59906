"""A paho-mqtt client configured from settings: persistent session, QoS 1, optional manual acknowledgement."""

from __future__ import annotations

import socket
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from headend.settings import MqttProtocol, Settings


def broker_address(settings: Settings) -> tuple[str, int]:
    """Host and port of the broker; an unset host means the embedded broker on localhost."""
    return (settings.mqtt_host or "127.0.0.1", settings.mqtt_port)


def make_client(settings: Settings, client_id: str, *, manual_ack: bool, persistent: bool) -> mqtt.Client:
    """A paho client (callback API v2) with credentials and the protocol version from `settings`."""
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
    client.reconnect_delay_set(min_delay=1, max_delay=30)
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
