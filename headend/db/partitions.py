"""Daily range partitions of `readings` for servers without TimescaleDB."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

_PARTITION_LOCK_KEY = 0x7061_7274


def partition_name(day: date) -> str:
    """Name of the partition holding the UTC day `day`."""
    return f"readings_p{day:%Y%m%d}"


def existing_partition_days(conn: psycopg.Connection[Any]) -> set[date]:
    """UTC days that already have a partition."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'readings'::regclass"
    ).fetchall()
    return {datetime.strptime(str(name), "readings_p%Y%m%d").replace(tzinfo=UTC).date() for (name,) in rows}


def ensure_partitions(conn: psycopg.Connection[Any], days: Iterable[date]) -> list[date]:
    """Create the partitions missing for `days` in one transaction; return the days created."""
    wanted = set(days)
    with conn.transaction():
        if not wanted or wanted <= existing_partition_days(conn):
            return []
        # creating a partition locks the parent; one creator at a time avoids racing on the same name
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK_KEY,))
        created: list[date] = []
        for day in sorted(wanted - existing_partition_days(conn)):
            # through the owner's SECURITY DEFINER function (migration 0020): the caller needn't own `readings`
            row = conn.execute("SELECT create_readings_partition(%s)", (day,)).fetchone()
            if row is not None and row[0]:
                created.append(day)
    return created


def days_around(today: date, behind: int, ahead: int) -> list[date]:
    """The days from `behind` days before `today` to `ahead` days after it."""
    return [today + timedelta(days=offset) for offset in range(-behind, ahead + 1)]
