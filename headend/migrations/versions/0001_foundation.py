"""Foundation: meters, concentrators, controlled switches, readings, dead letters, collection statistics.

`readings` is a TimescaleDB hypertable (1-day chunks, compressed after 7 days, segmented by meter)
with a daily continuous aggregate when the extension is available; otherwise a natively
range-partitioned table (one partition a UTC day, created ahead by the application) whose daily
statistics the writer keeps in `collection_daily`. Both expose the view `meter_day_collection`,
so the code runs the same queries either way.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import logging
from collections.abc import Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from alembic import context, op

from headend.db.errors import TimescaleDBUnavailableError
from headend.db.readiness import TimescaleDB, timescaledb_status

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READINGS_COLUMNS = """
    meter_id varchar(32) NOT NULL,
    ts timestamptz NOT NULL,
    energy_import_wh bigint NOT NULL CHECK (energy_import_wh >= 0),
    energy_export_wh bigint CHECK (energy_export_wh >= 0),
    power_w integer,
    voltage_v double precision,
    relay_state text CHECK (relay_state IN ('open', 'closed')),
    quality_flags smallint NOT NULL DEFAULT 0,
    source text NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (meter_id, ts)
"""


def slot_bit_sql(ts_column: str, zone: str) -> str:
    """SQL for a bit(96) with one bit set: the local 15-minute slot of the day that `ts_column` falls in."""
    local = f"({ts_column} AT TIME ZONE '{zone}')"
    return f"(B'1'::bit(96) >> (extract(hour FROM {local})::int * 4 + extract(minute FROM {local})::int / 15))"


_PRELOAD_HINT = "add timescaledb to shared_preload_libraries in postgresql.conf and restart PostgreSQL"


def _timescaledb_usable(required: bool) -> bool:
    """Whether TimescaleDB can be loaded here: created in this database, or installed and preloaded.

    Installed but not preloaded, CREATE EXTENSION ends the session (FATAL "must be preloaded"), so that case uses
    native partitions with a warning, or fails clearly when TimescaleDB is required.
    """
    created, installed, preload = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb'), "
                "EXISTS (SELECT FROM pg_available_extensions WHERE name = 'timescaledb'), "
                "CASE WHEN pg_has_role('pg_read_all_settings', 'USAGE') "
                "THEN current_setting('shared_preload_libraries') END"
            )
        )
        .one()
    )
    if preload is None and installed and not created:
        return _unknown_preload(required)
    status = timescaledb_status(created=created, installed=installed, preload_libraries=preload or "")
    if status is TimescaleDB.LOADABLE:
        return True
    if status is TimescaleDB.NOT_PRELOADED:
        if required:
            raise TimescaleDBUnavailableError(
                "HEADEND_REQUIRE_TIMESCALEDB is set but TimescaleDB is installed on this server without being "
                f"preloaded (shared_preload_libraries = {preload!r}); {_PRELOAD_HINT}, then migrate again"
            )
        logging.getLogger("headend.migrations").warning(
            "TimescaleDB is installed on this server but not preloaded (shared_preload_libraries = %r): readings "
            "are stored in native daily partitions instead. To use TimescaleDB, %s, then migrate a new database.",
            preload,
            _PRELOAD_HINT,
        )
        return False
    if required:
        raise TimescaleDBUnavailableError(
            "HEADEND_REQUIRE_TIMESCALEDB is set but the timescaledb extension is not installed on this server; "
            f"install TimescaleDB, {_PRELOAD_HINT}, then migrate again"
        )
    return False


def _unknown_preload(required: bool) -> bool:
    """TimescaleDB installed, not created here, and this role (the owner, no superuser) may not see if it is preloaded.

    `headend db roles` creates the extension, as a superuser, whenever the server can load it; its absence here means
    it can't be loaded or the roles were never set up. Creating it blind could end the session (FATAL).
    """
    if required:
        raise TimescaleDBUnavailableError(
            "HEADEND_REQUIRE_TIMESCALEDB is set but the timescaledb extension is not created in this database, and "
            "this role may not see whether the server preloads it; run `headend db roles` as an administrator (it "
            "creates the extension when the server can load it), then migrate again"
        )
    logging.getLogger("headend.migrations").warning(
        "TimescaleDB is installed on this server but not created in this database, and this role may not see whether "
        "it is preloaded: readings are stored in native daily partitions instead. To use TimescaleDB, run "
        "`headend db roles` as an administrator before migrating a new database."
    )
    return False


def _create_timescale_readings(zone: str) -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    op.execute(f"CREATE TABLE readings ({READINGS_COLUMNS})")
    op.execute("SELECT create_hypertable('readings', 'ts', chunk_time_interval => INTERVAL '1 day')")
    op.execute(
        "ALTER TABLE readings SET (timescaledb.compress, "
        "timescaledb.compress_segmentby = 'meter_id', timescaledb.compress_orderby = 'ts')"
    )
    op.execute("SELECT add_compression_policy('readings', INTERVAL '7 days')")
    op.execute(
        f"""
        CREATE MATERIALIZED VIEW collection_daily_cagg WITH (timescaledb.continuous) AS
        SELECT time_bucket(INTERVAL '1 day', ts, '{zone}') AS day_start,
               meter_id,
               count(*) AS readings_count,
               bit_or({slot_bit_sql("ts", zone)}) AS slots
        FROM readings
        GROUP BY day_start, meter_id
        WITH NO DATA
        """
    )
    op.execute("ALTER MATERIALIZED VIEW collection_daily_cagg SET (timescaledb.materialized_only = false)")
    op.execute(
        "SELECT add_continuous_aggregate_policy('collection_daily_cagg', start_offset => INTERVAL '35 days', "
        "end_offset => INTERVAL '15 minutes', schedule_interval => INTERVAL '15 minutes')"
    )
    op.execute(
        f"""
        CREATE VIEW meter_day_collection AS
        SELECT (day_start AT TIME ZONE '{zone}')::date AS day, meter_id,
               readings_count::integer AS readings_count, bit_count(slots)::integer AS intervals_read
        FROM collection_daily_cagg
        """
    )


def _create_partitioned_readings() -> None:
    op.execute(f"CREATE TABLE readings ({READINGS_COLUMNS}) PARTITION BY RANGE (ts)")
    op.execute(
        """
        CREATE TABLE collection_daily (
            day date NOT NULL,
            meter_id varchar(32) NOT NULL,
            readings_count integer NOT NULL CHECK (readings_count > 0),
            slots bit(96) NOT NULL,
            PRIMARY KEY (day, meter_id)
        ) WITH (fillfactor = 50)
        """
    )
    op.execute(
        """
        CREATE VIEW meter_day_collection AS
        SELECT day, meter_id, readings_count, bit_count(slots)::integer AS intervals_read
        FROM collection_daily
        """
    )


def upgrade() -> None:
    attributes = context.config.attributes
    zone = str(attributes.get("collection_timezone", "Asia/Shanghai"))
    try:
        ZoneInfo(zone)  # before any DDL; a known zone name is also safe to quote in the SQL below
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown collection time zone {zone!r}") from None
    assert "'" not in zone
    use_timescale = _timescaledb_usable(bool(attributes.get("require_timescaledb")))

    op.create_table(
        "schema_options",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "concentrators",
        sa.Column("concentrator_id", sa.String(32), primary_key=True),
        sa.Column("region", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "meters",
        sa.Column("meter_id", sa.String(32), primary_key=True),
        sa.Column("protocol", sa.Text, nullable=False),
        sa.Column("model", sa.Text),
        sa.Column("concentrator_id", sa.String(32), sa.ForeignKey("concentrators.concentrator_id")),
        sa.Column("region", sa.Text),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("multiplier", sa.Integer, nullable=False, server_default="1"),
        sa.Column("register_max_wh", sa.BigInteger, nullable=False, server_default="999999990"),
        sa.Column("installed_on", sa.Date),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("protocol IN ('mqtt', 'modbus')", name="meters_protocol"),
        sa.CheckConstraint("status IN ('active', 'inactive', 'removed')", name="meters_status"),
        sa.CheckConstraint("multiplier > 0", name="meters_multiplier"),
        sa.CheckConstraint("register_max_wh > 0", name="meters_register_max"),
        sa.CheckConstraint("meter_id ~ '^[A-Za-z0-9_-]{1,32}$'", name="meters_id_format"),
    )
    op.create_index("ix_meters_concentrator_id", "meters", ["concentrator_id"])
    op.create_index("ix_meters_region", "meters", ["region"])
    op.create_table(
        "controlled_switches",
        sa.Column("switch_id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("switch_number", sa.Text, nullable=False, unique=True),
        sa.Column("controlled_device", sa.Text, nullable=False),
        sa.Column("meter_id", sa.String(32), sa.ForeignKey("meters.meter_id"), nullable=False),
        sa.Column("location", sa.Text),
        sa.Column("registered_by", sa.Text, nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("commissioning_state", sa.Text, nullable=False, server_default="registered"),
        sa.CheckConstraint(
            "commissioning_state IN ('registered', 'testing', 'commissioned', 'failed', 'decommissioned')",
            name="controlled_switches_state",
        ),
    )
    op.create_index("ix_controlled_switches_meter_id", "controlled_switches", ["meter_id"])
    op.create_table(
        "dead_letters",
        sa.Column("dead_letter_id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("item_index", sa.Integer),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload_sha256", sa.LargeBinary, nullable=False),
    )
    # a redelivered bad message (committed, ack lost in a crash) must not be recorded twice
    op.execute(
        "CREATE UNIQUE INDEX ux_dead_letters_message ON dead_letters (topic, payload_sha256, coalesce(item_index, -1))"
    )
    op.create_index("ix_dead_letters_received_at", "dead_letters", ["received_at"])
    op.create_table(
        "meter_register_state",
        sa.Column("meter_id", sa.String(32), primary_key=True),
        sa.Column("last_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_energy_import_wh", sa.BigInteger, nullable=False),
        # every ingest batch updates these rows in place: room on the page keeps the updates HOT (no index write)
        postgresql_with={"fillfactor": 50},
    )

    if use_timescale:
        _create_timescale_readings(zone)
    else:
        _create_partitioned_readings()
    options = sa.table("schema_options", sa.column("name", sa.Text), sa.column("value", sa.Text))
    op.bulk_insert(
        options,
        [
            {"name": "storage", "value": "timescaledb" if use_timescale else "partitioned"},
            {"name": "collection_timezone", "value": zone},
        ],
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS meter_day_collection")
    op.execute("DROP MATERIALIZED VIEW IF EXISTS collection_daily_cagg")
    op.execute("DROP TABLE IF EXISTS collection_daily")
    op.execute("DROP TABLE IF EXISTS readings CASCADE")
    for table in (
        "meter_register_state",
        "dead_letters",
        "controlled_switches",
        "meters",
        "concentrators",
        "schema_options",
    ):
        op.drop_table(table)
