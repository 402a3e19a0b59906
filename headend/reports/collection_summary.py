"""The collection summary: each local day's counts per group, kept in tables and recomputed only when they change.

A day is summarized the first time it is asked for: one pass over its meter-days (`headend.db.collection_days`) counts
the whole fleet and every region, transformer area (台区), concentrator and protocol — meters expected, read and
complete now and at the day's first pass — into `collection_summary`, and keeps each expected meter not read completely
in `collection_summary_meters` (the drill-down lists). Asked again, the day is served from those rows after a check
that costs an index probe (migration 0026):

- a day is **final** once it ended an hour ago (`FINAL_AFTER`) by the database's clock; a final day's summary is exact
  until readings are stored for it (`collection_day_changes`, marked by a trigger on `readings` with each meter), the
  registry changes who is expected or where on it (`collection_registry_changes`), or a re-read freezes its
  first pass (`collection_first_pass_days`). Late readings alone: only the meters marked are counted again and their
  groups' counts moved by the difference (`recount_meters`); anything else, the whole day is counted again;
- a day that is not final (today, or yesterday within the hour) is summarized again once its summary is older than
  `PROVISIONAL_FOR`: its figures are as of `computed_at`, at most that old.

Why the hour: the trigger marks readings stored for a day before the storing transaction's own local day, so a reading
for today stored by a transaction that commits after midnight marks nothing; a day summarized an hour after its end
has seen every such transaction unless one ran for more than an hour.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, Final
from zoneinfo import ZoneInfo

import psycopg

from headend.db.collection_days import CollectionDay, collection_day, local_day_bounds
from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions

INTERVALS_PER_DAY: Final = 96
FINAL_AFTER: Final = timedelta(hours=1)
PROVISIONAL_FOR: Final = timedelta(seconds=60)
# more meters marked than this and the whole day is counted again: one pass costs less than so many lookups
MAX_RECOUNTED_METERS: Final = 100_000
# pg_advisory_lock(int, int): one summarizer of a day at a time (the two-key space never meets the one-key locks)
_LOCK_SPACE: Final = 0x636F6C6C  # "coll"


class Grouping(StrEnum):
    """How the summary is broken down: the whole fleet, or one of the registry's groups."""

    ALL = "all"
    REGION = "region"
    AREA = "area"
    CONCENTRATOR = "concentrator"
    PROTOCOL = "protocol"


# the registry column of each grouping
GROUP_COLUMNS: Final = {
    Grouping.REGION: "region",
    Grouping.AREA: "area",
    Grouping.CONCENTRATOR: "concentrator_id",
    Grouping.PROTOCOL: "protocol",
}

# an instant in UTC as the API writes it (pydantic's form, always with microseconds)
_UTC_TEXT = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"


def _rate(read: str, expected: str) -> str:
    return f"CASE WHEN {expected} > 0 THEN round({read}::numeric / {expected}, 6)::float8 END"


# an entry of the daily series (`GET /v1/collection/daily`): the first pass is `read`, `complete` and `rate`
_ENTRY_COLUMNS: Final = (
    ("day", "to_char(s.day, 'YYYY-MM-DD')"),
    ("key", "s.key"),
    ("expected", "s.expected"),
    ("read", "s.read_first"),
    ("complete", "s.complete_first"),
    ("rate", _rate("s.read_first", "s.expected")),
    ("read_after_reread", "s.read"),
    ("complete_after_reread", "s.complete"),
    ("rate_after_reread", _rate("s.read", "s.expected")),
    ("reread", "d.first_pass_task IS NOT NULL"),
    ("final", "d.final"),
    ("as_of", _UTC_TEXT.format("d.computed_at")),
)
SERIES_CSV_COLUMNS: Final = tuple(name for name, _ in _ENTRY_COLUMNS)
# a CSV row of an entry: null fields empty, the key quoted when it holds a separator, a quote or a line break (a region
# or area may); the other fields are numbers, dates and booleans
_CSV_KEY = (
    """coalesce(CASE WHEN s.key ~ E'[",\\r\\n]' THEN '"' || replace(s.key, '"', '""') || '"' ELSE s.key END, '')"""
)
_CSV_ROW = " || ',' || ".join(
    _CSV_KEY if name == "key" else f"coalesce(({expr})::text, '')" for name, expr in _ENTRY_COLUMNS
)
_ENTRIES = f"""
INSERT INTO collection_summary_entries (day, grouping, entries_json, entries_csv)
SELECT s.day, s.grouping,
       string_agg(json_build_object({", ".join(f"'{name}', {expr}" for name, expr in _ENTRY_COLUMNS)})::text, ','
                  ORDER BY s.key NULLS FIRST),
       string_agg({_CSV_ROW}, E'\\n' ORDER BY s.key NULLS FIRST)
FROM collection_summary s JOIN collection_summary_days d ON d.day = s.day
WHERE s.day = %(day)s GROUP BY s.day, s.grouping
"""

# The days of a range whose summary is missing or stale, as in the module's description.
_STALE_DAYS = """
SELECT d::date
FROM generate_series(%(first)s::date, %(last)s::date, interval '1 day') AS d
LEFT JOIN collection_summary_days s ON s.day = d::date
LEFT JOIN collection_first_pass_days f ON f.day = d::date
WHERE s.day IS NULL
   OR EXISTS (SELECT FROM collection_registry_changes r WHERE r.version > s.registry_version AND r.from_day <= d::date)
   OR s.first_pass_task IS DISTINCT FROM f.task_id
   OR (s.final AND EXISTS (SELECT FROM collection_day_changes c WHERE c.day = d::date))
   OR (NOT s.final AND (s.computed_at < now() - %(provisional)s
                        OR now() >= ((d::date + 1)::timestamp AT TIME ZONE %(zone)s) + %(final_after)s))
ORDER BY 1
"""
# Every expected meter of the day (as `headend.reports.collection` counts them) with the load points read now and at
# the first pass; the counts of each grouping set, and the meters not read completely, in one statement.
_SUMMARIZE = """
WITH per_meter AS MATERIALIZED (
    SELECT m.meter_id, m.protocol, m.region, m.area, m.concentrator_id,
           coalesce(c.intervals_read, 0) AS now_read, c.slots,
           CASE WHEN %(frozen)s THEN coalesce(f.intervals_read, 0) ELSE coalesce(c.intervals_read, 0) END
               AS first_read
    FROM meters m
    LEFT JOIN ({day_rows}) c ON c.meter_id = m.meter_id
    LEFT JOIN collection_first_pass f ON f.day = %(day)s AND f.meter_id = m.meter_id
    WHERE m.status = 'active'
      AND (coalesce(m.installed_on <= %(day)s, m.created_at < %(day_end)s) OR c.meter_id IS NOT NULL
           OR f.meter_id IS NOT NULL)
), groups AS (
    INSERT INTO collection_summary (day, grouping, key, expected, read, complete, read_first, complete_first)
    SELECT %(day)s,
           CASE GROUPING(region, area, concentrator_id, protocol)
               WHEN 15 THEN 'all' WHEN 7 THEN 'region' WHEN 11 THEN 'area' WHEN 13 THEN 'concentrator'
               ELSE 'protocol' END,
           CASE GROUPING(region, area, concentrator_id, protocol)
               WHEN 7 THEN region WHEN 11 THEN area WHEN 13 THEN concentrator_id WHEN 14 THEN protocol END,
           count(*), count(*) FILTER (WHERE now_read > 0), count(*) FILTER (WHERE now_read >= %(intervals)s),
           count(*) FILTER (WHERE first_read > 0), count(*) FILTER (WHERE first_read >= %(intervals)s)
    FROM per_meter
    GROUP BY GROUPING SETS ((), (region), (area), (concentrator_id), (protocol))
    RETURNING 1
), lists AS (
    INSERT INTO collection_summary_meters (day, meter_id, protocol, region, area, concentrator_id, intervals_read,
                                           slots)
    SELECT %(day)s, meter_id, protocol, region, area, concentrator_id, now_read, slots
    FROM per_meter WHERE now_read < %(intervals)s
    RETURNING 1
)
SELECT (SELECT count(*) FROM groups), (SELECT count(*) FROM lists)
"""


# The meters marked for a day, now and as the summary has them: registry, load points of the day now, first pass,
# listed (not read completely) and with how many.
_MARKED_METERS = """
SELECT m.meter_id, m.protocol, m.region, m.area, m.concentrator_id, m.status = 'active',
       coalesce(m.installed_on <= %(day)s, m.created_at < %(day_end)s), coalesce(c.intervals_read, 0), c.slots::text,
       f.meter_id IS NOT NULL, l.meter_id IS NOT NULL, l.intervals_read
FROM meters m
LEFT JOIN (SELECT * FROM ({day_rows}) d WHERE d.meter_id = ANY(%(meters)s)) c ON c.meter_id = m.meter_id
LEFT JOIN collection_first_pass f ON f.day = %(day)s AND f.meter_id = m.meter_id
LEFT JOIN collection_summary_meters l ON l.day = %(day)s AND l.meter_id = m.meter_id
WHERE m.meter_id = ANY(%(meters)s)
"""
# '' is no group's key (regions, areas, concentrators and protocols are never empty): NULL keys compared by hash
_MOVE_COUNTS = """
UPDATE collection_summary s
SET read = s.read + v.read, complete = s.complete + v.complete, read_first = s.read_first + v.read_first,
    complete_first = s.complete_first + v.complete_first
FROM unnest(%(groupings)s::text[], %(keys)s::text[], %(read)s::int[], %(complete)s::int[], %(read_first)s::int[],
            %(complete_first)s::int[]) AS v(grouping, key, read, complete, read_first, complete_first)
WHERE s.day = %(day)s AND s.grouping = v.grouping AND coalesce(s.key, '') = coalesce(v.key, '')
"""
_RELIST = """
UPDATE collection_summary_meters l SET intervals_read = v.intervals_read, slots = v.slots::bit(96)
FROM unnest(%(meters)s::text[], %(intervals)s::int[], %(slots)s::text[]) AS v(meter_id, intervals_read, slots)
WHERE l.day = %(day)s AND l.meter_id = v.meter_id
"""


@dataclass(frozen=True, slots=True)
class Summarized:
    """A day summarized now: how many group rows and listed meters it has (or meters counted again), and if final."""

    day: date
    groups: int
    listed: int
    final: bool
    recounted: int | None = None  # the meters counted again alone; None: the whole day was counted


def collection_zone(conn: psycopg.Connection[Any]) -> tuple[SchemaOptions, ZoneInfo]:
    """The storage facts of the schema and the zone its collection days are local to."""
    options = SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall())
    return options, ZoneInfo(options.collection_timezone)


def stale_days(conn: psycopg.Connection[Any], options: SchemaOptions, first: date, last: date) -> list[date]:
    """The days of [first, last] whose summary is missing or no longer exact (provisional: too old)."""
    rows = conn.execute(
        _STALE_DAYS,
        {
            "first": first,
            "last": last,
            "zone": options.collection_timezone,
            "provisional": PROVISIONAL_FOR,
            "final_after": FINAL_AFTER,
        },
    ).fetchall()
    return [r[0] for r in rows]


def ensure_summaries(conn: psycopg.Connection[Any], first: date, last: date) -> list[Summarized]:
    """Summarize every day of [first, last] whose summary is missing or stale; the days summarized now.

    `conn` is autocommit: each day is summarized in a transaction of its own (on TimescaleDB, reading a day may first
    refresh its aggregate, which no transaction may be open for).
    """
    assert conn.autocommit
    options, _ = collection_zone(conn)
    done = []
    for day in stale_days(conn, options, first, last):
        with _day_lock(conn, day):
            # another request may have summarized it while this one waited for the lock
            if stale_days(conn, options, day, day):
                done.append(summarize_day(conn, options, day))
    return done


@contextlib.contextmanager
def _day_lock(conn: psycopg.Connection[Any], day: date) -> Iterator[None]:
    conn.execute("SELECT pg_advisory_lock(%s, %s)", (_LOCK_SPACE, day.toordinal()))
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_LOCK_SPACE, day.toordinal()))


def summarize_day(conn: psycopg.Connection[Any], options: SchemaOptions, day: date) -> Summarized:
    """Count `day` again from its meter-days and replace its summary, in one snapshot; the caller holds its lock."""
    day_rows = collection_day(conn, options, day)
    _, end = local_day_bounds(day, options.collection_timezone)
    with conn.transaction():
        # the marks, the registry version, the first pass and the counts from one snapshot: whatever commits after it
        # leaves a mark or a version the next check sees
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        state = conn.execute(
            "SELECT st.registry_version, f.task_id, now(), now() >= %s "
            "FROM collection_summary_state st LEFT JOIN collection_first_pass_days f ON f.day = %s",
            (end + FINAL_AFTER, day),
        ).fetchone()
        assert state is not None, "collection_summary_state has no row"
        version, task_id, now, final = state
        was = conn.execute(
            "SELECT s.first_pass_task, s.final, EXISTS (SELECT FROM collection_registry_changes r "
            "WHERE r.version > s.registry_version AND r.from_day <= s.day) FROM collection_summary_days s "
            "WHERE s.day = %s",
            (day,),
        ).fetchone()
        if final and was == (task_id, True, False):
            # only late readings since: the meters marked alone, when what they were can be told
            recounted = recount_meters(
                conn, day_rows, day, end, frozen=task_id is not None, now=now, registry_version=version
            )
            if recounted is not None:
                return Summarized(day, 0, 0, True, recounted)
        for table in (
            "collection_day_changes",
            "collection_summary_days",
            "collection_summary",
            "collection_summary_meters",
            "collection_summary_entries",
        ):
            conn.execute(f"DELETE FROM {table} WHERE day = %s", (day,))
        conn.execute(
            "INSERT INTO collection_summary_days (day, computed_at, registry_version, first_pass_task, final) "
            "VALUES (%s, %s, %s, %s, %s)",
            (day, now, version, task_id, final),
        )
        counted = conn.execute(
            _SUMMARIZE.format(day_rows=day_rows.with_slots),
            {
                **day_rows.params,
                "day_end": end,
                "frozen": task_id is not None,
                "intervals": INTERVALS_PER_DAY,
            },
        ).fetchone()
        conn.execute(_ENTRIES, {"day": day})
    assert counted is not None
    return Summarized(day, int(counted[0]), int(counted[1]), bool(final))


def recount_meters(
    conn: psycopg.Connection[Any],
    day_rows: CollectionDay,
    day: date,
    end: datetime,
    *,
    frozen: bool,
    now: datetime,
    registry_version: int,
) -> int | None:
    """Count the meters marked for the final `day` again and move their groups' counts; how many, or None (nothing
    written) when the whole day must be counted instead. In the caller's snapshot, under the day's lock."""
    marked = [r[0] for r in conn.execute("SELECT DISTINCT meter_id FROM collection_day_changes WHERE day = %s", (day,))]
    if len(marked) > MAX_RECOUNTED_METERS:
        return None
    rows = conn.execute(
        _MARKED_METERS.format(day_rows=day_rows.with_slots),
        {**day_rows.params, "day_end": end, "meters": marked},
    ).fetchall()
    moves: dict[tuple[str, str | None], list[int]] = {}
    relisted: list[tuple[str, int, str | None]] = []
    complete_now: list[str] = []
    for meter_id, protocol, region, area, dcu, active, registered, now_read, slots, first, listed, was_read in rows:
        if not active:
            continue  # never expected, before or now
        if listed:
            before = int(was_read)
        elif registered or first:
            before = INTERVALS_PER_DAY  # expected and not listed: it was complete, and stays so
        else:
            return None  # expected only because it was read that day, or not expected: which one is not kept
        after = int(now_read)
        if after == before:
            continue
        if after < INTERVALS_PER_DAY and not listed:
            return None  # fewer load points than counted: only readings taken away could do that
        delta = [int(after > 0) - int(before > 0), int(after >= INTERVALS_PER_DAY) - int(before >= INTERVALS_PER_DAY)]
        delta += [0, 0] if frozen else delta  # a day never re-read: its first pass is what is stored
        for grouping, key in (
            (Grouping.ALL, None),
            (Grouping.REGION, region),
            (Grouping.AREA, area),
            (Grouping.CONCENTRATOR, dcu),
            (Grouping.PROTOCOL, protocol),
        ):
            total = moves.setdefault((grouping.value, key), [0, 0, 0, 0])
            for i, d in enumerate(delta):
                total[i] += d
        if after >= INTERVALS_PER_DAY:
            complete_now.append(meter_id)
        else:
            relisted.append((meter_id, after, slots))
    keys = list(moves)
    conn.execute(
        _MOVE_COUNTS,
        {
            "day": day,
            "groupings": [g for g, _ in keys],
            "keys": [k for _, k in keys],
            **{name: [moves[k][i] for k in keys] for i, name in enumerate(_COUNT_NAMES)},
        },
    )
    conn.execute("DELETE FROM collection_summary_meters WHERE day = %s AND meter_id = ANY(%s)", (day, complete_now))
    conn.execute(
        _RELIST,
        {
            "day": day,
            "meters": [m for m, _, _ in relisted],
            "intervals": [n for _, n, _ in relisted],
            "slots": [s for _, _, s in relisted],
        },
    )
    conn.execute("DELETE FROM collection_day_changes WHERE day = %s", (day,))
    conn.execute(
        "UPDATE collection_summary_days SET computed_at = %s, registry_version = %s WHERE day = %s",
        (now, registry_version, day),
    )
    conn.execute("DELETE FROM collection_summary_entries WHERE day = %s", (day,))
    conn.execute(_ENTRIES, {"day": day})
    return len(marked)


_COUNT_NAMES: Final = ("read", "complete", "read_first", "complete_first")


def missing_ranges(slots: str | None, intervals: int = INTERVALS_PER_DAY) -> list[str]:
    """The local times of the load points not read, as `HH:MM-HH:MM` ranges (end exclusive, `24:00` at midnight).

    `slots` is the day's bit string, its first character the load point from 00:00; None: none read.
    """
    bits = slots if slots is not None else "0" * intervals
    ranges: list[str] = []
    run_start: int | None = None
    for i in range(intervals + 1):
        missing = i < intervals and bits[i] != "1"
        if missing and run_start is None:
            run_start = i
        elif not missing and run_start is not None:
            ranges.append(f"{_clock(run_start)}-{_clock(i)}")
            run_start = None
    return ranges


def _clock(slot: int) -> str:
    minutes = slot * 15
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
