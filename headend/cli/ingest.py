"""`headend ingest`: the MQTT collection worker."""

from __future__ import annotations

import typer

from headend.cli.common import load_settings


def ingest() -> None:
    """Collect readings from the broker into the database until stopped (SIGTERM/SIGINT)."""
    from headend.db.connection import check_database, database_url
    from headend.ingest.worker import IngestWorker
    from headend.runtime.signals import stop_on_signals

    settings = load_settings()
    with database_url(settings) as url, stop_on_signals() as stop:
        check_database(url)
        stats = IngestWorker(settings, url, stop).run()
    typer.echo(
        f"stopped: {stats.messages} messages, {stats.readings_inserted} readings stored, "
        f"{stats.duplicates} duplicates, {stats.dead_letters} dead letters"
    )
