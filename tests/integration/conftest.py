"""Fixtures for integration tests: a fresh migrated database on the real PostgreSQL, the real Mosquitto."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.engine import make_url

from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions, Storage
from headend.db.grants import DbRole, role_name
from headend.db.migrate import migrate
from headend.db.roles import role_url, setup_roles
from headend.mqtt.client import connect, make_client
from headend.registry.meter_import import MeterRow, import_meters
from headend.settings import Settings

ADMIN_URL = os.environ.get("HEADEND_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# the head-end's roles on the test server; shared by every test database (and every test run) of the server
ROLE_PREFIX = os.environ.get("HEADEND_TEST_DB_ROLE_PREFIX", "headend_")
MQTT_HOST = os.environ.get("HEADEND_TEST_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("HEADEND_TEST_MQTT_PORT", "1883"))

pytestmark = pytest.mark.integration


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until true; fail the test with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


@dataclass(frozen=True, slots=True)
class MigratedDatabase:
    """A migrated test database: a superuser's URL for setting up and looking behind, the operator role's URL."""

    admin_url: str
    url: str  # the operator role: every service's grants (a member of their roles), owning nothing

    def role_url(self, role: DbRole) -> str:
        """The URL of one of the head-end's roles on this database."""
        return role_url(self.admin_url, role_name(ROLE_PREFIX, role))


@contextlib.contextmanager
def fresh_database() -> Iterator[MigratedDatabase]:
    """A new database set up as production is (`db roles`, migrated by the owner role), dropped afterwards."""
    name = f"headend_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    admin_url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        # roles are shared by every test database of the server (grants are per database)
        setup_roles(admin_url, ROLE_PREFIX, {})
        owner_url = role_url(admin_url, role_name(ROLE_PREFIX, DbRole.OWNER))
        migrate(owner_url, require_timescaledb=False, collection_timezone="Asia/Shanghai", role_prefix=ROLE_PREFIX)
        _pause_timescaledb_jobs(admin_url)
        yield MigratedDatabase(admin_url, role_url(admin_url, role_name(ROLE_PREFIX, DbRole.OPERATOR)))
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def migrated() -> Iterator[MigratedDatabase]:
    """A freshly created and migrated database, dropped afterwards."""
    with fresh_database() as database:
        yield database


@pytest.fixture
def database_url(migrated: MigratedDatabase) -> str:
    """The test database as the operator role, which services and test set-up use: refused what services are."""
    return migrated.url


@pytest.fixture
def admin_url(migrated: MigratedDatabase) -> str:
    """The test database as the superuser: for set-up and inspection beyond any head-end role's rights."""
    return migrated.admin_url


@pytest.fixture
def admin_db(admin_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit superuser connection to the test database."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        yield conn


@contextlib.contextmanager
def admin_connection(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit superuser connection to the database `conn` is on: for what no head-end role may do."""
    url = make_url(ADMIN_URL).set(database=conn.info.dbname).render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as admin:
        yield admin


def storage_of(conn: psycopg.Connection[Any]) -> Storage:
    """How the database behind `conn` stores readings, as its migration recorded in `schema_options`."""
    return SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall()).storage


def _pause_timescaledb_jobs(url: str) -> None:
    """Stop TimescaleDB's background jobs (aggregate refresh, compression) from running on this database."""
    with psycopg.connect(url, autocommit=True) as conn:
        if storage_of(conn) is Storage.TIMESCALEDB:
            # a refresh at a moment of the scheduler's choosing would materialize a day in the middle of a test;
            # a test that wants the aggregate refreshed or a chunk compressed does it itself
            conn.execute(
                "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
                "WHERE proc_name IN ('policy_refresh_continuous_aggregate', 'policy_compression')"
            )


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test database."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def storage(db: psycopg.Connection[Any]) -> Storage:
    """How the test database stores readings: TimescaleDB where the server can load it, native partitions otherwise."""
    return storage_of(db)


@pytest.fixture
def partitioned_storage(storage: Storage) -> None:
    """Skip the test unless the test database stores readings in native daily partitions."""
    if storage is not Storage.PARTITIONED:
        pytest.skip("about native daily partitions; readings are in a TimescaleDB hypertable on this server")


@pytest.fixture
def timescaledb_storage(storage: Storage) -> None:
    """Skip the test unless the test database stores readings in a TimescaleDB hypertable."""
    if storage is not Storage.TIMESCALEDB:
        pytest.skip("about TimescaleDB; the test server cannot load it, so readings are in native daily partitions")


def count(conn: psycopg.Connection[Any], sql: str, *params: object) -> int:
    """The single integer a query returns."""
    row = conn.execute(sql, params or None).fetchone()
    assert row is not None
    return int(row[0])


def register(
    conn: psycopg.Connection[Any],
    meter_ids: list[str],
    *,
    concentrator: str | None = None,
    region: str = "test",
    status: str = "active",
) -> None:
    """Register meters directly through the registry import."""
    rows = [MeterRow(m, "mqtt", concentrator, region, None, 1, status, None) for m in meter_ids]
    import_meters(conn, rows)


@pytest.fixture
def unique() -> str:
    """A short unique token for ids, topics and client ids of one test."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def settings_for(unique: str) -> Iterator[Callable[..., Settings]]:
    """Settings of an ingest worker on the test broker, in a shared group unique to this test."""
    created: list[Settings] = []

    def make(database_url: str, client_suffix: str = "a") -> Settings:
        settings = Settings(
            database_url=database_url,
            mqtt_host=MQTT_HOST,
            mqtt_port=MQTT_PORT,
            mqtt_client_id=f"test-ingest-{unique}-{client_suffix}",
            mqtt_shared_group=f"g{unique}",
            ingest_batch_wait_ms=20,
        )
        created.append(settings)
        return settings

    yield make
    for settings in created:
        purge_session(settings)


def purge_session(settings: Settings) -> None:
    """Delete the broker-side persistent session of a test worker so it cannot hold messages later."""
    client = make_client(settings, settings.mqtt_client_id, manual_ack=False, persistent=False)
    done = threading.Event()
    client.on_connect = lambda *args: done.set()
    connect(client, settings, persistent=False)
    client.loop_start()
    done.wait(5)
    client.disconnect()
    client.loop_stop()


class Publisher:
    """A QoS 1 publisher on the test broker that waits until every message is acknowledged."""

    def __init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(MQTT_HOST, MQTT_PORT)
        self.client.loop_start()
        self._pending: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes) -> None:
        """Queue one QoS 1 message."""
        info = self.client.publish(topic, payload, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        self._pending.append(info)

    def flush(self, timeout_s: float = 30) -> None:
        """Wait until the broker has acknowledged everything published so far."""
        for info in self._pending:
            info.wait_for_publish(timeout_s)
            assert info.is_published()
        self._pending.clear()

    def close(self) -> None:
        """Disconnect."""
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def publisher() -> Iterator[Publisher]:
    """A publisher closed after the test."""
    pub = Publisher()
    yield pub
    pub.close()
