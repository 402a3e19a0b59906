"""Write the account's notification and relay-command requests to their outboxes, in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from prepay_engine.account import CommandRequest, NotificationRequest
from prepay_engine.config_codec import audit_json

Cursor = psycopg.Cursor[Any]

_INSERT_NOTIFICATION = """
    INSERT INTO notification_outbox (request_id, account_id, kind, episode, threshold_fen, balance_fen, credit_fen,
        requested_at, reasons, evidence)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (request_id) DO NOTHING
"""
_INSERT_COMMAND = """
    INSERT INTO command_requests (request_id, account_id, meter_id, sequence, action, requested_at, supersedes,
        reasons, evidence, requested_by)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT DO NOTHING
"""


def write_requests(
    cur: Cursor,
    notifications: Sequence[NotificationRequest],
    commands: Sequence[CommandRequest],
    *,
    requested_by: str,
) -> None:
    """Insert the requests; a replayed request (same deterministic id) is already there and is skipped."""
    if notifications:
        cur.executemany(
            _INSERT_NOTIFICATION,
            [
                (
                    n.request_id,
                    n.account_id,
                    str(n.kind),
                    n.episode,
                    n.threshold_fen,
                    n.balance_fen,
                    n.credit_fen,
                    n.requested_at,
                    Jsonb(audit_json(n.reasons)),
                    Jsonb(audit_json(n.evidence)),
                )
                for n in notifications
            ],
        )
    if commands:
        cur.executemany(
            _INSERT_COMMAND,
            [
                (
                    c.request_id,
                    c.command.account_id,
                    c.command.meter_id,
                    c.command.sequence,
                    str(c.action),
                    c.requested_at,
                    None if c.supersedes is None else c.supersedes.request_id,
                    Jsonb(audit_json(c.reasons)),
                    Jsonb(audit_json(c.evidence)),
                    requested_by,
                )
                for c in commands
            ],
        )
