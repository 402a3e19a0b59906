"""`headend tariff`, `policy` and `calendar`: the configuration the engine charges and decides with."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from headend.cli.common import command_group, database, fail, load_settings

_T = TypeVar("_T")

tariff_app = command_group("Tariffs (versioned prices).")
policy_app = command_group("Disconnect policies (thresholds, notices, friendly-credit windows).")
calendar_app = command_group("Holiday calendar years declared by operators.")


def _read_config(file: Path, parse: Callable[[object], _T]) -> _T:
    """Parse a JSON configuration file; a malformed one is a usage error naming the file and the JSON path."""
    from prepay_engine.config_codec import ConfigFormatError, loads_strict

    try:
        return parse(loads_strict(file.read_bytes()))
    except ConfigFormatError as exc:
        raise fail(f"{file}: {exc}", 2) from None


@tariff_app.command("put")
def tariff_put(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Tariff JSON file.")],
) -> None:
    """Store a tariff from JSON (docs/tariff-format.md); versions already in force can't change."""
    from headend.engine.catalog import CatalogError, put_tariff
    from prepay_engine.config_codec import tariff_from_json

    tariff = _read_config(file, tariff_from_json)
    settings = load_settings()
    with database(settings) as conn:
        try:
            stored = put_tariff(conn, tariff, stored_by="cli", now=datetime.now(UTC))
        except CatalogError as exc:
            raise fail(str(exc)) from None
    state = "stored as" if stored.created else "unchanged at"
    typer.echo(f"tariff {stored.code} {state} revision {stored.revision}")


@policy_app.command("put")
def policy_put(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Policy JSON file.")],
) -> None:
    """Store a disconnect policy from JSON; it applies from each account's next decision."""
    from headend.engine.catalog import put_policy
    from prepay_engine.config_codec import policy_from_json

    policy = _read_config(file, policy_from_json)
    settings = load_settings()
    with database(settings) as conn:
        stored = put_policy(conn, policy, stored_by="cli")
    state = "stored as" if stored.created else "unchanged at"
    typer.echo(f"policy {stored.code} {state} revision {stored.revision}")


@calendar_app.command("put")
def calendar_put(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Calendar year JSON file.")],
) -> None:
    """Declare a year's public holidays and make-up working days (from the State Council notice)."""
    from headend.engine.catalog import put_calendar_year
    from prepay_engine.config_codec import calendar_year_from_json

    declared = _read_config(file, calendar_year_from_json)
    settings = load_settings()
    with database(settings) as conn:
        changed = put_calendar_year(conn, declared, stored_by="cli", now=datetime.now(UTC))
    state = "stored; accounts in a low-balance episode are decided again" if changed else "unchanged"
    typer.echo(
        f"calendar {declared.year}: {len(declared.holidays)} holiday(s), "
        f"{len(declared.makeup_working_days)} make-up working day(s) {state}"
    )
