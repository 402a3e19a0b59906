"""`headend engine`: charge newly chargeable readings and re-decide woken accounts, batch after batch.

Each sweep asks for the accounts with something to do (a reading not yet seen, a reading that became
chargeable, a deferred disconnect whose time came) and charges them `batch_accounts` at a time, each batch one
transaction. `complete_until` is now minus the allowed lateness, the runner's promise to the charger that
every reading before it has arrived. A batch that fails is split in halves until the failing account is
isolated; that account is logged and put back for later, the others are charged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from headend.engine.catalog import Catalog
from headend.engine.charging import BatchStats, charge_accounts, due_accounts

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]
RETRY_FAILED_AFTER = timedelta(minutes=5)


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

    def sweep(self) -> BatchStats:
        """Charge every account due now; returns what was done."""
        total = BatchStats()
        skipped: set[str] = set()
        while True:
            now = self.clock()
            cu = now - timedelta(seconds=self.lateness_s)
            ids = [
                a
                for a in due_accounts(self.conn, now=now, complete_until=cu, limit=self.batch_accounts)
                if a not in skipped
            ]
            if not ids:
                return total
            stats = self._charge(ids, now, cu)
            total += stats
            if stats.accounts < len(ids):
                # locked by another runner (or isolated as failing): leave them to it this sweep
                skipped.update(ids)

    def _charge(self, ids: Sequence[str], now: datetime, cu: datetime) -> BatchStats:
        try:
            return charge_accounts(self.conn, self.catalog, ids, now=now, complete_until=cu, lateness_s=self.lateness_s)
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
            return self._charge(ids[:middle], now, cu) + self._charge(ids[middle:], now, cu)

    def run(self, stop: threading.Event, poll_s: float) -> BatchStats:
        """Sweep until `stop` is set, pausing `poll_s` after a sweep that found nothing."""
        total = BatchStats()
        while not stop.is_set():
            started = time.monotonic()
            stats = self.sweep()
            total += stats
            if stats.accounts:
                log.info(
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
                stop.wait(poll_s)
        return total
