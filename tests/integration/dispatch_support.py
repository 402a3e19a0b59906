"""Helpers for tests of a running dispatcher."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.integration.conftest import count


def listening(conn: psycopg.Connection[Any]) -> bool:
    """Whether a connection LISTENs for command requests in this database (a dispatcher's wake listener).

    The dispatcher starts it once it is subscribed to meter events, and starts it again after losing the database.
    """
    return (
        count(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %%'",
        )
        > 0
    )
