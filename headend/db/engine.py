"""Engine construction and the storage facts the migration recorded."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError

from headend.db.errors import InvalidDatabaseURLError

SCHEMA_OPTIONS_SQL = "SELECT name, value FROM schema_options"
_URL_FORM = "postgresql+psycopg://user:password@host:5432/database"


class Storage(StrEnum):
    """How `readings` is stored."""

    TIMESCALEDB = "timescaledb"
    PARTITIONED = "partitioned"


@dataclass(frozen=True, slots=True)
class SchemaOptions:
    """Facts fixed when the schema was created."""

    storage: Storage
    collection_timezone: str

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[Any, Any]]) -> SchemaOptions:
        """Build from the (name, value) rows of `schema_options`."""
        values = {str(name): str(value) for name, value in rows}
        return cls(storage=Storage(values["storage"]), collection_timezone=values["collection_timezone"])


def normalise_url(url: str) -> str:
    """Force the psycopg 3 driver on a PostgreSQL URL; reject other databases clearly."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        # the URL itself is not repeated: it may hold a password
        raise InvalidDatabaseURLError(f"HEADEND_DATABASE_URL is not a valid URL; expected {_URL_FORM}") from None
    if parsed.get_backend_name() not in {"postgresql", "postgres"}:
        raise InvalidDatabaseURLError(
            f"HEADEND_DATABASE_URL must be a PostgreSQL URL ({_URL_FORM}), got backend {parsed.get_backend_name()!r}"
        )
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """A pooled engine on `url` with the psycopg 3 driver."""
    return create_engine(normalise_url(url), pool_size=pool_size, pool_pre_ping=True)


def libpq_dsn(url: str) -> str:
    """The URL in the plain form psycopg.connect understands (no SQLAlchemy driver suffix)."""
    return make_url(normalise_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)


def connect_utc(url: str, *, timeout_s: int | None = None) -> psycopg.Connection[Any]:
    """An autocommit psycopg connection to `url` whose session is in UTC: timestamps come back as stored.

    psycopg returns a timestamptz in the session's zone; in UTC it is `datetime.UTC` itself, which the engine's
    core takes as is (any other zone costs a conversion per reading). `timeout_s` bounds the attempt.
    """
    # No JIT: the engine's statements touch a batch of rows each, but the planner prices a scan in id order with a
    # LIMIT by the whole table, and compiling took ~200 ms of a settlement batch whose query then ran in 4 ms.
    options = "-c TimeZone=UTC -c jit=off"
    if timeout_s is None:
        return psycopg.connect(libpq_dsn(url), autocommit=True, options=options)
    return psycopg.connect(libpq_dsn(url), autocommit=True, options=options, connect_timeout=timeout_s)
