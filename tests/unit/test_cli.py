"""The `headend` command line: help of every command, usage errors. No service is started here."""

from __future__ import annotations

import re

import pytest
from typer.core import TyperGroup
from typer.main import get_command
from typer.testing import CliRunner, Result

from headend.cli.app import app

# a database nobody listens on: if a test ever got past argument parsing, it fails fast instead of
# starting the embedded server
ENV = {"HEADEND_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "HEADEND_MQTT_HOST": "127.0.0.1"}

# command path -> words its help must contain (its purpose)
REQUIRED: dict[tuple[str, ...], str] = {
    (): "Head-end and prepaid control system",
    ("migrate",): "Create or upgrade the database schema",
    ("ingest",): "Collect readings from the broker into the database",
    ("meters",): "Meter registry",
    ("meters", "import"): "Register meters (and their concentrators) from a CSV",
    ("collection-report",): "Collection success for a day",
}
# registered later in the project's life; checked when present
OPTIONAL: dict[tuple[str, ...], str] = {
    ("simulate",): "Simulate a meter fleet publishing readings over MQTT",
    ("demo",): "Run everything on this machine",
}


def _command_paths() -> dict[tuple[str, ...], str]:
    """Every command and sub-command registered in the app, with the first line of its help."""
    found: dict[tuple[str, ...], str] = {}

    def walk(path: tuple[str, ...], command: object) -> None:
        help_text = getattr(command, "help", None) or ""
        found[path] = help_text.strip().splitlines()[0] if help_text.strip() else ""
        if isinstance(command, TyperGroup):
            for name, sub in command.commands.items():
                walk((*path, name), sub)

    walk((), get_command(app))
    return found


COMMANDS = _command_paths()


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={**ENV, **(env or {})})


def _flat(text: str) -> str:
    """Output without rich's box drawing and line wrapping, for substring checks."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text)).strip()


def _id(path: tuple[str, ...]) -> str:
    return " ".join(path) or "(root)"


def test_all_required_commands_are_registered() -> None:
    assert set(REQUIRED) <= set(COMMANDS), sorted(set(REQUIRED) - set(COMMANDS))


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=_id)
def test_help_works_and_states_the_purpose(path: tuple[str, ...]) -> None:
    result = _run(*path, "--help")
    assert result.exit_code == 0, result.output
    out = _flat(result.stdout)
    assert out.startswith(_flat(f"Usage: root {' '.join(path)}")), out
    purpose = REQUIRED.get(path) or OPTIONAL.get(path) or COMMANDS[path]
    assert purpose, f"{_id(path)} has no help text"
    assert _flat(purpose) in out


def test_root_help_lists_every_top_level_command() -> None:
    out = _flat(_run("--help").stdout)
    for path in COMMANDS:
        if len(path) == 1:
            assert f" {path[0]} " in f" {out} ", path


def test_meters_help_lists_import() -> None:
    out = _flat(_run("meters", "--help").stdout)
    assert "Commands: import Register meters" in out


def test_no_arguments_prints_help_instead_of_doing_anything() -> None:
    result = _run()
    assert "Usage: root [OPTIONS] COMMAND [ARGS]" in _flat(result.output)
    assert "migrate" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(("args", "scope"), [(("nope",), "root"), (("meters", "export"), "root meters")])
def test_unknown_command_is_a_usage_error(args: tuple[str, ...], scope: str) -> None:
    result = _run(*args)
    assert result.exit_code == 2
    out = _flat(result.stderr)
    assert f"No such command '{args[-1]}'" in out
    assert f"Try '{scope} --help' for help" in out


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=_id)
def test_unknown_option_is_a_usage_error(path: tuple[str, ...]) -> None:
    result = _run(*path, "--no-such-option")
    assert result.exit_code == 2, result.output
    assert "No such option: --no-such-option" in _flat(result.stderr)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("collection-report",), "Missing option '--date'"),
        (("collection-report", "--date"), "Option '--date' requires an argument"),
        (("collection-report", "--date", "20/11/2026"), "'20/11/2026' is not a date in the form YYYY-MM-DD"),
        (("collection-report", "--date", "2026-02-30"), "'2026-02-30' is not a date in the form YYYY-MM-DD"),
        (("collection-report", "--date", "2026-11-20", "--by", "meter"), "'meter' is not one of 'concentrator'"),
        (("collection-report", "--date", "2026-11-20", "--unread-limit", "-1"), "Invalid value for '--unread-limit'"),
        (("collection-report", "--date", "2026-11-20", "--unread-limit", "many"), "Invalid value for '--unread-limit'"),
        (("--log-level", "loud", "migrate"), "'loud' is not one of 'debug'"),
        (("meters", "import"), "Missing argument 'file'"),
        (("meters", "import", "/nonexistent/registry.csv"), "'/nonexistent/registry.csv' does not exist"),
        (("meters", "import", "/"), "is a directory"),
    ],
)
def test_bad_values_are_usage_errors_with_a_message(args: tuple[str, ...], message: str) -> None:
    result = _run(*args)
    assert result.exit_code == 2, result.output
    assert message in _flat(result.stderr), result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("simulate", "--meters", "0"), "0 is not a positive number of meters"),
        (("simulate", "--registry-only"), "--registry-only needs --registry-csv PATH"),
        (("simulate", "--intervals", "4", "--days", "1"), "give either --intervals or --days, not both"),
        (("demo", "--meters", "0"), "Invalid value for '--meters'"),
        (("demo", "--drop-rate", "1.5"), "Invalid value for '--drop-rate'"),
    ],
)
def test_simulator_commands_refuse_bad_values_before_starting_anything(args: tuple[str, ...], message: str) -> None:
    if (args[0],) not in COMMANDS:
        pytest.skip(f"{args[0]} is not registered")
    result = _run(*args)
    assert result.exit_code == 2, result.output
    assert message in _flat(result.stderr), result.stderr


def test_bad_setting_in_the_environment_is_a_usage_error() -> None:
    result = _run("collection-report", "--date", "2026-11-20", env={"HEADEND_MQTT_PORT": "not-a-port"})
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        "error: invalid setting HEADEND_MQTT_PORT='not-a-port': input should be a valid integer, unable to parse "
        "string as an integer; correct the environment or .env"
    ]


# --------------------------------------------------------------------------- regressions of fixed defects


@pytest.mark.parametrize("command", [("migrate",), ("collection-report", "--date", "2026-11-20")], ids=_id)
def test_unknown_timezone_setting_is_a_usage_error(command: tuple[str, ...]) -> None:
    result = _run(*command, env={"HEADEND_TIMEZONE": "Mars/Olympus_Mons"})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2
    assert "Mars/Olympus_Mons" in _flat(result.stderr)
