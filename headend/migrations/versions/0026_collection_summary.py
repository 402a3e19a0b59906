"""The collection summary: per local day and group, what the collection API answers without scanning meter-days.

`meters.area` is the meter's transformer area (台区), optional, as the registry import gives it.

`collection_summary` holds, for each local day summarized, the counts of the whole fleet and of each region, area,
concentrator and protocol (`grouping`, `key`; a NULL key: meters without one): meters expected, read and complete now,
and read and complete at the day's first pass (as frozen before its first re-read; the same as now for a day never
re-read). `collection_summary_meters` holds, for the same days, each expected meter that was not read completely (no
reading, or some of the 96 load points), with its groups and the load points it has: the drill-down lists.
`collection_summary_entries` holds each day's entries of the daily series per grouping, written out once as JSON and
as CSV rows: a month by concentrator is 120,000 entries at 1M meters, too many to format at every request.
`collection_summary_days` says when each day was summarized and against what: the registry's version, the re-read
task that froze its first pass, and whether the day was over (final) then. The four are replaced together, a day at a
time, by whoever summarizes it (no foreign keys: a day's 100,000 listed meters are not checked one by one).

A summary is exact until something changes what it counts; what can is recorded here, so that checking costs an
index probe instead of a pass over the day:
- `collection_day_changes`: a statement trigger on `readings` adds (day, meter) for each meter and local day before the
  transaction's own local day that the statement stored readings for (late readings: a concentrator's backlog, a
  re-read). Today's readings mark nothing; today is never final. The meters marked are counted again alone.
- `collection_registry_changes`: statement triggers on `meters` add, for every change that could change who is expected
  or in which group (status, groups, protocol, installation day, registration time), the first local day it may
  change: a new meter's first day expected, `-infinity` for a change of status or group; numbered in commit order by
  `collection_summary_state.registry_version`. A day summarized at version v is stale when a change after v reaches it:
  registering new meters leaves the days before them as they were.
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
# the registry columns a summary depends on; those that place a meter in its groups; its first day expected
_SUMMARIZED = "meter_id, status, region, area, concentrator_id, protocol, installed_on, created_at"
_GROUPS = "meter_id, status, region, area, concentrator_id, protocol"
_FIRST_DAY = "coalesce(installed_on, (created_at AT TIME ZONE '{zone}')::date)"


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
        "collection_registry_changes",
        sa.Column("version", sa.BigInteger, primary_key=True),
        sa.Column("from_day", sa.Date, nullable=False),  # the first local day whose figures it may change
    )
    # appended only by the trigger (no key to wait on: ingest never waits for a summarizer deleting marks)
    op.create_table(
        "collection_day_changes",
        sa.Column("change_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("meter_id", sa.String(32), nullable=False),
    )
    op.create_index("ix_collection_day_changes_day", "collection_day_changes", ["day", "meter_id"])
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
        sa.Column("day", sa.Date, nullable=False),
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
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("meter_id", sa.String(32), primary_key=True),
        sa.Column("protocol", sa.Text, nullable=False),
        sa.Column("region", sa.Text),
        sa.Column("area", sa.Text),
        sa.Column("concentrator_id", sa.String(32)),
        sa.Column("intervals_read", sa.SmallInteger, nullable=False),
        sa.Column("slots", sa.dialects.postgresql.BIT(96)),  # the load points read (bit 0: 00:00); NULL: none
        sa.CheckConstraint("intervals_read BETWEEN 0 AND 95", name="collection_summary_meters_incomplete"),
    )
    op.create_table(
        "collection_summary_entries",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("grouping", sa.Text, primary_key=True),
        sa.Column("entries_json", sa.Text, nullable=False),
        sa.Column("entries_csv", sa.Text, nullable=False),
    )

    op.execute(
        f"""
        CREATE FUNCTION collection_mark_late_days() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
        BEGIN
            INSERT INTO collection_day_changes (day, meter_id)
            SELECT DISTINCT (ts AT TIME ZONE '{zone}')::date, meter_id FROM stored
            WHERE ts < date_trunc('day', now() AT TIME ZONE '{zone}') AT TIME ZONE '{zone}';
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER collection_mark_late_days AFTER INSERT ON readings REFERENCING NEW TABLE AS stored "
        "FOR EACH STATEMENT EXECUTE FUNCTION collection_mark_late_days()"
    )
    for event, from_day in (
        # a new active meter is expected from its installation day, else from its registration
        ("insert", f"SELECT min({_FIRST_DAY.format(zone=zone)}) FROM after_rows WHERE status = 'active'"),
        ("delete", "SELECT CASE WHEN EXISTS (SELECT FROM before_rows) THEN date '-infinity' END"),
        # a change of status or group moves the meter's counts on every day; of its installation or registration only,
        # from the earlier of the first days it is expected, before and after
        (
            "update",
            f"""WITH b AS (SELECT {_SUMMARIZED} FROM before_rows), a AS (SELECT {_SUMMARIZED} FROM after_rows),
                     changed AS ((SELECT * FROM a EXCEPT SELECT * FROM b)
                                 UNION ALL (SELECT * FROM b EXCEPT SELECT * FROM a))
                SELECT CASE WHEN NOT EXISTS (SELECT FROM changed) THEN NULL
                            WHEN EXISTS ((SELECT {_GROUPS} FROM a EXCEPT SELECT {_GROUPS} FROM b)
                                         UNION ALL (SELECT {_GROUPS} FROM b EXCEPT SELECT {_GROUPS} FROM a))
                                THEN date '-infinity'
                            ELSE (SELECT min({_FIRST_DAY.format(zone=zone)}) FROM changed) END""",
        ),
    ):
        op.execute(
            f"""
            CREATE FUNCTION collection_registry_{event}() RETURNS trigger
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
            DECLARE
                from_day date;
                version bigint;
            BEGIN
                from_day := ({from_day});
                IF from_day IS NOT NULL THEN
                    -- the row lock orders the versions as their transactions commit
                    UPDATE collection_summary_state SET registry_version = registry_version + 1
                    RETURNING registry_version INTO version;
                    INSERT INTO collection_registry_changes (version, from_day) VALUES (version, from_day);
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
        "collection_summary_entries",
        "collection_summary_meters",
        "collection_summary",
        "collection_summary_days",
        "collection_day_changes",
        "collection_registry_changes",
        "collection_summary_state",
    ):
        op.drop_table(table)
    op.drop_index("ix_meters_area", "meters")
    op.drop_constraint("meters_area", "meters")
    op.drop_column("meters", "area")
