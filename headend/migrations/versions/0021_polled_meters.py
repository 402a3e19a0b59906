"""Polled meters: how the head-end reaches a Modbus or DL/T 645-2007 meter, and why a poll failed.

`meters` gains the protocol `dlt645` beside `mqtt` and `modbus`, and where a polled meter is reached: `endpoint`
(`host:port` of the meter or of its serial-to-TCP gateway), `bus` (the serial bus behind the gateway; none: one bus per
endpoint), `unit_id` (Modbus, 1-247) or `address` (DL/T 645, the 12 digits of the nameplate). A Modbus meter has an
endpoint and a unit id, a DL/T 645 meter an endpoint and an address, an MQTT meter none of the four; no two meters
answer to the same unit id or address on one bus. Rows of `modbus` meters registered before these columns existed
are not checked (the constraint is NOT VALID) until they are next written: they cannot be polled until they get an
endpoint and a unit id.

`poll_failures` keeps every failed poll with its kind, reason and the requests it took (0: not tried, its bus
unreachable) (what the collection report says about a meter not
read): appended by the poller, never changed.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# headend.poll.failures.FailureKind
FAILURE_KINDS = ("timeout", "no_connection", "exception_response", "bad_frame", "meter_error", "bad_value")
PROTOCOLS = ("mqtt", "modbus", "dlt645")
REACHED = """
(protocol = 'mqtt' AND endpoint IS NULL AND bus IS NULL AND unit_id IS NULL AND address IS NULL)
OR (protocol = 'modbus' AND endpoint IS NOT NULL AND unit_id IS NOT NULL AND address IS NULL)
OR (protocol = 'dlt645' AND endpoint IS NOT NULL AND address IS NOT NULL AND unit_id IS NULL)
"""
# host:port, the host a name or an IPv4 address or a bracketed IPv6 address, the port 1-65535
ENDPOINT_CHECK = r"endpoint ~ '^([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}$'"


def upgrade() -> None:
    op.drop_constraint("meters_protocol", "meters", type_="check")
    op.create_check_constraint("meters_protocol", "meters", f"protocol IN ({', '.join(map(repr, PROTOCOLS))})")
    op.add_column("meters", sa.Column("endpoint", sa.Text))
    op.add_column("meters", sa.Column("bus", sa.Text))
    op.add_column("meters", sa.Column("unit_id", sa.SmallInteger))
    op.add_column("meters", sa.Column("address", sa.String(12)))
    op.create_check_constraint("meters_endpoint", "meters", ENDPOINT_CHECK)
    op.create_check_constraint("meters_bus", "meters", "char_length(bus) BETWEEN 1 AND 64")
    op.create_check_constraint("meters_unit_id", "meters", "unit_id BETWEEN 1 AND 247")
    op.create_check_constraint("meters_address", "meters", "address ~ '^[0-9]{12}$'")
    op.execute(f"ALTER TABLE meters ADD CONSTRAINT meters_reached CHECK ({REACHED}) NOT VALID")
    op.execute(
        "CREATE UNIQUE INDEX meters_modbus_unit ON meters (endpoint, coalesce(bus, ''), unit_id) "
        "WHERE unit_id IS NOT NULL"
    )
    op.execute(
        "CREATE UNIQUE INDEX meters_dlt645_address ON meters (endpoint, coalesce(bus, ''), address) "
        "WHERE address IS NOT NULL"
    )
    op.execute("CREATE INDEX meters_polled ON meters (endpoint) WHERE endpoint IS NOT NULL")

    op.create_table(
        "poll_failures",
        sa.Column("poll_failure_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("meter_id", sa.String(32), sa.ForeignKey("meters.meter_id"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("attempts", sa.SmallInteger, nullable=False),
        sa.CheckConstraint(f"kind IN ({', '.join(map(repr, FAILURE_KINDS))})", name="poll_failures_kind"),
        sa.CheckConstraint("char_length(reason) BETWEEN 1 AND 1000", name="poll_failures_reason"),
        sa.CheckConstraint("attempts >= 0", name="poll_failures_attempts"),
    )
    op.create_index("poll_failures_meter_at", "poll_failures", ["meter_id", sa.text("at DESC")])
    op.create_index("poll_failures_at", "poll_failures", ["at"])


def downgrade() -> None:
    op.drop_table("poll_failures")
    op.execute("DROP INDEX meters_polled")
    op.execute("DROP INDEX meters_dlt645_address")
    op.execute("DROP INDEX meters_modbus_unit")
    for name in ("meters_reached", "meters_address", "meters_unit_id", "meters_bus", "meters_endpoint"):
        op.drop_constraint(name, "meters", type_="check")
    for column in ("address", "unit_id", "bus", "endpoint"):
        op.drop_column("meters", column)
    op.drop_constraint("meters_protocol", "meters", type_="check")
    op.create_check_constraint("meters_protocol", "meters", "protocol IN ('mqtt', 'modbus')")
