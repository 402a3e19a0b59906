"""Id checks without bounded regex repetition (ledger, prepaid accounts, meters).

PostgreSQL's regex engine spends ~16 µs matching `^[!-~]{1,160}$` (bounded repetition is expanded), which
halved the rate of COPY into `ledger_postings`; an unbounded class plus `char_length` accepts exactly the same
ids in under 1 µs. The same holds for the 32-character ids of meters and prepaid accounts (checked on every
update of `prepaid_accounts`). The computed `customer_id`/`channel` columns of `ledger_accounts` are rebuilt
the same way (PostgreSQL 15 can't change a generation expression in place: they are dropped and added back).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID_CHECK = "{column} ~ '^[!-~]+$' AND char_length({column}) <= 160"  # prepay_engine.ledger.ID_PATTERN
# meter ids (protocols.readings.is_valid_id) and prepaid account ids (prepay_engine.ledger.CUSTOMER_ID_PATTERN)
DEVICE_ID_CHECK = "{column} ~ '^[A-Za-z0-9_-]+$' AND char_length({column}) <= 32"
CUSTOMER_ID_SQL = (
    "CASE WHEN account_id ~ '^customer:[A-Za-z0-9_-]+:(prepaid|emergency_credit|debt)$' "
    "AND char_length(split_part(account_id, ':', 2)) <= 32 THEN split_part(account_id, ':', 2) END"
)
CHANNEL_SQL = (
    "CASE WHEN account_id ~ '^cash_in_transit:[a-z0-9_]+$' "
    "AND char_length(split_part(account_id, ':', 2)) <= 32 THEN split_part(account_id, ':', 2) END"
)
OLD_ID_CHECK = "{column} ~ '^[!-~]{{1,160}}$'"
OLD_DEVICE_ID_CHECK = "{column} ~ '^[A-Za-z0-9_-]{{1,32}}$'"
OLD_CUSTOMER_ID_SQL = (
    "CASE WHEN account_id ~ '^customer:[A-Za-z0-9_-]{1,32}:(prepaid|emergency_credit|debt)$' "
    "THEN split_part(account_id, ':', 2) END"
)
OLD_CHANNEL_SQL = "CASE WHEN account_id ~ '^cash_in_transit:[a-z0-9_]{1,32}$' THEN split_part(account_id, ':', 2) END"


def _replace(id_check: str, device_id_check: str, customer_id_sql: str, channel_sql: str) -> None:
    checks = (
        ("ledger_accounts", "account_id", id_check),
        ("ledger_postings", "posting_id", id_check),
        ("prepaid_accounts", "account_id", device_id_check),
        ("meters", "meter_id", device_id_check),
    )
    for table, column, check in checks:
        op.drop_constraint(f"{table}_id_format", table, type_="check")
        op.create_check_constraint(f"{table}_id_format", table, check.format(column=column))
    op.drop_index("ix_ledger_accounts_customer_id", table_name="ledger_accounts")
    op.drop_column("ledger_accounts", "customer_id")
    op.drop_column("ledger_accounts", "channel")
    op.add_column("ledger_accounts", sa.Column("customer_id", sa.Text, sa.Computed(customer_id_sql, persisted=True)))
    op.add_column("ledger_accounts", sa.Column("channel", sa.Text, sa.Computed(channel_sql, persisted=True)))
    op.create_index("ix_ledger_accounts_customer_id", "ledger_accounts", ["customer_id"])


def upgrade() -> None:
    _replace(ID_CHECK, DEVICE_ID_CHECK, CUSTOMER_ID_SQL, CHANNEL_SQL)


def downgrade() -> None:
    _replace(OLD_ID_CHECK, OLD_DEVICE_ID_CHECK, OLD_CUSTOMER_ID_SQL, OLD_CHANNEL_SQL)
