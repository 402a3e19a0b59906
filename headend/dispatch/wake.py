"""Wake the dispatcher when command requests are committed: LISTEN on a connection of its own, in a thread."""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import psycopg

from headend.db.engine import connect_utc
from headend.db.notifications import listen, wait_for_notification

log = logging.getLogger(__name__)

# the channel migration 0013's trigger on command_requests notifies, once per writing transaction
COMMAND_REQUESTS_CHANNEL = "headend_command_requests"
CHECK_S = 0.5  # the listener notices a stop within this


class Wakeable(Protocol):
    """What the listener wakes (the MQTT transport, whose `events` the dispatcher waits in)."""

    def wake(self) -> None:
        """End the current wait now."""


def wake_on_command_requests(url: str, target: Wakeable, *stops: threading.Event) -> None:
    """Until one of `stops` is set: `target.wake()` for each committed batch of command requests; once more at the end.

    A lost database connection is logged and reopened a second later; meanwhile the dispatcher's poll stands in.
    """
    assert stops, "the listener needs a way to stop"

    def stopping() -> bool:
        return any(s.is_set() for s in stops)

    while not stopping():
        try:
            with connect_utc(url) as conn:
                listen(conn, COMMAND_REQUESTS_CHANNEL)
                while not stopping():
                    if wait_for_notification(conn, CHECK_S):
                        target.wake()
        except psycopg.OperationalError:
            log.warning("lost the database while listening for command requests; retrying", exc_info=True)
            stops[0].wait(1.0)
    target.wake()
