"""Resolve the database and broker a command uses: the configured ones, or embedded ones."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from headend.db.embedded import embedded_postgres
from headend.db.engine import connect_utc
from headend.db.readiness import check_schema, connection_failure
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
    """An autocommit psycopg connection (transactions are explicit), its session in UTC, closed on exit.

    A failure to connect is raised as DatabaseMissingError or DatabaseUnavailableError, saying what to do.
    """
    try:
        conn = connect_utc(url)
    except psycopg.OperationalError as exc:
        raise connection_failure(url, exc) from exc
    with conn:
        yield conn


@contextlib.contextmanager
def migrated_database(url: str) -> Iterator[psycopg.Connection[Any]]:
    """`connect_database`, after checking that the schema is at this headend's revision (SchemaNotReadyError if not)."""
    with connect_database(url) as conn:
        check_schema(conn)
        yield conn


def check_database(url: str) -> None:
    """Raise the set-up error that would stop a worker on `url`: server, database or schema not ready."""
    with migrated_database(url):
        pass
