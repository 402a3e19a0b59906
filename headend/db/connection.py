"""Resolve the database and broker a command uses: the configured ones, or embedded ones."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from headend.db.embedded import embedded_postgres
from headend.db.engine import connect_utc
from headend.settings import Settings


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """The configured HEADEND_DATABASE_URL, or the URL of the embedded server kept in HEADEND_DATA_DIR."""
    if settings.database_url:
        yield settings.database_url
        return
    with embedded_postgres(Path(settings.data_dir)) as url:
        yield url


@contextlib.contextmanager
def connect_database(url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit psycopg connection (transactions are explicit), its session in UTC, closed on exit."""
    with connect_utc(url) as conn:
        yield conn
