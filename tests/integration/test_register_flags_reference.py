"""The writer's set-based register checks agree with the pure reference `register_flags` / `grid_flags`.

Readings of one meter arrive in random batches and orders (late, duplicated); after each batch the
flags stored must be those the reference model gives for the same arrival sequence.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions
from headend.db.migrate import migrate
from headend.ingest.messages import Decoded, SourcedReading
from headend.ingest.validation import grid_flags, register_flags
from headend.ingest.writer import LATE_LOOKBACK, ReadingWriter
from headend.registry.meter_import import MeterRow, import_meters
from protocols.readings import MeterReading
from tests.integration.conftest import ADMIN_URL

pytestmark = pytest.mark.integration

REGISTER_MAX_WH = 1000
BASE = datetime(2026, 11, 10, tzinfo=UTC)
NOW = datetime(2026, 11, 22, tzinfo=UTC)


@pytest.fixture(scope="module")
def writer() -> Iterator[tuple[psycopg.Connection[Any], ReadingWriter]]:
    """One migrated database for all examples (each example uses its own meter)."""
    name = f"headend_flags_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate(url, require_timescaledb=False, collection_timezone="Asia/Shanghai")
        with psycopg.connect(url, autocommit=True) as conn:
            options = SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall())
            yield conn, ReadingWriter(conn, options, timedelta(minutes=5))
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reference_flags(batches: list[list[tuple[datetime, int]]]) -> dict[datetime, int]:
    """Flags the specification gives each stored reading, batch by batch in arrival order."""
    stored: dict[datetime, int] = {}
    flags: dict[datetime, int] = {}
    for batch in batches:
        first: dict[datetime, int] = {}
        for ts, wh in batch:
            first.setdefault(ts, wh)  # a repeat within a batch: the first arrival counts
        ordered = sorted(first.items())
        latest = max(stored) if stored else None
        for index, (ts, wh) in enumerate(ordered):
            if ts in stored:
                continue
            batch_previous = ordered[index - 1] if index else None
            if latest is not None and ts > latest:
                stored_previous: tuple[datetime, int] | None = (latest, stored[latest])
            else:
                window = [t for t in stored if ts - LATE_LOOKBACK <= t < ts]
                stored_previous = (max(window), stored[max(window)]) if window else None
            if stored_previous is None or (batch_previous is not None and batch_previous[0] > stored_previous[0]):
                previous_wh = None if batch_previous is None else batch_previous[1]
            else:  # on a tie the stored value counts: the batch's repeat of it is not stored
                previous_wh = stored_previous[1]
            flags[ts] = int(register_flags(previous_wh, wh, REGISTER_MAX_WH) | grid_flags(ts))
        for ts, wh in ordered:
            stored.setdefault(ts, wh)
    return flags


reading = st.tuples(
    st.integers(min_value=0, max_value=12 * 96).map(lambda slot: BASE + timedelta(minutes=15 * slot)),
    st.sampled_from([0, 0, 0, 7]),  # now and then a reading off the 15-minute grid
    st.integers(min_value=0, max_value=REGISTER_MAX_WH),
).map(lambda t: (t[0] + timedelta(seconds=t[1]), t[2]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(reading, min_size=1, max_size=8), min_size=1, max_size=5))
def test_stored_flags_match_the_reference(
    writer: tuple[psycopg.Connection[Any], ReadingWriter], batches: list[list[tuple[datetime, int]]]
) -> None:
    conn, reading_writer = writer
    meter_id = f"f{uuid.uuid4().hex[:12]}"
    import_meters(conn, [MeterRow(meter_id, "mqtt", None, "r", None, 1, "active", REGISTER_MAX_WH)])
    for batch in batches:
        decoded = Decoded(
            readings=[SourcedReading(MeterReading(meter_id, ts, wh), "test", "t", NOW, None) for ts, wh in batch]
        )
        reading_writer.write(decoded, NOW)
    stored = dict(conn.execute("SELECT ts, quality_flags FROM readings WHERE meter_id = %s", (meter_id,)).fetchall())
    assert stored == reference_flags(batches)
