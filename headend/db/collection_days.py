"""One local day of `meter_day_collection` read exactly: every stored reading counts, however late it came for the day.

Native partitions: the writer keeps `collection_daily` in the same transaction as the rows, so the view is exact.
TimescaleDB: `collection_daily_cagg` is a real-time continuous aggregate. Days from its watermark on are aggregated
from `readings` when read (exact); days before it are read as materialized, which misses readings stored later for
them (a concentrator's backlog, a re-read) until the aggregate is refreshed. Such a day is refreshed first when the
connection's role may do it (`refresh_continuous_aggregate` demands the aggregate's owner): milliseconds when nothing
came late for the day, one re-aggregation of the day otherwise. A role that may not gets the day aggregated from
`readings` instead, which is exact too but costs a pass over the day's chunks every time. A day at or after the
watermark is never refreshed: that would move the watermark past days not materialized yet, which would then read
as empty until the policy reached them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg import pq

from headend.db.engine import SchemaOptions, Storage

CAGG = "collection_daily_cagg"

# the columns of `meter_day_collection` for one day: meter_id, readings_count, intervals_read
_PARTITIONED_DAY = "SELECT meter_id, readings_count, intervals_read FROM meter_day_collection WHERE day = %(day)s"
# the same with the load points read (bit(96), bit 0 the slot from 00:00), for the lists of missing intervals
_PARTITIONED_SLOTS = (
    "SELECT meter_id, readings_count, bit_count(slots)::integer AS intervals_read, slots "
    "FROM collection_daily WHERE day = %(day)s"
)
# The aggregate, filtered on its bucket start: the view's `day` hides it from chunk exclusion, so that filtered on
# `day` the real-time part aggregates every chunk after the watermark (~1.3 s for 20,000 meters and one such day).
# >= and <= are the comparisons of a time_bucket that TimescaleDB turns into bounds on `ts`; `=` is not.
_AGGREGATE_DAY = (
    "SELECT meter_id, readings_count::integer AS readings_count, bit_count(slots)::integer AS intervals_read "
    f"FROM {CAGG} WHERE day_start >= %(day_start)s AND day_start <= %(day_start)s"
)
_AGGREGATE_SLOTS = _AGGREGATE_DAY.replace(" FROM ", ", slots FROM ", 1)
# what the aggregate holds for the day (migration 0001: a count and the 15-minute slots read), from its chunks
_SLOTS_OF_DAY = """bit_or(B'1'::bit(96) >> (extract(hour FROM ts AT TIME ZONE %(zone)s)::int * 4
                                   + extract(minute FROM ts AT TIME ZONE %(zone)s)::int / 15))"""
_READINGS_DAY = f"""
SELECT meter_id, count(*)::integer AS readings_count, bit_count({_SLOTS_OF_DAY})::integer AS intervals_read
FROM readings WHERE ts >= %(day_start)s AND ts < %(day_end)s GROUP BY meter_id
"""
_READINGS_SLOTS = _READINGS_DAY.replace(" AS intervals_read", f" AS intervals_read, {_SLOTS_OF_DAY} AS slots", 1)
# the bound the aggregate's real-time view puts between materialized and live days, and whether this role owns it
_AGGREGATE_STATE = f"""
SELECT %(day_start)s < coalesce(
           _timescaledb_functions.to_timestamp(_timescaledb_functions.cagg_watermark(ca.mat_hypertable_id)),
           '-infinity'),
       pg_has_role(current_user, c.relowner, 'USAGE')
FROM _timescaledb_catalog.continuous_agg ca
JOIN pg_class c ON c.oid = format('%%I.%%I', ca.user_view_schema, ca.user_view_name)::regclass
WHERE c.oid = '{CAGG}'::regclass
"""


class DaySource(StrEnum):
    """Where the exact rows of a day come from."""

    PARTITIONED = "collection_daily"  # kept by the writer
    LIVE = "live"  # at or after the aggregate's watermark: aggregated from readings when read
    REFRESHED = "refreshed"  # materialized, refreshed just now
    READINGS = "readings"  # materialized, but this role may not refresh it: aggregated from readings here


@dataclass(frozen=True, slots=True)
class CollectionDay:
    """A query for one local day's rows of `meter_day_collection`, with its parameters."""

    sql: str
    params: dict[str, Any]
    source: DaySource
    with_slots: str  # the same rows with a fourth column, `slots`: the load points read (bit(96), bit 0 from 00:00)


def local_day_bounds(day: date, zone: str) -> tuple[datetime, datetime]:
    """The first instant of the local `day` in `zone` and of the day after it."""
    tz = ZoneInfo(zone)
    return datetime.combine(day, time(), tz), datetime.combine(day + timedelta(days=1), time(), tz)


def collection_day(conn: psycopg.Connection[Any], options: SchemaOptions, day: date) -> CollectionDay:
    """The exact rows of the local `day` (meter_id, readings_count, intervals_read); may refresh the aggregate."""
    start, end = local_day_bounds(day, options.collection_timezone)
    params: dict[str, Any] = {"day": day, "day_start": start, "day_end": end, "zone": options.collection_timezone}
    if options.storage is Storage.PARTITIONED:
        return CollectionDay(_PARTITIONED_DAY, params, DaySource.PARTITIONED, _PARTITIONED_SLOTS)
    row = conn.execute(_AGGREGATE_STATE, params).fetchone()
    assert row is not None, f"{CAGG} is not a continuous aggregate"
    materialized, may_refresh = bool(row[0]), bool(row[1])
    if not materialized:
        return CollectionDay(_AGGREGATE_DAY, params, DaySource.LIVE, _AGGREGATE_SLOTS)
    if not may_refresh:
        return CollectionDay(_READINGS_DAY, params, DaySource.READINGS, _READINGS_SLOTS)
    # refresh_continuous_aggregate commits as it goes: it cannot run inside a transaction block
    if not conn.autocommit or conn.info.transaction_status is not pq.TransactionStatus.IDLE:
        raise RuntimeError("refreshing the collection aggregate needs a connection outside a transaction (autocommit)")
    conn.execute(f"CALL refresh_continuous_aggregate('{CAGG}', %s, %s)", (start, end))
    return CollectionDay(_AGGREGATE_DAY, params, DaySource.REFRESHED, _AGGREGATE_SLOTS)
