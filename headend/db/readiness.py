"""Whether a database can be used: the server reachable, the database there, the schema at this headend's revision.

Failures are the typed errors of `headend.db.errors`, with messages that say what to do.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from functools import cache
from typing import Any

import psycopg
from sqlalchemy.engine import URL, make_url

from headend.db.engine import libpq_dsn
from headend.db.errors import DatabaseMissingError, DatabaseUnavailableError, SchemaNotReadyError, SetupError

_VERSIONS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "migrations", "versions")
# the module-level assignments every migration script has (`revision: str = "0007"`, `down_revision ... = None`)
_REVISION_LINE = re.compile(r"^(revision|down_revision)\b[^=\n]*=\s*(?:\"([^\"]+)\"|'([^']+)'|None)\s*$", re.M)
_MIGRATE = "run `headend migrate` first"
_PROBE_TIMEOUT_S = 3


def head_revision() -> str:
    """The newest revision of the packaged migrations, read from their scripts without loading Alembic."""
    revisions, parents = _packaged_revisions()
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the packaged migrations should have one head revision, found {sorted(heads)}")
    return next(iter(heads))


def check_schema(conn: psycopg.Connection[Any]) -> None:
    """Raise SchemaNotReadyError unless the schema on `conn` (autocommit) is at this headend's head revision."""
    try:
        found = {str(row[0]) for row in conn.execute("SELECT version_num FROM alembic_version")}
    except psycopg.errors.UndefinedTable:
        found = set()
    except psycopg.errors.InsufficientPrivilege:
        # every role of the head-end may read it once the grants are applied (headend.db.grants)
        raise SchemaNotReadyError(
            f'user "{conn.info.user}" may not read the schema of database "{conn.info.dbname}": it is not one of the '
            "head-end's roles, or the grants were never applied; run `headend db roles` as an administrator, then "
            "`headend migrate` as the owner role"
        ) from None
    needed = head_revision()
    if found == {needed}:
        return
    database = conn.info.dbname
    if not found:
        raise SchemaNotReadyError(f'the schema of database "{database}" is not migrated; {_MIGRATE}')
    unknown = sorted(found - _packaged_revisions()[0])
    if unknown:
        raise SchemaNotReadyError(
            f'the schema of database "{database}" is at revision {", ".join(unknown)}, which this headend does not '
            f"know (it needs {needed}): a newer headend migrated it; run that version"
        )
    raise SchemaNotReadyError(
        f'the schema of database "{database}" is at revision {", ".join(sorted(found))}, this headend needs '
        f"{needed}; {_MIGRATE}"
    )


def connection_failure(url: str, exc: psycopg.OperationalError) -> SetupError:
    """The set-up mistake behind a failed connection to `url`: the database missing, or the server not reachable."""
    target = make_url(url)
    used = exc.pgconn  # what libpq connected with, defaults (PG* variables, the OS user) filled in
    host = used.host.decode() if used is not None and used.host else target.host
    port = used.port.decode() if used is not None and used.port else str(target.port or 5432)
    user = used.user.decode() if used is not None and used.user else target.username
    where = f"{host}:{port}" if host and not host.startswith("/") else f"the local socket {host or ''}".rstrip()
    database = used.db.decode() if used is not None and used.db else target.database or user or "postgres"
    if used is not None and _database_missing(target, database):
        options = " ".join(f"{flag} {value}" for flag, value in (("-h", host), ("-p", port), ("-U", user)) if value)
        return DatabaseMissingError(
            f'database "{database}" does not exist on the server at {where}; create it (createdb {options} '
            f"{database}) or correct HEADEND_DATABASE_URL, then run `headend migrate`"
        )
    return DatabaseUnavailableError(
        f"cannot connect to the database at {where} ({_reason(exc)}); check HEADEND_DATABASE_URL and that "
        "PostgreSQL is running there and accepts this user"
    )


class TimescaleDB(StrEnum):
    """Whether the timescaledb extension can be used by a database."""

    LOADABLE = "loadable"  # created in the database already, or preloaded and installed
    NOT_PRELOADED = "not preloaded"  # installed, but CREATE EXTENSION would end the session (FATAL)
    ABSENT = "absent"


def timescaledb_status(*, created: bool, installed: bool, preload_libraries: str) -> TimescaleDB:
    """Classify TimescaleDB from pg_extension, pg_available_extensions and shared_preload_libraries."""
    if created:
        return TimescaleDB.LOADABLE
    if not installed:
        return TimescaleDB.ABSENT
    preloaded = {
        os.path.splitext(os.path.basename(name.strip().strip('"')))[0] for name in preload_libraries.split(",")
    }
    return TimescaleDB.LOADABLE if "timescaledb" in preloaded else TimescaleDB.NOT_PRELOADED


@cache
def _packaged_revisions() -> tuple[frozenset[str], frozenset[str]]:
    """The revisions of the packaged migration scripts, and the revisions they revise."""
    # Alembic's ScriptDirectory gives the same answer but costs ~0.25 s of CPU (it imports every script); reading
    # the assignments of ~20 small files costs ~2 ms. A unit test holds the two equal.
    revisions: set[str] = set()
    parents: set[str] = set()
    for entry in os.scandir(_VERSIONS):
        if not entry.name.endswith(".py"):
            continue
        with open(entry.path, encoding="utf-8") as script:
            for kind, double, single in _REVISION_LINE.findall(script.read()):
                if double or single:
                    (revisions if kind == "revision" else parents).add(double or single)
    return frozenset(revisions), frozenset(parents)


def _reason(exc: psycopg.OperationalError) -> str:
    """libpq's reason for the failure, without psycopg's prefix and the advice lines ('Is the server running…')."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    reason = first.rsplit(" failed: ", 1)[-1].removeprefix("connection failed: ").strip()
    reason = re.sub(r"^FATAL:\s+", "", reason)
    return reason[:1].lower() + reason[1:] if reason[1:2].islower() else reason


def _database_missing(target: URL, database: str) -> bool:
    """Whether the server answers on its maintenance database and has no database of that name."""
    if database == "postgres":
        return False
    try:
        with psycopg.connect(
            libpq_dsn(target.set(database="postgres").render_as_string(hide_password=False)),
            autocommit=True,
            connect_timeout=_PROBE_TIMEOUT_S,
        ) as probe:
            return probe.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None
    except psycopg.Error:
        return False
