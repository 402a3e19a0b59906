"""Least privilege: what the services used to do as the schema's owner, done without owning anything.

The services connect as roles that own nothing (headend.db.grants). Two things needed more than a grant:

- Daily partitions of `readings` (plain PostgreSQL): attaching a partition needs ownership of the table, so ingest
  creates them through `create_readings_partition(day)`, a SECURITY DEFINER function owned by the schema's owner
  that creates exactly the partition of one UTC day within ten years of today and nothing else (its search path
  pinned). EXECUTE is revoked from PUBLIC and granted to the ingest role only.
- `payments` had no protection: a payment is now kept as received — a trigger refuses DELETE, TRUNCATE and any
  UPDATE but the one that marks it reversed (`reversed_at`, `reversal_reference`, set once), as the ledger's own
  append-only tables do. The grants allow the API no other UPDATE either; the trigger holds for the owner too.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARTITION_RANGE_DAYS = 3660  # partitions only within ten years of today: no role can spray the catalog with them


def upgrade() -> None:
    # search_path pinned, pg_temp last: a caller's temporary objects can't stand in for the catalog's
    op.execute(
        f"""
        CREATE FUNCTION create_readings_partition(day date) RETURNS boolean
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
        DECLARE
            name text := 'readings_p' || to_char(day, 'YYYYMMDD');
            first timestamptz := day::timestamp AT TIME ZONE 'UTC';
        BEGIN
            IF day IS NULL OR day NOT BETWEEN current_date - {PARTITION_RANGE_DAYS}
                                          AND current_date + {PARTITION_RANGE_DAYS} THEN
                RAISE EXCEPTION 'no partition of readings for day %: not within ten years of today', day
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF to_regclass(format('public.%I', name)) IS NOT NULL THEN
                RETURN false;
            END IF;
            EXECUTE format('CREATE TABLE public.%I PARTITION OF public.readings FOR VALUES FROM (%L) TO (%L)',
                           name, first, first + interval '1 day');
            RETURN true;
        END
        $$
        """
    )
    op.execute("REVOKE ALL ON FUNCTION create_readings_partition(date) FROM PUBLIC")
    op.execute(
        """
        CREATE FUNCTION payments_kept_as_received() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' AND OLD.reversed_at IS NULL AND NEW.reversed_at IS NOT NULL
               AND to_jsonb(NEW) - 'reversed_at' - 'reversal_reference'
                   = to_jsonb(OLD) - 'reversed_at' - 'reversal_reference' THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION 'payments are kept as received: % refused', TG_OP
                USING ERRCODE = 'restrict_violation', HINT = 'reverse the payment instead (marked reversed once)';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER payments_kept_as_received BEFORE UPDATE OR DELETE ON payments "
        "FOR EACH ROW EXECUTE FUNCTION payments_kept_as_received()"
    )
    op.execute(
        "CREATE TRIGGER payments_no_truncate BEFORE TRUNCATE ON payments "
        "FOR EACH STATEMENT EXECUTE FUNCTION payments_kept_as_received()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER payments_no_truncate ON payments")
    op.execute("DROP TRIGGER payments_kept_as_received ON payments")
    op.execute("DROP FUNCTION payments_kept_as_received()")
    op.execute("DROP FUNCTION create_readings_partition(date)")
