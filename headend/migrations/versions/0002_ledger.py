"""Ledger: accounts with writer-kept balances, append-only double-entry postings.

`ledger_accounts` holds each account of the chart (see `prepay_engine.ledger`) with its floor and the
balance, debit and credit totals the writer keeps under a row lock; `version` goes up by one with every
batch that touches the account. `ledger_postings` is append-only (a trigger refuses UPDATE, DELETE and
TRUNCATE); each posting records the balances of both its accounts right after it, so an account's
history with running balance is one index range scan, and `seq` orders the postings of an account.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAX_BIGINT = 2**63 - 1
ACCOUNT_KINDS = (
    "customer_prepaid",
    "emergency_credit_receivable",
    "debt_receivable",
    "revenue",
    "cash_in_transit",
    "refunds_payable",
)
CREDIT_NORMAL_KINDS = ("customer_prepaid", "revenue", "refunds_payable")
POSTING_KINDS = (
    "usage",
    "top_up",
    "reversal",
    "refund",
    "emergency_credit_lend",
    "emergency_credit_repay",
    "debt_recovery",
    "adjustment",
)
OVERDRAW_KINDS = ("usage", "reversal", "emergency_credit_repay", "debt_recovery")
ID_REGEX = "^[!-~]{1,160}$"  # printable ASCII without spaces, as prepay_engine.ledger.ID_PATTERN
CUSTOMER_ACCOUNT_REGEX = "^customer:[A-Za-z0-9_-]{1,32}:(prepaid|emergency_credit|debt)$"
CHANNEL_ACCOUNT_REGEX = "^cash_in_transit:[a-z0-9_]{1,32}$"


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


NORMAL_SIDE_SQL = f"CASE WHEN {_in('kind', CREDIT_NORMAL_KINDS)} THEN 'credit' ELSE 'debit' END"
BALANCE_SQL = (
    f"CASE WHEN {_in('kind', CREDIT_NORMAL_KINDS)} THEN credits_fen - debits_fen ELSE debits_fen - credits_fen END"
)


def upgrade() -> None:
    op.create_table(
        "ledger_accounts",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("normal_side", sa.Text, sa.Computed(NORMAL_SIDE_SQL, persisted=True), nullable=False),
        # derived from the id so they can never disagree with it; NULL for ids outside the naming scheme
        sa.Column(
            "customer_id",
            sa.Text,
            sa.Computed(
                f"CASE WHEN account_id ~ '{CUSTOMER_ACCOUNT_REGEX}' THEN split_part(account_id, ':', 2) END",
                persisted=True,
            ),
        ),
        sa.Column(
            "channel",
            sa.Text,
            sa.Computed(
                f"CASE WHEN account_id ~ '{CHANNEL_ACCOUNT_REGEX}' THEN split_part(account_id, ':', 2) END",
                persisted=True,
            ),
        ),
        sa.Column("floor_fen", sa.BigInteger),
        sa.Column(
            "credit_limit_fen",
            sa.BigInteger,
            sa.Computed("CASE WHEN kind = 'customer_prepaid' THEN -floor_fen END", persisted=True),
        ),
        sa.Column("balance_fen", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("debits_fen", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("credits_fen", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(f"account_id ~ '{ID_REGEX}'", name="ledger_accounts_id_format"),
        sa.CheckConstraint(_in("kind", ACCOUNT_KINDS), name="ledger_accounts_kind"),
        sa.CheckConstraint(f"floor_fen BETWEEN -{MAX_BIGINT} AND 0", name="ledger_accounts_floor_range"),
        sa.CheckConstraint("debits_fen >= 0 AND credits_fen >= 0", name="ledger_accounts_totals"),
        sa.CheckConstraint(f"balance_fen = {BALANCE_SQL}", name="ledger_accounts_balance"),
        sa.CheckConstraint("version >= 0", name="ledger_accounts_version"),
        # only credit-normal accounts may be overdrawn (by a debit flagged overdraw); the others' floors are hard
        sa.CheckConstraint(
            f"{_in('kind', CREDIT_NORMAL_KINDS)} OR floor_fen IS NULL OR balance_fen >= floor_fen",
            name="ledger_accounts_hard_floor",
        ),
    )
    op.create_index("ix_ledger_accounts_customer_id", "ledger_accounts", ["customer_id"])

    op.create_table(
        "ledger_postings",
        sa.Column("posting_id", sa.Text, primary_key=True),
        sa.Column("debit_account_id", sa.Text, sa.ForeignKey("ledger_accounts.account_id"), nullable=False),
        sa.Column("credit_account_id", sa.Text, sa.ForeignKey("ledger_accounts.account_id"), nullable=False),
        sa.Column("amount_fen", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reference", sa.Text, nullable=False, server_default=""),
        sa.Column("reverses", sa.Text, sa.ForeignKey("ledger_postings.posting_id"), unique=True),
        sa.Column("overdraw", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("debit_balance_after_fen", sa.BigInteger, nullable=False),
        sa.Column("credit_balance_after_fen", sa.BigInteger, nullable=False),
        sa.Column("batch_id", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, sa.Identity(always=False), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(f"posting_id ~ '{ID_REGEX}'", name="ledger_postings_id_format"),
        sa.CheckConstraint("amount_fen > 0", name="ledger_postings_amount_positive"),
        sa.CheckConstraint("debit_account_id <> credit_account_id", name="ledger_postings_two_accounts"),
        sa.CheckConstraint(_in("kind", POSTING_KINDS), name="ledger_postings_kind"),
        sa.CheckConstraint("char_length(reference) <= 256", name="ledger_postings_reference_length"),
        sa.CheckConstraint(
            "(kind = 'reversal') = (reverses IS NOT NULL)", name="ledger_postings_reverses_iff_reversal"
        ),
        sa.CheckConstraint("reverses <> posting_id", name="ledger_postings_not_self_reversal"),
        sa.CheckConstraint(f"NOT overdraw OR {_in('kind', OVERDRAW_KINDS)}", name="ledger_postings_overdraw_kind"),
        sa.CheckConstraint("batch_id <= seq", name="ledger_postings_batch_id"),
    )
    op.create_index("ix_ledger_postings_debit_account_seq", "ledger_postings", ["debit_account_id", "seq"])
    op.create_index("ix_ledger_postings_credit_account_seq", "ledger_postings", ["credit_account_id", "seq"])
    op.create_index("ix_ledger_postings_batch_id", "ledger_postings", ["batch_id"])
    op.execute(
        """
        CREATE FUNCTION ledger_postings_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'ledger_postings is append-only: % refused', TG_OP
                USING ERRCODE = 'restrict_violation', HINT = 'post a reversal instead';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER ledger_postings_no_update_delete BEFORE UPDATE OR DELETE ON ledger_postings "
        "FOR EACH ROW EXECUTE FUNCTION ledger_postings_append_only()"
    )
    op.execute(
        "CREATE TRIGGER ledger_postings_no_truncate BEFORE TRUNCATE ON ledger_postings "
        "FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_append_only()"
    )


def downgrade() -> None:
    op.drop_table("ledger_postings")
    op.execute("DROP FUNCTION IF EXISTS ledger_postings_append_only()")
    op.drop_table("ledger_accounts")
