"""Signing in and out of the console, and the sessions in between (tables of migration 0024).

Every attempt to sign in is checked the same way whatever the name: the password is verified (against a stand-in hash
when there is no such user), and the answer to the person is the same for an unknown name, a wrong password, a locked
or a disabled user; only the audit (`console_sign_ins`) tells them apart. After `lockout_failures` wrong passwords in a
row a user is locked out for `lockout` (the correct password is refused too); the counter restarts then, and at every
successful sign-in. A session ends when signed out, after `idle` without a request, `max_age` after sign-in, or when its
user is disabled; its token is in the cookie only, the table keeps its SHA-256.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import psycopg

from headend.console.passwords import password_matches
from headend.console.roles import ConsoleRole
from headend.console.tokens import is_session_token, new_csrf_secret, new_session_token, session_id
from headend.console.users import USER_NAME_PATTERN
from headend.db.text import storable

Connection = psycopg.Connection[Any]

NAME_TRIED_MAX_CHARS = 100
CLIENT_MAX_CHARS = 100


class Outcome(StrEnum):
    """How an attempt to sign in ended, as the audit keeps it."""

    SIGNED_IN = "signed_in"
    WRONG_PASSWORD = "wrong_password"  # noqa: S105 (an outcome, not a password)
    UNKNOWN_USER = "unknown_user"
    LOCKED = "locked"  # refused while locked out, whatever the password
    LOCKED_NOW = "locked_now"  # a wrong password that locked the user out
    DISABLED = "disabled"


class EndReason(StrEnum):
    """Why a session is over."""

    SIGNED_OUT = "signed_out"
    IDLE = "idle"
    EXPIRED = "expired"
    USER_DISABLED = "user_disabled"
    PASSWORD_RESET = "password_reset"  # noqa: S105 (a reason, not a password)


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """How long sessions last and when sign-in locks a user out (HEADEND_CONSOLE_*)."""

    idle: timedelta = timedelta(minutes=30)
    max_age: timedelta = timedelta(hours=12)
    lockout_failures: int = 5
    lockout: timedelta = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in user's session."""

    session_id: bytes
    user_name: str
    role: ConsoleRole
    csrf_secret: bytes
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A new session, and the token for its cookie (given once, never stored)."""

    token: str
    session: Session


def _client(address: str | None) -> str | None:
    return None if address is None else storable(address, CLIENT_MAX_CHARS)


def sign_in(
    conn: Connection, name: str, password: str, *, client: str | None, now: datetime, policy: SessionPolicy
) -> SignedIn | Outcome:
    """A new session for the user, or why not; every attempt is audited."""
    # phones capitalise the first letter; names are lower case
    wanted = name.strip().lower()
    with conn.transaction():
        row = None
        if USER_NAME_PATTERN.fullmatch(wanted):
            # the row stays locked while the password is checked: concurrent attempts are counted one by one
            row = conn.execute(
                "SELECT user_id, role, password_hash, disabled_at, failed_attempts, locked_until FROM console_users "
                "WHERE name = %s FOR UPDATE",
                (wanted,),
            ).fetchone()
        matches = password_matches(password, None if row is None else str(row[2]))
        result: SignedIn | Outcome
        if row is None:
            result = Outcome.UNKNOWN_USER
        elif row[3] is not None:
            result = Outcome.DISABLED
        elif row[5] is not None and row[5] > now:
            result = Outcome.LOCKED
        elif not matches:
            failures = int(row[4]) + 1
            locks = failures >= policy.lockout_failures
            conn.execute(
                "UPDATE console_users SET failed_attempts = %s, locked_until = %s WHERE user_id = %s",
                (0 if locks else failures, now + policy.lockout if locks else None, row[0]),
            )
            result = Outcome.LOCKED_NOW if locks else Outcome.WRONG_PASSWORD
        else:
            if row[4] or row[5] is not None:
                conn.execute(
                    "UPDATE console_users SET failed_attempts = 0, locked_until = NULL WHERE user_id = %s", (row[0],)
                )
            result = _new_session(conn, int(row[0]), wanted, ConsoleRole(row[1]), client, now, policy)
        conn.execute(
            "INSERT INTO console_sign_ins (at, name_tried, outcome, client_address) VALUES (%s, %s, %s, %s)",
            (
                now,
                storable(name, NAME_TRIED_MAX_CHARS),
                str(Outcome.SIGNED_IN if isinstance(result, SignedIn) else result),
                _client(client),
            ),
        )
    return result


def _new_session(
    conn: Connection,
    user_id: int,
    name: str,
    role: ConsoleRole,
    client: str | None,
    now: datetime,
    policy: SessionPolicy,
) -> SignedIn:
    token = new_session_token()
    session = Session(session_id(token), name, role, new_csrf_secret(), now, now + policy.max_age)
    conn.execute(
        "INSERT INTO console_sessions (session_id, user_id, created_at, last_seen_at, expires_at, csrf_secret, "
        "client_address) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (session.session_id, user_id, now, now, session.expires_at, session.csrf_secret, _client(client)),
    )
    return SignedIn(token, session)


def session_for(conn: Connection, token: str, *, now: datetime, policy: SessionPolicy) -> Session | EndReason | None:
    """The live session of a cookie's token (its last use set to now); why it ended just now; None: no such session."""
    if not is_session_token(token):
        return None
    sid = session_id(token)
    row = conn.execute(
        "SELECT s.created_at, s.last_seen_at, s.expires_at, s.csrf_secret, u.name, u.role, u.disabled_at "
        "FROM console_sessions s JOIN console_users u USING (user_id) WHERE s.session_id = %s AND s.ended_at IS NULL",
        (sid,),
    ).fetchone()
    if row is None:
        return None
    created_at, last_seen_at, expires_at, csrf_secret, name, role, disabled_at = row
    reason = None
    if disabled_at is not None:
        reason = EndReason.USER_DISABLED
    elif now >= expires_at:
        reason = EndReason.EXPIRED
    elif now - last_seen_at >= policy.idle:
        reason = EndReason.IDLE
    if reason is not None:
        end_session(conn, sid, reason, now)
        return reason
    conn.execute(
        "UPDATE console_sessions SET last_seen_at = greatest(last_seen_at, %s) WHERE session_id = %s", (now, sid)
    )
    return Session(sid, str(name), ConsoleRole(role), bytes(csrf_secret), created_at, expires_at)


def end_session(conn: Connection, sid: bytes, reason: EndReason, now: datetime) -> bool:
    """End a session (once); whether this call ended it."""
    ended = conn.execute(
        "UPDATE console_sessions SET ended_at = %s, end_reason = %s WHERE session_id = %s AND ended_at IS NULL",
        (now, str(reason), sid),
    )
    return ended.rowcount == 1
