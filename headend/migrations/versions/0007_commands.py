"""Relay commands: their lifecycle, an append-only audit trail, relay alarms and the last known relay of each meter.

`commands` holds one row per command the dispatcher took on: the engine's (id = the outbox's request id) and
operators' relay reads. `command_audit` is append-only (a trigger refuses UPDATE, DELETE and TRUNCATE): every
transition with who or what caused it and the inputs it was judged on, written before a command is sent.
`relay_alarms` are raised when a relay is not where it should be, `meter_relays` keeps the last position each
meter reported. `meters.reconnect_mode` says how the meter model reconnects (direct, or 合闸允许 "allowed").

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATES = ("created", "held", "sent", "acknowledged", "confirmed", "failed", "expired", "superseded", "cancelled")
OPEN_STATES = ("created", "held", "sent", "acknowledged")
ACTIONS = ("disconnect", "reconnect", "read_relay")
ALARMS = ("relay_mismatch", "command_failed", "unexpected_relay_change")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _now() -> sa.sql.elements.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.add_column("meters", sa.Column("reconnect_mode", sa.Text, nullable=False, server_default="direct"))
    op.create_check_constraint("meters_reconnect_mode", "meters", "reconnect_mode IN ('direct', 'allowed')")

    op.create_table(
        "commands",
        sa.Column("command_id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, sa.ForeignKey("prepaid_accounts.account_id")),
        sa.Column("sequence", sa.Integer),  # the account's command sequence (engine commands)
        sa.Column("meter_id", sa.String(32), sa.ForeignKey("meters.meter_id"), nullable=False),
        sa.Column("concentrator_id", sa.String(32)),  # sent through it; NULL: to the meter directly
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("reconnect_mode", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("relay", sa.Text),  # the position the meter reported
        sa.Column("superseded_by", sa.Text),
        sa.Column("requested_by", sa.Text, nullable=False),
        sa.Column("approved_by", sa.Text),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.CheckConstraint(_in("state", STATES), name="commands_state"),
        sa.CheckConstraint(_in("action", ACTIONS), name="commands_action"),
        sa.CheckConstraint("reconnect_mode IN ('direct', 'allowed')", name="commands_reconnect_mode"),
        sa.CheckConstraint("expires_at > issued_at", name="commands_expiry"),
        sa.CheckConstraint("attempts >= 0", name="commands_attempts"),
        sa.CheckConstraint("(account_id IS NULL) = (sequence IS NULL)", name="commands_account_sequence"),
        sa.CheckConstraint(f"({_in('state', OPEN_STATES)}) = (finished_at IS NULL)", name="commands_finished"),
        sa.CheckConstraint("relay IS NULL OR relay IN ('open', 'closed')", name="commands_relay"),
    )
    op.create_index(
        "ix_commands_due",
        "commands",
        ["next_attempt_at"],
        postgresql_where=sa.text("state IN ('created', 'sent', 'acknowledged')"),
    )
    op.create_index("ix_commands_meter_issued", "commands", ["meter_id", "issued_at"])
    op.create_index("ix_commands_account_sequence", "commands", ["account_id", "sequence"])
    op.create_index(
        "ix_commands_disconnects_sent", "commands", ["sent_at"], postgresql_where=sa.text("action = 'disconnect'")
    )

    op.create_table(
        "command_audit",
        sa.Column("seq", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("command_id", sa.Text, sa.ForeignKey("commands.command_id"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("from_state", sa.Text),
        sa.Column("to_state", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("inputs", JSONB, nullable=False, server_default="{}"),
        sa.CheckConstraint(_in("to_state", STATES), name="command_audit_to_state"),
    )
    op.create_index("ix_command_audit_command", "command_audit", ["command_id", "seq"])
    op.execute(
        """
        CREATE FUNCTION command_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'command_audit is append-only: % refused', TG_OP USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER command_audit_no_update_delete BEFORE UPDATE OR DELETE ON command_audit "
        "FOR EACH ROW EXECUTE FUNCTION command_audit_append_only()"
    )
    op.execute(
        "CREATE TRIGGER command_audit_no_truncate BEFORE TRUNCATE ON command_audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION command_audit_append_only()"
    )

    op.create_table(
        "relay_alarms",
        sa.Column("alarm_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("meter_id", sa.String(32), sa.ForeignKey("meters.meter_id"), nullable=False),
        sa.Column("command_id", sa.Text, sa.ForeignKey("commands.command_id")),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("relay", sa.Text, nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.Column("resolved_by", sa.Text),
        sa.CheckConstraint(_in("kind", ALARMS), name="relay_alarms_kind"),
        sa.CheckConstraint("(resolved_at IS NULL) = (resolved_by IS NULL)", name="relay_alarms_resolution"),
    )
    op.create_index(
        "ix_relay_alarms_open", "relay_alarms", ["meter_id"], postgresql_where=sa.text("resolved_at IS NULL")
    )

    op.create_table(
        "meter_relays",
        sa.Column("meter_id", sa.String(32), sa.ForeignKey("meters.meter_id"), primary_key=True),
        sa.Column("relay", sa.Text, nullable=False),
        sa.Column("ready_for_reconnection", sa.Boolean, nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),  # the meter's clock
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text, nullable=False),  # a command id, or the cause of a spontaneous change
        sa.CheckConstraint("relay IN ('open', 'closed')", name="meter_relays_relay"),
    )


def downgrade() -> None:
    op.drop_table("meter_relays")
    op.drop_table("relay_alarms")
    op.drop_table("command_audit")
    op.execute("DROP FUNCTION IF EXISTS command_audit_append_only()")
    op.drop_table("commands")
    op.drop_constraint("meters_reconnect_mode", "meters", type_="check")
    op.drop_column("meters", "reconnect_mode")
