"""Device credentials: the broker accounts of meters and concentrators, as hashes, with who issued and ended them.

A meter's or concentrator's broker username is its id; `device_credentials` keeps one row per password ever issued
to a device: the device (a meter or a concentrator, by foreign key, exactly one of the two), the password's hash in
the `$7$` PBKDF2-SHA512 format Mosquitto's password file holds (the password itself is shown once, at issue, and
never stored), who issued it and when, and — once it is replaced by a rotation or revoked — when, by whom and why.
A device has at most one live (not ended) credential: a unique index on the username of the live rows, which also
keeps a meter and a concentrator of the same id from both holding one. A credential is never deleted and never
changed except to end it once (a trigger), so the table is the device's credential history.

`headend broker-config` writes the live credentials of registered devices into the broker's password file.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

END_REASONS = ("rotated", "revoked")  # headend.broker.store.EndReason
# headend.broker.passwords: $7$<iterations>$<base64 of 12 bytes>$<base64 of 64 bytes>
HASH_CHECK = r"password_hash ~ '^\$7\$[1-9][0-9]{0,8}\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==$'"
ACTOR_CHECK = "char_length({column}) BETWEEN 1 AND 200"


def upgrade() -> None:
    op.create_table(
        "device_credentials",
        sa.Column("credential_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("meter_id", sa.String(32), sa.ForeignKey("meters.meter_id")),
        sa.Column("concentrator_id", sa.String(32), sa.ForeignKey("concentrators.concentrator_id")),
        sa.Column("username", sa.Text, sa.Computed("coalesce(meter_id, concentrator_id)", persisted=True)),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("issued_by", sa.Text, nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("ended_by", sa.Text),
        sa.Column("end_reason", sa.Text),
        sa.CheckConstraint("num_nonnulls(meter_id, concentrator_id) = 1", name="device_credentials_one_device"),
        sa.CheckConstraint(HASH_CHECK, name="device_credentials_hash"),
        sa.CheckConstraint(ACTOR_CHECK.format(column="issued_by"), name="device_credentials_issued_by"),
        sa.CheckConstraint(
            "num_nulls(ended_at, ended_by, end_reason) IN (0, 3)", name="device_credentials_end_complete"
        ),
        sa.CheckConstraint(
            f"end_reason IS NULL OR end_reason IN ({', '.join(repr(r) for r in END_REASONS)})",
            name="device_credentials_end_reason",
        ),
        sa.CheckConstraint(
            f"ended_by IS NULL OR ({ACTOR_CHECK.format(column='ended_by')})", name="device_credentials_ended_by"
        ),
        sa.CheckConstraint("ended_at IS NULL OR ended_at >= issued_at", name="device_credentials_end_after_issue"),
    )
    op.create_index(
        "device_credentials_live",
        "device_credentials",
        ["username"],
        unique=True,
        postgresql_where=sa.text("ended_at IS NULL"),
    )
    op.execute(
        """
        CREATE FUNCTION device_credentials_end_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' AND OLD.ended_at IS NULL AND NEW.ended_at IS NOT NULL
               AND (NEW.credential_id, NEW.meter_id, NEW.concentrator_id, NEW.password_hash, NEW.issued_at,
                    NEW.issued_by)
                   IS NOT DISTINCT FROM (OLD.credential_id, OLD.meter_id, OLD.concentrator_id, OLD.password_hash,
                                         OLD.issued_at, OLD.issued_by) THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION 'device_credentials: % refused (a credential is only ever ended, once)', TG_OP
                USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER device_credentials_end_only BEFORE UPDATE OR DELETE ON device_credentials "
        "FOR EACH ROW EXECUTE FUNCTION device_credentials_end_only()"
    )
    op.execute(
        "CREATE TRIGGER device_credentials_no_truncate BEFORE TRUNCATE ON device_credentials "
        "FOR EACH STATEMENT EXECUTE FUNCTION device_credentials_end_only()"
    )


def downgrade() -> None:
    op.drop_table("device_credentials")
    op.execute("DROP FUNCTION device_credentials_end_only()")
