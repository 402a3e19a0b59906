"""Usage tallies: what each charging transaction charged, per zone and local day, for the daily settlement.

The settlement reports a day's interval charges (count, energy, fen). Summing them from `usage_charges` reads
every charge of the day — 96 a meter, about a hundred million rows for a million accounts — so each
transaction that writes charges now also appends one `usage_tallies` row per zone and local day it charged, in
the same transaction; the day's figures are the sum of its tallies. Rows are only ever added, like the charges
they count. The charges stored before this migration are tallied here, one row per zone and local day.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_tallies",
        sa.Column("tally_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("zone", sa.Text, nullable=False),  # the accounts' time zone
        sa.Column("local_day", sa.Date, nullable=False),  # of the intervals' start, in that zone
        sa.Column("charges", sa.BigInteger, nullable=False),
        sa.Column("energy_wh", sa.BigInteger, nullable=False),
        sa.Column("charged_fen", sa.BigInteger, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.CheckConstraint("charges > 0 AND energy_wh >= 0 AND charged_fen >= 0", name="usage_tallies_amounts"),
    )
    op.create_index("ix_usage_tallies_zone_day", "usage_tallies", ["zone", "local_day"])
    op.execute(
        """
        CREATE FUNCTION usage_tallies_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'usage_tallies is append-only' USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER usage_tallies_no_update_delete BEFORE UPDATE OR DELETE ON usage_tallies "
        "FOR EACH ROW EXECUTE FUNCTION usage_tallies_append_only()"
    )
    op.execute(
        "CREATE TRIGGER usage_tallies_no_truncate BEFORE TRUNCATE ON usage_tallies "
        "FOR EACH STATEMENT EXECUTE FUNCTION usage_tallies_append_only()"
    )
    op.execute(
        """
        INSERT INTO usage_tallies (zone, local_day, charges, energy_wh, charged_fen)
        SELECT a.zone, (c.interval_start AT TIME ZONE a.zone)::date, count(*), sum(c.energy_wh), sum(c.amount_fen)
        FROM usage_charges c JOIN prepaid_accounts a USING (account_id)
        GROUP BY 1, 2
        ORDER BY 1, 2
        """
    )


def downgrade() -> None:
    op.drop_table("usage_tallies")
    op.execute("DROP FUNCTION usage_tallies_append_only()")
