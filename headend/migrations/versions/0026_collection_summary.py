"""The collection summary: per local day and group, what the collection API answers without scanning meter-days.

`meters.area` is the meter's transformer area (台区), optional, as the registry import gives it.

`collection_summary` holds, for each local day summarized, the counts of the whole fleet and of each region, area,
concentrator and protocol (`grouping`, `key`; a NULL key: meters without one): meters expected, read and complete now,
and read and complete at the day's first pass (as frozen before its first re-read; the same as now for a day never
re-read). `collection_summary_meters` holds, for the same days, each expected meter that was not read completely (no
reading, or some of the 96 load points), with its groups and the load points it has: the drill-down lists.
`collection_summary_days` says when each day was summarized and against what: the registry's version, the re-read
task that froze its first pass, and whether the day was over (final) then.

A summary is exact until something changes what it counts; what can is recorded here, so that checking costs an
index probe instead of a pass over the day:
- `collection_day_changes`: a statement trigger on `readings` adds (day, transaction) for each local day before the
  transaction's own local day that the statement stored readings for (late readings: a concentrator's backlog, a
  re-read). Today's readings mark nothing; today is never final.
- `collection_summary_state.registry_version` goes up with every change to the meters that could change who is
  expected or in which group (status, groups, protocol, installation day, registration time).
- A day frozen for a re-read has a row in `collection_first_pass_days` (migration 0022) naming its task.
Both trigger functions run as the owner (SECURITY DEFINER): the ingest and operator roles write no summary table.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-08
"""

from collections.abc import Sequence
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# headend.reports.collection_summary.Grouping
GROUPINGS = ("all", "region", "area", "concentrator", "protocol")
AREA_MAX_CHARS = 100  # headend.registry.meter_import.AREA_MAX_CHARS
# the registry columns a summary depends on
_SUMMARIZED = "meter_id, status, region, area, concentrator_id, protocol, installed_on, created_at"


def _zone() -> str:
    zone = (
        op.get_bind().execute(sa.text("SELECT value FROM schema_options WHERE name = 'collection_timezone'")).scalar()
    )
    ZoneInfo(str(zone))  # a known zone name, safe to quote in the SQL below
    assert "'" not in str(zone)
    return str(zone)


def upgrade() -> None:
    zone = _zone()
    op.add_column("meters", sa.Column("area", sa.Text))
    op.create_check_constraint(
        "meters_area", "meters", f"area IS NULL OR char_length(area) BETWEEN 1 AND {AREA_MAX_CHARS}"
    )
    op.create_index("ix_meters_area", "meters", ["area"])

    op.create_table(
        "collection_summary_state",
        sa.Column("one", sa.Boolean, primary_key=True, server_default=sa.true()),
        sa.Column("registry_version", sa.BigInteger, nullable=False, server_default="0"),
        sa.CheckConstraint("one", name="collection_summary_state_one_row"),
    )
    op.execute("INSERT INTO collection_summary_state DEFAULT VALUES")
    op.create_table(
        "collection_day_changes",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("xact", sa.BigInteger, primary_key=True),  # the storing transaction's id (one row each)
    )
    op.create_table(
        "collection_summary_days",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("registry_version", sa.BigInteger, nullable=False),
        sa.Column("first_pass_task", sa.String(64)),  # the task that froze the day's first pass, if any
        sa.Column("final", sa.Boolean, nullable=False),  # the day was over (and its margin) when summarized
    )
    op.create_table(
        "collection_summary",
        sa.Column("day", sa.Date, sa.ForeignKey("collection_summary_days.day", ondelete="CASCADE"), nullable=False),
        sa.Column("grouping", sa.Text, nullable=False),
        sa.Column("key", sa.Text),
        sa.Column("expected", sa.Integer, nullable=False),
        sa.Column("read", sa.Integer, nullable=False),
        sa.Column("complete", sa.Integer, nullable=False),
        sa.Column("read_first", sa.Integer, nullable=False),
        sa.Column("complete_first", sa.Integer, nullable=False),
        sa.CheckConstraint(f"grouping IN ({', '.join(map(repr, GROUPINGS))})", name="collection_summary_grouping"),
        sa.CheckConstraint("grouping <> 'all' OR key IS NULL", name="collection_summary_all_key"),
    )
    op.execute(
        "ALTER TABLE collection_summary ADD CONSTRAINT collection_summary_group "
        "UNIQUE NULLS NOT DISTINCT (day, grouping, key)"
    )
    op.create_table(
        "collection_summary_meters",
        sa.Column("day", sa.Date, sa.ForeignKey("collection_summary_days.day", ondelete="CASCADE"), primary_key=True),
        sa.Column("meter_id", sa.String(32), primary_key=True),
        sa.Column("protocol", sa.Text, nullable=False),
        sa.Column("region", sa.Text),
        sa.Column("area", sa.Text),
        sa.Column("concentrator_id", sa.String(32)),
        sa.Column("intervals_read", sa.SmallInteger, nullable=False),
        sa.Column("slots", sa.dialects.postgresql.BIT(96)),  # the load points read (bit 0: 00:00); NULL: none
        sa.CheckConstraint("intervals_read BETWEEN 0 AND 95", name="collection_summary_meters_incomplete"),
    )

    op.execute(
        f"""
        CREATE FUNCTION collection_mark_late_days() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
        BEGIN
            INSERT INTO collection_day_changes (day, xact)
            SELECT DISTINCT (ts AT TIME ZONE '{zone}')::date, txid_current() FROM stored
            WHERE ts < date_trunc('day', now() AT TIME ZONE '{zone}') AT TIME ZONE '{zone}'
            ON CONFLICT DO NOTHING;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER collection_mark_late_days AFTER INSERT ON readings REFERENCING NEW TABLE AS stored "
        "FOR EACH STATEMENT EXECUTE FUNCTION collection_mark_late_days()"
    )
    for event, changed in (
        ("insert", "SELECT FROM after_rows"),
        ("delete", "SELECT FROM before_rows"),
        (
            "update",
            f"(SELECT {_SUMMARIZED} FROM after_rows EXCEPT SELECT {_SUMMARIZED} FROM before_rows) "
            f"UNION ALL (SELECT {_SUMMARIZED} FROM before_rows EXCEPT SELECT {_SUMMARIZED} FROM after_rows)",
        ),
    ):
        op.execute(
            f"""
            CREATE FUNCTION collection_registry_{event}() RETURNS trigger
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
            BEGIN
                IF EXISTS ({changed}) THEN
                    UPDATE collection_summary_state SET registry_version = registry_version + 1;
                END IF;
                RETURN NULL;
            END
            $$
            """
        )
        tables = {
            "insert": "NEW TABLE AS after_rows",
            "delete": "OLD TABLE AS before_rows",
            "update": "OLD TABLE AS before_rows NEW TABLE AS after_rows",
        }[event]
        op.execute(
            f"CREATE TRIGGER collection_registry_{event} AFTER {event.upper()} ON meters REFERENCING {tables} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION collection_registry_{event}()"
        )


def downgrade() -> None:
    for event in ("insert", "delete", "update"):
        op.execute(f"DROP TRIGGER collection_registry_{event} ON meters")
        op.execute(f"DROP FUNCTION collection_registry_{event}()")
    op.execute("DROP TRIGGER collection_mark_late_days ON readings")
    op.execute("DROP FUNCTION collection_mark_late_days()")
    for table in (
        "collection_summary_meters",
        "collection_summary",
        "collection_summary_days",
        "collection_day_changes",
        "collection_summary_state",
    ):
        op.drop_table(table)
    op.drop_index("ix_meters_area", "meters")
    op.drop_constraint("meters_area", "meters")
    op.drop_column("meters", "area")
