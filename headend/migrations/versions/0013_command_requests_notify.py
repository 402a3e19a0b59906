"""Notify the dispatchers when command requests are written, instead of leaving them to poll for them.

A statement trigger on `command_requests` sends `NOTIFY headend_command_requests` in the writing transaction
(the engine's batch, a payment's reconnect, an operator's command); PostgreSQL delivers it at commit, once per
transaction. A dispatcher that LISTENs wakes at once; its poll (HEADEND_DISPATCH_POLL_S) remains the longest
pause, for retries, expiries and a notification lost with a connection.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMMAND_REQUESTS_CHANNEL = "headend_command_requests"


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION command_requests_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{COMMAND_REQUESTS_CHANNEL}', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER command_requests_notify AFTER INSERT ON command_requests "
        "FOR EACH STATEMENT EXECUTE FUNCTION command_requests_notify()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER command_requests_notify ON command_requests")
    op.execute("DROP FUNCTION command_requests_notify()")
