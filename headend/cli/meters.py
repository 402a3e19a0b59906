"""`headend meters`: the meter registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headend.cli.common import command_group, database, fail, load_settings

meters_app = command_group("Meter registry.")


@meters_app.command("import")
def meters_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Registry CSV file.")],
    skip_invalid: Annotated[bool, typer.Option(help="Import the valid rows even when others are refused.")] = False,
) -> None:
    """Register meters (and their concentrators) from a CSV: meter_id,protocol,concentrator_id,region[,…]."""
    from headend.registry.meter_import import RegistryFileError, import_meters, read_registry_file

    try:
        parsed = read_registry_file(file)
    except (RegistryFileError, UnicodeDecodeError) as exc:
        raise fail(f"{file}: {exc}", 2) from None
    for error in parsed.errors:
        typer.echo(f"error: {file}: {error}", err=True)
    if parsed.errors and not skip_invalid:
        typer.echo(
            f"{len(parsed.errors)} row(s) refused; nothing imported (fix them, or pass --skip-invalid)", err=True
        )
        raise typer.Exit(1)
    with database(load_settings()) as conn:
        result = import_meters(conn, parsed.rows)
    typer.echo(
        f"{len(parsed.rows)} valid row(s): {result.meters_created} meter(s) created, "
        f"{result.meters_updated} updated, {result.concentrators_created} concentrator(s) created"
    )
    if parsed.errors:
        raise typer.Exit(1)
