"""Re-reads (补抄) as tracked tasks, the first-pass collection kept when a day is re-read, Modbus framing.

`reread_tasks` holds each re-read an operator asked for: what it covers (one meter, a concentrator's meters, a list),
the interval of time, its state, and the load points missing when it started and recovered by it.
`reread_task_meters` holds the same per meter, with how the meter was asked (polled now, DL/T 645 daily frozen data,
an MQTT `read_readings` command to the meter or to its concentrator).

`collection_first_pass` keeps, per local day and meter, the load points read before the day's first re-read began
(`collection_first_pass_days` says which days were so frozen): the collection report's first-pass success, beside its
success after re-reads, which is what is stored now.

`meters.framing` says how a Modbus meter's requests travel: `tcp` (Modbus TCP, MBAP header: the meter or a Modbus
gateway that converts) or `rtu` (RTU frames with their CRC through a transparent serial-to-TCP gateway); NULL for
other protocols, which the import fills with `tcp` for Modbus meters when the column is left empty.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# headend.reread.tasks: TaskState, MeterState, RereadPath, Scope
TASK_STATES = ("pending", "running", "done", "failed")
METER_STATES = ("pending", "requested", "recovered", "partial", "nothing_missing", "failed")
PATHS = ("poll", "dlt645_frozen", "mqtt_meter", "mqtt_concentrator")
SCOPES = ("meter", "concentrator", "list")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(map(repr, values))})"


def upgrade() -> None:
    op.add_column("meters", sa.Column("framing", sa.Text))
    op.create_check_constraint(
        "meters_framing", "meters", "framing IS NULL OR (protocol = 'modbus' AND framing IN ('tcp', 'rtu'))"
    )

    op.create_table(
        "reread_tasks",
        sa.Column("task_id", sa.String(64), primary_key=True),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("scope_ids", sa.ARRAY(sa.Text), nullable=False),
        sa.Column("from_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("to_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="pending"),
        sa.Column("requested_by", sa.Text, nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("meters_total", sa.Integer, nullable=False, server_default="0"),
        sa.Column("intervals_missing", sa.Integer, nullable=False, server_default="0"),
        sa.Column("intervals_recovered", sa.Integer, nullable=False, server_default="0"),
        sa.Column("detail", sa.Text),
        sa.CheckConstraint(_in("scope", SCOPES), name="reread_tasks_scope"),
        sa.CheckConstraint(_in("state", TASK_STATES), name="reread_tasks_state"),
        sa.CheckConstraint("to_at > from_at", name="reread_tasks_range"),
        sa.CheckConstraint("cardinality(scope_ids) >= 1", name="reread_tasks_scope_ids"),
        sa.CheckConstraint(
            "meters_total >= 0 AND intervals_missing >= 0 AND intervals_recovered BETWEEN 0 AND intervals_missing",
            name="reread_tasks_counts",
        ),
        sa.CheckConstraint("char_length(detail) <= 1000", name="reread_tasks_detail"),
    )
    op.create_index(
        "reread_tasks_open", "reread_tasks", ["requested_at"], postgresql_where=sa.text("state = 'pending'")
    )
    op.create_index("reread_tasks_requested_at", "reread_tasks", [sa.text("requested_at DESC")])
    op.create_table(
        "reread_task_meters",
        sa.Column("task_id", sa.String(64), sa.ForeignKey("reread_tasks.task_id"), primary_key=True),
        sa.Column("meter_id", sa.String(32), sa.ForeignKey("meters.meter_id"), primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="pending"),
        sa.Column("intervals_missing", sa.Integer, nullable=False, server_default="0"),
        sa.Column("intervals_recovered", sa.Integer, nullable=False, server_default="0"),
        sa.Column("detail", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(_in("path", PATHS), name="reread_task_meters_path"),
        sa.CheckConstraint(_in("state", METER_STATES), name="reread_task_meters_state"),
        sa.CheckConstraint(
            "intervals_missing >= 0 AND intervals_recovered BETWEEN 0 AND intervals_missing",
            name="reread_task_meters_counts",
        ),
        sa.CheckConstraint("char_length(detail) <= 1000", name="reread_task_meters_detail"),
    )

    op.create_table(
        "collection_first_pass_days",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("frozen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("task_id", sa.String(64), sa.ForeignKey("reread_tasks.task_id"), nullable=False),
    )
    op.create_table(
        "collection_first_pass",
        sa.Column("day", sa.Date, sa.ForeignKey("collection_first_pass_days.day"), primary_key=True),
        sa.Column("meter_id", sa.String(32), primary_key=True),
        sa.Column("intervals_read", sa.SmallInteger, nullable=False),
        sa.CheckConstraint("intervals_read BETWEEN 1 AND 100", name="collection_first_pass_intervals"),
    )


def downgrade() -> None:
    op.drop_table("collection_first_pass")
    op.drop_table("collection_first_pass_days")
    op.drop_table("reread_task_meters")
    op.drop_table("reread_tasks")
    op.drop_constraint("meters_framing", "meters", type_="check")
    op.drop_column("meters", "framing")
