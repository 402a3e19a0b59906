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

`run` survives its database: given a way to `connect`, it replaces a lost connection (its LISTEN with it), with
backoff, saying so in its status line every period until it can charge again, and then sweeps every account at
once, since what was announced meanwhile was lost with the connection. A batch cut off by the loss was rolled back
by the server and is charged again, once.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from headend.db.notifications import listen, wait_for_notification
from headend.engine.catalog import Catalog
from headend.engine.charging import BatchFailedError, BatchStats, charge_accounts, charge_due
from headend.engine.reading_batches import READINGS_STORED_CHANNEL, ReadingBatchFollower, prune
from headend.runtime.status import Status, StatusReporter

if TYPE_CHECKING:
    from headend.engine.metrics import EngineMetrics

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]
RETRY_FAILED_AFTER = timedelta(minutes=5)
GC_FIRST_THRESHOLD = 50_000
STOP_CHECK_S = 0.5  # a waiting runner notices `stop` within this
RECONNECT_MIN_S = 0.5  # the first pause after the database failed; doubled each time it fails again
RECONNECT_MAX_S = 10.0
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
    connect: Callable[[], Connection] | None = None  # a new connection when `run` loses one (None: `run` raises)
    metrics: EngineMetrics | None = None
    _follower: ReadingBatchFollower = field(default_factory=ReadingBatchFollower, init=False, repr=False)
    _totals: BatchStats = field(default_factory=BatchStats, init=False, repr=False)
    _status: StatusReporter = field(init=False, repr=False)
    _trouble: _Trouble | None = field(default=None, init=False, repr=False)  # why no progress is made, if so
    _retry_s: float = field(default=RECONNECT_MIN_S, init=False, repr=False)
    _owned: Connection | None = field(default=None, init=False, repr=False)  # opened here after a loss: closed here

    def __post_init__(self) -> None:
        self._status = StatusReporter(log, "engine", self.status_interval_s, STATUS_LABELS)

    def _count(self, stats: BatchStats, started: float) -> None:
        """Add a batch begun at `started` (monotonic) to the totals; write the status line when its period is over."""
        self._totals += stats
        if self.metrics is not None:
            self.metrics.batch(stats, time.monotonic() - started)
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
            },
            problem=None if self._trouble is None else self._trouble.problem(),
        )

    def sweep(self, stop: threading.Event | None = None) -> BatchStats:
        """Charge every account due now that no other runner holds (until `stop`, between batches)."""
        total = BatchStats()
        after = ""  # one pass over the id space a sweep; what becomes due behind the cursor waits for the next
        while stop is None or not stop.is_set():
            now = self.clock()
            cu = now - timedelta(seconds=self.lateness_s)
            started = time.monotonic()
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
            self._count(stats, started)
            after = taken[-1]
        return total

    def react(self) -> BatchStats:
        """Charge the accounts of meters with readings stored since the last call (waiting for their locks)."""
        ids = self._follower.new_accounts(self.conn)
        total = BatchStats()
        for start in range(0, len(ids), self.batch_accounts):
            now = self.clock()
            cu = now - timedelta(seconds=self.lateness_s)
            started = time.monotonic()
            stats = self._isolate(ids[start : start + self.batch_accounts], now, cu, wait=True)
            total += stats
            self._count(stats, started)
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
        between waits). A lost connection is replaced through `connect`, with backoff; without `connect` the error
        is raised.
        """
        started_with = self._totals
        listening = False
        next_sweep = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    if not listening:
                        listen(self.conn, READINGS_STORED_CHANNEL)
                        listening = True
                    stats, next_sweep = self._charge(stop, next_sweep)
                    self._recovered()
                    if self.metrics is not None:
                        self.metrics.tick(self.conn, self.clock())
                    if not stats.accounts:
                        self._wait_for_readings(stop, min(time.monotonic() + poll_s, next_sweep))
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    if self.connect is None:
                        raise
                    if self.conn.closed or self.conn.broken:
                        listening = False
                        self._reconnect(stop, exc)
                    else:
                        # the connection is fine, the transaction was rolled back (a deadlock, a cancelled query…)
                        self._failing(exc, lost=False)
                        self._back_off(stop)
                    # what was announced while the runner could not listen is lost: everything is swept at once
                    next_sweep = time.monotonic()
        finally:
            if self._owned is not None:
                self._owned.close()
                self._owned = None
        return self._totals - started_with

    def _charge(self, stop: threading.Event, next_sweep: float) -> tuple[BatchStats, float]:
        """React to stored batches, and sweep when a sweep is due; what was charged, and when to sweep next."""
        started = time.monotonic()
        if started >= next_sweep:
            stats = self.sweep(stop) + self.react()
            prune(self.conn)
            next_sweep = started + self.full_sweep_s
        else:
            stats = self.react()
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
        return stats, next_sweep

    def _recovered(self) -> None:
        """The database took a step of work: whatever failed before is over."""
        if self._trouble is not None:
            log.info("charging again after %.1f s", time.monotonic() - self._trouble.since)
            self._trouble = None
        self._retry_s = RECONNECT_MIN_S

    def _reconnect(self, stop: threading.Event, lost: Exception) -> None:
        """Replace the lost connection, with backoff, until connected or `stop`."""
        assert self.connect is not None
        self._failing(lost, lost=True)
        try:
            self.conn.close()
        except psycopg.Error:
            log.debug("closing the lost connection failed", exc_info=True)
        self._owned = None
        while True:
            self._back_off(stop)
            if stop.is_set():
                return
            try:
                conn = self.connect()
            except psycopg.Error as exc:
                self._failing(exc, lost=True)
                continue
            self.conn = self._owned = conn
            log.info("reconnected to the database; sweeping every account")
            return

    def _failing(self, exc: Exception, *, lost: bool) -> None:
        """Note (and log) that the database failed the runner."""
        trouble = self._trouble
        if trouble is None:
            self._trouble = trouble = _Trouble(time.monotonic(), lost, _reason(exc))
            what = "lost the database connection" if lost else "the database failed a batch"
            log.warning("%s (%s); trying again in %.1f s", what, trouble.reason, self._retry_s)
        else:
            trouble.attempts += 1
            trouble.lost = trouble.lost or lost
            trouble.reason = _reason(exc)
            log.warning("the database is still failing (%s); trying again in %.1f s", trouble.reason, self._retry_s)

    def _back_off(self, stop: threading.Event) -> None:
        """Pause (longer each time in a row, up to RECONNECT_MAX_S), or until `stop`; the status line says why."""
        deadline = time.monotonic() + self._retry_s
        self._retry_s = min(self._retry_s * 2, RECONNECT_MAX_S)
        while not stop.is_set():
            self._status.tick(self._status_now)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            stop.wait(min(left, STOP_CHECK_S))

    def _wait_for_readings(self, stop: threading.Event, deadline: float) -> None:
        """Until an ingest batch is announced, `deadline` (monotonic) or `stop`, whichever comes first."""
        while not stop.is_set():
            self._status.tick(self._status_now)
            left = deadline - time.monotonic()
            if left <= 0 or wait_for_notification(self.conn, min(left, STOP_CHECK_S)):
                return


@dataclass(slots=True)
class _Trouble:
    """The database failing the runner: since when, whether the connection was lost, the latest reason."""

    since: float  # monotonic
    lost: bool
    reason: str
    attempts: int = 0  # failed again since (reconnections refused, batches failed)

    def problem(self) -> str:
        """The words of the status line."""
        seconds = time.monotonic() - self.since
        if self.lost:
            return (
                f"database connection lost {seconds:.0f} s ago ({self.reason}), {self.attempts} reconnection "
                "attempts failed since; nothing is charged until it is back"
            )
        return f"database failing for {seconds:.0f} s ({self.reason}), {self.attempts} retries failed since"


def _reason(exc: BaseException) -> str:
    """The first line of an error's message, or its type when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
