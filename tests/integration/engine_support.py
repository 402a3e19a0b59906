"""Helpers for the prepay engine's integration tests: catalog, accounts and readings on the real database."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions
from headend.engine.accounts import open_account
from headend.engine.catalog import Catalog, put_policy, put_tariff
from headend.ingest.messages import Decoded, SourcedReading
from headend.ingest.writer import ReadingWriter
from prepay_engine.policy import FriendlyCreditWindows, PolicyConfig
from prepay_engine.tariffs import SHANGHAI, example_jiangsu_residential
from protocols.readings import MeterReading

Conn = psycopg.Connection[Any]

STRICT_POLICY = PolicyConfig(
    name="strict",
    warning_thresholds_fen=(3000, 1000),
    disconnect_threshold_fen=0,
    notice_period=timedelta(0),
    friendly=FriendlyCreditWindows(None, None, weekends=False, public_holidays=False, eve_of_public_holidays=False),
)
TARIFF = example_jiangsu_residential()
# a working Friday in Asia/Shanghai
DAY_START = datetime(2026, 11, 20, 0, 0, tzinfo=SHANGHAI).astimezone(UTC)


def seed_catalog(conn: Conn) -> Catalog:
    """Store the example tariff and the strict policy; a catalog that reads them."""
    put_tariff(conn, TARIFF, stored_by="test", now=DAY_START)
    put_policy(conn, STRICT_POLICY, stored_by="test")
    return Catalog()


def open_test_account(
    conn: Conn,
    catalog: Catalog,
    account_id: str,
    meter_id: str,
    *,
    policy_code: str = STRICT_POLICY.name,
    register_wh: int = 1_000_000,
) -> None:
    """Open a prepaid account on a registered meter: the example tariff, from DAY_START at `register_wh`."""
    open_account(
        conn,
        catalog,
        account_id,
        meter_id=meter_id,
        tariff_code=TARIFF.code,
        policy_code=policy_code,
        opened_at=DAY_START,
        opening_register_wh=register_wh,
        zone=SHANGHAI,
    )


def store_readings(conn: Conn, readings: Iterable[tuple[str, datetime, int]], *, now: datetime | None = None) -> int:
    """Store (meter, ts, register Wh) readings through the ingest writer as of `now`; how many were inserted."""
    options = SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall())
    # the engine's tests store readings of fixed days (2026-11-20 …) as of the wall clock: a window of ten years
    # keeps them inside it for as long as anyone runs these tests
    writer = ReadingWriter(conn, options, timedelta(minutes=5), max_age=timedelta(days=3660))
    now = now or datetime.now(UTC)
    decoded = Decoded(
        readings=[
            SourcedReading(MeterReading(m, ts, wh), "test", f"meters/{m}/readings", now, None) for m, ts, wh in readings
        ]
    )
    return writer.write(decoded, now).inserted


def series(
    meter_id: str, start: datetime, count: int, step: timedelta, start_wh: int, per_step_wh: int
) -> list[tuple[str, datetime, int]]:
    """`count` readings of a meter from `start`, every `step`, the register rising `per_step_wh` each time."""
    return [(meter_id, start + i * step, start_wh + i * per_step_wh) for i in range(count)]
