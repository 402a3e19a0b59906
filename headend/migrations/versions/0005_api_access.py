"""HTTP API access: the principals that hold bearer tokens, and the payment channels that sign their callbacks.

`api_principals` keeps one row per token holder: a name, a role, and the SHA-256 of its token (the token itself
is shown once, at creation, and never stored). A channel principal is named after its channel, so that a token
of channel `wechat` can read the payments of `wechat` only. `payment_channels` keeps each channel's HMAC secret in
clear (a verifier needs it; it is a shared secret, not a password) and, while a rotation is under way, the
previous secret and until when it is still accepted, so a channel can switch without downtime. The channel
`counter` is reserved for payments taken by operators and can't be registered for signed callbacks. Id checks
use an unbounded class plus `char_length`, as migration 0004 explains.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = ("operator", "field_staff", "channel", "admin")
PRINCIPAL_NAME_CHECK = "name ~ '^[a-z0-9_.-]+$' AND char_length(name) <= 64"
# prepay_engine.ledger.CHANNEL_PATTERN
CHANNEL_CHECK = "{column} ~ '^[a-z0-9_]+$' AND char_length({column}) <= 32"
COUNTER_CHANNEL = "counter"


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _now() -> sa.sql.elements.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "api_principals",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("token_sha256", BYTEA, nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(PRINCIPAL_NAME_CHECK, name="api_principals_name_format"),
        sa.CheckConstraint(_in("role", ROLES), name="api_principals_role"),
        sa.CheckConstraint(
            f"role <> 'channel' OR ({CHANNEL_CHECK.format(column='name')})", name="api_principals_channel_name"
        ),
        sa.CheckConstraint("octet_length(token_sha256) = 32", name="api_principals_token_sha256"),
    )
    op.create_table(
        "payment_channels",
        sa.Column("channel", sa.Text, primary_key=True),
        sa.Column("hmac_secret", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("rotated_at", sa.DateTime(timezone=True)),
        sa.Column("disabled_at", sa.DateTime(timezone=True)),
        sa.Column("previous_hmac_secret", sa.Text),
        sa.Column("previous_valid_until", sa.DateTime(timezone=True)),
        sa.CheckConstraint(CHANNEL_CHECK.format(column="channel"), name="payment_channels_channel_format"),
        sa.CheckConstraint(f"channel <> '{COUNTER_CHANNEL}'", name="payment_channels_counter_reserved"),
        sa.CheckConstraint("char_length(hmac_secret) BETWEEN 32 AND 256", name="payment_channels_secret"),
        sa.CheckConstraint(
            "(previous_hmac_secret IS NULL) = (previous_valid_until IS NULL)", name="payment_channels_previous"
        ),
        sa.CheckConstraint(
            "previous_hmac_secret IS NULL OR char_length(previous_hmac_secret) BETWEEN 32 AND 256",
            name="payment_channels_previous_secret",
        ),
    )


def downgrade() -> None:
    op.drop_table("payment_channels")
    op.drop_table("api_principals")
