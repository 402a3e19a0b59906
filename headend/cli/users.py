"""Commands of the web console's users: create, disable, enable, list, reset a password (docs/console.md).

A password is never an argument (it would be in the shell's history and the process list): it is read from standard
input, asked twice on a terminal, or two equal lines from a pipe.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from headend.cli.common import command_group, database, fail, load_settings, local_time, table, to_json
from headend.console.roles import ConsoleRole

user_app = command_group("People who sign in to the web console (password from standard input, never an argument).")

Name = Annotated[str, typer.Option("--name", help="Login name: 1–64 of a-z 0-9 _ . -")]


def _read_password() -> str:
    """A new password from standard input, given twice, checked against the rules before anything is stored."""
    import getpass

    from headend.console.passwords import password_problem

    if sys.stdin.isatty():
        first = getpass.getpass("New password: ", stream=sys.stderr)
        second = getpass.getpass("New password again: ", stream=sys.stderr)
    else:
        first = sys.stdin.readline().rstrip("\r\n")
        second = sys.stdin.readline().rstrip("\r\n")
    if not first:
        raise fail("no password on standard input (give it twice: on a terminal when asked, or as two lines)")
    if first != second:
        raise fail("the two passwords differ; nothing was changed")
    problem = password_problem(first)
    if problem is not None:
        raise fail(f"{problem}; nothing was changed")
    return first


@user_app.command("create")
def user_create(
    name: Name,
    role: Annotated[ConsoleRole, typer.Option(help="What the user may see: operator, field_staff, viewer or admin.")],
) -> None:
    """Create a console user; the password is read from standard input (twice) and only its argon2 hash is kept."""
    from headend.console.users import UserError, create_user
    from headend.engine.plan_changes import default_actor

    password = _read_password()
    with database(load_settings()) as conn:
        try:
            create_user(conn, name, role, password, created_by=default_actor())
        except UserError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"user {name} ({role}) created")


@user_app.command("disable")
def user_disable(name: Name) -> None:
    """Refuse the user's sign-ins from now on and end the user's sessions at once."""
    from headend.console.users import UserError, set_disabled

    with database(load_settings()) as conn:
        try:
            changed, ended = set_disabled(conn, name, disabled=True)
        except UserError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"user {name} disabled, {ended} session(s) ended" if changed else f"user {name} was already disabled")


@user_app.command("enable")
def user_enable(name: Name) -> None:
    """Let a disabled user sign in again (failed attempts forgotten)."""
    from headend.console.users import UserError, set_disabled

    with database(load_settings()) as conn:
        try:
            changed, _ = set_disabled(conn, name, disabled=False)
        except UserError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"user {name} enabled" if changed else f"user {name} was already enabled")


@user_app.command("reset-password")
def user_reset_password(name: Name) -> None:
    """Give a user a new password (from standard input, twice): lifts a lock-out, ends the user's sessions."""
    from headend.console.users import UserError, reset_password

    password = _read_password()
    with database(load_settings()) as conn:
        try:
            ended = reset_password(conn, name, password)
        except UserError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"password of {name} reset, {ended} session(s) ended")


@user_app.command("list")
def user_list(as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False) -> None:
    """Every console user: role, state (active, disabled, locked until), open sessions, when created and by whom."""
    from headend.console.users import list_users

    settings = load_settings()
    with database(settings) as conn:
        users = list_users(conn)
    zone = settings.zone
    if as_json:
        typer.echo(to_json(users, zone))
        return
    if not users:
        typer.echo("no console users (create one with `headend user create`)")
        return
    rows = []
    for u in users:
        state = "disabled" if u.disabled_at is not None else "active"
        if u.disabled_at is None and u.locked_until is not None:
            state = f"locked until {local_time(u.locked_until, zone)}"
        rows.append(
            [
                u.name,
                str(u.role),
                state,
                str(u.open_sessions),
                str(u.failed_attempts),
                local_time(u.password_changed_at, zone),
                f"{local_time(u.created_at, zone)} by {u.created_by}",
            ]
        )
    typer.echo(table(["name", "role", "state", "sessions", "failures", "password changed", "created"], rows))
