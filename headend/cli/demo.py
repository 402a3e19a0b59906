"""`headend demo`: the whole system on one machine."""

from __future__ import annotations

from typing import Annotated

import typer

from headend.cli.common import load_settings


def demo(
    meters: Annotated[int, typer.Option(min=1, max=100_000, help="Simulated meters.")] = 200,
    concentrators: Annotated[int, typer.Option(min=0, max=1000, help="Simulated concentrators.")] = 4,
    days: Annotated[int, typer.Option(min=1, max=31, help="Days to simulate, ending yesterday.")] = 1,
    speed: Annotated[float, typer.Option(min=0, help="Simulated seconds per real second; 0 for max.")] = 1800.0,
    offline_fraction: Annotated[float, typer.Option(min=0, max=1, help="Share of meters that never report.")] = 0.02,
    drop_rate: Annotated[float, typer.Option(min=0, max=1, help="Probability a message is lost.")] = 0.002,
    modbus_meters: Annotated[
        int, typer.Option(min=0, max=32, help="Simulated Modbus TCP meters the poll worker reads (0: none).")
    ] = 4,
    dlt645_meters: Annotated[
        int, typer.Option(min=0, max=32, help="Simulated DL/T 645 meters behind a gateway, polled (0: none).")
    ] = 3,
) -> None:
    """Run everything on this machine: embedded database and broker (unless configured), ingest, polled Modbus and
    DL/T 645 meters, the prepaid loop."""
    from headend.demo.run import DemoOptions, run_demo
    from headend.runtime.signals import stop_on_signals

    settings = load_settings()
    options = DemoOptions(
        meters=meters,
        concentrators=concentrators,
        days=days,
        speed=speed or None,
        offline_fraction=offline_fraction,
        drop_rate=drop_rate,
        modbus_meters=modbus_meters,
        dlt645_meters=dlt645_meters,
    )
    with stop_on_signals() as stop:
        report = run_demo(settings, options, typer.echo, stop)
    typer.echo(report.text())
