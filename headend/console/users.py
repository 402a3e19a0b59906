"""Console users in PostgreSQL (migration 0024): roles, creation, disabling, password resets, the list.

Passwords arrive in clear only to be checked (`headend.console.passwords`) and hashed; only the hash is stored.
Disabling a user or resetting a password ends every open session of the user at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg import errors

from headend.console.passwords import hash_password, password_problem
from headend.console.roles import ConsoleRole

Connection = psycopg.Connection[Any]

USER_NAME_PATTERN: Final = re.compile(r"[a-z0-9_.-]{1,64}")


class UserError(ValueError):
    """A change to console users refused before anything changed."""


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """A console user as `headend user list` shows it (never the hash)."""

    name: str
    role: ConsoleRole
    created_at: datetime
    created_by: str
    password_changed_at: datetime
    disabled_at: datetime | None
    failed_attempts: int
    locked_until: datetime | None
    open_sessions: int


def user_name_problem(name: str) -> str | None:
    """Why `name` can't be a console user's name, or None."""
    if USER_NAME_PATTERN.fullmatch(name) is None:
        return f"name {name!r} must be 1–64 of a-z, 0-9, '_', '.', '-'"
    return None


def _checked_password(password: str) -> str:
    problem = password_problem(password)
    if problem is not None:
        raise UserError(problem)
    return hash_password(password)


def create_user(conn: Connection, name: str, role: ConsoleRole, password: str, *, created_by: str) -> None:
    """Store a new user with the hash of its password; names are never reused, even once disabled."""
    problem = user_name_problem(name)
    if problem is not None:
        raise UserError(problem)
    password_hash = _checked_password(password)
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO console_users (name, role, password_hash, created_by) VALUES (%s, %s, %s, %s)",
                (name, str(role), password_hash, created_by),
            )
    except errors.UniqueViolation as exc:
        if exc.diag.constraint_name == "console_users_name_key":
            raise UserError(f"user {name!r} already exists (names are not reused, even once disabled)") from None
        raise


def _end_sessions(conn: Connection, user_id: int, reason: str) -> int:
    ended = conn.execute(
        "UPDATE console_sessions SET ended_at = now(), end_reason = %s WHERE user_id = %s AND ended_at IS NULL",
        (reason, user_id),
    )
    return ended.rowcount


def _user_id(conn: Connection, name: str) -> tuple[int, datetime | None]:
    row = conn.execute("SELECT user_id, disabled_at FROM console_users WHERE name = %s FOR UPDATE", (name,)).fetchone()
    if row is None:
        raise UserError(f"no user {name!r}")
    return int(row[0]), row[1]


def set_disabled(conn: Connection, name: str, *, disabled: bool) -> tuple[bool, int]:
    """Disable (ending the user's sessions) or enable a user; whether this changed it, and the sessions ended."""
    with conn.transaction():
        user_id, disabled_at = _user_id(conn, name)
        if (disabled_at is not None) == disabled:
            return False, 0
        if not disabled:
            # a fresh start: failures before the user was disabled no longer count
            conn.execute(
                "UPDATE console_users SET disabled_at = NULL, failed_attempts = 0, locked_until = NULL "
                "WHERE user_id = %s",
                (user_id,),
            )
            return True, 0
        conn.execute("UPDATE console_users SET disabled_at = now() WHERE user_id = %s", (user_id,))
        return True, _end_sessions(conn, user_id, "user_disabled")


def reset_password(conn: Connection, name: str, password: str) -> int:
    """Give a user a new password, lift a lock-out and end the user's sessions; how many were ended."""
    password_hash = _checked_password(password)
    with conn.transaction():
        user_id, _ = _user_id(conn, name)
        conn.execute(
            "UPDATE console_users SET password_hash = %s, password_changed_at = now(), failed_attempts = 0, "
            "locked_until = NULL WHERE user_id = %s",
            (password_hash, user_id),
        )
        return _end_sessions(conn, user_id, "password_reset")


def list_users(conn: Connection) -> list[ConsoleUser]:
    """Every user by name, with the number of open sessions."""
    rows = conn.execute(
        "SELECT u.name, u.role, u.created_at, u.created_by, u.password_changed_at, u.disabled_at, u.failed_attempts, "
        "u.locked_until, (SELECT count(*) FROM console_sessions s WHERE s.user_id = u.user_id AND s.ended_at IS NULL "
        "AND s.expires_at > now()) "
        "FROM console_users u ORDER BY u.name"
    ).fetchall()
    return [
        ConsoleUser(str(r[0]), ConsoleRole(r[1]), r[2], str(r[3]), r[4], r[5], int(r[6]), r[7], int(r[8])) for r in rows
    ]
