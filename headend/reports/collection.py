"""Daily collection success: meters expected, read, complete, by concentrator or region, worst first."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from headend.db.collection_days import DaySource, collection_day
from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions
from headend.reports.grouping import GroupBy

INTERVALS_PER_DAY = 96


@dataclass(frozen=True, slots=True)
class CollectionCounts:
    """Counts for the whole fleet or one group."""

    expected: int
    read: int
    complete: int

    @property
    def rate(self) -> float:
        """Meters read ÷ meters expected (1.0 when nothing is expected)."""
        return self.read / self.expected if self.expected else 1.0


@dataclass(frozen=True, slots=True)
class GroupCounts:
    """Counts of one concentrator or region."""

    key: str
    counts: CollectionCounts


@dataclass(frozen=True, slots=True)
class UnreadMeter:
    """An expected meter with no reading on the day; `last_reading_at` None means never read."""

    meter_id: str
    concentrator_id: str | None
    region: str | None
    last_reading_at: datetime | None


@dataclass(frozen=True, slots=True)
class CollectionReport:
    """The report for one local day."""

    day: date
    timezone: str
    totals: CollectionCounts
    groups: list[GroupCounts]
    worst_concentrators: list[GroupCounts]
    unread: list[UnreadMeter]
    unread_total: int

    def to_json(self) -> dict[str, Any]:
        """The stable JSON form printed by `headend collection-report --json`."""

        def counts(c: CollectionCounts) -> dict[str, Any]:
            return {**asdict(c), "rate": round(c.rate, 6)}

        return {
            "date": self.day.isoformat(),
            "timezone": self.timezone,
            **counts(self.totals),
            "groups": [{"key": g.key, **counts(g.counts)} for g in self.groups],
            "worst_concentrators": [{"concentrator_id": g.key, **counts(g.counts)} for g in self.worst_concentrators],
            "unread_total": self.unread_total,
            "unread_meters": [
                {
                    "meter_id": m.meter_id,
                    "concentrator_id": m.concentrator_id,
                    "region": m.region,
                    "last_reading_at": None if m.last_reading_at is None else m.last_reading_at.isoformat(),
                    "never_read": m.last_reading_at is None,
                }
                for m in self.unread
            ],
        }


_PER_METER = """
    SELECT m.meter_id, m.concentrator_id, m.region,
           c.meter_id IS NOT NULL AS was_read,
           coalesce(c.intervals_read, 0) >= %(intervals)s AS was_complete
    FROM meters m
    LEFT JOIN ({day_rows}) c ON c.meter_id = m.meter_id
    WHERE m.status = 'active'
      -- expected from its installation day (or registration); a meter read that day was evidently there
      AND (coalesce(m.installed_on <= %(day)s, m.created_at < %(day_end)s) OR c.meter_id IS NOT NULL)
"""


def _counts(row: tuple[Any, ...]) -> CollectionCounts:
    return CollectionCounts(expected=int(row[0]), read=int(row[1] or 0), complete=int(row[2] or 0))


def _grouped(
    conn: psycopg.Connection[Any], per_meter: str, column: str, params: dict[str, Any], limit: int | None
) -> list[GroupCounts]:
    assert column in ("concentrator_id", "region")
    rows = conn.execute(
        f"SELECT coalesce({column}, '(direct)'), count(*), count(*) FILTER (WHERE was_read), "
        f"count(*) FILTER (WHERE was_complete) FROM ({per_meter}) pm GROUP BY 1 "
        "ORDER BY count(*) FILTER (WHERE was_read)::float / count(*), count(*) DESC, 1"
        + ("" if limit is None else f" LIMIT {int(limit)}"),
        params,
    ).fetchall()
    return [GroupCounts(str(r[0]), _counts(r[1:])) for r in rows]


def collection_report(
    conn: psycopg.Connection[Any],
    day: date,
    *,
    group_by: GroupBy | None = None,
    worst: int = 10,
    unread_limit: int = 50,
) -> CollectionReport:
    """Compute the collection report for the local `day` of the zone the daily statistics were bucketed in."""
    options = SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall())
    zone = ZoneInfo(options.collection_timezone)
    # before the report's transaction: on TimescaleDB it may refresh the day, which cannot run inside one
    day_rows = collection_day(conn, options, day)
    per_meter = _PER_METER.format(day_rows=day_rows.sql)
    params: dict[str, Any] = {**day_rows.params, "intervals": INTERVALS_PER_DAY}
    with conn.transaction():
        if day_rows.source in (DaySource.LIVE, DaySource.READINGS):
            # the queries below read the day 3 or 4 times, and aggregated from readings each read is a pass over the
            # day's chunks (20,000 meters: a live day's report 17–24 s, 6.7 s with one pass)
            conn.execute("DROP TABLE IF EXISTS pg_temp.collection_report_day")
            conn.execute(
                "CREATE TEMP TABLE collection_report_day (meter_id varchar(32) PRIMARY KEY, readings_count integer, "
                "intervals_read integer) ON COMMIT DROP"
            )
            conn.execute(f"INSERT INTO collection_report_day {day_rows.sql}", day_rows.params)
            per_meter = _PER_METER.format(day_rows="SELECT * FROM collection_report_day")
        total = conn.execute(
            f"SELECT count(*), count(*) FILTER (WHERE was_read), count(*) FILTER (WHERE was_complete) "
            f"FROM ({per_meter}) pm",
            params,
        ).fetchone()
        assert total is not None
        group_column = "concentrator_id" if group_by is GroupBy.CONCENTRATOR else "region"
        groups = [] if group_by is None else _grouped(conn, per_meter, group_column, params, None)
        worst_dcus = [
            g for g in _grouped(conn, per_meter, "concentrator_id", params, worst + 1) if g.key != "(direct)"
        ][:worst]
        unread_rows = conn.execute(
            f"SELECT pm.meter_id, pm.concentrator_id, pm.region, s.last_ts FROM ({per_meter}) pm "
            "LEFT JOIN meter_register_state s USING (meter_id) WHERE NOT was_read "
            "ORDER BY s.last_ts NULLS FIRST, pm.meter_id LIMIT %(limit)s",
            {**params, "limit": unread_limit},
        ).fetchall()
    totals = _counts(total)
    return CollectionReport(
        day=day,
        timezone=zone.key,
        totals=totals,
        groups=groups,
        worst_concentrators=[g for g in worst_dcus if g.counts.read < g.counts.expected],
        unread=[UnreadMeter(str(r[0]), r[1], r[2], r[3]) for r in unread_rows],
        unread_total=totals.expected - totals.read,
    )


def format_report(report: CollectionReport) -> str:
    """A plain-text rendering for operators."""
    t = report.totals
    lines = [
        f"Collection report for {report.day.isoformat()} ({report.timezone})",
        f"  meters expected : {t.expected}",
        f"  read (≥1 value) : {t.read}  rate {t.rate:.2%}",
        f"  complete (all {INTERVALS_PER_DAY} intervals): {t.complete}",
    ]
    if report.groups:
        lines.append("  by group (worst first):")
        lines += [
            f"    {g.key:<24} {g.counts.read:>8}/{g.counts.expected:<8} {g.counts.rate:7.2%}"
            f"  complete {g.counts.complete}"
            for g in report.groups
        ]
    if report.worst_concentrators:
        lines.append("  worst concentrators:")
        lines += [
            f"    {g.key:<24} {g.counts.read:>8}/{g.counts.expected:<8} {g.counts.rate:7.2%}"
            for g in report.worst_concentrators
        ]
    if report.unread:
        lines.append(f"  unread meters ({report.unread_total} in all, first {len(report.unread)}):")
        lines += [
            f"    {m.meter_id:<32} dcu {m.concentrator_id or '-':<16} "
            f"last {'never' if m.last_reading_at is None else m.last_reading_at.isoformat()}"
            for m in report.unread
        ]
    return "\n".join(lines)
