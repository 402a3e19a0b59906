"""Helpers for tests of a running ingest worker: the worker in a thread, what it stored, a broker that restarts."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from psycopg.conninfo import make_conninfo

from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions, Storage
from headend.ingest.worker import IngestWorker
from headend.settings import Settings
from tests.integration.conftest import ADMIN_URL, wait_for


class RunningWorker:
    """An in-process ingest worker, run in a thread; `failure` is what `run` raised, if it did."""

    def __init__(self, settings: Settings, database_url: str, *, wait_subscribed: bool = True) -> None:
        self.worker = IngestWorker(settings, database_url)
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if wait_subscribed:
            assert self.worker.connected.wait(15), "worker did not subscribe"
        self.handled = 0  # messages handled up to the last `wait_handled`

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # the test reports it
            self.failure = exc

    def wait_handled(self, messages: int, timeout_s: float = 30) -> None:
        """Wait until `messages` more messages are handled (committed and acknowledged), the worker alive.

        At least: a test of another session on the same broker may publish to the topics this worker subscribes to.
        """
        self.handled += messages
        wait_for(
            lambda: self.worker.stats.messages >= self.handled or not self.thread.is_alive(),
            timeout_s,
            f"{self.handled} messages handled (so far {self.worker.stats.messages})",
        )
        assert self.thread.is_alive(), f"the worker died: {self.failure!r}"
        self.handled = self.worker.stats.messages

    def stop(self) -> None:
        """Stop the worker and wait for its thread."""
        self.worker.stop()
        self.thread.join(15)
        assert not self.thread.is_alive()


@contextmanager
def superuser(db: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit superuser connection to the database of `db`: to alter tables and end sessions."""
    with psycopg.connect(make_conninfo(ADMIN_URL, dbname=db.info.dbname), autocommit=True) as conn:
        yield conn


def dead_letters(db: psycopg.Connection[Any], topic_like: str = "%") -> list[tuple[str, bytes, int | None, str]]:
    """Topic, payload, item index and reason of the dead letters, in the order recorded."""
    rows = db.execute(
        "SELECT topic, payload, item_index, reason FROM dead_letters WHERE topic LIKE %s ORDER BY dead_letter_id",
        (topic_like,),
    ).fetchall()
    return [(t, bytes(p), i, r) for t, p, i, r in rows]


def partition_days(db: psycopg.Connection[Any]) -> set[date]:
    """UTC days that have a readings partition, or a chunk with TimescaleDB."""
    storage = SchemaOptions.from_rows(db.execute(SCHEMA_OPTIONS_SQL).fetchall()).storage
    if storage is Storage.TIMESCALEDB:
        starts = db.execute(
            "SELECT range_start FROM timescaledb_information.chunks WHERE hypertable_name = 'readings'"
        ).fetchall()
        return {start.astimezone(UTC).date() for (start,) in starts}
    names = db.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'readings'::regclass"
    ).fetchall()
    return {datetime.strptime(name, "readings_p%Y%m%d").replace(tzinfo=UTC).date() for (name,) in names}


# ---------------------------------------------------------------------------------------------- a broker to restart

RESTARTABLE_BROKER_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {directory}/
log_dest none
"""


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class RestartableMosquitto:
    """A Mosquitto of our own on 127.0.0.1:`port` that keeps sessions and queued messages across a restart."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self._workdir = Path(tempfile.mkdtemp(prefix="test-mosquitto-"))
        self._config = self._workdir / "mosquitto.conf"
        self._config.write_text(RESTARTABLE_BROKER_CONFIG.format(port=port, directory=self._workdir))
        # mosquitto started as root reads its configuration and writes its database as its own unprivileged user
        self._config.chmod(0o644)
        self._workdir.chmod(0o777)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it listens."""
        assert self._process is None
        self._process = subprocess.Popen(
            [self._binary, "-c", str(self._config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not _listening(self.port):
            assert self._process.poll() is None, f"mosquitto exited with {self._process.returncode}"
            assert time.monotonic() < deadline, "mosquitto did not listen within 10 s"
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop it (SIGTERM: it saves its sessions and messages) and wait until it has exited."""
        assert self._process is not None
        self._process.terminate()
        self._process.wait(10)
        self._process = None

    def remove(self) -> None:
        """Stop it if it runs, and delete its files."""
        if self._process is not None:
            self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)


@contextmanager
def restartable_mosquitto(port: int) -> Iterator[RestartableMosquitto]:
    """A started RestartableMosquitto, removed on exit."""
    broker = RestartableMosquitto(port)
    try:
        broker.start()
        yield broker
    finally:
        broker.remove()


class PortPublisher:
    """A QoS 1 publisher on the broker at 127.0.0.1:`port` that waits until every message is acknowledged."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._pending: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes) -> None:
        """Queue one QoS 1 message."""
        info = self.client.publish(topic, payload, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        self._pending.append(info)

    def close(self, timeout_s: float = 30) -> None:
        """Wait until the broker has acknowledged everything published, then disconnect."""
        for info in self._pending:
            info.wait_for_publish(timeout_s)
            if not info.is_published():
                pytest.fail("the broker did not acknowledge a message")
        self.client.disconnect()
        self.client.loop_stop()
