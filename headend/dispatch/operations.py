"""Operators' actions on commands: approve a held disconnect, cancel a command, resolve a relay alarm."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from headend.dispatch import store
from headend.dispatch.lifecycle import CommandState
from headend.engine.accounts import record_relay_outcome
from headend.engine.catalog import Catalog
from prepay_engine.account import RelayOutcome

Connection = psycopg.Connection[Any]


def approve(conn: Connection, command_id: str, *, by: str, now: datetime) -> store.Command:
    """Release a held command: it is re-checked against the account and sent at the dispatcher's next step."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        command = _locked(cur, command_id)
        if command.state is not CommandState.HELD:
            raise store.CommandError(f"{command_id} is {command.state}, only a held command can be approved")
        return store.move(
            cur,
            command,
            CommandState.CREATED,
            now,
            actor=by,
            detail=f"approved by {by}",
            approved_by=by,
            next_attempt_at=now,
        )


def cancel(
    conn: Connection, catalog: Catalog, command_id: str, *, by: str, reason: str, now: datetime
) -> store.Command:
    """Withdraw a command that has not ended; the account is told it did not move the relay (and decides again)."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        catalog.refresh(conn)
        command = _locked(cur, command_id)
        if not store.can_cancel(command.state):
            raise store.CommandError(f"{command_id} is {command.state} and can't be cancelled")
        cancelled = store.move(
            cur, command, CommandState.CANCELLED, now, actor=by, detail=f"cancelled by {by}: {reason}"
        )
        account_command = command.account_command
        if account_command is not None:
            record_relay_outcome(cur, catalog, account_command, RelayOutcome.FAILED, now, by)
        return cancelled


def request_relay_read(conn: Connection, meter_id: str, *, by: str, now: datetime, ttl: timedelta) -> store.Command:
    """Ask a meter to read its relay back (a field test, a check after an alarm); the dispatcher sends it."""
    command_id = f"read:{meter_id}:{uuid.uuid4().hex[:12]}"
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT concentrator_id, reconnect_mode FROM meters WHERE meter_id = %s", (meter_id,))
        meter = cur.fetchone()
        if meter is None:
            raise store.CommandError(f"no meter {meter_id!r}")
        cur.execute(
            "INSERT INTO commands (command_id, meter_id, concentrator_id, action, reconnect_mode, state, "
            "next_attempt_at, issued_at, expires_at, requested_by) "
            "VALUES (%s, %s, %s, 'read_relay', %s, 'created', %s, %s, %s, %s)",
            (command_id, meter_id, meter["concentrator_id"], meter["reconnect_mode"], now, now, now + ttl, by),
        )
        store.audit(cur, command_id, now, None, CommandState.CREATED, by, "relay read requested", {})
        command = store.lock_command(cur, command_id)
    assert command is not None
    return command


def _locked(cur: store.Cursor, command_id: str) -> store.Command:
    command = store.lock_command(cur, command_id)
    if command is None:
        raise store.CommandError(f"no command {command_id!r}")
    return command
