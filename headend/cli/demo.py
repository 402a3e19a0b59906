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
) -> None:
    """Run everything on this machine: embedded database and broker (unless configured), ingest, the prepaid loop."""
    from headend.demo.run import DemoOptions, run_demo
    from headend.reports.collection import format_report
    from headend.runtime.signals import stop_on_signals

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
