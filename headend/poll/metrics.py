"""Metrics of the poll worker: polls by outcome (read, or the kind of failure), rounds, what was stored, re-reads."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram

from headend.poll.failures import FailureKind
from headend.poll.poller import RoundTotals
from headend.poll.service import PollTotals
from headend.runtime.metrics import Reading, ReadingsCollector

READ = "read"
# seconds: a few meters on one bus to thousands of buses at HEADEND_POLL_CONNECTIONS, within a 15-minute interval
ROUND_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0)


class PollMetrics:
    """The poll worker's metrics in `registry`: `round_finished` is the poller's `on_round`, `watch` its totals."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self.polls = Counter(
            "headend_poll_polls",
            "Meters polled in rounds, by outcome: read, or the kind of failure after the retries",
            ["outcome"],
            registry=registry,
        )
        for outcome in (READ, *(kind.value for kind in FailureKind)):
            self.polls.labels(outcome)
        self.round_duration = Histogram(
            "headend_poll_round_duration_seconds",
            "Time a round of polls took (rounds: this histogram's count)",
            buckets=ROUND_BUCKETS,
            registry=registry,
        )

    def round_finished(self, load_point: datetime, totals: RoundTotals) -> None:
        """Count a round once its readings and failures are stored."""
        self.round_duration.observe(totals.seconds)
        if totals.read:
            self.polls.labels(READ).inc(totals.read)
        for kind, n in totals.by_kind.items():
            self.polls.labels(str(kind)).inc(n)  # a FailureKind: the poller counts nothing else

    def watch(self, totals: PollTotals) -> None:
        """Read the worker's totals when scraped: what its polls stored, daily freezes, re-read tasks."""
        ReadingsCollector(
            [
                Reading("headend_poll_readings_stored", "Polled readings stored", lambda: totals.stored),
                Reading(
                    "headend_poll_duplicates", "Polled readings already stored (read again)", lambda: totals.duplicates
                ),
                Reading(
                    "headend_poll_dead_letters", "Polled readings recorded as dead letters", lambda: totals.dead_letters
                ),
                Reading(
                    "headend_poll_daily_freezes",
                    "Midnight readings caught up from DL/T 645 meters' daily frozen data",
                    lambda: totals.frozen,
                ),
                Reading("headend_poll_rereads", "Re-read tasks run", lambda: totals.rereads),
            ],
            self._registry,
        )
