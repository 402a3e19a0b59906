"""`headend ingest`: the MQTT collection worker."""

from __future__ import annotations

import typer

from headend.cli.common import load_settings
from headend.cli.metrics import MetricsPort


def ingest(metrics_port: MetricsPort = None) -> None:
    """Collect readings from the broker into the database until stopped (SIGTERM/SIGINT)."""
    from headend.db.connection import check_database, database_url
    from headend.ingest.metrics import IngestMetrics
    from headend.ingest.worker import IngestWorker
    from headend.runtime.metrics import worker_metrics
    from headend.runtime.signals import stop_on_signals

    settings = load_settings()
    with (
        database_url(settings) as url,
        stop_on_signals() as stop,
        worker_metrics(settings, metrics_port) as registry,
    ):
        check_database(url)
        metrics = None if registry is None else IngestMetrics(registry)
        stats = IngestWorker(settings, url, stop, metrics=metrics).run()
    typer.echo(
        f"stopped: {stats.messages} messages, {stats.readings_inserted} readings stored, "
        f"{stats.duplicates} duplicates, {stats.dead_letters} dead letters"
    )
