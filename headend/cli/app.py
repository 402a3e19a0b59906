"""The root `headend` command: logging options, and every command group wired in.

Each command module imports only typer and the standard library at its top; what a command needs it imports in its
body, so `headend --help` and one command never pay for the others' imports.
"""

from __future__ import annotations

from typing import Annotated

import typer

from headend.cli.accounts import account_app
from headend.cli.api import channel_app, serve_command, token_app
from headend.cli.broker import broker_config_command, devices_app
from headend.cli.catalog import calendar_app, policy_app, tariff_app
from headend.cli.collection import collection_report_command
from headend.cli.common import command_group
from headend.cli.db import db_app
from headend.cli.demo import demo
from headend.cli.dispatch import alarm_app, command_app, dispatch_command
from headend.cli.engine import engine_command, settle_command
from headend.cli.errors import ExplainingGroup
from headend.cli.ingest import ingest
from headend.cli.meters import meters_app
from headend.cli.payments import pay_command
from headend.cli.poll import poll_command
from headend.cli.reread import reread_command
from headend.cli.schema import migrate
from headend.cli.simulate import simulate
from headend.cli.switches import meters_find, switches_app
from headend.cli.users import user_app
from headend.runtime.logging import LogFormat, LogLevel, configure_logging

app = command_group("Head-end and prepaid control system for electricity meters.", cls=ExplainingGroup)
app.command("migrate")(migrate)
app.add_typer(db_app, name="db")
app.command("ingest")(ingest)
app.command("poll")(poll_command)
app.command("reread")(reread_command)
meters_app.command("find")(meters_find)
app.add_typer(meters_app, name="meters")
app.add_typer(switches_app, name="switches")
app.command("collection-report")(collection_report_command)
app.command("simulate")(simulate)
app.command("demo")(demo)
app.add_typer(tariff_app, name="tariff")
app.add_typer(policy_app, name="policy")
app.add_typer(account_app, name="account")
app.add_typer(calendar_app, name="calendar")
app.command("pay")(pay_command)
app.command("engine")(engine_command)
app.command("settle")(settle_command)
app.command("dispatch")(dispatch_command)
app.add_typer(command_app, name="command")
app.add_typer(alarm_app, name="alarm")
app.command("serve")(serve_command)
app.add_typer(token_app, name="api-token")
app.add_typer(user_app, name="user")
app.add_typer(channel_app, name="channel")
app.add_typer(devices_app, name="devices")
app.command("broker-config")(broker_config_command)


@app.callback()
def main(
    log_level: Annotated[
        LogLevel, typer.Option(envvar="HEADEND_LOG_LEVEL", help="Logging verbosity; debug also shows tracebacks.")
    ] = LogLevel.INFO,
    log_format: Annotated[
        LogFormat, typer.Option(envvar="HEADEND_LOG_FORMAT", help="Log lines as text, or one JSON object a line.")
    ] = LogFormat.TEXT,
) -> None:
    """Configure logging for every sub-command."""
    configure_logging(log_level, log_format)
