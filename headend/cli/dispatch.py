"""Operator commands of the dispatcher: run it, look at a command, approve or cancel one, resolve an alarm."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from headend.cli.common import command_group, database, fail, load_settings, local_time, table, to_json
from headend.cli.metrics import MetricsPort
from headend.dispatch.states import CommandState

command_app = command_group("Relay commands: list, show, approve, cancel, read a relay.")
alarm_app = command_group("Relay alarms: list, resolve.")


def dispatch_command(
    once: Annotated[bool, typer.Option(help="Take the outbox and advance due commands once, then exit.")] = False,
    metrics_port: MetricsPort = None,
) -> None:
    """Send relay commands from the outbox and follow the meters' answers until stopped (SIGTERM/SIGINT)."""
    from headend.db.connection import check_database, database_url
    from headend.dispatch.metrics import DispatchMetrics
    from headend.dispatch.service import run_dispatcher
    from headend.runtime.metrics import worker_metrics
    from headend.runtime.signals import stop_on_signals

    settings = load_settings()
    with (
        database_url(settings) as url,
        stop_on_signals() as stop,
        worker_metrics(settings, metrics_port) as registry,
    ):
        check_database(url)
        metrics = None if registry is None else DispatchMetrics(registry, query_every_s=settings.metrics_query_s)
        totals = run_dispatcher(settings, url, stop, once=once, metrics=metrics)
    typer.echo(
        f"stopped: {totals.taken} taken, {totals.sent} sent, {totals.confirmed} confirmed, {totals.failed} failed, "
        f"{totals.held} held, {totals.cancelled} cancelled, {totals.expired} expired, "
        f"{totals.events} events ({totals.rejected_events} refused)"
    )


@command_app.command("list")
def command_list(
    state: Annotated[CommandState | None, typer.Option(help="Only commands in this state.")] = None,
    meter: Annotated[str | None, typer.Option(help="Only this meter's commands.")] = None,
    account: Annotated[str | None, typer.Option(help="Only this account's commands.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Commands to list.")] = 50,
    before: Annotated[str | None, typer.Option(help="Only commands older than this one (the next page).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Relay commands newest first: when issued (local time), id, action, meter, state, attempts, latest step."""
    from headend.dispatch import store

    settings = load_settings()
    with database(settings) as conn:
        try:
            page = store.list_commands(
                conn, state=state, meter_id=meter, account_id=account, limit=limit, before=before
            )
        except store.CommandError as exc:
            raise typer.BadParameter(str(exc), param_hint="--before") from None
    if as_json:
        typer.echo(to_json({"commands": page.commands, "next_before": page.next_before}, settings.zone))
        return
    if not page.commands:
        typer.echo("no commands")
        return
    rows = [
        [
            local_time(c.issued_at, settings.zone),
            c.command_id,
            c.action,
            c.meter_id,
            c.account_id or "-",
            c.state,
            str(c.attempts),
            c.detail,
        ]
        for c in page.commands
    ]
    headers = [f"issued ({settings.timezone})", "command", "action", "meter", "account", "state", "attempts", "detail"]
    typer.echo(table(headers, rows))
    if page.next_before is not None:
        typer.echo(f"{len(page.commands)} shown, older ones follow: --before {page.next_before}")


@command_app.command("show")
def command_show(command_id: str) -> None:
    """A command's state and its audit trail."""
    from headend.dispatch import store

    with database(load_settings()) as conn:
        command = store.get_command(conn, command_id)
        if command is None:
            raise fail(f"no command {command_id!r}")
        trail = store.history(conn, command_id)
    typer.echo(
        f"{command.command_id}: {command.action} meter {command.meter_id} — {command.state} "
        f"({command.attempts} attempt(s), expires {command.expires_at.isoformat()}) {command.detail}"
    )
    for entry in trail:
        typer.echo(
            f"  {entry['at'].isoformat()}  {entry['from_state'] or '-':>12} → {entry['to_state']:<12} "
            f"{entry['actor']}: {entry['detail']}"
        )


@command_app.command("approve")
def command_approve(
    command_id: str, by: Annotated[str, typer.Option(help="Who approves (recorded in the audit trail).")]
) -> None:
    """Approve a held disconnect (storm limit or open alarm); it is re-checked before it is sent."""
    from headend.dispatch import store
    from headend.dispatch.operations import approve

    with database(load_settings()) as conn:
        try:
            command = approve(conn, command_id, by=by, now=datetime.now(UTC))
        except store.CommandError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"{command.command_id} approved by {by}; the dispatcher sends it after re-checking the account")


@command_app.command("cancel")
def command_cancel(
    command_id: str,
    by: Annotated[str, typer.Option(help="Who cancels (recorded in the audit trail).")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit trail).")],
) -> None:
    """Withdraw a command that has not ended (to stop disconnects of an account, set keep-supply instead)."""
    from headend.dispatch import store
    from headend.dispatch.operations import cancel
    from headend.engine.catalog import Catalog

    with database(load_settings()) as conn:
        try:
            command = cancel(conn, Catalog(), command_id, by=by, reason=reason, now=datetime.now(UTC))
        except store.CommandError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"{command.command_id} cancelled by {by}")


@command_app.command("read-relay")
def command_read_relay(
    meter_id: str, by: Annotated[str, typer.Option(help="Who asks (recorded in the audit trail).")]
) -> None:
    """Ask a meter to read its relay back; `headend dispatch` sends it, `command show` gives the answer."""
    from headend.dispatch import store
    from headend.dispatch.operations import request_relay_read

    settings = load_settings()
    with database(settings) as conn:
        try:
            command = request_relay_read(
                conn, meter_id, by=by, now=datetime.now(UTC), ttl=timedelta(seconds=settings.dispatch_command_ttl_s)
            )
        except store.CommandError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"{command.command_id} requested; expires {command.expires_at.isoformat()}")


@alarm_app.command("list")
def alarm_list(
    unresolved: Annotated[bool, typer.Option("--open/--all", help="Open alarms only, or resolved ones too.")] = True,
    meter: Annotated[str | None, typer.Option(help="Only this meter's alarms.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Alarms to list.")] = 50,
    before: Annotated[int | None, typer.Option(min=1, help="Only alarms before this id (the next page).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Relay alarms newest first: id, when raised (local time), meter, kind, relay, resolution."""
    from headend.dispatch import store

    settings = load_settings()
    with database(settings) as conn:
        page = store.list_alarms(
            conn, unresolved=True if unresolved else None, meter_id=meter, limit=limit, before_id=before
        )
    if as_json:
        typer.echo(to_json({"alarms": page.alarms, "next_before": page.next_before_id}, settings.zone))
        return
    if not page.alarms:
        typer.echo("no open alarms" if unresolved else "no alarms")
        return
    rows = [
        [
            str(a.alarm_id),
            local_time(a.raised_at, settings.zone),
            a.meter_id,
            a.kind,
            a.relay,
            a.command_id or "-",
            "open" if a.resolved_at is None else f"{local_time(a.resolved_at, settings.zone)} by {a.resolved_by}",
            a.detail,
        ]
        for a in page.alarms
    ]
    headers = ["alarm", f"raised ({settings.timezone})", "meter", "kind", "relay", "command", "resolved", "detail"]
    typer.echo(table(headers, rows))
    if page.next_before_id is not None:
        typer.echo(f"{len(page.alarms)} shown, older ones follow: --before {page.next_before_id}")


@alarm_app.command("resolve")
def alarm_resolve(
    alarm_id: int, by: Annotated[str, typer.Option(help="Who resolved it (after checking the meter on site).")]
) -> None:
    """Mark a relay alarm resolved, so disconnects of that meter no longer wait for approval."""
    from headend.dispatch import store

    with database(load_settings()) as conn:
        if not store.resolve_alarm(conn, alarm_id, by, datetime.now(UTC)):
            raise fail(f"no open alarm {alarm_id}")
    typer.echo(f"alarm {alarm_id} resolved by {by}")
