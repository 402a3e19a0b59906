"""`headend engine`: charge newly chargeable readings and re-decide woken accounts, batch after batch.

Between sweeps the runner follows `reading_batches`: woken by the notification each committed ingest batch
sends, it charges the accounts of meters with newly stored readings at once (waiting for their locks, in id
order), which is what lets a reading that exhausts a balance lead to a disconnect request within moments. A
full sweep every `full_sweep_s` catches everything else. Each sweep locks the accounts with something to do (a
reading not yet seen, a reading that became chargeable, a deferred disconnect whose time came)
`batch_accounts` at a time, skipping those another runner holds, and charges each batch in one transaction.
`complete_until` is now minus the allowed lateness, the runner's promise to the charger that every reading
before it has arrived. A batch that fails is split in halves until the failing account is isolated; that
account is logged and put back for later, the others are charged.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from headend.db.notifications import listen, wait_for_notification
from headend.engine.catalog import Catalog
from headend.engine.charging import BatchFailedError, BatchStats, charge_accounts, charge_due
from headend.engine.reading_batches import READINGS_STORED_CHANNEL, ReadingBatchFollower, prune
from headend.runtime.status import Status, StatusReporter

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]
RETRY_FAILED_AFTER = timedelta(minutes=5)
GC_FIRST_THRESHOLD = 50_000
STOP_CHECK_S = 0.5  # a waiting runner notices `stop` within this
# the counters of a status line, with their words
STATUS_LABELS = {
    "accounts": "accounts",
    "charges": "interval charges",
    "postings": "postings",
    "charged_fen": "fen charged",
    "notifications": "notifications",
    "commands": "relay commands",
}


def tune_gc_for_batches() -> None:
    """Fewer, cheaper garbage collections in a process that charges batches (`headend engine`, settlement workers).

    A batch makes hundreds of thousands of short-lived objects, almost none in cycles. At the default threshold
    (700 allocations) the collector runs thousands of times a batch, and its older generations walk everything
    the batch holds, again and again. What the process loaded before (modules, tariffs, calendars) is frozen out
    of the collector's sight, and a collection waits for 50,000 allocations. The runner sweep ran 36 % faster
    with it (median of 3, docs/benchmarks.md).
    """
    gc.freeze()
    gc.set_threshold(GC_FIRST_THRESHOLD, 20, 20)


def utc_now() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


@dataclass(slots=True)
class EngineRunner:
    """Charges due accounts on one connection; several runners may share a database."""

    conn: Connection
    lateness_s: float
    batch_accounts: int
    clock: Callable[[], datetime] = utc_now
    catalog: Catalog = field(default_factory=Catalog)
    eager_on_grid: bool = False  # charge on-grid readings at once (prepay_engine.usage.charge_usage)
    full_sweep_s: float = 30.0
    status_interval_s: float = 0.0  # between status lines (0: none)
    _follower: ReadingBatchFollower | None = field(default=None, init=False, repr=False)
    _totals: BatchStats = field(default_factory=BatchStats, init=False, repr=False)
    _status: StatusReporter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._status = StatusReporter(log, "engine", self.status_interval_s, STATUS_LABELS)

    def _count(self, stats: BatchStats) -> None:
        """Add a batch to the status line's totals; write the line when its period is over."""
        self._totals += stats
        self._status.tick(self._status_now)

    def _status_now(self) -> Status:
        t = self._totals
        return Status(
            {
                "accounts": t.accounts,
                "charges": t.charges,
                "postings": t.postings,
                "charged_fen": t.charged_fen,
                "notifications": t.notifications,
                "commands": t.commands,
            }
        )

    def sweep(self, stop: threading.Event | None = None) -> BatchStats:
        """Charge every account due now that no other runner holds (until `stop`, between batches)."""
        total = BatchStats()
        after = ""  # one pass over the id space a sweep; what becomes due behind the cursor waits for the next
        while stop is None or not stop.is_set():
            now = self.clock()
            cu = now - timedelta(seconds=self.lateness_s)
            try:
                stats, taken = charge_due(
                    self.conn,
                    self.catalog,
                    now=now,
                    complete_until=cu,
                    lateness_s=self.lateness_s,
                    limit=self.batch_accounts,
                    after=after,
                    eager_on_grid=self.eager_on_grid,
                )
            except BatchFailedError as failed:
                log.warning("a batch of %d accounts failed; isolating the cause", len(failed.account_ids))
                stats, taken = self._isolate(failed.account_ids, now, cu), failed.account_ids
            if not taken:
                break
            total += stats
            self._count(stats)
            after = taken[-1]
        return total

    def react(self) -> BatchStats:
        """Charge the accounts of meters with readings stored since the last call (waiting for their locks)."""
        if self._follower is None:
            self._follower = ReadingBatchFollower(self.conn)
        ids = self._follower.new_accounts()
        total = BatchStats()
        for start in range(0, len(ids), self.batch_accounts):
            now = self.clock()
            cu = now - timedelta(seconds=self.lateness_s)
            stats = self._isolate(ids[start : start + self.batch_accounts], now, cu, wait=True)
            total += stats
            self._count(stats)
        return total

    def _isolate(self, ids: Sequence[str], now: datetime, cu: datetime, *, wait: bool = False) -> BatchStats:
        """Charge `ids` in halves until each failing account is alone; log it and retry it later."""
        try:
            return charge_accounts(
                self.conn,
                self.catalog,
                ids,
                now=now,
                complete_until=cu,
                lateness_s=self.lateness_s,
                wait=wait,
                eager_on_grid=self.eager_on_grid,
            )
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except Exception:
            if len(ids) == 1:
                log.exception("account %s could not be charged; retrying it after %s", ids[0], RETRY_FAILED_AFTER)
                self.conn.execute(
                    "UPDATE prepaid_accounts SET due_at = %s WHERE account_id = %s", (now + RETRY_FAILED_AFTER, ids[0])
                )
                return BatchStats()
            middle = len(ids) // 2
            return self._isolate(ids[:middle], now, cu, wait=wait) + self._isolate(ids[middle:], now, cu, wait=wait)

    def run(self, stop: threading.Event, poll_s: float) -> BatchStats:
        """Until `stop`: charge new readings' accounts as they come, a full sweep every `full_sweep_s`.

        The runner sleeps until the ingest announces a stored batch, or `poll_s` at most (`stop` is looked at
        between waits).
        """
        listen(self.conn, READINGS_STORED_CHANNEL)
        total = BatchStats()
        next_sweep = time.monotonic()
        while not stop.is_set():
            started = time.monotonic()
            if started >= next_sweep:
                stats = self.sweep(stop) + self.react()
                prune(self.conn)
                next_sweep = started + self.full_sweep_s
            else:
                stats = self.react()
            total += stats
            if stats.accounts:
                log.debug(
                    "charged %d accounts: %d charges, %d postings, %d fen, %d notifications, %d commands in %.2f s",
                    stats.accounts,
                    stats.charges,
                    stats.postings,
                    stats.charged_fen,
                    stats.notifications,
                    stats.commands,
                    time.monotonic() - started,
                )
            else:
                self._wait_for_readings(stop, min(time.monotonic() + poll_s, next_sweep))
        return total

    def _wait_for_readings(self, stop: threading.Event, deadline: float) -> None:
        """Until an ingest batch is announced, `deadline` (monotonic) or `stop`, whichever comes first."""
        while not stop.is_set():
            self._status.tick(self._status_now)
            left = deadline - time.monotonic()
            if left <= 0 or wait_for_notification(self.conn, min(left, STOP_CHECK_S)):
                return
