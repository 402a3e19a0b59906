"""Reading batches: which meters each committed ingest batch stored readings for.

The ingest writer appends one row per batch (the distinct meters of the readings it inserted) in the batch's
transaction; the engine runner reads the rows it has not seen and charges those meters' accounts at once,
instead of scanning every account for one with a new reading. Rows are pruned by the runner after an hour;
its periodic full sweep still finds anything a row could not tell it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reading_batches",
        sa.Column("batch_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("meter_ids", ARRAY(sa.Text), nullable=False),
    )
    op.create_index("ix_reading_batches_stored_at", "reading_batches", ["stored_at"])


def downgrade() -> None:
    op.drop_table("reading_batches")
