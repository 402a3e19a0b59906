"""Settlements per local day and time zone, with the day's own figures and arrears as of the day's end.

`settlements` is keyed by (local_day, zone); `charges`/`energy_wh`/`charged_fen` are the charges of the day's
intervals (whenever charged), `run_charges`/`run_charged_fen` what the settlement run itself charged. BRIN
indexes on `usage_charges.interval_start` and `ledger_postings.at` (both written roughly in time order) let the
day's figures and the balances at its end be computed without a scan of everything, at almost no write cost.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("settlement_arrears_local_day_fkey", "settlement_arrears", type_="foreignkey")
    op.drop_constraint("settlement_arrears_pkey", "settlement_arrears", type_="primary")
    op.drop_constraint("settlements_pkey", "settlements", type_="primary")
    op.add_column("settlements", sa.Column("start_utc", sa.DateTime(timezone=True)))
    op.execute("UPDATE settlements SET start_utc = until_utc - interval '1 day'")
    op.alter_column("settlements", "start_utc", nullable=False)
    for column in ("energy_wh", "run_charges", "run_charged_fen"):
        op.add_column("settlements", sa.Column(column, sa.BigInteger, nullable=False, server_default="0"))
    op.create_primary_key("settlements_pkey", "settlements", ["local_day", "zone"])
    op.create_check_constraint("settlements_day", "settlements", "start_utc < until_utc")
    op.add_column("settlement_arrears", sa.Column("zone", sa.Text))
    op.execute("UPDATE settlement_arrears a SET zone = s.zone FROM settlements s WHERE s.local_day = a.local_day")
    op.alter_column("settlement_arrears", "zone", nullable=False)
    op.create_primary_key("settlement_arrears_pkey", "settlement_arrears", ["local_day", "zone", "account_id"])
    op.create_foreign_key(
        "settlement_arrears_settlement_fkey",
        "settlement_arrears",
        "settlements",
        ["local_day", "zone"],
        ["local_day", "zone"],
    )
    op.create_index("brin_usage_charges_interval_start", "usage_charges", ["interval_start"], postgresql_using="brin")
    op.create_index("brin_ledger_postings_at", "ledger_postings", ["at"], postgresql_using="brin")


def downgrade() -> None:
    op.drop_index("brin_ledger_postings_at", table_name="ledger_postings")
    op.drop_index("brin_usage_charges_interval_start", table_name="usage_charges")
    op.drop_constraint("settlement_arrears_settlement_fkey", "settlement_arrears", type_="foreignkey")
    op.drop_constraint("settlement_arrears_pkey", "settlement_arrears", type_="primary")
    op.drop_column("settlement_arrears", "zone")
    op.drop_constraint("settlements_day", "settlements", type_="check")
    op.drop_constraint("settlements_pkey", "settlements", type_="primary")
    # a day settled in several zones keeps one row
    op.execute("DELETE FROM settlements s USING settlements t WHERE s.local_day = t.local_day AND s.zone > t.zone")
    for column in ("run_charged_fen", "run_charges", "energy_wh", "start_utc"):
        op.drop_column("settlements", column)
    op.create_primary_key("settlements_pkey", "settlements", ["local_day"])
    op.execute(
        "DELETE FROM settlement_arrears a USING settlement_arrears b "
        "WHERE a.local_day = b.local_day AND a.account_id = b.account_id AND a.ctid > b.ctid"
    )
    op.create_primary_key("settlement_arrears_pkey", "settlement_arrears", ["local_day", "account_id"])
    op.create_foreign_key(
        "settlement_arrears_local_day_fkey", "settlement_arrears", "settlements", ["local_day"], ["local_day"]
    )
