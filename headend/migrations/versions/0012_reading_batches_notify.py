"""Notify the engine runners when an ingest batch is stored, instead of leaving them to poll for it.

A statement trigger on `reading_batches` sends `NOTIFY headend_readings_stored` in the ingest batch's
transaction; PostgreSQL delivers it when the batch commits (one notification per transaction, however many
rows). A runner that LISTENs wakes at once and charges the batch's accounts; its poll (HEADEND_ENGINE_POLL_S)
remains only as the longest pause, for a notification lost with a connection.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READINGS_STORED_CHANNEL = "headend_readings_stored"


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION reading_batches_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{READINGS_STORED_CHANNEL}', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER reading_batches_notify AFTER INSERT ON reading_batches "
        "FOR EACH STATEMENT EXECUTE FUNCTION reading_batches_notify()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER reading_batches_notify ON reading_batches")
    op.execute("DROP FUNCTION reading_batches_notify()")
