"""`headend poll`: read Modbus and DL/T 645 meters at every load point, or once."""

from __future__ import annotations

from typing import Annotated

import typer

from headend.cli.common import load_settings
from headend.cli.metrics import MetricsPort


def poll_command(
    once: Annotated[bool, typer.Option("--once", help="Poll every active polled meter once, now, and exit.")] = False,
    meter: Annotated[
        list[str] | None,
        typer.Option("--meter", metavar="METER", help="Only this meter (repeatable); default: every polled meter."),
    ] = None,
    metrics_port: MetricsPort = None,
) -> None:
    """Poll the registry's Modbus and DL/T 645 meters into the database until stopped (SIGTERM/SIGINT)."""
    import asyncio

    from headend.db.connection import check_database, database_url
    from headend.poll.metrics import PollMetrics
    from headend.poll.service import PollTotals, run_poller
    from headend.reread.mqtt_requester import LazyMqttRequester
    from headend.runtime.metrics import worker_metrics
    from headend.runtime.signals import stop_on_signals

    settings = load_settings()
    with (
        database_url(settings) as url,
        stop_on_signals() as stop,
        LazyMqttRequester(settings) as requester,
        worker_metrics(settings, metrics_port) as registry,
    ):
        check_database(url)
        totals = PollTotals()
        metrics = None if registry is None else PollMetrics(registry)
        if metrics is not None:
            metrics.watch(totals)
        run = run_poller(
            settings,
            url,
            stop,
            once=once,
            meter_ids=meter or None,
            requester=requester,
            on_round=None if metrics is None else metrics.round_finished,
            totals=totals,
        )
        totals = asyncio.run(run)
    typer.echo(
        f"{'polled once' if once else 'stopped'}: {totals.rounds} round(s), {totals.read} meter(s) read, "
        f"{totals.failed} failed, {totals.stored} readings stored, {totals.duplicates} duplicates, "
        f"{totals.dead_letters} dead letters, {totals.frozen} daily freezes caught up, {totals.rereads} re-read(s)"
        + (f"; last round {totals.last_round.summary()}" if totals.rounds else "")
    )
