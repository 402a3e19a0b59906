"""What the command modules share: settings, the database a command uses, parsing of times and days, errors.

Only the standard library and typer are imported here at module level: `headend --help` must not pay for the
database drivers, the web framework or the engine. Each command imports what it uses inside its body.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    import psycopg

    from headend.settings import Settings
    from prepay_engine.account import Decided


def command_group(help_text: str, cls: type[TyperGroup] | None = None) -> typer.Typer:
    """A typer app for a group of commands: plain help (rich's formatting alone costs ~0.3 s of start-up)."""
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None, cls=cls)


def load_settings() -> Settings:
    """Settings from the environment; the root group (headend.cli.errors) explains a bad value as a usage error."""
    from headend.settings import Settings

    return Settings()


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the configured (or embedded) database, its schema checked to be migrated."""
    from headend.db.connection import database_url, migrated_database

    with database_url(settings) as url, migrated_database(url) as conn:
        yield conn


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` on stderr; the Exit to raise with `code`."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def local_day(value: str, hint: str = "--date") -> date:
    """A YYYY-MM-DD day from the command line."""
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date in the form YYYY-MM-DD", param_hint=hint) from None


def instant(value: str | None, hint: str, zone: ZoneInfo) -> datetime:
    """An ISO time from the command line (now when absent); without an offset it is local time in `zone`."""
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time", param_hint=hint) from None
    return parsed if parsed.utcoffset() is not None else parsed.replace(tzinfo=zone)


def yuan(fen: int) -> str:
    """An amount of fen as ¥ yuan with two decimals."""
    from prepay_engine.money import fen_to_yuan

    return f"¥{fen_to_yuan(fen)}"


def local_time(value: datetime | None, zone: ZoneInfo) -> str:
    """A time as local wall-clock time to the second, `-` for none."""
    return "-" if value is None else f"{value.astimezone(zone):%Y-%m-%d %H:%M:%S}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows under their headers, each column as wide as its widest cell (the last one not padded)."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    )


def record(item: Any) -> dict[str, Any]:
    """A dataclass instance's fields by name (not recursively)."""
    return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}


def to_json(value: object, zone: ZoneInfo) -> str:
    """One JSON document: dataclasses as objects, times as local ISO 8601 with their offset, days as ISO dates."""

    def plain(item: object) -> object:
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return record(item)
        if isinstance(item, datetime):
            return item.astimezone(zone).isoformat()
        if isinstance(item, date):
            return item.isoformat()
        raise TypeError(f"{type(item).__name__} is not JSON serialisable")

    return json.dumps(value, default=plain, ensure_ascii=False)


def print_decision(step: Decided | None) -> None:
    """Print the notices, relay commands and deferral a policy decision produced."""
    if step is None:
        return
    for n in step.notifications:
        typer.echo(f"notification {n.request_id}: {n.kind} at balance {yuan(n.balance_fen)}")
    for c in step.commands:
        typer.echo(f"command {c.request_id}: {c.action} meter {c.command.meter_id} — {c.reasons[0].text}")
    if step.wake_at is not None:
        typer.echo(f"disconnect deferred until {step.wake_at.isoformat()}")
