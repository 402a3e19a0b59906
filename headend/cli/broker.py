"""`headend devices credentials …` and `headend broker-config`: device accounts on the broker, and its configuration."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from headend.cli.common import command_group, database, fail, load_settings, local_time, table, to_json

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from headend.broker.store import Credential, Issued

devices_app = command_group("Meters and concentrators as broker clients.")
credentials_app = command_group("Broker credentials of meters and concentrators (username = device id).")
devices_app.add_typer(credentials_app, name="credentials")

_RELOAD = "`headend broker-config` and a reload of the broker (SIGHUP)"
DeviceId = Annotated[str, typer.Argument(help="Meter or concentrator id.")]
By = Annotated[str | None, typer.Option("--by", help="Who acts (kept with the credential); default: cli:<login>.")]


def _actor(by: str | None) -> str:
    from headend.engine.plan_changes import default_actor

    return by or default_actor()


def _show_issued(issued: Issued, what: str, takes_effect: str) -> None:
    typer.echo(
        f"{issued.kind} {issued.username}: {what}. The password is shown once: put it into the device now. "
        f"The broker {takes_effect} after {_RELOAD}.",
        err=True,
    )
    typer.echo(f"username: {issued.username}")
    typer.echo(f"password: {issued.password}")


@credentials_app.command("issue")
def credentials_issue(device_id: DeviceId, by: By = None) -> None:
    """Issue broker credentials to a registered meter or concentrator; prints its username and password once."""
    from headend.broker.store import CredentialError, issue

    with database(load_settings()) as conn:
        try:
            issued = issue(conn, device_id, actor=_actor(by))
        except CredentialError as exc:
            raise fail(str(exc)) from None
    _show_issued(issued, "credentials issued", "accepts it")


@credentials_app.command("rotate")
def credentials_rotate(device_id: DeviceId, by: By = None) -> None:
    """Give a device a new password (printed once); the old one is refused once the broker reloads (no grace)."""
    from headend.broker.store import CredentialError, rotate

    with database(load_settings()) as conn:
        try:
            issued = rotate(conn, device_id, actor=_actor(by))
        except CredentialError as exc:
            raise fail(str(exc)) from None
    _show_issued(issued, "new password", "accepts it, and refuses the old one (no grace period),")


@credentials_app.command("revoke")
def credentials_revoke(device_id: DeviceId, by: By = None) -> None:
    """Revoke a device's broker credentials; the broker refuses them, and drops its connection, once it reloads."""
    from headend.broker.store import CredentialError, revoke

    with database(load_settings()) as conn:
        try:
            revoke(conn, device_id, actor=_actor(by))
        except CredentialError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"{device_id}: credentials revoked; the broker refuses them after {_RELOAD}")


@credentials_app.command("list")
def credentials_list(
    device_id: Annotated[str | None, typer.Argument(help="Only this device's.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Rotated and revoked credentials too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Devices' broker credentials (never a password): live ones, or every one ever issued with --all."""
    from headend.broker.store import credentials

    settings = load_settings()
    with database(settings) as conn:
        found = credentials(conn, device_id=device_id, live_only=not all_)
    if as_json:
        typer.echo(to_json({"credentials": found}, settings.zone))
        return
    if not found:
        typer.echo("no credentials")
        return
    rows = [
        [
            c.username,
            str(c.kind),
            local_time(c.issued_at, settings.zone),
            c.issued_by,
            _state(c, settings.zone),
        ]
        for c in found
    ]
    typer.echo(table(["username", "kind", f"issued ({settings.timezone})", "by", "state"], rows))


def _state(credential: Credential, zone: ZoneInfo) -> str:
    if credential.end_reason is None:
        return "live"
    return f"{credential.end_reason} {local_time(credential.ended_at, zone)} by {credential.ended_by}"


def broker_config_command(
    directory: Annotated[
        Path, typer.Option("--dir", file_okay=False, help="Directory to write into, as the broker will see it.")
    ],
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Plain MQTT port (0: none, TLS only); passwords cross it in clear.")
    ] = 1883,
    bind: Annotated[str | None, typer.Option(help="Address the listeners bind to [default: all interfaces].")] = None,
    tls_port: Annotated[int, typer.Option(min=1, max=65535, help="TLS port, with --tls-cert, --tls-key.")] = 8883,
    tls_cert: Annotated[str | None, typer.Option(help="The broker's certificate (PEM), as the broker sees it.")] = None,
    tls_key: Annotated[str | None, typer.Option(help="Its private key (PEM), as the broker sees it.")] = None,
    tls_client_ca: Annotated[
        str | None, typer.Option(help="Require client certificates signed by this CA (PEM) on the TLS listener.")
    ] = None,
    persistence_dir: Annotated[
        str, typer.Option(help="Where the broker keeps its database (trailing slash).")
    ] = "/mosquitto/data/",
) -> None:
    """Write a complete Mosquitto configuration for the current registry: listeners, accounts, ACL."""
    from headend.broker.config import BrokerOptions, TlsListener, collect_accounts, write_config

    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both or neither", param_hint="--tls-cert / --tls-key")
    if tls_client_ca is not None and tls_cert is None:
        raise typer.BadParameter("client certificates need the TLS listener (--tls-cert, --tls-key)")
    tls = None if tls_cert is None or tls_key is None else TlsListener(tls_port, tls_cert, tls_key, tls_client_ca)
    try:
        options = BrokerOptions(
            directory=directory.absolute(),
            port=port or None,
            bind=bind,
            tls=tls,
            persistence_dir=persistence_dir if persistence_dir.endswith("/") else f"{persistence_dir}/",
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = load_settings()
    with database(settings) as conn:
        accounts = collect_accounts(conn, settings)
    try:
        written = write_config(options, accounts)
    except OSError as exc:
        raise fail(f"cannot write into {directory}: {exc}") from None
    for line in accounts.left_out:
        typer.echo(f"warning: {line}", err=True)
    typer.echo(
        f"wrote {written.conf}, {written.passwd.name} and {written.acl.name}: {written.meters} meter(s), "
        f"{written.concentrators} concentrator(s), {written.services} service account(s); a running broker takes "
        "them on SIGHUP"
    )
