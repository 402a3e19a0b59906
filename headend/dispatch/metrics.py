"""Metrics of the dispatcher: its steps and the meters' events, open commands by state, command round trips.

The steps and events are this dispatcher's own counts (`Dispatcher.totals`). Open commands by state and the round
trips come from the database, at most once per HEADEND_METRICS_QUERY_S: a count of the commands not ended (the
table's open rows), and the confirmations appended to `command_audit` since the last look, found by its sequence.
A dispatcher applies its confirmations in the loop that looks, so it misses none of its own; with several
dispatchers each sees every confirmation (read the round trips of one of them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import fields
from typing import Any, Final

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from headend.dispatch.dispatcher import Dispatcher, DispatchStats
from headend.dispatch.states import OPEN_STATES
from headend.runtime.metrics import Clock, Every

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]
# a command's steps as the dispatcher counts them (DispatchStats), events apart
STEPS: Final = ("taken", "sent", "held", "cancelled", "expired", "confirmed", "failed")
OPEN: Final = tuple(sorted(OPEN_STATES))
# seconds from the first send to the relay read back: a meter answers in seconds, a concentrator's in minutes
ROUND_TRIP_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
ROUND_TRIPS_PER_LOOK = 10_000
_OPEN_SQL: Final = "SELECT state, count(*) FROM commands WHERE state = ANY(%s) GROUP BY state"
_LAST_AUDIT_SQL: Final = "SELECT coalesce(max(seq), 0) FROM command_audit"
_CONFIRMED_SQL: Final = """
SELECT a.seq, c.action, extract(epoch FROM a.at - c.sent_at)::float8
FROM command_audit a JOIN commands c ON c.command_id = a.command_id
WHERE a.seq > %(after)s AND a.seq <= %(upto)s AND a.to_state = 'confirmed' AND c.sent_at IS NOT NULL
ORDER BY a.seq
"""


class DispatchMetrics:
    """The dispatcher's metrics in `registry`; its loop calls `tick` once a turn."""

    def __init__(self, registry: CollectorRegistry, *, query_every_s: float, clock: Clock = time.monotonic) -> None:
        self._query_due = Every(query_every_s, clock)
        self._counted = DispatchStats()
        self._audit_seq: int | None = None  # the last command_audit row looked at; None: not read yet
        self.steps = Counter(
            "headend_dispatch_command_steps",
            "Command steps this dispatcher took, by step: taken from the outbox, sent (resends too), held, cancelled "
            "by the re-check, expired, confirmed or failed by the meter's answer",
            ["step"],
            registry=registry,
        )
        self.events = Counter(
            "headend_dispatch_events",
            "Meter events handled, by result: applied or refused",
            ["result"],
            registry=registry,
        )
        for step in STEPS:
            self.steps.labels(step)
        for result in ("applied", "refused"):
            self.events.labels(result)
        self.commands = Gauge("headend_dispatch_commands", "Commands not ended, by state", ["state"], registry=registry)
        self.round_trip = Histogram(
            "headend_dispatch_command_round_trip_seconds",
            "From a command's first send to its confirmation (the relay read back where it should be), by action",
            ["action"],
            buckets=ROUND_TRIP_BUCKETS,
            registry=registry,
        )
        self.query_failures = Counter(
            "headend_dispatch_metrics_query_failures",
            "Queries behind the open commands and round trips that failed",
            registry=registry,
        )

    def tick(self, dispatcher: Dispatcher, conn: Connection | None) -> None:
        """Count the dispatcher's new steps; query the database (`conn`, None while lost) when its interval is over."""
        self._count(dispatcher.totals)
        if conn is None or not self._query_due.due():
            return
        try:
            self._query(conn)
        except psycopg.Error as exc:
            # a lost connection shows at the dispatcher's next step, which reconnects
            log.debug("the dispatcher's command metrics were not queried: %s", exc)
            self.query_failures.inc()

    def _count(self, totals: DispatchStats) -> None:
        new = {f.name: getattr(totals, f.name) - getattr(self._counted, f.name) for f in fields(DispatchStats)}
        for step in STEPS:
            if new[step]:
                self.steps.labels(step).inc(new[step])
        refused = new["rejected_events"]
        if new["events"] - refused:
            self.events.labels("applied").inc(new["events"] - refused)
        if refused:
            self.events.labels("refused").inc(refused)
        self._counted.add(DispatchStats(**new))

    def _query(self, conn: Connection) -> None:
        counts = {str(state): int(n) for state, n in conn.execute(_OPEN_SQL, (list(OPEN),)).fetchall()}
        for state in OPEN:
            self.commands.labels(state).set(counts.get(state, 0))
        row = conn.execute(_LAST_AUDIT_SQL).fetchone()
        upto = 0 if row is None else int(row[0])
        after, self._audit_seq = self._audit_seq, upto
        if after is None:
            return  # the round trips of commands confirmed before the dispatcher started are not its to count
        # a long pause (or a first look after a backlog) reads at most this many rows; the rest are not observed
        after = max(after, upto - ROUND_TRIPS_PER_LOOK)
        for _, action, seconds in conn.execute(_CONFIRMED_SQL, {"after": after, "upto": upto}).fetchall():
            self.round_trip.labels(str(action)).observe(max(0.0, float(seconds)))
