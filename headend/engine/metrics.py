"""Metrics of the prepay engine's runner: what its batches charged, how long they took, and its backlog."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from headend.engine.charging import _DUE_ROW_SQL, ACCOUNT_FROM, BatchStats
from headend.runtime.metrics import DURATION_BUCKETS, Clock, Every

log = logging.getLogger(__name__)

# what a sweep would take now: the sweep's own condition, so that the backlog is the work a sweep finds
_BACKLOG_SQL: Final = f"SELECT count(*) FROM {ACCOUNT_FROM} WHERE {_DUE_ROW_SQL}"


class EngineMetrics:
    """The engine runner's metrics in `registry`; the runner calls `batch` per transaction and `tick` between them."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        lateness_s: float,
        eager_on_grid: bool,
        backlog_every_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._lateness = timedelta(seconds=lateness_s)
        self._eager_on_grid = eager_on_grid
        self._backlog_due = Every(backlog_every_s, clock)
        self.accounts = Counter(
            "headend_engine_accounts", "Accounts locked and looked at by a batch", registry=registry
        )
        self.interval_charges = Counter(
            "headend_engine_interval_charges",
            "15-minute interval charges written (0 fen ones included)",
            registry=registry,
        )
        self.postings = Counter("headend_engine_postings", "Ledger postings of usage written", registry=registry)
        self.charged_fen = Counter("headend_engine_charged_fen", "Usage charged, in fen", registry=registry)
        self.notifications = Counter(
            "headend_engine_notifications", "Customer notifications written to the outbox", registry=registry
        )
        self.command_requests = Counter(
            "headend_engine_command_requests", "Relay command requests written to the outbox", registry=registry
        )
        self.batch_duration = Histogram(
            "headend_engine_batch_duration_seconds",
            "Time to charge a batch of accounts in its transaction (batches: this histogram's count)",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.backlog = Gauge(
            "headend_engine_backlog_accounts",
            "Accounts a sweep would charge now: chargeable readings, or a deferred decision that is due",
            registry=registry,
        )
        self.backlog_failures = Counter(
            "headend_engine_backlog_query_failures", "Backlog queries that failed", registry=registry
        )

    def batch(self, stats: BatchStats, seconds: float) -> None:
        """Count one charged batch."""
        self.batch_duration.observe(seconds)
        self.accounts.inc(stats.accounts)
        self.interval_charges.inc(stats.charges)
        self.postings.inc(stats.postings)
        self.charged_fen.inc(stats.charged_fen)
        self.notifications.inc(stats.notifications)
        self.command_requests.inc(stats.commands)

    def tick(self, conn: psycopg.Connection[Any], now: datetime) -> None:
        """Count the backlog when its interval is over; a failure is counted, never raised."""
        if not self._backlog_due.due():
            return
        params = {"now": now, "cu": now - self._lateness, "eager": self._eager_on_grid}
        try:
            row = conn.execute(_BACKLOG_SQL, params).fetchone()
        except psycopg.Error as exc:
            # a lost connection shows at the runner's next batch, which reconnects
            log.debug("the engine's backlog was not counted: %s", exc)
            self.backlog_failures.inc()
            return
        self.backlog.set(0 if row is None else int(row[0]))
