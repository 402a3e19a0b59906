"""The broker as `headend broker-config` configures it, on the real Mosquitto: every device speaks only for itself.

A private Mosquitto on a free port runs the configuration the command writes for a registry of two direct meters,
two concentrators with their meters and the head-end's service accounts; devices log in with the credentials
`headend devices credentials issue` printed. Every refusal is checked twice: the broker's answer (MQTT 5 reason
codes) and what the head-end's own subscribers (logged in to its service accounts) received — the forged message
never, a genuine one sent after it always.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from sqlalchemy.engine import make_url

from headend.db.migrate import migrate
from headend.ingest.worker import IngestWorker
from headend.mqtt.client import connect, make_client
from headend.mqtt.embedded_broker import free_port
from headend.registry.meter_import import MeterRow, import_meters
from headend.settings import Settings
from simulators.fleet_sim import OutgoingMessage
from simulators.publisher import BrokerConfig, MqttPublisher
from tests.integration.broker_support import (
    NOT_AUTHORIZED,
    Client,
    GeneratedBroker,
    ScratchCa,
    Tls,
    invoke_headend,
    issued_password,
    logged_in,
    login_refused,
    run_headend,
)
from tests.integration.conftest import count, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ADMIN_URL = os.environ.get("HEADEND_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ZONE = ZoneInfo("Asia/Shanghai")
DIRECT = ("m-a", "m-b", "m-rev", "m-rot")
TLS_METERS = ("m-tls", "m-cert")  # credentials issued by the TLS tests, each on a broker of its own
# registered for the refusals: a meter speaking Modbus, a removed one, one named like a service account
ODD_METERS = (("mb-1", "modbus", "active"), ("m-gone", "mqtt", "removed"), ("headend-monitor", "mqtt", "active"))
BEHIND = {"dcu-1": ("x-1", "x-2"), "dcu-2": ("y-1",)}
# generated for this run: no password is written into the repository
SERVICE_PASSWORDS = {role: secrets.token_urlsafe(18) for role in ("ingest", "dispatch", "monitor", "simulator")}
# two accounts a role: the worker under test, and a subscriber that watches what reaches the role
SERVICE_ACCOUNTS = {
    "ingest": "headend-ingest,ingest-watch",
    "dispatch": "headend-dispatch,dispatch-watch",
    "monitor": "headend-monitor",
    "simulator": "headend-simulator,headend-simulator-relay",
}


@dataclass
class Deployment:
    """A migrated database with a registry and issued credentials, and the broker configured for it."""

    database_url: str
    directory: Path
    port: int
    passwords: dict[str, str] = field(default_factory=dict)
    broker: GeneratedBroker | None = None
    extra_options: tuple[str, ...] = ()

    @property
    def env(self) -> dict[str, str]:
        """The environment of the `headend` commands: the database, and the service accounts' settings."""
        env = {"HEADEND_DATABASE_URL": self.database_url}
        for role, accounts in SERVICE_ACCOUNTS.items():
            env[f"HEADEND_BROKER_{role.upper()}_ACCOUNTS"] = accounts
            env[f"HEADEND_BROKER_{role.upper()}_PASSWORD"] = SERVICE_PASSWORDS[role]
        return env

    def write_config(self) -> None:
        """`headend broker-config` into the directory, for the broker on 127.0.0.1:port."""
        run_headend(
            self.env,
            "broker-config",
            "--dir",
            str(self.directory),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--persistence-dir",
            str(self.directory / "data"),
            *self.extra_options,
        )

    def credentials(self, action: str, device_id: str) -> str:
        """`headend devices credentials ACTION DEVICE_ID`; the password printed (issue, rotate), kept."""
        output = run_headend(self.env, "devices", "credentials", action, device_id, "--by", "test")
        if action != "revoke":
            self.passwords[device_id] = issued_password(output)
        return output

    def reconfigure(self) -> None:
        """Write the configuration again and make the running broker reload it."""
        assert self.broker is not None
        self.write_config()
        self.broker.reload()

    def settings(self, username: str, **overrides: Any) -> Settings:
        """Settings of a head-end service logged in to `username` on this broker."""
        role = username.removeprefix("headend-")
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "mqtt_host": "127.0.0.1",
            "mqtt_port": self.port,
            "mqtt_username": username,
            "mqtt_password": SERVICE_PASSWORDS[role],
            "mqtt_client_id": username,
            "ingest_batch_wait_ms": 20,
        }
        return Settings(**{**values, **overrides})


@pytest.fixture(scope="module")
def module_database() -> Iterator[str]:
    """A migrated database for this module's tests, dropped afterwards."""
    name = f"headend_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url, require_timescaledb=False, collection_timezone="Asia/Shanghai")
        with psycopg.connect(url, autocommit=True) as conn:
            rows = [MeterRow(m, "mqtt", None, "test", None, 1, "active", None) for m in (*DIRECT, *TLS_METERS)]
            rows += [
                MeterRow(m, "mqtt", dcu, "test", None, 1, "active", None) for dcu, ms in BEHIND.items() for m in ms
            ]
            rows += [
                MeterRow(m, protocol, None, "test", None, 1, status, None)
                if protocol == "mqtt"
                else MeterRow(
                    m, protocol, None, "test", "eastron_sdm120", 1, status, None, endpoint="127.0.0.1:502", unit_id=1
                )
                for m, protocol, status in ODD_METERS
            ]
            import_meters(conn, rows)
        yield url
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def broker_directory() -> Iterator[Path]:
    """An empty directory the broker (which drops root for its own user) can enter."""
    directory = Path(tempfile.mkdtemp(prefix="test-broker-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def deployment(module_database: str) -> Iterator[Deployment]:
    """Credentials issued to every direct meter and concentrator, and the broker running their configuration."""
    directory = Path(tempfile.mkdtemp(prefix="test-broker-"))
    directory.chmod(0o755)
    deployed = Deployment(module_database, directory, free_port())
    for device in (*DIRECT, *BEHIND):
        deployed.credentials("issue", device)
    deployed.write_config()
    deployed.broker = GeneratedBroker(directory, deployed.port)
    deployed.broker.start()
    try:
        yield deployed
    finally:
        deployed.broker.stop()
        shutil.rmtree(directory, ignore_errors=True)


def device(deployed: Deployment, device_id: str, *subscriptions: str) -> Any:
    """A device logged in with its own credentials."""
    return logged_in(deployed.port, device_id, deployed.passwords[device_id], *subscriptions)


def watcher(deployed: Deployment, account: str, *subscriptions: str) -> Any:
    """A subscriber logged in to a service account."""
    role = account.split("-")[0]
    return logged_in(deployed.port, account, SERVICE_PASSWORDS[role], *subscriptions)


def reading(energy_wh: int) -> bytes:
    """A valid reading of now's 15-minute slot."""
    now = datetime.now(ZONE).replace(second=0, microsecond=0)
    slot = now - timedelta(minutes=now.minute % 15)
    return json.dumps({"ts": slot.isoformat(), "energy_import_wh": energy_wh}).encode()


def test_credentials_only_for_devices_that_can_hold_them(deployment: Deployment) -> None:
    env = deployment.env

    def refused(*args: str) -> str:
        result = invoke_headend(env, "devices", "credentials", *args)
        assert result.exit_code == 1, result.output
        return result.stderr

    assert "no meter or concentrator 'nobody' is registered" in refused("issue", "nobody")
    assert "speaks modbus, not MQTT" in refused("issue", "mb-1")
    assert "'m-gone' is removed" in refused("issue", "m-gone")
    assert "holds no live credentials" in refused("rotate", "x-2")
    assert "holds no live credentials" in refused("revoke", "x-2")
    first = issued_password(run_headend(env, "devices", "credentials", "issue", "x-2"))
    assert "already holds live credentials" in refused("issue", "x-2")
    run_headend(env, "devices", "credentials", "revoke", "x-2", "--by", "ops")
    second = issued_password(run_headend(env, "devices", "credentials", "issue", "x-2"))
    assert second != first
    history = json.loads(run_headend(env, "devices", "credentials", "list", "x-2", "--all", "--json"))["credentials"]
    assert [(c["kind"], c["end_reason"], c["ended_by"]) for c in history] == [
        ("meter", "revoked", "ops"),
        ("meter", None, None),
    ]
    assert all("password" not in key for c in history for key in c)
    run_headend(env, "devices", "credentials", "revoke", "x-2")

    # a device named like a service account is left out of the files: the name is the service's
    run_headend(env, "devices", "credentials", "issue", "headend-monitor")
    directory = Path(tempfile.mkdtemp(prefix="test-broker-"))
    try:
        result = invoke_headend(env, "broker-config", "--dir", str(directory), "--port", "1883")
        assert result.exit_code == 0, result.output
        assert "meter headend-monitor: its id is a service account's name; not written" in result.stderr
        names = [line.split(":", 1)[0] for line in (directory / "passwd").read_text().splitlines()]
        assert names.count("headend-monitor") == 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        run_headend(env, "devices", "credentials", "revoke", "headend-monitor")


def test_only_accounts_with_their_password_may_log_in(deployment: Deployment) -> None:
    assert login_refused(deployment.port, None, None)  # anonymous
    assert login_refused(deployment.port, "m-a", "not-its-password")
    assert login_refused(deployment.port, "m-a", None)
    assert login_refused(deployment.port, "x-1", deployment.passwords["m-a"])  # a meter without credentials
    assert login_refused(deployment.port, "headend-ingest", deployment.passwords["m-a"])
    assert not login_refused(deployment.port, "m-a", deployment.passwords["m-a"])
    assert not login_refused(deployment.port, "headend-monitor", SERVICE_PASSWORDS["monitor"])


def test_a_meter_cannot_speak_for_another_meter(deployment: Deployment) -> None:
    with (
        watcher(deployment, "ingest-watch", "meters/+/readings", "concentrators/+/readings") as ingest,
        watcher(deployment, "dispatch-watch", "meters/+/events") as dispatch,
        device(deployment, "m-b", "meters/m-b/commands") as victim,
        device(deployment, "m-a") as forger,
    ):
        forged = [
            "meters/m-b/readings",
            "meters/m-b/events",
            "meters/x-1/events",
            "concentrators/dcu-1/readings",
            "meters/m-b/commands",  # a command to another meter
            "meters/m-a/commands",  # or to itself: commands come from the dispatcher only
            "meters/m-a/readings/extra",
        ]
        for topic in forged:
            assert forger.publish(topic, b"forged").value == NOT_AUTHORIZED, topic
        assert not forger.publish("meters/m-a/readings", b"genuine").is_failure
        assert not forger.publish("meters/m-a/events", b"genuine").is_failure
        # the broker routes one connection's messages in order: the forged ones would have arrived first
        ingest.wait_received("meters/m-a/readings", b"genuine")
        dispatch.wait_received("meters/m-a/events", b"genuine")
        assert ingest.topics() == ["meters/m-a/readings"]
        assert dispatch.topics() == ["meters/m-a/events"]
        assert victim.received == []


def test_a_meter_reads_only_its_own_commands(deployment: Deployment) -> None:
    with (
        watcher(deployment, "dispatch-watch") as dispatcher,
        device(deployment, "m-a", "meters/+/commands", "concentrators/+/commands", "#") as nosy,
        device(deployment, "m-b", "meters/m-b/commands") as other,
    ):
        # a subscription outside the meter's rights is granted, and delivers nothing
        assert not any(reason.is_failure for reason in nosy.granted)
        for topic in ("meters/m-b/commands", "concentrators/dcu-1/commands", "meters/m-a/commands"):
            assert not dispatcher.publish(topic, topic.encode()).is_failure
        nosy.wait_received("meters/m-a/commands", b"meters/m-a/commands")
        other.wait_received("meters/m-b/commands", b"meters/m-b/commands")
        assert set(nosy.topics()) == {"meters/m-a/commands"}  # once a matching subscription, never another's


def test_a_concentrator_speaks_for_itself_and_its_meters_events_only(deployment: Deployment) -> None:
    with (
        watcher(deployment, "ingest-watch", "meters/+/readings", "concentrators/+/readings") as ingest,
        watcher(deployment, "dispatch-watch", "meters/+/events") as dispatch,
        device(deployment, "dcu-1", "concentrators/+/commands", "meters/+/commands") as dcu,
    ):
        for topic in (
            "concentrators/dcu-2/readings",  # another concentrator
            "meters/y-1/events",  # a meter behind another concentrator
            "meters/m-a/events",  # a direct meter
            "meters/x-1/readings",  # its own meter's readings go in its own batches
            "meters/dcu-1/readings",  # as a meter of its own name
            "concentrators/dcu-1/commands",
        ):
            assert dcu.publish(topic, b"forged").value == NOT_AUTHORIZED, topic
        for topic in ("concentrators/dcu-1/readings", "meters/x-1/events", "meters/x-2/events"):
            assert not dcu.publish(topic, b"genuine").is_failure, topic
        ingest.wait_received("concentrators/dcu-1/readings", b"genuine")
        dispatch.wait_received("meters/x-2/events", b"genuine")
        assert ingest.topics() == ["concentrators/dcu-1/readings"]
        assert dispatch.topics() == ["meters/x-1/events", "meters/x-2/events"]

        for topic in ("concentrators/dcu-2/commands", "meters/x-1/commands", "concentrators/dcu-1/commands"):
            assert not dispatch.publish(topic, topic.encode()).is_failure
        dcu.wait_received("concentrators/dcu-1/commands", b"concentrators/dcu-1/commands")
        assert dcu.topics() == ["concentrators/dcu-1/commands"]


def test_no_client_can_take_over_another_s_session(deployment: Deployment) -> None:
    with (
        watcher(deployment, "ingest-watch", "meters/+/readings") as ingest,
        device(deployment, "m-b", "meters/m-b/commands") as victim,
    ):
        # a meter that logs in with another client's id gets a session of its own name instead of theirs
        for taken in ("ingest-watch", "m-b"):
            with logged_in(deployment.port, "m-a", deployment.passwords["m-a"], client_id=taken) as intruder:
                assert not intruder.publish("meters/m-a/readings", taken.encode()).is_failure
                ingest.wait_received("meters/m-a/readings", taken.encode())
        assert ingest.disconnects == []
        assert victim.disconnects == []


def test_ingest_stores_a_meter_s_reading_and_never_a_forged_one(deployment: Deployment) -> None:
    settings = deployment.settings("headend-ingest", mqtt_shared_group="headend")
    worker = IngestWorker(settings, deployment.database_url)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.connected.wait(15), "the ingest worker did not log in and subscribe"
        with device(deployment, "m-a") as meter, device(deployment, "dcu-1") as dcu:
            assert meter.publish("meters/m-b/readings", reading(111)).value == NOT_AUTHORIZED
            assert dcu.publish("concentrators/dcu-2/readings", b"{}").value == NOT_AUTHORIZED
            assert not meter.publish("meters/m-a/readings", reading(222)).is_failure
        with psycopg.connect(deployment.database_url, autocommit=True) as db:
            wait_for(
                lambda: count(db, "SELECT count(*) FROM readings WHERE meter_id = 'm-a'") == 1, 20, "m-a's reading"
            )
            assert count(db, "SELECT count(*) FROM readings WHERE meter_id <> 'm-a'") == 0
            assert count(db, "SELECT count(*) FROM dead_letters") == 0
    finally:
        worker.stop()
        thread.join(15)


def test_the_dispatcher_account_delivers_a_command_and_hears_the_answer(deployment: Deployment) -> None:
    settings = deployment.settings("headend-dispatch")
    client = make_client(settings, settings.mqtt_client_id, manual_ack=False, persistent=False)
    answers: list[str] = []
    subscribed = threading.Event()
    client.on_connect = lambda c, u, f, reason, p: c.subscribe("meters/+/events", qos=1)
    client.on_subscribe = lambda c, u, mid, reasons, p: subscribed.set()
    client.on_message = lambda c, u, message: answers.append(message.topic)
    connect(client, settings, persistent=False)
    client.loop_start()
    try:
        assert subscribed.wait(10), "the dispatcher account did not subscribe"
        with device(deployment, "m-a", "meters/m-a/commands") as meter:
            info = client.publish("meters/m-a/commands", b"disconnect", qos=1)
            info.wait_for_publish(10)
            meter.wait_received("meters/m-a/commands", b"disconnect")
            assert not meter.publish("meters/m-a/events", b"executed").is_failure
            wait_for(lambda: answers == ["meters/m-a/events"], 10, "the meter's answer at the dispatcher")
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_simulated_fleet_logs_in_as_the_simulator_and_its_relay_account(deployment: Deployment) -> None:
    with watcher(deployment, "ingest-watch", "meters/+/readings", "concentrators/+/readings") as ingest:
        seen = len(deployment.broker.output.lines) if deployment.broker and deployment.broker.output else 0
        env = {
            **os.environ,
            "HEADEND_MQTT_HOST": "127.0.0.1",
            "HEADEND_MQTT_PORT": str(deployment.port),
            "HEADEND_MQTT_USERNAME": "headend-simulator",
            "HEADEND_MQTT_PASSWORD": SERVICE_PASSWORDS["simulator"],
        }
        # a process of its own: the command line as an operator runs it
        subprocess.run(
            [
                *(sys.executable, "-m", "headend", "simulate", "--meters", "4", "--concentrators", "1"),
                *("--direct-share", "0.5", "--id-prefix", "SIMT", "--intervals", "1", "--speed", "max"),
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(lambda: len(ingest.received) >= 3, 10, "the fleet's readings")  # 2 direct meters, 1 batch
        assert deployment.broker is not None
        assert deployment.broker.output is not None
        log = deployment.broker.output.lines[seen:]
        # readings and relay answers: two accounts, two sessions, neither closing the other
        assert any("as headend-simulator-relay " in line for line in log), log
        assert not any("closing old connection" in line for line in log), log


def test_revoked_credentials_are_refused_once_the_broker_reloads(deployment: Deployment) -> None:
    password = deployment.passwords["m-rev"]
    with device(deployment, "m-rev") as connected:
        deployment.credentials("revoke", "m-rev")
        # nothing changes at the broker until its configuration is written again and reloaded
        assert not login_refused(deployment.port, "m-rev", password)
        deployment.reconfigure()
        # the reload drops the connection that logged in with the revoked password
        connected.wait_disconnected()
    assert login_refused(deployment.port, "m-rev", password)
    assert not login_refused(deployment.port, "m-a", deployment.passwords["m-a"])


def test_rotated_credentials_old_refused_new_accepted_after_reload(deployment: Deployment) -> None:
    old = deployment.passwords["m-rot"]
    deployment.credentials("rotate", "m-rot")
    new = deployment.passwords["m-rot"]
    assert new != old
    # until the reload the broker still knows the old password only
    assert not login_refused(deployment.port, "m-rot", old)
    assert login_refused(deployment.port, "m-rot", new)
    deployment.reconfigure()
    assert login_refused(deployment.port, "m-rot", old)
    with device(deployment, "m-rot", "meters/m-rot/commands") as meter:
        assert not meter.publish("meters/m-rot/readings", b"{}").is_failure


def test_tls_end_to_end_meter_to_database(module_database: str, broker_directory: Path) -> None:
    ca = ScratchCa(broker_directory)
    cert, key = ca.issue("broker", server_names=("127.0.0.1", "localhost"))
    tls_port = free_port()
    deployed = Deployment(
        module_database,
        broker_directory,
        free_port(),
        extra_options=("--tls-port", str(tls_port), "--tls-cert", cert, "--tls-key", key),
    )
    deployed.credentials("issue", "m-tls")
    deployed.write_config()
    broker = GeneratedBroker(broker_directory, deployed.port)
    broker.start()
    stop = threading.Event()
    settings = deployed.settings(
        "headend-ingest", mqtt_port=tls_port, mqtt_tls_ca_file=ca.cert_file, mqtt_shared_group=None
    )
    worker = IngestWorker(settings, module_database, stop)
    thread = threading.Thread(target=worker.run, daemon=True)
    try:
        thread.start()
        assert worker.connected.wait(15), "the ingest worker did not connect over TLS"
        meter = BrokerConfig(
            port=tls_port, username="m-tls", password=deployed.passwords["m-tls"], ca_file=ca.cert_file, max_inflight=10
        )
        with MqttPublisher(meter) as publisher:
            publisher.publish(OutgoingMessage("meters/m-tls/readings", reading(333), 1, datetime.now(ZONE)))
            assert publisher.drain(10) == 0
        with psycopg.connect(module_database, autocommit=True) as db:
            wait_for(
                lambda: (
                    count(db, "SELECT count(*) FROM readings WHERE meter_id = 'm-tls' AND energy_import_wh = 333") == 1
                ),
                20,
                "m-tls's reading, sent over TLS",
            )
        # a client that does not trust the test CA does not get in, nor does one without TLS
        with (
            socket.create_connection(("127.0.0.1", tls_port)) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
        plain = Client(tls_port, "m-tls", deployed.passwords["m-tls"])
        with pytest.raises(ConnectionError):
            plain.connect()
        plain.close()
    finally:
        stop.set()
        thread.join(15)
        broker.stop()


def test_tls_client_certificates_when_required(module_database: str, broker_directory: Path) -> None:
    ca = ScratchCa(broker_directory)
    cert, key = ca.issue("broker", server_names=("127.0.0.1",))
    client_cert, client_key = ca.issue("m-cert")
    tls_port = free_port()
    deployed = Deployment(
        module_database,
        broker_directory,
        free_port(),
        extra_options=(
            *("--port", "0", "--tls-port", str(tls_port), "--tls-cert", cert, "--tls-key", key),
            *("--tls-client-ca", ca.cert_file),
        ),
    )
    deployed.credentials("issue", "m-cert")
    deployed.write_config()
    with_certificate = Tls(ca.cert_file, client_cert, client_key)
    broker = GeneratedBroker(broker_directory, tls_port)
    broker.start()
    try:
        without = Client(tls_port, "m-cert", deployed.passwords["m-cert"], tls=Tls(ca.cert_file))
        with pytest.raises(OSError, match=r"certificate|CONNACK"):
            without.connect()
        without.close()
        with logged_in(tls_port, "m-cert", deployed.passwords["m-cert"], tls=with_certificate) as meter:
            assert not meter.publish("meters/m-cert/readings", b"{}").is_failure
        # the certificate is a second factor: the password is still checked
        wrong = Client(tls_port, "m-cert", "not-its-password", tls=with_certificate)
        assert wrong.connect().is_failure
        wrong.close()
    finally:
        broker.stop()
