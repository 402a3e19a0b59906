"""Wake the dispatcher when command requests are committed: LISTEN on a connection of its own, in a thread."""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

import psycopg

from headend.db.engine import connect_utc
from headend.db.notifications import listen, wait_for_notification

log = logging.getLogger(__name__)

# the channel migration 0013's trigger on command_requests notifies, once per writing transaction
COMMAND_REQUESTS_CHANNEL = "headend_command_requests"
CHECK_S = 0.5  # the listener notices a stop within this
RETRY_FIRST_S = 0.5
CONNECT_TIMEOUT_S = 10
RETRY_MAX_S = 30.0


class Wakeable(Protocol):
    """What the listener wakes (the MQTT transport, whose `events` the dispatcher waits in)."""

    def wake(self) -> None:
        """End the current wait now."""


def wake_on_command_requests(url: str, target: Wakeable, *stops: threading.Event) -> None:
    """Until one of `stops` is set: `target.wake()` for each committed batch of command requests; once more at the end.

    A lost database connection is logged and reopened after a pause that doubles from RETRY_FIRST_S to RETRY_MAX_S;
    meanwhile the dispatcher's poll stands in, and a wake follows each new LISTEN (requests may have been committed
    while nobody listened).
    """
    assert stops, "the listener needs a way to stop"

    def stopping() -> bool:
        return any(s.is_set() for s in stops)

    failures = 0
    while not stopping():
        try:
            with connect_utc(url, timeout_s=CONNECT_TIMEOUT_S) as conn:
                listen(conn, COMMAND_REQUESTS_CHANNEL)
                if failures:
                    log.info("listening for command requests again after %d failure(s)", failures)
                    failures = 0
                    target.wake()
                while not stopping():
                    if wait_for_notification(conn, CHECK_S):
                        target.wake()
        except psycopg.Error as exc:
            failures += 1
            pause_s = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(failures - 1, 16))
            log.warning(
                "lost the database while listening for command requests (%s); retrying in %.1f s",
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                pause_s,
            )
            _wait_any(stops, pause_s)
    target.wake()


def _wait_any(stops: tuple[threading.Event, ...], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and not any(s.is_set() for s in stops):
        stops[0].wait(min(left, CHECK_S))
