"""Resolve the database and broker a command uses: the configured ones, or embedded ones."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from headend.db.embedded import embedded_postgres
from headend.db.engine import connect_utc
from headend.db.grants import DbRole
from headend.db.readiness import check_schema, connection_failure
from headend.db.roles import ensure_roles, role_names, role_url, setup_roles
from headend.settings import Settings


@dataclass(frozen=True, slots=True)
class DatabaseUrls:
    """The URLs a command may use: the services', the schema owner's (`migrate`), a superuser's if known."""

    service: str
    owner: str
    admin: str | None


@contextlib.contextmanager
def database_urls(settings: Settings) -> Iterator[DatabaseUrls]:
    """HEADEND_DATABASE_URL for everything, or the embedded server in HEADEND_DATA_DIR with the head-end's roles.

    The embedded server keeps one role for every command and worker, operator (the union of the service roles'
    grants, owning nothing), and migrates as the owner role: what runs there is refused what it would be refused in
    production. Its roles are created here when missing.
    """
    if settings.database_url:
        yield DatabaseUrls(settings.database_url, settings.database_url, settings.db_admin_url)
        return
    with embedded_postgres(Path(settings.data_dir)) as admin:
        names = role_names(settings.db_role_prefix)
        with connect_database(admin) as conn:
            ensure_roles(conn, names, {})
        yield DatabaseUrls(role_url(admin, names[DbRole.OPERATOR]), role_url(admin, names[DbRole.OWNER]), admin)


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """The configured HEADEND_DATABASE_URL, or the embedded server's as its operator role."""
    with database_urls(settings) as urls:
        yield urls.service


@contextlib.contextmanager
def migration_url(settings: Settings) -> Iterator[str]:
    """The configured HEADEND_DATABASE_URL (the owner role's in production), or the embedded server's owner role's.

    On the embedded server the roles are set up first (`setup_roles`: the schema handed to the owner, the grants).
    """
    with database_urls(settings) as urls:
        if not settings.database_url:
            assert urls.admin is not None
            setup_roles(urls.admin, settings.db_role_prefix, {})
        yield urls.owner


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
