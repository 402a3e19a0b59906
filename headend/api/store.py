"""API principals and payment channels in PostgreSQL (tables of migration 0005)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import errors

from headend.api.credentials import (
    Principal,
    Role,
    channel_problem,
    principal_name_problem,
    secret_problem,
    token_sha256,
)

Connection = psycopg.Connection[Any]


class StoreError(ValueError):
    """A change to principals or channels refused before anything changed."""


@dataclass(frozen=True, slots=True)
class Rotated:
    """A channel's new secret is in force; the previous one is accepted until `previous_valid_until` (None: not)."""

    channel: str
    previous_valid_until: datetime | None


def create_principal(conn: Connection, name: str, role: Role, token: str, *, created_by: str) -> None:
    """Store a principal with the hash of its token; names are never reused, even once revoked."""
    problem = principal_name_problem(name, role)
    if problem is not None:
        raise StoreError(problem)
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO api_principals (name, role, token_sha256, created_by) VALUES (%s, %s, %s, %s)",
                (name, str(role), token_sha256(token), created_by),
            )
    except errors.UniqueViolation as exc:
        if exc.diag.constraint_name == "api_principals_pkey":
            raise StoreError(f"principal {name!r} already exists (names are not reused, even once revoked)") from None
        raise


def revoke_principal(conn: Connection, name: str) -> tuple[datetime, bool]:
    """Revoke a principal's token; when it was revoked, and whether this call did it."""
    with conn.transaction():
        row = conn.execute("SELECT revoked_at FROM api_principals WHERE name = %s FOR UPDATE", (name,)).fetchone()
        if row is None:
            raise StoreError(f"no principal {name!r}")
        if row[0] is not None:
            return row[0], False
        revoked = conn.execute(
            "UPDATE api_principals SET revoked_at = now() WHERE name = %s RETURNING revoked_at", (name,)
        ).fetchone()
        assert revoked is not None
        return revoked[0], True


def principal_for_token(conn: Connection, token: str) -> Principal | None:
    """The principal holding a token, unless it is unknown or revoked."""
    row = conn.execute(
        "SELECT name, role FROM api_principals WHERE token_sha256 = %s AND revoked_at IS NULL", (token_sha256(token),)
    ).fetchone()
    return None if row is None else Principal(row[0], Role(row[1]))


def add_channel(conn: Connection, channel: str, secret: str) -> None:
    """Register a channel that signs its payment callbacks with `secret`."""
    problem = channel_problem(channel) or secret_problem(secret)
    if problem is not None:
        raise StoreError(problem)
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO payment_channels (channel, hmac_secret) VALUES (%s, %s) "
            "ON CONFLICT (channel) DO NOTHING RETURNING channel",
            (channel, secret),
        ).fetchone()
    if row is None:
        raise StoreError(f"channel {channel!r} already exists (rotate its secret instead)")


def rotate_channel(conn: Connection, channel: str, secret: str, grace: timedelta) -> Rotated:
    """Put a new secret in force; the current one stays valid for `grace` (an older previous one is dropped)."""
    problem = secret_problem(secret)
    if problem is not None:
        raise StoreError(problem)
    if grace < timedelta(0):
        raise StoreError("the grace period can't be negative")
    keep = grace > timedelta(0)
    with conn.transaction():
        row = conn.execute(
            "UPDATE payment_channels SET "
            "previous_hmac_secret = CASE WHEN %(keep)s THEN hmac_secret END, "
            "previous_valid_until = CASE WHEN %(keep)s THEN now() + %(grace)s END, "
            "hmac_secret = %(secret)s, rotated_at = now() "
            "WHERE channel = %(channel)s AND hmac_secret <> %(secret)s RETURNING previous_valid_until",
            {"keep": keep, "grace": grace, "secret": secret, "channel": channel},
        ).fetchone()
        if row is None:
            exists = conn.execute("SELECT 1 FROM payment_channels WHERE channel = %s", (channel,)).fetchone()
            raise StoreError(
                f"no channel {channel!r}" if exists is None else "the new secret is the one already in force"
            )
    return Rotated(channel, row[0])


def set_channel_disabled(conn: Connection, channel: str, *, disabled: bool) -> bool:
    """Disable (refuse its callbacks) or enable a channel; whether this call changed it."""
    with conn.transaction():
        row = conn.execute(
            "SELECT disabled_at IS NOT NULL FROM payment_channels WHERE channel = %s FOR UPDATE", (channel,)
        ).fetchone()
        if row is None:
            raise StoreError(f"no channel {channel!r}")
        if bool(row[0]) == disabled:
            return False
        conn.execute(
            "UPDATE payment_channels SET disabled_at = CASE WHEN %s THEN now() END WHERE channel = %s",
            (disabled, channel),
        )
        return True


def channel_secrets(conn: Connection, channel: str, now: datetime) -> tuple[str, ...]:
    """The secrets a channel's callbacks may be signed with at `now`: none when it is unknown or disabled."""
    row = conn.execute(
        "SELECT hmac_secret, CASE WHEN previous_valid_until > %s THEN previous_hmac_secret END "
        "FROM payment_channels WHERE channel = %s AND disabled_at IS NULL",
        (now, channel),
    ).fetchone()
    if row is None:
        return ()
    return (row[0],) if row[1] is None else (row[0], row[1])
