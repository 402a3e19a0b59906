"""Keep a day's first-pass collection before its first re-read: what the collection report shows beside the present."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import psycopg

from headend.db.collection_days import collection_day
from headend.db.engine import SchemaOptions


def freeze_first_pass(
    conn: psycopg.Connection[Any], options: SchemaOptions, days: list[date], task_id: str, now: datetime
) -> list[date]:
    """Record, for each of `days` not frozen yet, every meter's load points read so far; the days frozen now.

    `conn` is autocommit: reading a TimescaleDB day may refresh its aggregate first, which needs no open transaction.
    """
    assert conn.autocommit
    frozen = []
    for day in days:
        if conn.execute("SELECT 1 FROM collection_first_pass_days WHERE day = %s", (day,)).fetchone():
            continue
        query = collection_day(conn, options, day)
        with conn.transaction():
            taken = conn.execute(
                "INSERT INTO collection_first_pass_days (day, frozen_at, task_id) VALUES (%s, %s, %s) "
                "ON CONFLICT (day) DO NOTHING RETURNING day",
                (day, now, task_id),
            ).fetchone()
            if taken is None:
                continue  # another runner froze it meanwhile
            conn.execute(
                "INSERT INTO collection_first_pass (day, meter_id, intervals_read) "
                f"SELECT %(day)s, meter_id, intervals_read FROM ({query.sql}) AS d WHERE intervals_read > 0",
                query.params,
            )
        frozen.append(day)
    return frozen
