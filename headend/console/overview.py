"""The operators' collection overview: today so far, the last 30 days against the target, yesterday's worst.

Every figure comes from the collection report (`headend.reports.collection`), day by day, as `headend
collection-report` prints it: rate = meters read ÷ meters expected; a day that was re-read (补抄) also has its
first-pass rate, frozen before its first re-read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

import psycopg

from headend.console.charts import RateChart, rate_chart
from headend.reports.collection import CollectionReport, GroupCounts, collection_report

# the daily collection success utilities hold themselves to
COLLECTION_TARGET: Final = 0.98
TREND_DAYS: Final = 30
WORST_CONCENTRATORS: Final = 10


@dataclass(frozen=True, slots=True)
class DaySummary:
    """One day's collection."""

    day: date
    expected: int
    read: int
    complete: int
    first_pass_read: int | None  # None: the day was never re-read, its first pass is `read`

    @property
    def rate(self) -> float | None:
        """Meters read ÷ meters expected; None when none were expected."""
        return self.read / self.expected if self.expected else None

    @property
    def first_pass_rate(self) -> float | None:
        """The rate before the day's first re-read; None when never re-read (or nothing expected)."""
        if self.first_pass_read is None or not self.expected:
            return None
        return self.first_pass_read / self.expected

    @property
    def below_target(self) -> bool:
        """Whether the day's rate is under the target."""
        return self.rate is not None and self.rate < COLLECTION_TARGET


@dataclass(frozen=True, slots=True)
class CollectionOverview:
    """What the overview page shows."""

    today: DaySummary
    yesterday: DaySummary
    worst_concentrators: list[GroupCounts]  # yesterday's, worst first, only those below 100 %
    trend: list[DaySummary]  # the TREND_DAYS days up to yesterday, oldest first
    chart: RateChart
    target: float = COLLECTION_TARGET

    @property
    def target_text(self) -> str:
        """The target as the page writes it."""
        return f"{self.target:.0%}"

    @property
    def days_below_target(self) -> int:
        """Days of the trend below the target."""
        return sum(1 for d in self.trend if d.below_target)


def _summary(report: CollectionReport) -> DaySummary:
    t = report.totals
    first = report.first_pass
    return DaySummary(report.day, t.expected, t.read, t.complete, None if first is None else first.totals.read)


def collection_overview(conn: psycopg.Connection[Any], today: date) -> CollectionOverview:
    """The overview as of the local day `today`."""
    yesterday = today - timedelta(days=1)
    trend: list[DaySummary] = []
    worst: list[GroupCounts] = []
    for offset in range(TREND_DAYS, 0, -1):
        day = today - timedelta(days=offset)
        report = collection_report(conn, day, worst=WORST_CONCENTRATORS if day == yesterday else 0, unread_limit=0)
        trend.append(_summary(report))
        if day == yesterday:
            worst = report.worst_concentrators
    now = _summary(collection_report(conn, today, worst=0, unread_limit=0))
    chart = rate_chart([(d.day, d.rate) for d in trend], COLLECTION_TARGET)
    return CollectionOverview(now, trend[-1], worst, trend, chart)
