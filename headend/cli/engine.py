"""`headend engine` and `headend settle`: charge readings into the ledger, continuously or for a day."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from headend.cli.common import fail, load_settings, local_day, yuan
from headend.cli.metrics import MetricsPort


def engine_command(
    once: Annotated[bool, typer.Option(help="One sweep of the due accounts, then exit.")] = False,
    metrics_port: MetricsPort = None,
) -> None:
    """Charge newly committed readings and apply the disconnect policy until stopped (SIGTERM/SIGINT)."""
    from headend.db.connection import database_url, migrated_database
    from headend.db.engine import connect_utc
    from headend.engine.metrics import EngineMetrics
    from headend.engine.runner import EngineRunner, tune_gc_for_batches
    from headend.runtime.metrics import worker_metrics
    from headend.runtime.signals import stop_on_signals

    settings = load_settings()
    tune_gc_for_batches()
    with (
        database_url(settings) as url,
        migrated_database(url) as conn,
        stop_on_signals() as stop,
        worker_metrics(settings, metrics_port) as registry,
    ):
        metrics = (
            None
            if registry is None
            else EngineMetrics(
                registry,
                lateness_s=settings.engine_lateness_s,
                eager_on_grid=settings.engine_eager_on_grid,
                backlog_every_s=settings.metrics_query_s,
            )
        )
        runner = EngineRunner(
            conn,
            settings.engine_lateness_s,
            settings.engine_batch_accounts,
            eager_on_grid=settings.engine_eager_on_grid,
            full_sweep_s=settings.engine_full_sweep_s,
            status_interval_s=settings.status_interval_s,
            # a lost connection is replaced, with backoff; an attempt that hangs (packets dropped) ends after 10 s
            connect=lambda: connect_utc(url, timeout_s=10),
            metrics=metrics,
        )
        stats = runner.sweep() if once else runner.run(stop, settings.engine_poll_s)
    typer.echo(
        f"stopped: {stats.accounts} accounts, {stats.charges} interval charges, {stats.postings} postings "
        f"({yuan(stats.charged_fen)}), {stats.notifications} notifications, {stats.commands} relay commands"
    )


def settle_command(
    day: Annotated[str, typer.Option("--date", help="Local day to settle, YYYY-MM-DD.")],
    zone: Annotated[
        str | None, typer.Option(help="Settle the accounts of this time zone (default HEADEND_TIMEZONE).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    limit: Annotated[int, typer.Option(min=0, help="Accounts in arrears to list.")] = 50,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Processes that charge (default HEADEND_SETTLE_WORKERS, 0 there: one per CPU, plus one)."
        ),
    ] = None,
) -> None:
    """Charge what is still uncharged, then report the day's usage and the accounts in arrears at its end."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from headend.db.connection import database_url, migrated_database
    from headend.engine.catalog import Catalog
    from headend.engine.runner import tune_gc_for_batches
    from headend.engine.settlement import SettlementError, settle_day, settle_workers

    settled_day = local_day(day)
    settings = load_settings()
    try:
        tz = settings.zone if zone is None else ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(f"unknown time zone {zone!r} (an IANA name such as Asia/Shanghai)") from None
    tune_gc_for_batches()
    with database_url(settings) as url, migrated_database(url) as conn:
        try:
            settled = settle_day(
                conn,
                Catalog(),
                settled_day,
                tz,
                now=datetime.now(UTC),
                lateness_s=settings.engine_lateness_s,
                batch_accounts=settings.engine_batch_accounts,
                workers=workers or settle_workers(settings.settle_workers),
                url=url,
            )
        except SettlementError as exc:
            raise fail(str(exc)) from None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "date": settled_day.isoformat(),
                    "zone": settled.zone,
                    "start_utc": settled.start_utc.isoformat(),
                    "end_utc": settled.end_utc.isoformat(),
                    "accounts": settled.accounts,
                    "charges": settled.day.charges,
                    "energy_wh": settled.day.energy_wh,
                    "charged_fen": settled.day.charged_fen,
                    "run_charges": settled.run.charges,
                    "run_charged_fen": settled.run.charged_fen,
                    "incomplete_accounts": settled.incomplete_accounts,
                    "arrears_accounts": len(settled.arrears),
                    "arrears_fen": settled.arrears_fen,
                    "arrears": [
                        {
                            "account_id": a.account_id,
                            "balance_fen": a.balance_fen,
                            "debt_fen": a.debt_fen,
                            "owed_fen": a.owed_fen,
                            "supply": a.supply,
                        }
                        for a in settled.arrears[:limit]
                    ],
                }
            )
        )
        return
    typer.echo(
        f"settled {settled_day} ({settled.zone}): {settled.accounts} accounts, {settled.day.charges} interval charges "
        f"of the day, {settled.day.energy_wh / 1000:.3f} kWh, {yuan(settled.day.charged_fen)} "
        f"({settled.run.charges} charged by this run); {settled.incomplete_accounts} with intervals still unread; "
        f"{len(settled.arrears)} in arrears at the end of the day owing {yuan(settled.arrears_fen)}"
    )
    for a in settled.arrears[:limit]:
        typer.echo(f"  {a.account_id:<32} owes {yuan(a.owed_fen):>12}  balance {yuan(a.balance_fen)}  {a.supply}")
