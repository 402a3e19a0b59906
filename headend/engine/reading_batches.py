"""Follow `reading_batches`: the meters the ingest writer stored new readings for, and their accounts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg

Connection = psycopg.Connection[Any]

# the channel on which each committed ingest batch is announced (migration 0012's trigger on reading_batches)
READINGS_STORED_CHANNEL = "headend_readings_stored"
# batches are stamped when their transaction began; one may become visible after later ones
DEFAULT_WINDOW = timedelta(seconds=60)
KEEP_FOR = timedelta(hours=1)


class ReadingBatchFollower:
    """Remembers which batches it has seen; each call returns the accounts of the batches committed since.

    A fast path only: what it misses (a batch committed more than `window` after its transaction began, or while
    no runner followed) the runner's sweeps find by the meters' stored-readings counters (migration 0018).
    """

    def __init__(self, window: timedelta = DEFAULT_WINDOW) -> None:
        self._window_s = window.total_seconds()
        self._seen: set[int] = set()

    def new_accounts(self, conn: Connection) -> list[str]:
        """Accounts whose meter has a reading stored in a batch not seen before, in id order."""
        in_window = {
            int(r[0])
            for r in conn.execute(
                "SELECT batch_id FROM reading_batches WHERE stored_at > now() - make_interval(secs => %s)",
                (self._window_s,),
            )
        }
        fresh = sorted(in_window - self._seen)
        # forget what fell out of the window: it can't be returned again
        self._seen = in_window
        if not fresh:
            return []
        # only the new batches' meters travel: the window holds a minute of batches
        found = conn.execute(
            """
            SELECT DISTINCT a.account_id
            FROM reading_batches b CROSS JOIN LATERAL unnest(b.meter_ids) AS m(meter_id)
            JOIN prepaid_accounts a ON a.meter_id = m.meter_id
            WHERE b.batch_id = ANY(%s)
            ORDER BY a.account_id
            """,
            (fresh,),
        ).fetchall()
        return [str(r[0]) for r in found]


def prune(conn: Connection, keep_for: timedelta = KEEP_FOR) -> int:
    """Delete batches older than `keep_for`; how many."""
    return conn.execute(
        "DELETE FROM reading_batches WHERE stored_at < now() - make_interval(secs => %s)", (keep_for.total_seconds(),)
    ).rowcount
