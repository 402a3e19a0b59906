"""An index for listing commands newest first (the API's `GET /v1/commands` without a meter or account filter).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_commands_issued_at_id", "commands", ["issued_at", "command_id"])


def downgrade() -> None:
    op.drop_index("ix_commands_issued_at_id", table_name="commands")
