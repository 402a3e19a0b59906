"""The collection's drill-down: the daily series, the meters not read (completely), a meter's readings and gaps.

The series and the lists are read from the summary tables (`headend.reports.collection_summary`), which the caller
brings up to date first with `ensure_summaries`; a meter's readings come from `readings`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import psycopg

from headend.registry.meter_import import POLLED_PROTOCOLS
from headend.reports.collection_summary import (
    GROUP_COLUMNS,
    INTERVALS_PER_DAY,
    SERIES_CSV_COLUMNS,
    Grouping,
    missing_ranges,
)

SLOT: Final = timedelta(minutes=15)
MAX_READINGS: Final = 10_000  # 31 days of a reading every 5 minutes fit; a meter sending more is cut off
# the drill-down lists walk a day's listed meters in id order this many at a time, filtering each batch
_LIST_BATCH: Final = 2_000
_SERIES = """
SELECT string_agg({column}, %(separator)s ORDER BY day) FROM collection_summary_entries
WHERE day BETWEEN %(first)s AND %(last)s AND grouping = %(grouping)s
"""


def series_json(conn: psycopg.Connection[Any], first: date, last: date, grouping: Grouping) -> bytes:
    """The entries of the daily series as a JSON array, from each day's entries as the summary wrote them."""
    row = conn.execute(
        _SERIES.format(column="entries_json"),
        {"first": first, "last": last, "grouping": grouping.value, "separator": ","},
    ).fetchone()
    assert row is not None
    return b"[" + (row[0] or "").encode() + b"]"


def series_csv(conn: psycopg.Connection[Any], first: date, last: date, grouping: Grouping) -> bytes:
    """The daily series as CSV with a header row (`SERIES_CSV_COLUMNS`), a row per entry."""
    row = conn.execute(
        _SERIES.format(column="entries_csv"),
        {"first": first, "last": last, "grouping": grouping.value, "separator": "\n"},
    ).fetchone()
    assert row is not None
    rows = "" if row[0] is None else row[0] + "\n"
    return (",".join(SERIES_CSV_COLUMNS) + "\n" + rows).encode()


class MeterList(StrEnum):
    """The drill-down lists of a day."""

    NEVER_READ = "never-read"  # expected, no reading of the day, and none stored ever (as of now)
    INCOMPLETE = "incomplete"  # read, but not all 96 load points
    FAILING = "failing"  # no reading on the day, nor on each of the days before it asked for


@dataclass(frozen=True, slots=True)
class LastFailure:
    """Why a meter may not have been read: its last failed poll, or for an MQTT meter its last dead letter."""

    at: datetime
    kind: str  # a poll failure kind, or `dead_letter`
    reason: str
    attempts: int | None  # requests the poll took; None for a dead letter


@dataclass(frozen=True, slots=True)
class ListedMeter:
    """A meter of a drill-down list, with its groups, the load points it missed on the day and why it may have."""

    meter_id: str
    protocol: str
    region: str | None
    area: str | None
    concentrator_id: str | None
    intervals_read: int
    missing: list[str]  # local HH:MM-HH:MM ranges of the load points not read
    last_reading_at: datetime | None
    last_failure: LastFailure | None


# A batch of the day's listed meters in id order (the primary key's), then those of the list among them: the walk stops
# as soon as a page is full, whatever the planner would guess of the filters' selectivity.
_LIST_PAGE = """
SELECT l.meter_id, l.protocol, l.region, l.area, l.concentrator_id, l.intervals_read, l.slots::text
FROM (SELECT * FROM collection_summary_meters l
      WHERE l.day = %(day)s AND l.meter_id > %(after)s {group} ORDER BY l.meter_id LIMIT %(batch)s) l
WHERE true {kind}
ORDER BY l.meter_id LIMIT %(limit)s
"""
_BATCH_END = """
SELECT max(meter_id), count(*) FROM (SELECT l.meter_id FROM collection_summary_meters l
    WHERE l.day = %(day)s AND l.meter_id > %(after)s {group} ORDER BY l.meter_id LIMIT %(batch)s) l
"""
_KIND: Final = {
    MeterList.NEVER_READ: "AND l.intervals_read = 0 "
    "AND NOT EXISTS (SELECT FROM meter_register_state s WHERE s.meter_id = l.meter_id)",
    MeterList.INCOMPLETE: "AND l.intervals_read > 0",
    # unread on each of the `days` days ending at the day: the earlier days' rows probed by primary key
    MeterList.FAILING: "AND l.intervals_read = 0 AND NOT EXISTS ("
    "SELECT FROM generate_series(1, %(days)s - 1) AS i WHERE NOT EXISTS ("
    "SELECT FROM collection_summary_meters p WHERE p.day = %(day)s - i AND p.meter_id = l.meter_id "
    "AND p.intervals_read = 0))",
}
# the page's meters with their last reading and last failure up to the end of the day
_WITH_REASONS = """
SELECT p.*, s.last_ts, pf.at, pf.kind, pf.reason, pf.attempts, dl.received_at, dl.reason
FROM ({page}) p
LEFT JOIN meter_register_state s ON s.meter_id = p.meter_id
LEFT JOIN LATERAL (
    SELECT f.at, f.kind, f.reason, f.attempts FROM poll_failures f
    WHERE f.meter_id = p.meter_id AND p.protocol = ANY(%(polled)s) AND f.at < %(day_end)s
    ORDER BY f.at DESC LIMIT 1) pf ON true
LEFT JOIN LATERAL (
    SELECT d.received_at, d.reason FROM dead_letters d
    WHERE d.topic = 'meters/' || p.meter_id || '/readings' AND p.protocol = 'mqtt' AND d.received_at < %(day_end)s
    ORDER BY d.received_at DESC LIMIT 1) dl ON true
ORDER BY p.meter_id
"""


def list_meters(
    conn: psycopg.Connection[Any],
    which: MeterList,
    day: date,
    day_end: datetime,
    *,
    grouping: Grouping = Grouping.ALL,
    key: str | None = None,
    days: int = 1,
    after: str = "",
    limit: int = 100,
) -> tuple[list[ListedMeter], bool]:
    """A page of one list of the (summarized) `day`, by meter id after `after`; whether more follow."""
    group = ""
    if grouping is not Grouping.ALL:
        column = GROUP_COLUMNS[grouping]
        group = f"AND l.{column} IS NULL" if key is None else f"AND l.{column} = %(key)s"
    page = _WITH_REASONS.format(page=_LIST_PAGE.format(group=group, kind=_KIND[which]))
    batch_end = _BATCH_END.format(group=group)
    params: dict[str, Any] = {
        "day": day,
        "day_end": day_end,
        "key": key,
        "days": days,
        "polled": list(POLLED_PROTOCOLS),
        "batch": max(_LIST_BATCH, limit + 1),
    }
    rows: list[tuple[Any, ...]] = []
    cursor = after
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # the batches from one snapshot
        while len(rows) <= limit:
            rows += conn.execute(page, {**params, "after": cursor, "limit": limit + 1 - len(rows)}).fetchall()
            end = conn.execute(batch_end, {**params, "after": cursor}).fetchone()
            assert end is not None
            if end[1] < params["batch"]:
                break  # the day's last batch
            cursor = str(end[0])
    return [_listed(r) for r in rows[:limit]], len(rows) > limit


def _listed(r: tuple[Any, ...]) -> ListedMeter:
    failure = None
    if r[8] is not None:
        failure = LastFailure(r[8], str(r[9]), str(r[10]), int(r[11]))
    elif r[12] is not None:
        failure = LastFailure(r[12], "dead_letter", str(r[13]), None)
    return ListedMeter(
        meter_id=str(r[0]),
        protocol=str(r[1]),
        region=r[2],
        area=r[3],
        concentrator_id=r[4],
        intervals_read=int(r[5]),
        missing=missing_ranges(r[6], INTERVALS_PER_DAY),
        last_reading_at=r[7],
        last_failure=failure,
    )


@dataclass(frozen=True, slots=True)
class StoredReading:
    """One stored reading of a meter."""

    ts: datetime
    energy_import_wh: int
    energy_export_wh: int | None
    power_w: int | None
    voltage_v: float | None
    relay_state: str | None
    quality_flags: int
    source: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Gap:
    """Load points in a row without a reading: [start, end), `intervals` of them."""

    start: datetime
    end: datetime
    intervals: int


@dataclass(frozen=True, slots=True)
class MeterReadings:
    """A meter's readings over [start, end) (the first MAX_READINGS) and the 15-minute load points without one."""

    readings: list[StoredReading]
    truncated: bool
    intervals: int  # the load points that begin in the range
    intervals_read: int
    gaps: list[Gap]


def meter_exists(conn: psycopg.Connection[Any], meter_id: str) -> bool:
    """Whether the registry knows the meter (any status)."""
    return conn.execute("SELECT 1 FROM meters WHERE meter_id = %s", (meter_id,)).fetchone() is not None


def meter_readings(conn: psycopg.Connection[Any], meter_id: str, start: datetime, end: datetime) -> MeterReadings:
    """The meter's readings over [start, end) and its gaps, read in one snapshot."""
    params = {"m": meter_id, "start": start, "end": end, "limit": MAX_READINGS + 1}
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        rows = conn.execute(
            "SELECT ts, energy_import_wh, energy_export_wh, power_w, voltage_v, relay_state, quality_flags, source, "
            "received_at FROM readings WHERE meter_id = %(m)s AND ts >= %(start)s AND ts < %(end)s "
            "ORDER BY ts LIMIT %(limit)s",
            params,
        ).fetchall()
        slots = {
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT date_bin('15 minutes', ts, TIMESTAMPTZ 'epoch') FROM readings "
                "WHERE meter_id = %(m)s AND ts >= %(start)s AND ts < %(end)s",
                params,
            )
        }
    grid = list(load_points(start, end))
    gaps = gaps_of(grid, slots)
    return MeterReadings(
        readings=[StoredReading(*r) for r in rows[:MAX_READINGS]],
        truncated=len(rows) > MAX_READINGS,
        intervals=len(grid),
        intervals_read=sum(1 for s in grid if s in slots),
        gaps=gaps,
    )


def load_points(start: datetime, end: datetime) -> Iterator[datetime]:
    """The starts of the 15-minute load points (aligned on the quarter hour) that begin in [start, end)."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    past = (start - epoch) % SLOT
    at = start if not past else start + (SLOT - past)  # the first quarter hour at or after start
    while at < end:
        yield at
        at += SLOT


def gaps_of(grid: list[datetime], read: set[datetime]) -> list[Gap]:
    """The runs of load points of `grid` (consecutive, in order) that are not in `read`."""
    gaps: list[Gap] = []
    run: list[datetime] = []
    for at in [*grid, None]:
        if at is not None and at not in read:
            run.append(at)
            continue
        if run:
            gaps.append(Gap(run[0], run[-1] + SLOT, len(run)))
            run = []
    return gaps
