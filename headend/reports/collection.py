"""Daily collection success: meters expected, read, complete, by concentrator or region, worst first.

A day that was re-read (补抄) had its first-pass collection frozen before its first re-read began
(`collection_first_pass`): the report shows it beside what is stored now, after the re-reads. A day never re-read
has one figure, both first pass and current.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg import pq

from headend.db.collection_days import DaySource, collection_day
from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions
from headend.registry.meter_import import POLLED_PROTOCOLS
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
class PollFailureSeen:
    """A polled meter's last failed poll on the reported day or before it: why it may not have been read."""

    at: datetime
    kind: str
    reason: str
    attempts: int  # 0: not tried, its bus was found unreachable by an earlier meter's poll


@dataclass(frozen=True, slots=True)
class UnreadMeter:
    """An expected meter with no reading on the day; `last_reading_at` None means never read."""

    meter_id: str
    concentrator_id: str | None
    region: str | None
    last_reading_at: datetime | None
    last_failure: PollFailureSeen | None = None  # None for MQTT meters, and polled meters that never failed


@dataclass(frozen=True, slots=True)
class FirstPass:
    """A re-read day's collection as it stood when its first re-read began, frozen then by that task."""

    frozen_at: datetime
    task_id: str
    totals: CollectionCounts  # of the meters expected now, as the report's totals
    groups: list[GroupCounts]  # the report's groups, in the same order


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
    first_pass: FirstPass | None = None  # None: the day was never re-read, its first pass is what is stored

    def first_pass_counts(self) -> tuple[CollectionCounts, list[GroupCounts]]:
        """The first-pass totals and groups: as frozen before the day's first re-read, else the current ones."""
        if self.first_pass is None:
            return self.totals, self.groups
        return self.first_pass.totals, self.first_pass.groups

    def to_json(self) -> dict[str, Any]:
        """The stable JSON form printed by `headend collection-report --json`."""
        zone = ZoneInfo(self.timezone)

        def counts(c: CollectionCounts) -> dict[str, Any]:
            return {**asdict(c), "rate": round(c.rate, 6)}

        def read_rate(c: CollectionCounts) -> dict[str, Any]:
            return {"read": c.read, "complete": c.complete, "rate": round(c.rate, 6)}

        def failure(f: PollFailureSeen | None) -> dict[str, Any] | None:
            if f is None:
                return None
            return {"at": f.at.astimezone(zone).isoformat(), "kind": f.kind, "reason": f.reason, "attempts": f.attempts}

        first_totals, first_groups = self.first_pass_counts()

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
                    "last_failure": failure(m.last_failure),
                }
                for m in self.unread
            ],
            "first_pass": {
                **read_rate(first_totals),
                "groups": [{"key": g.key, **read_rate(g.counts)} for g in first_groups],
            },
            "reread": None
            if self.first_pass is None
            else {
                "frozen_at": self.first_pass.frozen_at.astimezone(zone).isoformat(),
                "task_id": self.first_pass.task_id,
            },
        }


_PER_METER = """
    SELECT m.meter_id, m.concentrator_id, m.region, m.protocol,
           c.meter_id IS NOT NULL AS was_read,
           coalesce(c.intervals_read, 0) >= %(intervals)s AS was_complete,
           f.meter_id IS NOT NULL AS was_read_first,
           coalesce(f.intervals_read, 0) >= %(intervals)s AS was_complete_first
    FROM meters m
    LEFT JOIN ({day_rows}) c ON c.meter_id = m.meter_id
    -- rows only for a day frozen before its first re-read
    LEFT JOIN collection_first_pass f ON f.day = %(day)s AND f.meter_id = m.meter_id
    WHERE m.status = 'active'
      -- expected from its installation day (or registration); a meter read that day was evidently there
      AND (coalesce(m.installed_on <= %(day)s, m.created_at < %(day_end)s) OR c.meter_id IS NOT NULL
           OR f.meter_id IS NOT NULL)
"""
# expected, read, complete; then read and complete at the first pass
_COUNTS = (
    "count(*), count(*) FILTER (WHERE was_read), count(*) FILTER (WHERE was_complete), "
    "count(*) FILTER (WHERE was_read_first), count(*) FILTER (WHERE was_complete_first)"
)
# the unread meters listed, each polled one with its last failed poll up to the end of the day
_UNREAD = """
    SELECT u.meter_id, u.concentrator_id, u.region, u.last_ts, f.at, f.kind, f.reason, f.attempts
    FROM (SELECT pm.meter_id, pm.concentrator_id, pm.region, pm.protocol, s.last_ts FROM ({per_meter}) pm
          LEFT JOIN meter_register_state s USING (meter_id) WHERE NOT was_read
          ORDER BY s.last_ts NULLS FIRST, pm.meter_id LIMIT %(limit)s) u
    LEFT JOIN LATERAL (
        SELECT pf.at, pf.kind, pf.reason, pf.attempts FROM poll_failures pf
        WHERE pf.meter_id = u.meter_id AND u.protocol = ANY(%(polled)s) AND pf.at < %(day_end)s
        ORDER BY pf.at DESC LIMIT 1) f ON true
    ORDER BY u.last_ts NULLS FIRST, u.meter_id
"""


def _counts(row: tuple[Any, ...]) -> CollectionCounts:
    return CollectionCounts(expected=int(row[0]), read=int(row[1] or 0), complete=int(row[2] or 0))


def _first_counts(row: tuple[Any, ...]) -> CollectionCounts:
    return CollectionCounts(expected=int(row[0]), read=int(row[3] or 0), complete=int(row[4] or 0))


def _grouped(
    conn: psycopg.Connection[Any], per_meter: str, column: str, params: dict[str, Any], limit: int | None
) -> list[tuple[GroupCounts, GroupCounts]]:
    """Each group's counts now and at the first pass, worst (now) first."""
    assert column in ("concentrator_id", "region")
    rows = conn.execute(
        f"SELECT coalesce({column}, '(direct)'), {_COUNTS} FROM ({per_meter}) pm GROUP BY 1 "
        "ORDER BY count(*) FILTER (WHERE was_read)::float / count(*), count(*) DESC, 1"
        + ("" if limit is None else f" LIMIT {int(limit)}"),
        params,
    ).fetchall()
    return [(GroupCounts(str(r[0]), _counts(r[1:])), GroupCounts(str(r[0]), _first_counts(r[1:]))) for r in rows]


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
    outermost = conn.info.transaction_status is pq.TransactionStatus.IDLE
    with conn.transaction():
        if outermost:
            # one snapshot for every figure: a freeze or a re-read committing meanwhile shows in all of them or none
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        frozen = conn.execute(
            "SELECT frozen_at, task_id FROM collection_first_pass_days WHERE day = %(day)s", params
        ).fetchone()
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
        total = conn.execute(f"SELECT {_COUNTS} FROM ({per_meter}) pm", params).fetchone()
        assert total is not None
        group_column = "concentrator_id" if group_by is GroupBy.CONCENTRATOR else "region"
        groups = [] if group_by is None else _grouped(conn, per_meter, group_column, params, None)
        worst_dcus = [
            g for g, _ in _grouped(conn, per_meter, "concentrator_id", params, worst + 1) if g.key != "(direct)"
        ][:worst]
        unread_rows = conn.execute(
            _UNREAD.format(per_meter=per_meter), {**params, "limit": unread_limit, "polled": list(POLLED_PROTOCOLS)}
        ).fetchall()
    totals = _counts(total)
    first_pass = (
        None
        if frozen is None
        else FirstPass(frozen[0], str(frozen[1]), _first_counts(total), [first for _, first in groups])
    )
    return CollectionReport(
        day=day,
        timezone=zone.key,
        totals=totals,
        groups=[now for now, _ in groups],
        worst_concentrators=[g for g in worst_dcus if g.counts.read < g.counts.expected],
        unread=[
            UnreadMeter(
                str(r[0]), r[1], r[2], r[3], None if r[4] is None else PollFailureSeen(r[4], str(r[5]), str(r[6]), r[7])
            )
            for r in unread_rows
        ],
        unread_total=totals.expected - totals.read,
        first_pass=first_pass,
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
    first = report.first_pass
    if first is not None:
        f = first.totals
        lines.append(
            f"  first pass      : read {f.read}  rate {f.rate:.2%}  complete {f.complete}"
            f"  →  after re-read: read {t.read}  rate {t.rate:.2%}  complete {t.complete}"
            f"  (frozen {_local(first.frozen_at, report.timezone)} by {first.task_id})"
        )
    if report.groups:
        lines.append("  by group (worst first):")
        lines += [
            f"    {g.key:<24} {g.counts.read:>8}/{g.counts.expected:<8} {g.counts.rate:7.2%}"
            f"  complete {g.counts.complete}"
            + ("" if first is None else f"  first pass {fg.counts.read}/{fg.counts.expected} {fg.counts.rate:.2%}")
            for g, fg in zip(report.groups, report.first_pass_counts()[1], strict=True)
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
            + _failure_text(m.last_failure, report.timezone)
            for m in report.unread
        ]
    return "\n".join(lines)


def _local(at: datetime, zone: str) -> str:
    return at.astimezone(ZoneInfo(zone)).isoformat(timespec="seconds")


def _failure_text(failure: PollFailureSeen | None, zone: str) -> str:
    if failure is None:
        return ""
    # one line a meter, whatever the reason holds
    return f"  failed {_local(failure.at, zone)} {failure.kind}: {' '.join(failure.reason.split())}"
