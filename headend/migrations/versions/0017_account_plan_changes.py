"""Account plan changes: an account's tariff or disconnect policy changed from a stated instant, kept as history.

`account_plan_changes` records every change an operator asks for: the account, what changes (`tariff` or
`policy`), from when (`effective_at`, on the 15-minute grid), the code before and after, who asked and when.
`account_plan_change_cancellations` records the withdrawal of a change not yet in force. Both are only ever
appended to (a trigger refuses updates, deletes and truncation), so they are the account's plan history.

`prepaid_accounts` gets, per kind, the instant of the account's earliest change not yet applied
(`next_tariff_change_at`, `next_policy_change_at`; NULL when there is none). The engine reads an account's changes
only when it has one, so charging every other account is as before. A tariff change is applied when charging
reaches its instant, so none lies before `charged_until`; a policy change is applied at the first decision from its
instant, and the account is woken for it: `wake_at` is never after `next_policy_change_at`.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PLAN_CHANGE_KINDS = ("tariff", "policy")  # headend.engine.plan_changes.PlanChangeKind
GRID_S = 900  # prepay_engine.usage.INTERVAL


def upgrade() -> None:
    op.create_table(
        "account_plan_changes",
        sa.Column("change_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("account_id", sa.Text, sa.ForeignKey("prepaid_accounts.account_id"), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("old_code", sa.Text, nullable=False),
        sa.Column("new_code", sa.Text, nullable=False),
        sa.Column("requested_by", sa.Text, nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            f"kind IN ({', '.join(repr(k) for k in PLAN_CHANGE_KINDS)})", name="account_plan_changes_kind"
        ),
        sa.CheckConstraint(f"extract(epoch FROM effective_at) % {GRID_S} = 0", name="account_plan_changes_on_grid"),
        sa.CheckConstraint("old_code <> new_code", name="account_plan_changes_change"),
    )
    op.create_index("ix_account_plan_changes_account", "account_plan_changes", ["account_id", "kind", "effective_at"])
    op.create_table(
        "account_plan_change_cancellations",
        sa.Column("change_id", sa.BigInteger, sa.ForeignKey("account_plan_changes.change_id"), primary_key=True),
        sa.Column("cancelled_by", sa.Text, nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(
        """
        CREATE FUNCTION account_plan_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    for table in ("account_plan_changes", "account_plan_change_cancellations"):
        op.execute(
            f"CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION account_plan_history_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION account_plan_history_append_only()"
        )

    op.add_column("prepaid_accounts", sa.Column("next_tariff_change_at", sa.DateTime(timezone=True)))
    op.add_column("prepaid_accounts", sa.Column("next_policy_change_at", sa.DateTime(timezone=True)))
    op.create_check_constraint(
        "prepaid_accounts_tariff_change_ahead",
        "prepaid_accounts",
        "next_tariff_change_at IS NULL OR next_tariff_change_at >= charged_until",
    )
    op.create_check_constraint(
        "prepaid_accounts_policy_change_wakes",
        "prepaid_accounts",
        "next_policy_change_at IS NULL OR (wake_at IS NOT NULL AND wake_at <= next_policy_change_at)",
    )


def downgrade() -> None:
    op.drop_constraint("prepaid_accounts_policy_change_wakes", "prepaid_accounts")
    op.drop_constraint("prepaid_accounts_tariff_change_ahead", "prepaid_accounts")
    op.drop_column("prepaid_accounts", "next_policy_change_at")
    op.drop_column("prepaid_accounts", "next_tariff_change_at")
    op.drop_table("account_plan_change_cancellations")
    op.drop_table("account_plan_changes")
    op.execute("DROP FUNCTION account_plan_history_append_only()")
