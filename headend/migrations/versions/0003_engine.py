"""Prepay engine: tariffs, policies, prepaid accounts and their meters, payments, outboxes, settlements.

`prepaid_accounts` holds each account's engine state (consumption curve, policy state, relay state) next to
the scheduling columns the runner selects on: `seen_until` (every reading at or before it was fed to the
charger), `due_at` (a reading beyond `seen_until` becomes chargeable then) and `wake_at` (a deferred
disconnect may be allowed then). `version` goes up with every change, for compare-and-set by the dispatcher.
`account_meters` is the meter history of an account: the meter in service has `removed_at` NULL, a
replacement closes the old row (final register) and opens the next (start register).
`tariff_revisions` and `policy_revisions` keep every definition ever stored; `tariffs` and `policies` point
at the one in force. `calendar_years` holds holiday schedules entered by operators for years the calendar
package does not know yet (or gets wrong). The outboxes (`notification_outbox`, `command_requests`) are
written in the same transaction as the postings that caused them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACCOUNT_ID_REGEX = "^[A-Za-z0-9_-]{1,32}$"  # prepay_engine.ledger.CUSTOMER_ID_PATTERN
SUPPLY_STATES = ("connected", "disconnected", "reconnect_allowed")
RELAY_ACTIONS = ("disconnect", "reconnect")
NOTIFICATION_KINDS = ("low_balance_warning", "zero_balance")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _now() -> sa.sql.elements.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    for kind in ("tariff", "policy"):
        table = "tariffs" if kind == "tariff" else "policies"
        op.create_table(
            f"{kind}_revisions",
            sa.Column(f"{kind}_code", sa.Text, nullable=False),
            sa.Column("revision", sa.Integer, nullable=False),
            sa.Column("definition", JSONB, nullable=False),
            sa.Column("stored_by", sa.Text, nullable=False),
            sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
            sa.PrimaryKeyConstraint(f"{kind}_code", "revision"),
            sa.CheckConstraint("revision >= 1", name=f"{kind}_revisions_revision"),
        )
        op.create_table(
            table,
            sa.Column(f"{kind}_code", sa.Text, primary_key=True),
            sa.Column("revision", sa.Integer, nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
            sa.ForeignKeyConstraint(
                [f"{kind}_code", "revision"], [f"{kind}_revisions.{kind}_code", f"{kind}_revisions.revision"]
            ),
        )

    op.create_table(
        "calendar_years",
        sa.Column("year", sa.Integer, primary_key=True),
        sa.Column("definition", JSONB, nullable=False),
        sa.Column("stored_by", sa.Text, nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.CheckConstraint("year BETWEEN 2000 AND 2200", name="calendar_years_year"),
    )

    op.create_table(
        "prepaid_accounts",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("tariff_code", sa.Text, sa.ForeignKey("tariffs.tariff_code"), nullable=False),
        sa.Column("policy_code", sa.Text, sa.ForeignKey("policies.policy_code"), nullable=False),
        sa.Column("emergency_credit_fen", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("debt_recovery_bps", sa.Integer, nullable=False, server_default="0"),
        sa.Column("zone", sa.Text, nullable=False),
        # policy and relay state
        sa.Column("protected", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("keep_supply", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("supply", sa.Text, nullable=False, server_default="connected"),
        sa.Column("pending_command", JSONB),
        sa.Column("commands_requested", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_observed_sequence", sa.Integer, nullable=False, server_default="0"),
        sa.Column("notices", JSONB, nullable=False, server_default="[]"),
        sa.Column("episode", sa.Integer, nullable=False, server_default="0"),
        sa.Column("in_episode", sa.Boolean, nullable=False, server_default=sa.false()),
        # consumption curve (prepay_engine.usage.UsageState)
        sa.Column("usage_meter_id", sa.String(32), nullable=False),
        sa.Column("anchor_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("anchor_register_wh", sa.BigInteger, nullable=False),
        sa.Column("charged_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("open_interval_meter_id", sa.String(32), nullable=False),
        sa.Column("carried_wh", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("consumed_wh", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cycle_usage_wh", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("charged_exact_yuan", sa.Numeric, nullable=False, server_default="0"),
        sa.Column("charged_fen", sa.BigInteger, nullable=False, server_default="0"),
        # scheduling
        sa.Column("meter_id", sa.String(32), nullable=False),  # the newest meter: readings arrive from it
        sa.Column("seen_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True)),
        sa.Column("wake_at", sa.DateTime(timezone=True)),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.CheckConstraint(f"account_id ~ '{ACCOUNT_ID_REGEX}'", name="prepaid_accounts_id_format"),
        sa.CheckConstraint("emergency_credit_fen >= 0", name="prepaid_accounts_emergency_credit"),
        sa.CheckConstraint("debt_recovery_bps BETWEEN 0 AND 10000", name="prepaid_accounts_debt_recovery"),
        sa.CheckConstraint(_in("supply", SUPPLY_STATES), name="prepaid_accounts_supply"),
        sa.CheckConstraint(
            "0 <= last_observed_sequence AND last_observed_sequence <= commands_requested",
            name="prepaid_accounts_sequences",
        ),
        sa.CheckConstraint("in_episode OR notices = '[]'::jsonb", name="prepaid_accounts_notices_in_episode"),
        sa.CheckConstraint(
            "charged_until <= anchor_ts AND anchor_ts < charged_until + interval '15 minutes'",
            name="prepaid_accounts_charged_until",
        ),
        sa.CheckConstraint(
            "0 <= carried_wh AND carried_wh <= consumed_wh AND cycle_usage_wh >= 0 AND charged_fen >= 0",
            name="prepaid_accounts_usage",
        ),
        sa.CheckConstraint("anchor_ts <= seen_until", name="prepaid_accounts_seen_until"),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.meter_id"]),
    )
    op.create_index("ix_prepaid_accounts_meter_id", "prepaid_accounts", ["meter_id"], unique=True)
    op.create_index(
        "ix_prepaid_accounts_due_at", "prepaid_accounts", ["due_at"], postgresql_where=sa.text("due_at IS NOT NULL")
    )
    op.create_index(
        "ix_prepaid_accounts_wake_at", "prepaid_accounts", ["wake_at"], postgresql_where=sa.text("wake_at IS NOT NULL")
    )

    op.create_table(
        "account_meters",
        sa.Column("account_id", sa.Text, sa.ForeignKey("prepaid_accounts.account_id"), nullable=False),
        sa.Column("meter_id", sa.String(32), sa.ForeignKey("meters.meter_id"), nullable=False),
        sa.Column("installed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("start_register_wh", sa.BigInteger, nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True)),
        sa.Column("final_register_wh", sa.BigInteger),
        sa.Column("multiplier", sa.Integer, nullable=False),
        sa.Column("register_max_wh", sa.BigInteger, nullable=False),
        sa.Column("register_step_wh", sa.BigInteger, nullable=False),
        sa.Column("recorded_by", sa.Text, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("account_id", "installed_at"),
        sa.CheckConstraint("start_register_wh >= 0", name="account_meters_start_register"),
        sa.CheckConstraint(
            "(removed_at IS NULL) = (final_register_wh IS NULL) AND (removed_at IS NULL OR removed_at > installed_at)",
            name="account_meters_removal",
        ),
        sa.CheckConstraint(
            "multiplier >= 1 AND register_max_wh > 0 AND register_step_wh > 0", name="account_meters_register"
        ),
    )
    # a meter serves one account at a time
    op.create_index(
        "ux_account_meters_meter_in_service",
        "account_meters",
        ["meter_id"],
        unique=True,
        postgresql_where=sa.text("removed_at IS NULL"),
    )

    op.create_table(
        "payments",
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("channel_txn_id", sa.Text, nullable=False),
        sa.Column("account_id", sa.Text, sa.ForeignKey("prepaid_accounts.account_id"), nullable=False),
        sa.Column("amount_fen", sa.BigInteger, nullable=False),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("posting_id", sa.Text, sa.ForeignKey("ledger_postings.posting_id"), nullable=False, unique=True),
        sa.Column("emergency_credit_repaid_fen", sa.BigInteger, nullable=False),
        sa.Column("debt_recovered_fen", sa.BigInteger, nullable=False),
        sa.Column("credited_fen", sa.BigInteger, nullable=False),
        sa.Column("received_by", sa.Text, nullable=False),
        sa.Column("reversed_at", sa.DateTime(timezone=True)),
        sa.Column("reversal_reference", sa.Text),
        sa.PrimaryKeyConstraint("channel", "channel_txn_id"),
        sa.CheckConstraint("amount_fen > 0", name="payments_amount"),
        sa.CheckConstraint(
            "emergency_credit_repaid_fen >= 0 AND debt_recovered_fen >= 0 AND credited_fen >= 0 "
            "AND emergency_credit_repaid_fen + debt_recovered_fen + credited_fen = amount_fen",
            name="payments_split",
        ),
    )
    op.create_index("ix_payments_account_paid_at", "payments", ["account_id", "paid_at"])

    # one row per (meter, 15-minute interval) charged: the primary key is what makes "charged once" hold; the
    # ledger gets one summary posting per account per runner batch (posting_id). No foreign keys: this is the
    # widest table of the engine and every row would pay two trigger calls; the runner writes it only together
    # with the account row it locks and the posting it references.
    op.create_table(
        "usage_charges",
        sa.Column("charge_id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("meter_id", sa.String(32), nullable=False),
        sa.Column("interval_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("energy_wh", sa.BigInteger, nullable=False),
        sa.Column("amount_yuan", sa.Numeric, nullable=False),  # exact, before rounding
        sa.Column("amount_fen", sa.BigInteger, nullable=False),  # with the account's rounding residue carried
        sa.Column("posting_id", sa.Text),  # NULL when the batch's charges came to 0 fen
        sa.CheckConstraint("energy_wh >= 0 AND amount_fen >= 0 AND amount_yuan >= 0", name="usage_charges_amounts"),
    )

    op.create_table(
        "usage_anomalies",
        sa.Column("account_id", sa.Text, sa.ForeignKey("prepaid_accounts.account_id"), nullable=False),
        sa.Column("meter_id", sa.String(32), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("account_id", "meter_id", "ts", "kind"),
    )

    op.create_table(
        "notification_outbox",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, sa.ForeignKey("prepaid_accounts.account_id"), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("episode", sa.Integer, nullable=False),
        sa.Column("threshold_fen", sa.BigInteger),
        sa.Column("balance_fen", sa.BigInteger, nullable=False),
        sa.Column("credit_fen", sa.BigInteger, nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reasons", JSONB, nullable=False),
        sa.Column("evidence", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(_in("kind", NOTIFICATION_KINDS), name="notification_outbox_kind"),
        sa.CheckConstraint("(kind = 'zero_balance') = (threshold_fen IS NULL)", name="notification_outbox_threshold"),
    )
    op.create_index(
        "ix_notification_outbox_unsent",
        "notification_outbox",
        ["created_at"],
        postgresql_where=sa.text("sent_at IS NULL"),
    )

    op.create_table(
        "command_requests",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, sa.ForeignKey("prepaid_accounts.account_id"), nullable=False),
        sa.Column("meter_id", sa.String(32), nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("supersedes", sa.Text, sa.ForeignKey("command_requests.request_id")),
        sa.Column("reasons", JSONB, nullable=False),
        sa.Column("evidence", JSONB, nullable=False),
        sa.Column("requested_by", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.UniqueConstraint("account_id", "sequence"),
        sa.CheckConstraint(_in("action", RELAY_ACTIONS), name="command_requests_action"),
        sa.CheckConstraint("sequence >= 1", name="command_requests_sequence"),
    )
    op.create_index("ix_command_requests_created_at", "command_requests", ["created_at"])

    op.create_table(
        "settlements",
        sa.Column("local_day", sa.Date, primary_key=True),
        sa.Column("zone", sa.Text, nullable=False),
        sa.Column("until_utc", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accounts", sa.Integer, nullable=False),
        sa.Column("charges", sa.BigInteger, nullable=False),
        sa.Column("charged_fen", sa.BigInteger, nullable=False),
        sa.Column("incomplete_accounts", sa.Integer, nullable=False),  # intervals of the day still uncharged
        sa.Column("arrears_accounts", sa.Integer, nullable=False),
        sa.Column("arrears_fen", sa.BigInteger, nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    )
    op.create_table(
        "settlement_arrears",
        sa.Column("local_day", sa.Date, sa.ForeignKey("settlements.local_day"), nullable=False),
        sa.Column("account_id", sa.Text, sa.ForeignKey("prepaid_accounts.account_id"), nullable=False),
        sa.Column("balance_fen", sa.BigInteger, nullable=False),
        sa.Column("emergency_credit_outstanding_fen", sa.BigInteger, nullable=False),
        sa.Column("debt_fen", sa.BigInteger, nullable=False),
        sa.Column("supply", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("local_day", "account_id"),
    )


def downgrade() -> None:
    for table in (
        "settlement_arrears",
        "settlements",
        "command_requests",
        "notification_outbox",
        "usage_anomalies",
        "usage_charges",
        "payments",
        "account_meters",
        "prepaid_accounts",
        "policies",
        "policy_revisions",
        "tariffs",
        "tariff_revisions",
        "calendar_years",
    ):
        op.drop_table(table)
