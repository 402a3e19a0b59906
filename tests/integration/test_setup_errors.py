"""Set-up mistakes on the real server: a missing database, a schema not migrated or behind; one line each.

Every command that opens the database checks its schema revision first; the workers do so at start-up, before they
connect to the broker (unreachable here, so a worker that got that far would fail differently).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from headend.db.readiness import head_revision
from tests.integration.conftest import ADMIN_URL

pytestmark = pytest.mark.integration

SERVER = make_url(ADMIN_URL)
WHERE = f"{SERVER.host}:{SERVER.port or 5432}"
COMMANDS = [
    ("account", "show", "A1"),
    ("collection-report", "--date", "2026-11-20"),
    ("settle", "--date", "2026-11-20"),
    ("engine", "--once"),
    ("ingest",),
    ("dispatch", "--once"),
    ("serve", "--port", "1"),
]


def _url(database: str) -> str:
    return SERVER.set(drivername="postgresql+psycopg", database=database).render_as_string(hide_password=False)


def _headend(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HEADEND_")}
    environment.update({"HEADEND_DATABASE_URL": url, "HEADEND_MQTT_HOST": "127.0.0.1", "HEADEND_MQTT_PORT": "1"})
    return subprocess.run(
        [sys.executable, "-m", "headend", *args], env=environment, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def empty_database() -> Iterator[str]:
    """The name of a new database without any schema, dropped afterwards."""
    name = f"headend_setup_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("command", [("account", "show", "A1"), ("--log-level", "warning", "migrate")], ids=" ".join)
def test_a_missing_database_says_how_to_create_it(command: tuple[str, ...]) -> None:
    name = f"headend_absent_{uuid.uuid4().hex[:12]}"
    result = _headend(_url(name), *command)
    assert result.returncode == 1, result.stderr
    user = f" -U {SERVER.username}" if SERVER.username else ""
    assert result.stderr.splitlines() == [
        f'error: database "{name}" does not exist on the server at {WHERE}; create it (createdb -h {SERVER.host} '
        f"-p {SERVER.port or 5432}{user} {name}) or correct HEADEND_DATABASE_URL, then run `headend migrate`"
    ]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_an_unmigrated_database_stops_every_command_at_start_up(empty_database: str, command: tuple[str, ...]) -> None:
    result = _headend(_url(empty_database), *command)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f'error: the schema of database "{empty_database}" is not migrated; run `headend migrate` first'
    ]


def test_a_schema_behind_names_both_revisions(database_url: str, admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0014'")
    name = make_url(database_url).database
    for command in (("account", "show", "A1"), ("engine", "--once")):
        result = _headend(database_url, *command)
        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            f'error: the schema of database "{name}" is at revision 0014, this headend needs {head_revision()}; '
            "run `headend migrate` first"
        ]


def test_a_schema_of_a_newer_headend_is_refused(database_url: str, admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00d'")
    result = _headend(database_url, "account", "show", "A1")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f'error: the schema of database "{make_url(database_url).database}" is at revision f00d, which this headend '
        f"does not know (it needs {head_revision()}): a newer headend migrated it; run that version"
    ]


def test_a_missing_table_is_one_line_too(database_url: str, admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE prepaid_accounts RENAME TO prepaid_accounts_moved")
    result = _headend(database_url, "account", "show", "A1")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        'error: the database schema is not migrated or incomplete (relation "prepaid_accounts" does not exist); '
        "run `headend migrate` first"
    ]


def test_migrate_then_use(empty_database: str) -> None:
    url = _url(empty_database)
    assert _headend(url, "--log-level", "warning", "migrate").returncode == 0
    assert _headend(url, "account", "show", "A1").stderr.splitlines() == ["error: no prepaid account 'A1'"]
