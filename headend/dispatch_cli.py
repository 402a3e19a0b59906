"""Operator commands of the dispatcher: run it, look at a command, approve or cancel one, resolve an alarm."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from headend.dispatch import store
from headend.dispatch.operations import approve, cancel, request_relay_read
from headend.dispatch.service import run_dispatcher
from headend.engine.catalog import Catalog
from headend.services import connect_database, database_url
from headend.settings import Settings
from headend.signals import stop_on_signals

command_app = typer.Typer(help="Relay commands: show, approve, cancel, read a relay.", no_args_is_help=True)
alarm_app = typer.Typer(help="Relay alarms.", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def dispatch_command(
    once: Annotated[bool, typer.Option(help="Take the outbox and advance due commands once, then exit.")] = False,
) -> None:
    """Send relay commands from the outbox and follow the meters' answers until stopped (SIGTERM/SIGINT)."""
    settings = Settings()
    with database_url(settings) as url, stop_on_signals() as stop:
        totals = run_dispatcher(settings, url, stop, once=once)
    typer.echo(
        f"stopped: {totals.taken} taken, {totals.sent} sent, {totals.held} held, {totals.cancelled} cancelled, "
        f"{totals.expired} expired, {totals.events} events ({totals.rejected_events} refused)"
    )


@command_app.command("show")
def command_show(command_id: str) -> None:
    """A command's state and its audit trail."""
    with database_url(Settings()) as url, connect_database(url) as conn:
        command = store.get_command(conn, command_id)
        if command is None:
            raise _fail(f"no command {command_id!r}")
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
    with database_url(Settings()) as url, connect_database(url) as conn:
        try:
            command = approve(conn, command_id, by=by, now=datetime.now(UTC))
        except store.CommandError as exc:
            raise _fail(str(exc)) from None
    typer.echo(f"{command.command_id} approved by {by}; the dispatcher sends it after re-checking the account")


@command_app.command("cancel")
def command_cancel(
    command_id: str,
    by: Annotated[str, typer.Option(help="Who cancels (recorded in the audit trail).")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit trail).")],
) -> None:
    """Withdraw a command that has not ended (to stop disconnects of an account, set keep-supply instead)."""
    with database_url(Settings()) as url, connect_database(url) as conn:
        try:
            command = cancel(conn, Catalog(), command_id, by=by, reason=reason, now=datetime.now(UTC))
        except store.CommandError as exc:
            raise _fail(str(exc)) from None
    typer.echo(f"{command.command_id} cancelled by {by}")


@command_app.command("read-relay")
def command_read_relay(
    meter_id: str, by: Annotated[str, typer.Option(help="Who asks (recorded in the audit trail).")]
) -> None:
    """Ask a meter to read its relay back; `headend dispatch` sends it, `command show` gives the answer."""
    settings = Settings()
    with database_url(settings) as url, connect_database(url) as conn:
        try:
            command = request_relay_read(
                conn, meter_id, by=by, now=datetime.now(UTC), ttl=timedelta(seconds=settings.dispatch_command_ttl_s)
            )
        except store.CommandError as exc:
            raise _fail(str(exc)) from None
    typer.echo(f"{command.command_id} requested; expires {command.expires_at.isoformat()}")


@alarm_app.command("resolve")
def alarm_resolve(
    alarm_id: int, by: Annotated[str, typer.Option(help="Who resolved it (after checking the meter on site).")]
) -> None:
    """Mark a relay alarm resolved, so disconnects of that meter no longer wait for approval."""
    with database_url(Settings()) as url, connect_database(url) as conn:
        if not store.resolve_alarm(conn, alarm_id, by, datetime.now(UTC)):
            raise _fail(f"no open alarm {alarm_id}")
    typer.echo(f"alarm {alarm_id} resolved by {by}")
