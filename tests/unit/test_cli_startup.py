"""`headend --help` and a command group's help start fast: no database driver, web framework or broker client."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# each of these costs tenths of a second to import; only the commands that use them may pay for them (pydantic
# itself is not listed: typer builds some option types with it)
HEAVY = ("sqlalchemy", "psycopg", "alembic", "fastapi", "uvicorn", "starlette", "paho", "pydantic_settings", "rich")

PROBE = """
import json, sys
from typer.testing import CliRunner
from headend.cli.app import app
result = CliRunner().invoke(app, sys.argv[1:])
assert result.exit_code == 0, result.output
print(json.dumps(sorted(sys.modules)))
"""


def _all_modules_after(*args: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def _modules_after(*args: str) -> set[str]:
    return {name.split(".")[0] for name in _all_modules_after(*args)}


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("meters", "--help"),
        ("account", "--help"),
        ("command", "--help"),
        ("api-token", "--help"),
        ("devices", "credentials", "--help"),
    ],
    ids=" ".join,
)
def test_help_imports_nothing_heavy(args: tuple[str, ...]) -> None:
    loaded = _modules_after(*args)
    assert "typer" in loaded  # the probe saw the command line load
    assert sorted(loaded & set(HEAVY)) == []


def test_a_command_s_help_imports_nothing_of_the_command() -> None:
    loaded = _modules_after("settle", "--help")
    assert sorted(loaded & set(HEAVY)) == []


@pytest.mark.parametrize("args", [("command", "list", "--help"), ("alarm", "list", "--help")], ids=" ".join)
def test_the_command_state_option_does_not_load_the_state_machine(args: tuple[str, ...]) -> None:
    # the options' enums come from headend.dispatch.states; lifecycle imports the account engine (~0.1 s)
    loaded = _all_modules_after(*args)
    assert "headend.dispatch.states" in loaded
    assert sorted(loaded & {"headend.dispatch.lifecycle", "prepay_engine.account"}) == []
