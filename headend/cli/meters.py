"""`headend meters`: the meter registry."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from zoneinfo import ZoneInfo

import typer

from headend.cli.common import command_group, database, fail, load_settings, local_time, record, table, to_json, yuan

if TYPE_CHECKING:
    from headend.registry.lookup import MeterDetail

meters_app = command_group("Meter registry.")


@meters_app.command("import")
def meters_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Registry CSV file.")],
    skip_invalid: Annotated[bool, typer.Option(help="Import the valid rows even when others are refused.")] = False,
) -> None:
    """Register meters (and their concentrators) from a CSV: meter_id,protocol,concentrator_id,region[,…]."""
    from headend.registry.meter_import import (
        RegistryConflictError,
        RegistryFileError,
        import_meters,
        read_registry_file,
    )

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
        try:
            result = import_meters(conn, parsed.rows)
        except RegistryConflictError as exc:
            raise fail(f"{file}: nothing imported: {exc}", 1) from None
    typer.echo(
        f"{len(parsed.rows)} valid row(s): {result.meters_created} meter(s) created, "
        f"{result.meters_updated} updated, {result.concentrators_created} concentrator(s) created"
    )
    if parsed.errors:
        raise typer.Exit(1)


@meters_app.command("list")
def meters_list(
    concentrator: Annotated[str | None, typer.Option(help="Only meters behind this concentrator.")] = None,
    region: Annotated[str | None, typer.Option(help="Only meters of this region.")] = None,
    status: Annotated[str | None, typer.Option(help="Only meters in this status: active, inactive or removed.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Meters to list.")] = 100,
    after: Annotated[str | None, typer.Option(help="Start after this meter id (the next page).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Registered meters by id: protocol, concentrator, region, status, last reading (local time), relay."""
    from headend.registry.lookup import list_meters
    from headend.registry.meter_import import STATUSES

    if status is not None and status not in STATUSES:
        raise typer.BadParameter(f"{status!r} is not one of {', '.join(STATUSES)}", param_hint="--status")
    settings = load_settings()
    with database(settings) as conn:
        page = list_meters(conn, concentrator_id=concentrator, region=region, status=status, limit=limit, after=after)
    if as_json:
        typer.echo(to_json({"meters": page.meters, "next_after": page.next_after}, settings.zone))
        return
    if not page.meters:
        typer.echo("no meters")
        return
    rows = [
        [
            m.meter_id,
            m.protocol,
            m.concentrator_id or "-",
            m.region or "-",
            m.status,
            local_time(m.last_reading_at, settings.zone) if m.last_reading_at else "never",
            _relay(m.relay, m.ready_for_reconnection),
        ]
        for m in page.meters
    ]
    headers = ["meter", "protocol", "concentrator", "region", "status", f"last reading ({settings.timezone})", "relay"]
    typer.echo(table(headers, rows))
    if page.next_after is not None:
        typer.echo(f"{len(page.meters)} shown, more follow: --after {page.next_after}")


@meters_app.command("show")
def meters_show(
    meter_id: Annotated[str, typer.Argument(help="Meter id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """One meter: registry row, last reading, relay, open commands and alarms, prepaid account."""
    from headend.registry.lookup import meter_detail

    settings = load_settings()
    with database(settings) as conn:
        detail = meter_detail(conn, meter_id)
    if detail is None:
        raise fail(f"no meter {meter_id!r}")
    if as_json:
        payload = record(detail)
        if detail.last_reading is not None:
            flags = [flag.name for flag in detail.last_reading.quality_flags]
            payload["last_reading"] = {**record(detail.last_reading), "flags": flags}
        typer.echo(to_json(payload, settings.zone))
        return
    typer.echo(_format_detail(detail, settings.zone))


def _relay(relay: str | None, armed: bool | None) -> str:
    if relay is None:
        return "-"
    return f"{relay}, armed" if armed else relay


def _format_detail(detail: MeterDetail, zone: ZoneInfo) -> str:
    m = detail.meter
    lines = [
        f"meter          {m.meter_id}  ({m.status})",
        f"protocol       {m.protocol}  model {m.model or '-'}  reconnect {m.reconnect_mode}",
        f"concentrator   {m.concentrator_id or '- (direct)'}  region {m.region or '-'}",
        f"register       multiplier {m.multiplier}  maximum {m.register_max_wh} Wh",
        f"installed      {m.installed_on or '-'}  registered {local_time(m.created_at, zone)}",
    ]
    r = detail.last_reading
    if r is None:
        lines.append("last reading   never")
    else:
        flags = ", ".join(str(flag.name) for flag in r.quality_flags) or "none"
        lines.append(
            f"last reading   {local_time(r.ts, zone)}  register {r.energy_import_wh} Wh  flags {flags}  "
            f"(received {local_time(r.received_at, zone)} from {r.source})"
        )
    relay = detail.relay
    if relay is None:
        lines.append("relay          never reported")
    else:
        lines.append(
            f"relay          {_relay(relay.relay, relay.ready_for_reconnection)}  reported "
            f"{local_time(relay.reported_at, zone)} ({relay.source})"
        )
    a = detail.account
    if a is None:
        lines.append("account        none")
    else:
        flags = "".join([", protected" if a.protected else "", ", keep supply (保电)" if a.keep_supply else ""])
        lines.append(f"account        {a.account_id}  balance {yuan(a.balance_fen)}  supply {a.supply}{flags}")
    lines.append(
        f"open commands  {len(detail.open_commands) or 'none'}{' (and more)' if detail.more_open_commands else ''}"
    )
    lines += [
        f"  {c.command_id}  {c.action}  {c.state}  issued {local_time(c.issued_at, zone)}  "
        f"expires {local_time(c.expires_at, zone)}  {c.detail}".rstrip()
        for c in detail.open_commands
    ]
    more = f" (and more: headend alarm list --meter {m.meter_id})" if detail.more_open_alarms else ""
    lines.append(f"open alarms    {len(detail.open_alarms) or 'none'}{more}")
    lines += [
        f"  #{al.alarm_id}  {al.kind}  relay {al.relay}  raised {local_time(al.raised_at, zone)}  "
        f"command {al.command_id or '-'}  {al.detail}".rstrip()
        for al in detail.open_alarms
    ]
    return "\n".join(lines)
