"""`headend simulate --protocol modbus|dlt645 [--framing tcp|rtu]`: serve simulated polled meters on one address until
stopped."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from simulators.dlt645_gateway import Dlt645Gateway
    from simulators.modbus_sim import ModbusMeterFleet

FRAMINGS = ("tcp", "rtu")
LISTEN = re.compile(r"(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):(?P<port>[0-9]{1,5})")


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT of --listen."""
    match = LISTEN.fullmatch(text)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise typer.BadParameter(f"{text!r} is not HOST:PORT with a port 1-65535", param_hint="--listen")
    return match["host"].strip("[]"), int(match["port"])


def serve_polled(
    protocol: str,
    listen: str,
    models: str,
    meters: int,
    *,
    seed: int,
    id_prefix: str,
    region: str,
    registry_csv: Path | None,
    registry_only: bool,
    framing: str | None = None,
) -> None:
    """Serve `meters` simulated Modbus meters (unit ids 1..N; Modbus TCP, or RTU behind one transparent gateway) or
    DL/T 645 meters behind one gateway on `listen`."""
    from headend.runtime.signals import stop_on_signals
    from protocols.register_map import available_models

    host, port = parse_listen(listen)
    if framing is not None and protocol != "modbus":
        raise typer.BadParameter(f"framing is for --protocol modbus, not {protocol}", param_hint="--framing")
    if framing is not None and framing not in FRAMINGS:
        raise typer.BadParameter(f"{framing!r} is not one of {', '.join(FRAMINGS)}", param_hint="--framing")
    if protocol == "modbus":
        from simulators.modbus_sim import ModbusMeterFleet

        names = [name.strip() for name in models.split(",") if name.strip()]
        unknown = [name for name in names if name not in available_models()]
        if not names or unknown:
            raise typer.BadParameter(
                f"{', '.join(unknown) or 'none given'}: models are some of {', '.join(available_models())}",
                param_hint="--models",
            )
        if not 1 <= meters <= 247:
            raise typer.BadParameter(f"{meters}: one Modbus address serves 1-247 units", param_hint="--meters")
        server: ModbusMeterFleet | Dlt645Gateway = ModbusMeterFleet(
            host, port, names, meters, meter_id_prefix=id_prefix, seed=seed, region=region, framing=framing or "tcp"
        )
    else:
        from simulators.dlt645_gateway import Dlt645Gateway

        try:
            server = Dlt645Gateway(host, port, meters, seed=seed, meter_id_prefix=id_prefix, region=region)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    if registry_csv is not None:
        try:
            rows = server.write_registry_csv(registry_csv)
        except OSError as exc:
            raise typer.BadParameter(f"cannot write {registry_csv}: {exc}", param_hint="--registry-csv") from None
        typer.echo(f"wrote {rows} meters to {registry_csv}")
        if registry_only:
            return
    with stop_on_signals() as stop:
        try:
            server.start()
        except OSError as exc:
            typer.echo(f"error: cannot listen on {listen}: {exc}", err=True)
            raise typer.Exit(1) from None
        try:
            gateway = " (RTU through a transparent gateway)" if framing == "rtu" else ""
            typer.echo(f"serving {meters} simulated {protocol} meters{gateway} on {server.endpoint} until stopped")
            stop.wait()
        finally:
            server.stop()
