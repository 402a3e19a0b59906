"""Periodic status lines of a long-running worker, and warnings that a flood cannot multiply.

Both are driven by the worker's own loop and a monotonic clock: no thread, no timer. The worker keeps counting as it
does (plain integer counters); the reporter reads them only when a period is over, so a message costs the worker
nothing more than its counter increments.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Status:
    """A worker's state when a status line is due."""

    totals: Mapping[str, int]  # counters since the worker started
    now: Mapping[str, int] = field(default_factory=dict)  # gauges at this moment, e.g. a backlog
    problem: str | None = None  # why the worker cannot make progress, e.g. its broker is out of reach


class LimitedLog:
    """Lines of one kind (e.g. dead letters), at most `limit` a period; those left out are summed up in one line.

    Thread-safe: a worker may log from one thread and flush from another.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        limit: int = 10,
        period_s: float = 10.0,
        level: int = logging.WARNING,
        clock: Clock = time.monotonic,
    ) -> None:
        self._logger = logger
        self._what = what
        self._limit = limit
        self._period_s = period_s
        self._level = level
        self._clock = clock
        self._lock = threading.Lock()
        self._logged = 0
        self._left_out = 0
        self._started = clock()

    def log(self, msg: str, *args: object) -> None:
        """Log one line, or count it when this period's lines are used up."""
        with self._lock:
            now = self._clock()
            if now - self._started >= self._period_s:
                self._summarise(now)
            if self._logged >= self._limit:
                self._left_out += 1
                return
            self._logged += 1
        self._logger.log(self._level, msg, *args)

    def flush(self) -> None:
        """Sum up the lines left out so far, and start a new period."""
        with self._lock:
            self._summarise(self._clock())

    def _summarise(self, now: float) -> None:
        if self._left_out:
            self._logger.log(
                self._level,
                "… and %d more %s in the last %.0f s, not logged one by one",
                self._left_out,
                self._what,
                now - self._started,
                extra={"left_out": self._left_out},
            )
        self._logged = self._left_out = 0
        self._started = now


class StatusReporter:
    """One status line a period: a worker's counters for the period and since it started.

    A period in which nothing was counted and nothing is pending is reported once, as idle; the idle periods after
    it are left out until something happens, so a quiet worker does not fill the log with identical lines and
    every change of state still shows. A period with a problem is always reported, at WARNING.
    """

    def __init__(
        self,
        logger: logging.Logger,
        worker: str,
        interval_s: float,
        labels: Mapping[str, str],
        *,
        limited: Sequence[LimitedLog] = (),
        clock: Clock = time.monotonic,
    ) -> None:
        self._logger = logger
        self._worker = worker
        self._interval_s = interval_s
        self._labels = labels  # counter name → words in the text line, in the order written
        self._limited = limited
        self._clock = clock
        self._last_at = clock()
        self._last: Mapping[str, int] = {}
        self._idle_said = False

    @property
    def enabled(self) -> bool:
        """Whether status lines are written at all (an interval of 0 turns them off)."""
        return self._interval_s > 0

    def tick(self, status: Callable[[], Status]) -> None:
        """Report when the period is over (calling `status` only then); otherwise only a clock read."""
        now = self._clock()
        if self._interval_s <= 0 or now - self._last_at < self._interval_s:
            return
        self.report(status(), now)

    def report(self, status: Status, now: float | None = None) -> None:
        """Write the status line of the period ending now (or nothing for a repeated idle period)."""
        now = self._clock() if now is None else now
        for limited in self._limited:
            limited.flush()
        period = {name: value - self._last.get(name, 0) for name, value in status.totals.items()}
        period_s = now - self._last_at
        self._last, self._last_at = dict(status.totals), now
        idle = not any(period.values()) and not any(status.now.values())
        if idle and status.problem is None:
            if self._idle_said:
                return
            self._idle_said = True
        else:
            self._idle_said = False
        state = "idle" if idle else "running"
        parts = [f"{self._worker}:"]
        if status.problem is not None:
            state = "problem"
            parts.append(f"{status.problem};")
        if idle:
            parts.append(f"idle for {period_s:.0f} s;")
        else:
            parts.append(f"last {period_s:.0f} s: {self._counts(period)};")
        parts.append(f"since start: {self._counts(status.totals)}")
        if status.now:
            parts[-1] += ";"
            parts.append(", ".join(f"{value:,} {self._labels.get(name, name)}" for name, value in status.now.items()))
        self._logger.log(
            logging.INFO if status.problem is None else logging.WARNING,
            " ".join(parts),
            extra={
                "worker": self._worker,
                "state": state,
                "problem": status.problem,
                "period_s": round(period_s, 3),
                "period": period,
                "totals": dict(status.totals),
                "now": dict(status.now),
            },
        )

    def _counts(self, counters: Mapping[str, int]) -> str:
        return ", ".join(
            f"{counters.get(name, 0):,} {label}" for name, label in self._labels.items() if name in counters
        )
