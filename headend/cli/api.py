"""Commands of the HTTP API: serve it, issue and revoke its bearer tokens, register payment channels' secrets."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from headend.api.credentials import Role, new_channel_secret, new_token, secret_problem
from headend.cli.common import command_group, database, fail, load_settings

token_app = command_group("Bearer tokens of the HTTP API (one per principal and role).")
channel_app = command_group("Payment channels that sign their callbacks (HMAC secrets).")

CREATED_BY = "cli"


def _read_secret(file: Path) -> str:
    try:
        secret = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"{file}: {exc}") from None
    problem = secret_problem(secret)
    if problem is not None:
        raise fail(f"{file}: {problem}")
    return secret


def serve_command(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default HEADEND_API_HOST).")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port to listen on (default HEADEND_API_PORT).")
    ] = None,
) -> None:
    """Serve the HTTP API (docs/api.md) until stopped (SIGTERM/SIGINT); OpenAPI at /openapi.json, UI at /docs."""
    import uvicorn  # only this command needs the server

    from headend.api.app import create_app
    from headend.db.connection import check_database, database_url

    settings = load_settings()
    with database_url(settings) as url:
        check_database(url)
        app = create_app(settings.model_copy(update={"database_url": url}))
        # logging stays as `headend --log-level` configured it
        uvicorn.run(app, host=host or settings.api_host, port=port or settings.api_port, log_config=None)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="Principal name (1–64 of a-z 0-9 _ . -); a channel's is the channel.")],
    role: Annotated[Role, typer.Option(help="What the token may do.")],
) -> None:
    """Issue a token for a new principal; it is printed once, only its SHA-256 is stored."""
    from headend.api import store

    token = new_token()
    settings = load_settings()
    with database(settings) as conn:
        try:
            store.create_principal(conn, name, role, token, created_by=CREATED_BY)
        except store.StoreError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"token of {name} ({role}) — shown once, store it now:", err=True)
    typer.echo(token)


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Option(help="Principal name.")]) -> None:
    """Revoke a principal's token at once; its name is not reused."""
    from headend.api import store

    settings = load_settings()
    with database(settings) as conn:
        try:
            revoked_at, now = store.revoke_principal(conn, name)
        except store.StoreError as exc:
            raise fail(str(exc)) from None
    state = "revoked" if now else "already revoked"
    typer.echo(f"principal {name} {state} at {revoked_at.isoformat()}")


@channel_app.command("add")
def channel_add(
    channel: Annotated[str, typer.Option(help="Channel name (1–32 of a-z 0-9 _), as in payments.")],
    secret_file: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="Read the secret (32–256 printable ASCII) from this file instead."),
    ] = None,
) -> None:
    """Register a channel with an HMAC secret (generated and printed once, or read from --secret-file)."""
    from headend.api import store

    secret = new_channel_secret() if secret_file is None else _read_secret(secret_file)
    settings = load_settings()
    with database(settings) as conn:
        try:
            store.add_channel(conn, channel, secret)
        except store.StoreError as exc:
            raise fail(str(exc)) from None
    if secret_file is None:
        typer.echo(f"channel {channel} added; its secret — shown once, give it to the channel:", err=True)
        typer.echo(secret)
    else:
        typer.echo(f"channel {channel} added with the secret of {secret_file}")


@channel_app.command("rotate")
def channel_rotate(
    channel: Annotated[str, typer.Option(help="Channel name.")],
    grace_hours: Annotated[
        float, typer.Option(min=0, max=24 * 90, help="How long the current secret stays valid too.")
    ] = 24,
    secret_file: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Read the new secret from this file instead.")
    ] = None,
) -> None:
    """Put a new secret in force; the current one is still accepted for --grace-hours (0: refused at once)."""
    from headend.api import store

    secret = new_channel_secret() if secret_file is None else _read_secret(secret_file)
    settings = load_settings()
    with database(settings) as conn:
        try:
            rotated = store.rotate_channel(conn, channel, secret, timedelta(hours=grace_hours))
        except store.StoreError as exc:
            raise fail(str(exc)) from None
    until = rotated.previous_valid_until
    previous = "refused from now on" if until is None else f"accepted until {until.isoformat()}"
    if secret_file is None:
        typer.echo(f"channel {channel}: new secret in force, previous {previous}; the new one — shown once:", err=True)
        typer.echo(secret)
    else:
        typer.echo(f"channel {channel}: the secret of {secret_file} is in force, previous {previous}")


@channel_app.command("disable")
def channel_disable(channel: Annotated[str, typer.Option(help="Channel name.")]) -> None:
    """Refuse the channel's callbacks from now on (its payments stay)."""
    _set_disabled(channel, disabled=True)


@channel_app.command("enable")
def channel_enable(channel: Annotated[str, typer.Option(help="Channel name.")]) -> None:
    """Accept the callbacks of a disabled channel again."""
    _set_disabled(channel, disabled=False)


def _set_disabled(channel: str, *, disabled: bool) -> None:
    from headend.api import store

    settings = load_settings()
    with database(settings) as conn:
        try:
            changed = store.set_channel_disabled(conn, channel, disabled=disabled)
        except store.StoreError as exc:
            raise fail(str(exc)) from None
    state = "disabled" if disabled else "enabled"
    typer.echo(f"channel {channel} {state}" if changed else f"channel {channel} was already {state}")
