"""The web console's people: users with a password, their sessions, and every attempt to sign in.

`console_users` holds one row per person who signs in to the console: a login name, a role (`operator`, `field_staff`,
`viewer` — operator pages, read only — or `admin`), the argon2id hash of the password (the password itself is never
stored), who created the user and when, when the password last changed, whether the user is disabled, and the lock-out
state: failed attempts in a row and, after too many, until when sign-in is refused.

`console_sessions` holds one row per signed-in browser. Its id is the SHA-256 of the random token in the session cookie,
never the token itself, so a copy of the table signs nobody in. Each session has its own CSRF secret (forms carry a
token derived from it), when it was created, last seen and at the latest expires (the idle limit is applied on top of
`last_seen_at`), and once it is over, when and why.

`console_sign_ins` is the audit of every attempt to sign in: the name tried (as typed, bounded), when, the outcome and
the client's address. Rows are only ever added (a trigger refuses UPDATE, DELETE and TRUNCATE, for the owner too).

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# headend.console.users: ConsoleRole, USER_NAME_PATTERN; headend.console.sessions: EndReason, Outcome
ROLES = ("operator", "field_staff", "viewer", "admin")
END_REASONS = ("signed_out", "idle", "expired", "user_disabled", "password_reset")
OUTCOMES = ("signed_in", "wrong_password", "unknown_user", "locked", "locked_now", "disabled")
NAME_CHECK = "name ~ '^[a-z0-9_.-]+$' AND char_length(name) <= 64"
ACTOR_CHECK = "char_length(created_by) BETWEEN 1 AND 200"
HASH_CHECK = r"password_hash ~ '^\$argon2id\$' AND char_length(password_hash) <= 512"


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(map(repr, values))})"


def upgrade() -> None:
    op.create_table(
        "console_users",
        sa.Column("user_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("disabled_at", sa.DateTime(timezone=True)),
        sa.Column("failed_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("locked_until", sa.DateTime(timezone=True)),
        sa.CheckConstraint(NAME_CHECK, name="console_users_name_format"),
        sa.CheckConstraint(_in("role", ROLES), name="console_users_role"),
        sa.CheckConstraint(HASH_CHECK, name="console_users_password_hash"),
        sa.CheckConstraint(ACTOR_CHECK, name="console_users_created_by"),
        sa.CheckConstraint("failed_attempts BETWEEN 0 AND 1000", name="console_users_failed_attempts"),
    )
    op.create_table(
        "console_sessions",
        sa.Column("session_id", BYTEA, primary_key=True),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("console_users.user_id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("csrf_secret", BYTEA, nullable=False),
        sa.Column("client_address", sa.Text),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("end_reason", sa.Text),
        sa.CheckConstraint("octet_length(session_id) = 32", name="console_sessions_id"),
        sa.CheckConstraint("octet_length(csrf_secret) = 32", name="console_sessions_csrf_secret"),
        sa.CheckConstraint("expires_at > created_at AND last_seen_at >= created_at", name="console_sessions_times"),
        sa.CheckConstraint("(ended_at IS NULL) = (end_reason IS NULL)", name="console_sessions_end_complete"),
        sa.CheckConstraint(f"end_reason IS NULL OR {_in('end_reason', END_REASONS)}", name="console_sessions_end"),
        sa.CheckConstraint("char_length(client_address) <= 100", name="console_sessions_client_address"),
    )
    # a user's open sessions, ended together when the user is disabled or the password reset
    op.create_index(
        "console_sessions_open", "console_sessions", ["user_id"], postgresql_where=sa.text("ended_at IS NULL")
    )
    op.create_table(
        "console_sign_ins",
        sa.Column("sign_in_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("name_tried", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("client_address", sa.Text),
        sa.CheckConstraint("char_length(name_tried) <= 100", name="console_sign_ins_name_tried"),
        sa.CheckConstraint(_in("outcome", OUTCOMES), name="console_sign_ins_outcome"),
        sa.CheckConstraint("char_length(client_address) <= 100", name="console_sign_ins_client_address"),
    )
    op.create_index("console_sign_ins_at", "console_sign_ins", [sa.text("at DESC")])
    op.execute(
        """
        CREATE FUNCTION console_sign_ins_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'console_sign_ins is append-only: % refused', TG_OP USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER console_sign_ins_no_update_delete BEFORE UPDATE OR DELETE ON console_sign_ins "
        "FOR EACH ROW EXECUTE FUNCTION console_sign_ins_append_only()"
    )
    op.execute(
        "CREATE TRIGGER console_sign_ins_no_truncate BEFORE TRUNCATE ON console_sign_ins "
        "FOR EACH STATEMENT EXECUTE FUNCTION console_sign_ins_append_only()"
    )


def downgrade() -> None:
    op.drop_table("console_sign_ins")
    op.execute("DROP FUNCTION console_sign_ins_append_only()")
    op.drop_table("console_sessions")
    op.drop_table("console_users")
