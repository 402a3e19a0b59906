"""PostgreSQL LISTEN/NOTIFY on an autocommit connection: subscribe to a channel, wait for the next notification."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

Connection = psycopg.Connection[Any]


def listen(conn: Connection, channel: str) -> None:
    """Have `conn` (autocommit) receive the notifications of `channel` committed from now on."""
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))


def wait_for_notification(conn: Connection, timeout_s: float) -> bool:
    """Wait until a notification arrives on `conn` or `timeout_s` passes; whether one did.

    Notifications that arrived while `conn` was busy count: the first returns at once.
    """
    for _ in conn.notifies(timeout=timeout_s, stop_after=1):
        return True
    return False
