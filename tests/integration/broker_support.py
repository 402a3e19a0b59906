"""A Mosquitto started from the configuration `headend broker-config` writes, and MQTT clients that log in to it."""

from __future__ import annotations

import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from typer.testing import CliRunner, Result

from headend.cli.app import app
from tests.integration.worker_support import Lines

NOT_AUTHORIZED = 0x87  # MQTT 5 reason code of a refused login, publish or subscription
TIMEOUT_S = 10.0


def invoke_headend(env: dict[str, str], *args: str) -> Result:
    """Run a `headend` command in this process."""
    return CliRunner().invoke(app, list(args), env=env)


def run_headend(env: dict[str, str], *args: str) -> str:
    """Run a `headend` command in this process; its standard output (the test fails on a non-zero exit)."""
    result = invoke_headend(env, *args)
    assert result.exit_code == 0, f"headend {' '.join(args)}: exit {result.exit_code}\n{result.output}"
    return result.stdout


def issued_password(output: str) -> str:
    """The password line of `headend devices credentials issue|rotate`."""
    lines = dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)
    return lines["password"]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class GeneratedBroker:
    """`mosquitto -c D/mosquitto.conf` as a child process; `reload` sends SIGHUP, as an operator would."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self._process: subprocess.Popen[str] | None = None
        self.output: Lines | None = None

    def _readable_by_the_broker(self) -> None:
        # mosquitto started as root reads its files as its own user; the files are the operator's to hand over
        if os.geteuid() != 0:
            return
        try:
            broker = pwd.getpwnam("mosquitto")
        except KeyError:
            return
        for path in [self.directory, *self.directory.rglob("*")]:
            os.chown(path, broker.pw_uid, broker.pw_gid)

    def start(self) -> None:
        """Start the broker and wait until it listens."""
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        (self.directory / "data").mkdir(exist_ok=True)
        self._readable_by_the_broker()
        # mosquitto writes its log through stdio, block-buffered into a pipe; the reload's line is needed at once
        line_buffered = [stdbuf, "-oL"] if (stdbuf := shutil.which("stdbuf")) else []
        self._process = subprocess.Popen(
            [*line_buffered, binary, "-c", str(self.directory / "mosquitto.conf")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self._process.stdout is not None
        self.output = Lines(self._process.stdout)
        deadline = time.monotonic() + TIMEOUT_S
        while not _listening(self.port):
            assert self._process.poll() is None, "mosquitto exited:\n" + "\n".join(self.output.lines)
            assert time.monotonic() < deadline, "mosquitto did not listen within 10 s"
            time.sleep(0.05)

    def reload(self) -> None:
        """Make the broker re-read its password file and ACL (SIGHUP) and wait until it has."""
        assert self._process is not None
        assert self.output is not None
        self._readable_by_the_broker()
        seen = len(self.output.lines)
        self._process.send_signal(signal.SIGHUP)
        # logged as the reload begins, in the same turn of the broker's one loop that completes it: whatever a
        # client sends from now on is handled under the new files
        self.output.wait_for("Reloading config", TIMEOUT_S, after=seen)

    def stop(self) -> None:
        """Stop the broker."""
        if self._process is None:
            return
        self._process.terminate()
        self._process.wait(10)
        if self.output is not None:
            self.output.close()
        self._process = None


@contextmanager
def generated_broker(directory: Path, port: int) -> Iterator[GeneratedBroker]:
    """A running GeneratedBroker, stopped afterwards."""
    broker = GeneratedBroker(directory, port)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class Tls:
    """How a test client connects over TLS."""

    ca_file: str | None
    cert_file: str | None = None
    key_file: str | None = None


class Client:
    """An MQTT 5 client logged in to one account: what it publishes, the broker's answer to each, what it receives."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        *,
        client_id: str | None = None,
        tls: Tls | None = None,
    ) -> None:
        self.port = port
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file)
        self.client.reconnect_delay_set(1, 1)
        self.connack: ReasonCode | None = None
        self.disconnects: list[ReasonCode] = []
        self.received: list[tuple[str, bytes]] = []
        self.acks: dict[int, ReasonCode] = {}
        self.granted: list[ReasonCode] = []
        self._changed = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        with self._changed:
            self.connack = reason
            self._changed.notify_all()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        with self._changed:
            self.disconnects.append(reason)
            self._changed.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.received.append((message.topic, bytes(message.payload)))
            self._changed.notify_all()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any) -> None:
        with self._changed:
            self.acks[mid] = reason
            self._changed.notify_all()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], p: Any) -> None:
        with self._changed:
            self.granted.extend(reasons)
            self._changed.notify_all()

    def _wait(self, condition: Any, what: str) -> None:
        with self._changed:
            assert self._changed.wait_for(condition, TIMEOUT_S), f"timed out waiting for {what}"

    def connect(self) -> ReasonCode:
        """Connect; the broker's CONNACK reason (a failure when it refused the login)."""
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        self._wait(lambda: self.connack is not None or self.disconnects, "CONNACK")
        if self.connack is None:
            raise ConnectionError(f"the broker closed the connection before its CONNACK ({self.disconnects[0]})")
        return self.connack

    def subscribe(self, *filters: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK."""
        before = len(self.granted)
        self.client.subscribe([(f, 1) for f in filters])
        self._wait(lambda: len(self.granted) >= before + len(filters), "SUBACK")

    def publish(self, topic: str, payload: bytes = b"{}") -> ReasonCode:
        """Publish at QoS 1; the PUBACK's reason (a failure when the broker refused it)."""
        info = self.client.publish(topic, payload, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        self._wait(lambda: info.mid in self.acks, f"PUBACK of {topic}")
        return self.acks[info.mid]

    def wait_received(self, topic: str, payload: bytes) -> None:
        """Wait until a message arrived on `topic` with `payload`."""
        self._wait(lambda: (topic, payload) in self.received, f"{payload!r} on {topic}")

    def wait_disconnected(self) -> ReasonCode:
        """Wait until the broker closed the connection; its reason."""
        self._wait(lambda: bool(self.disconnects), "the broker to close the connection")
        return self.disconnects[0]

    def topics(self) -> list[str]:
        """Topics of the messages received so far."""
        with self._changed:
            return [topic for topic, _ in self.received]

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def logged_in(
    port: int, username: str, password: str, *subscriptions: str, tls: Tls | None = None, client_id: str | None = None
) -> Iterator[Client]:
    """A Client whose login the broker accepted, subscribed to `subscriptions`; closed afterwards.

    Its client id is its username unless given, as the head-end's services and most devices choose theirs.
    """
    client = Client(port, username, password, tls=tls, client_id=client_id or username)
    try:
        reason = client.connect()
        assert not reason.is_failure, f"{username} refused: {reason}"
        if subscriptions:
            client.subscribe(*subscriptions)
        yield client
    finally:
        client.close()


def login_refused(port: int, username: str | None, password: str | None) -> bool:
    """Whether the broker refuses this login (a CONNACK with a failure)."""
    client = Client(port, username, password)
    try:
        return client.connect().is_failure
    finally:
        client.close()


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


@dataclass
class ScratchCa:
    """A CA made for one test, and certificates it signs, as PEM files in `directory`."""

    directory: Path
    name: str = "headend test CA"
    _key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    _certificate: x509.Certificate | None = None

    def __post_init__(self) -> None:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        self._certificate = (
            self._builder(subject, subject, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self._write("ca.crt", self._certificate.public_bytes(serialization.Encoding.PEM))

    @property
    def cert_file(self) -> str:
        """The CA certificate's file."""
        return str(self.directory / "ca.crt")

    @staticmethod
    def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
        )

    def _write(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        path.chmod(0o644)  # the broker reads them as its own user
        return str(path)

    def issue(self, name: str, *, server_names: Sequence[str] = ()) -> tuple[str, str]:
        """A certificate for `name` (a server's for `server_names`, a client's otherwise): its file and its key's."""
        assert self._certificate is not None
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), self._certificate.subject, key.public_key()
        ).add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        if server_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in server_names]), critical=False
            ).add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        certificate = builder.sign(self._key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return (
            self._write(f"{name}.crt", certificate.public_bytes(serialization.Encoding.PEM)),
            self._write(f"{name}.key", key_pem),
        )
