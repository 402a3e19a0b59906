"""A durable signal that an account's meter has stored readings the engine has not read: a counter per meter.

`meter_register_state.stored_seq` goes up by one with every ingest transaction that stores readings of the meter
— readings older than its newest one included (a concentrator's backlog) — in that transaction.
`prepaid_accounts.seen_stored_seq` is the counter of the account's meter that its charging last read the meter's
readings under: an account whose meter's counter is higher has readings stored since, whenever they are stamped,
and the runner's sweeps and the settlement charge it. Unlike `reading_batches` (kept an hour, followed by each
runner in memory for a minute) the counter survives restarts and outages of any length, and costs one integer in
a row the writer already updates.

Both are added without rewriting a table: existing meters start at 1, accounts at 0, so the first sweep after the
upgrade looks at every account once and charges whatever was stored and never read.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("meter_register_state", sa.Column("stored_seq", sa.BigInteger, nullable=False, server_default="1"))
    op.add_column("prepaid_accounts", sa.Column("seen_stored_seq", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("prepaid_accounts", "seen_stored_seq")
    op.drop_column("meter_register_state", "stored_seq")
