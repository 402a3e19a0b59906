"""The schema on the real server: the plain-PostgreSQL path here, the TimescaleDB path where the extension exists."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions, Storage
from headend.db.errors import TimescaleDBUnavailableError
from headend.db.migrate import downgrade, migrate
from headend.db.readiness import TimescaleDB, timescaledb_status
from headend.ingest.messages import Decoded, SourcedReading
from headend.ingest.writer import ReadingWriter
from prepay_engine import ledger as pure_ledger
from protocols.readings import MeterReading, is_valid_id
from tests.integration.conftest import ADMIN_URL, count, register

pytestmark = pytest.mark.integration


def _timescaledb_available() -> bool:
    """Whether new databases on the test server can load TimescaleDB (installed and preloaded)."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        installed = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()
    status = timescaledb_status(
        created=False, installed=installed is not None, preload_libraries="" if preload is None else str(preload[0])
    )
    return status is TimescaleDB.LOADABLE


TIMESCALEDB = _timescaledb_available()


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    """A new, empty database (not migrated), dropped afterwards."""
    name = f"headend_schema_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _options(conn: psycopg.Connection[Any]) -> SchemaOptions:
    return SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall())


def _write_one_day(conn: psycopg.Connection[Any], meter_id: str) -> None:
    register(conn, [meter_id])
    start = datetime(2026, 11, 19, 16, tzinfo=UTC)  # 2026-11-20 00:00 in Asia/Shanghai
    decoded = Decoded(
        readings=[
            SourcedReading(MeterReading(meter_id, start + timedelta(minutes=15 * i), i), "test", "t", start, None)
            for i in range(96)
        ]
    )
    writer = ReadingWriter(conn, _options(conn), timedelta(minutes=5))
    result = writer.write(decoded, datetime(2026, 11, 22, tzinfo=UTC))
    assert result.inserted == 96


@pytest.mark.skipif(TIMESCALEDB, reason="the timescaledb extension is available on this server")
def test_requiring_timescaledb_fails_clearly_without_it(empty_database_url: str) -> None:
    with pytest.raises(TimescaleDBUnavailableError, match="HEADEND_REQUIRE_TIMESCALEDB is set but"):
        migrate(empty_database_url, require_timescaledb=True, collection_timezone="Asia/Shanghai")
    with psycopg.connect(empty_database_url) as conn:
        # nothing half-made: the migration ran in one transaction
        assert count(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0


@pytest.mark.skipif(TIMESCALEDB, reason="the timescaledb extension is available on this server")
def test_plain_postgresql_path(empty_database_url: str) -> None:
    migrate(empty_database_url, require_timescaledb=False, collection_timezone="Asia/Shanghai")
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        assert _options(conn) == SchemaOptions(Storage.PARTITIONED, "Asia/Shanghai")
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'readings'").fetchone()
        assert kind == ("p",)
        _write_one_day(conn, "plain1")
        row = conn.execute(
            "SELECT readings_count, intervals_read FROM meter_day_collection WHERE meter_id = 'plain1' "
            "AND day = '2026-11-20'"
        ).fetchone()
        assert row == (96, 96)


@pytest.mark.skipif(not TIMESCALEDB, reason="the timescaledb extension is not installed and preloaded on this server")
def test_timescaledb_path(empty_database_url: str) -> None:
    migrate(empty_database_url, require_timescaledb=True, collection_timezone="Asia/Shanghai")
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        assert _options(conn) == SchemaOptions(Storage.TIMESCALEDB, "Asia/Shanghai")
        dims = conn.execute(
            "SELECT column_name, time_interval FROM timescaledb_information.dimensions "
            "WHERE hypertable_name = 'readings'"
        ).fetchall()
        assert dims == [("ts", timedelta(days=1))]
        segment = conn.execute(
            "SELECT attname FROM timescaledb_information.compression_settings "
            "WHERE hypertable_name = 'readings' AND segmentby_column_index = 1"
        ).fetchone()
        assert segment == ("meter_id",)
        jobs = {
            name
            for (name,) in conn.execute(
                # the aggregate's refresh job names the view (TimescaleDB 2.28) or its materialization hypertable
                "SELECT proc_name FROM timescaledb_information.jobs WHERE hypertable_name IN ('readings', "
                "'collection_daily_cagg', (SELECT materialization_hypertable_name "
                "FROM timescaledb_information.continuous_aggregates "
                "WHERE view_name = 'collection_daily_cagg'))"
            )
        }
        assert {"policy_compression", "policy_refresh_continuous_aggregate"} <= jobs
        _write_one_day(conn, "ts1")
        conn.execute("CALL refresh_continuous_aggregate('collection_daily_cagg', NULL, NULL)")
        row = conn.execute(
            "SELECT readings_count, intervals_read FROM meter_day_collection WHERE meter_id = 'ts1' "
            "AND day = '2026-11-20'"
        ).fetchone()
        assert row == (96, 96)


def test_migrate_is_repeatable_and_reversible(empty_database_url: str) -> None:
    migrate(empty_database_url, require_timescaledb=False, collection_timezone="Asia/Shanghai")
    migrate(empty_database_url, require_timescaledb=False, collection_timezone="Asia/Shanghai")
    downgrade(empty_database_url, "base")
    with psycopg.connect(empty_database_url) as conn:
        assert (
            count(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")
            == 0
        )
    migrate(empty_database_url, require_timescaledb=False, collection_timezone="Asia/Shanghai")
    with psycopg.connect(empty_database_url) as conn:
        assert count(conn, "SELECT count(*) FROM meters") == 0


def test_unknown_collection_timezone_is_refused_before_any_change(empty_database_url: str) -> None:
    with pytest.raises(ValueError, match="unknown collection time zone 'Mars/Olympus'"):
        migrate(empty_database_url, require_timescaledb=False, collection_timezone="Mars/Olympus")
    with psycopg.connect(empty_database_url) as conn:
        assert count(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0


@pytest.mark.parametrize(
    ("account_id", "customer_id", "channel"),
    [
        ("customer:" + "C" * 32 + ":prepaid", "C" * 32, None),
        ("customer:" + "C" * 33 + ":prepaid", None, None),
        ("customer:A-1_b:emergency_credit", "A-1_b", None),
        ("customer:A1:savings", None, None),
        ("customer::debt", None, None),
        ("cash_in_transit:" + "w" * 32, None, "w" * 32),
        ("cash_in_transit:" + "w" * 33, None, None),
        ("cash_in_transit:WeChat", None, None),
        ("x" * 160, None, None),
    ],
)
def test_ledger_account_ids_derive_customer_and_channel(
    db: psycopg.Connection[Any], account_id: str, customer_id: str | None, channel: str | None
) -> None:
    row = db.execute(
        "INSERT INTO ledger_accounts (account_id, kind) VALUES (%s, 'revenue') RETURNING customer_id, channel",
        (account_id,),
    ).fetchone()
    assert row == (customer_id, channel)


def test_ledger_customer_and_channel_stay_derived_from_the_account_id(db: psycopg.Connection[Any]) -> None:
    db.execute(
        "INSERT INTO ledger_accounts (account_id, kind, customer_id) VALUES ('customer:C1:debt', 'revenue', 'X')"
    )
    db.execute(
        "UPDATE ledger_accounts SET debits_fen = 5, balance_fen = -5, version = 1"
    )  # a balance: not derived again
    db.execute("UPDATE ledger_accounts SET customer_id = 'C2', channel = 'wechat'")
    assert db.execute("SELECT customer_id, channel, balance_fen FROM ledger_accounts").fetchall() == [("C1", None, -5)]


@pytest.mark.parametrize("account_id", ["", "x" * 161, "has space", "tab\there", "é"])
def test_ledger_account_ids_outside_the_pattern_are_refused(db: psycopg.Connection[Any], account_id: str) -> None:
    assert pure_ledger.ID_PATTERN.fullmatch(account_id) is None
    with pytest.raises(psycopg.errors.CheckViolation, match="ledger_accounts_id_format"):
        db.execute("INSERT INTO ledger_accounts (account_id, kind) VALUES (%s, 'revenue')", (account_id,))


@pytest.mark.parametrize(("meter_id", "valid"), [("M" * 32, True), ("M" * 33, False), ("", False), ("M.1", False)])
def test_meter_ids_are_checked_as_the_protocol_does(db: psycopg.Connection[Any], meter_id: str, valid: bool) -> None:
    assert is_valid_id(meter_id) is valid
    insert = "INSERT INTO meters (meter_id, protocol, region) VALUES (%s, 'mqtt', 'r')"
    if valid:
        db.execute(insert, (meter_id,))
    else:
        with pytest.raises((psycopg.errors.CheckViolation, psycopg.errors.StringDataRightTruncation)):
            db.execute(insert, (meter_id,))
