"""Set-up mistakes end in one line on stderr and a non-zero exit, without a traceback (unless --log-level debug).

No service is needed: the database URLs here point at a port nobody listens on.
"""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from pydantic_core import ValidationError
from typer.testing import CliRunner

from headend.cli.app import app
from headend.cli.errors import explain
from headend.db.readiness import TimescaleDB, head_revision, timescaledb_status

NOBODY = "postgresql+psycopg://postgres:pa55word@127.0.0.1:1/headend"
REFUSED = (
    "error: cannot connect to the database at 127.0.0.1:1 (connection refused); check HEADEND_DATABASE_URL and that "
    "PostgreSQL is running there and accepts this user"
)


def _headend(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m headend ARGS` as an operator runs it, with the settings of `env` (the broker unreachable too)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HEADEND_")}
    environment.update({"HEADEND_MQTT_HOST": "127.0.0.1", "HEADEND_MQTT_PORT": "1", **env})
    return subprocess.run(
        [sys.executable, "-m", "headend", *args], env=environment, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "command",
    [
        ("account", "show", "A1"),
        ("--log-level", "warning", "migrate"),
        ("engine", "--once"),
        ("ingest",),
        ("dispatch", "--once"),
        ("serve", "--port", "1"),
    ],
    ids=" ".join,
)
def test_an_unreachable_database_is_one_line_without_the_password(command: tuple[str, ...]) -> None:
    result = _headend(*command, HEADEND_DATABASE_URL=NOBODY)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [REFUSED]
    assert "pa55word" not in result.stdout + result.stderr


@pytest.mark.parametrize("how", ["option", "environment"])
def test_debug_shows_the_traceback_then_the_line(how: str) -> None:
    if how == "option":
        result = _headend("--log-level", "debug", "account", "show", "A1", HEADEND_DATABASE_URL=NOBODY)
    else:
        result = _headend("account", "show", "A1", HEADEND_DATABASE_URL=NOBODY, HEADEND_LOG_LEVEL="debug")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "psycopg.OperationalError" in result.stderr
    assert result.stderr.splitlines()[-1] == REFUSED


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"HEADEND_ENGINE_POLL_S": "abc"},
            "error: invalid setting HEADEND_ENGINE_POLL_S='abc': input should be a valid number, unable to parse "
            "string as a number; correct the environment or .env",
        ),
        (
            {"HEADEND_TIMEZONE": "Mars/Base"},
            "error: invalid setting HEADEND_TIMEZONE: unknown time zone 'Mars/Base' (an IANA name such as "
            "Asia/Shanghai); correct the environment or .env",
        ),
        (
            {"HEADEND_TIMEZONE": "Mars/Base", "HEADEND_SETTLE_WORKERS": "-1"},
            "error: invalid settings HEADEND_TIMEZONE: unknown time zone 'Mars/Base' (an IANA name such as "
            "Asia/Shanghai); HEADEND_SETTLE_WORKERS='-1': input should be greater than or equal to 0; correct the "
            "environment or .env",
        ),
        (
            {"HEADEND_DATABASE_URL": "mysql://root:pa55word@127.0.0.1/headend"},
            "error: HEADEND_DATABASE_URL must be a PostgreSQL URL "
            "(postgresql+psycopg://user:password@host:5432/database), got backend 'mysql'",
        ),
        (
            {"HEADEND_DATABASE_URL": "postgresql://root:pa55word@127.0.0.1:port/headend"},
            "error: HEADEND_DATABASE_URL is not a valid URL; expected "
            "postgresql+psycopg://user:password@host:5432/database",
        ),
    ],
    ids=lambda v: ",".join(v) if isinstance(v, dict) else "",
)
def test_a_bad_setting_is_one_line_naming_the_variable(env: dict[str, str], line: str) -> None:
    result = CliRunner().invoke(app, ["account", "show", "A1"], env=env)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [line]
    assert "pa55word" not in result.output


def test_a_bad_setting_is_one_line_from_the_installed_command_too() -> None:
    result = _headend("engine", "--once", HEADEND_ENGINE_POLL_S="abc")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: invalid setting HEADEND_ENGINE_POLL_S='abc'")


def test_the_value_of_a_secret_setting_is_not_repeated() -> None:
    error = ValidationError.from_exception_data(
        "Settings",
        [{"type": "string_too_short", "loc": ("mqtt_password",), "input": "pa55", "ctx": {"min_length": 8}}],
    )
    explained = explain(error)
    assert explained is not None
    message, code = explained
    assert (message, code) == (
        "invalid setting HEADEND_MQTT_PASSWORD: string should have at least 8 characters; correct the environment "
        "or .env",
        2,
    )


def test_a_missing_table_is_explained_wherever_it_is_raised() -> None:
    wrapped = RuntimeError("wrapped, as SQLAlchemy does")  # raise … from the driver's error
    wrapped.__cause__ = psycopg.errors.UndefinedTable('relation "prepaid_accounts" does not exist\nLINE 1: ...')
    assert explain(wrapped) == (
        'the database schema is not migrated or incomplete (relation "prepaid_accounts" does not exist); '
        "run `headend migrate` first",
        1,
    )


def test_other_errors_are_not_explained() -> None:
    assert explain(RuntimeError("a bug")) is None
    assert explain(psycopg.errors.UniqueViolation("duplicate key")) is None
    later = RuntimeError("handled, then another failure")  # raise … from None while handling the driver's error
    later.__context__ = psycopg.errors.UndefinedTable("relation does not exist")
    later.__suppress_context__ = True
    assert explain(later) is None


def test_head_revision_is_alembic_s_head() -> None:
    config = Config()
    config.set_main_option("script_location", "headend:migrations")
    assert ScriptDirectory.from_config(config).get_heads() == [head_revision()]


@pytest.mark.parametrize(
    ("created", "installed", "preload", "status"),
    [
        (False, False, "", TimescaleDB.ABSENT),
        (False, True, "", TimescaleDB.NOT_PRELOADED),
        (False, True, "pg_stat_statements", TimescaleDB.NOT_PRELOADED),
        (False, True, "timescaledb_toolkit", TimescaleDB.NOT_PRELOADED),
        (False, True, "timescaledb", TimescaleDB.LOADABLE),
        (False, True, "pg_stat_statements, timescaledb", TimescaleDB.LOADABLE),
        (False, True, '"$libdir/timescaledb.so",auto_explain', TimescaleDB.LOADABLE),
        (True, True, "", TimescaleDB.LOADABLE),
    ],
)
def test_timescaledb_is_usable_only_when_created_or_preloaded(
    created: bool, installed: bool, preload: str, status: TimescaleDB
) -> None:
    assert timescaledb_status(created=created, installed=installed, preload_libraries=preload) is status
