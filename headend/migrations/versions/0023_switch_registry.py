"""Switch registry: field staff register, edit and retire customers' controlled switches (接控开关); a viewer API role.

`controlled_switches` gains `notes`, who last changed a switch and when (`updated_by`, `updated_at`), and its
retirement (`retired_at`, `retired_by`, `retire_reason`, all three or none): a retired switch keeps its row, its
history and its `switch_id`, and its commissioning state becomes `decommissioned`. A switch number belongs to one
switch in service at a time: the unique constraint becomes a unique index over the switches not retired, so the
label of a retired switch may be given to the switch that replaces it (the old row stays, retired, under the same
number). Text is bounded and single-line where a form field is (no control characters, no surrounding spaces).
Switches already `decommissioned` before this migration are marked retired by whoever registered them.

`controlled_switch_changes` is the audit trail of every change: who, when, what (`registered`, `edited`, `retired`,
or `commissioning` for the commissioning test's state changes) and, per changed field, its value before and after
(`changes`, a JSON object `{"field": {"from": …, "to": …}}`); appended only, never changed (a trigger refuses
UPDATE, DELETE and TRUNCATE, for the owner too).

Search: switch numbers by case-insensitive prefix, meters by DL/T 645 address alone (the unique index of 0021 leads
with the endpoint) and by meter id prefix.

`api_principals.role` admits `viewer`: reads only.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# headend.api.credentials.Role
ROLES_BEFORE = ("operator", "field_staff", "channel", "admin")
ROLES = (*ROLES_BEFORE, "viewer")
# headend.registry.switches: ChangeAction and the limits of its fields
ACTIONS = ("registered", "edited", "retired", "commissioning")
SWITCH_NUMBER_MAX = 64
DEVICE_MAX = 200
LOCATION_MAX = 200
NOTES_MAX = 1000
REASON_MAX = 500
ACTOR_MAX = 64


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(map(repr, values))})"


def _line(column: str, max_chars: int, *, nullable: bool) -> str:
    # one line of a form: no control characters, no spaces around it, not empty
    check = (
        f"char_length({column}) BETWEEN 1 AND {max_chars} AND {column} !~ '[[:cntrl:]]' AND {column} = btrim({column})"
    )
    return f"{column} IS NULL OR ({check})" if nullable else check


def upgrade() -> None:
    op.drop_constraint("api_principals_role", "api_principals", type_="check")
    op.create_check_constraint("api_principals_role", "api_principals", _in("role", ROLES))

    op.add_column("controlled_switches", sa.Column("notes", sa.Text))
    op.add_column("controlled_switches", sa.Column("updated_by", sa.Text))
    op.add_column("controlled_switches", sa.Column("updated_at", sa.DateTime(timezone=True)))
    op.add_column("controlled_switches", sa.Column("retired_at", sa.DateTime(timezone=True)))
    op.add_column("controlled_switches", sa.Column("retired_by", sa.Text))
    op.add_column("controlled_switches", sa.Column("retire_reason", sa.Text))
    op.execute(
        "UPDATE controlled_switches SET retired_at = registered_at, retired_by = registered_by, "
        "retire_reason = 'decommissioned before the switch registry' WHERE commissioning_state = 'decommissioned'"
    )
    op.execute("UPDATE controlled_switches SET updated_at = registered_at, updated_by = registered_by")
    op.alter_column("controlled_switches", "updated_by", nullable=False)
    op.alter_column("controlled_switches", "updated_at", nullable=False)

    op.drop_constraint("controlled_switches_switch_number_key", "controlled_switches", type_="unique")
    op.execute(
        "CREATE UNIQUE INDEX controlled_switches_number_in_service ON controlled_switches (switch_number) "
        "WHERE retired_at IS NULL"
    )
    op.execute(
        "CREATE INDEX controlled_switches_number_search ON controlled_switches (lower(switch_number) text_pattern_ops)"
    )
    for name, check in {
        "switch_number": _line("switch_number", SWITCH_NUMBER_MAX, nullable=False),
        "controlled_device": _line("controlled_device", DEVICE_MAX, nullable=False),
        "location": _line("location", LOCATION_MAX, nullable=True),
        "notes": f"char_length(notes) BETWEEN 1 AND {NOTES_MAX}",
        "registered_by": f"char_length(registered_by) BETWEEN 1 AND {ACTOR_MAX}",
        "updated_by": f"char_length(updated_by) BETWEEN 1 AND {ACTOR_MAX}",
        "retired": (
            "(retired_at IS NULL AND retired_by IS NULL AND retire_reason IS NULL) OR "
            f"(retired_at IS NOT NULL AND char_length(retired_by) BETWEEN 1 AND {ACTOR_MAX} "
            f"AND char_length(retire_reason) BETWEEN 1 AND {REASON_MAX})"
        ),
        "retired_decommissioned": "(retired_at IS NULL) = (commissioning_state <> 'decommissioned')",
    }.items():
        # NOT VALID: rows written with SQL before the registry are checked when next written
        op.execute(
            f"ALTER TABLE controlled_switches ADD CONSTRAINT controlled_switches_{name} CHECK ({check}) NOT VALID"
        )

    op.execute("CREATE INDEX meters_address_search ON meters (address) WHERE address IS NOT NULL")
    op.execute("CREATE INDEX meters_id_search ON meters (meter_id text_pattern_ops)")

    op.create_table(
        "controlled_switch_changes",
        sa.Column("change_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("switch_id", sa.BigInteger, sa.ForeignKey("controlled_switches.switch_id"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("changes", JSONB, nullable=False),
        sa.Column("detail", sa.Text),
        sa.CheckConstraint(_in("action", ACTIONS), name="controlled_switch_changes_action"),
        sa.CheckConstraint(f"char_length(actor) BETWEEN 1 AND {ACTOR_MAX}", name="controlled_switch_changes_actor"),
        sa.CheckConstraint("jsonb_typeof(changes) = 'object'", name="controlled_switch_changes_changes"),
        sa.CheckConstraint(f"char_length(detail) BETWEEN 1 AND {NOTES_MAX}", name="controlled_switch_changes_detail"),
    )
    op.create_index("controlled_switch_changes_switch", "controlled_switch_changes", ["switch_id", "change_id"])
    op.execute(
        """
        CREATE FUNCTION controlled_switch_changes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'controlled_switch_changes is append-only: % refused', TG_OP
                USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER controlled_switch_changes_no_update_delete "
        "BEFORE UPDATE OR DELETE ON controlled_switch_changes "
        "FOR EACH ROW EXECUTE FUNCTION controlled_switch_changes_append_only()"
    )
    op.execute(
        "CREATE TRIGGER controlled_switch_changes_no_truncate BEFORE TRUNCATE ON controlled_switch_changes "
        "FOR EACH STATEMENT EXECUTE FUNCTION controlled_switch_changes_append_only()"
    )


def downgrade() -> None:
    op.drop_table("controlled_switch_changes")
    op.execute("DROP FUNCTION controlled_switch_changes_append_only()")
    op.execute("DROP INDEX meters_id_search")
    op.execute("DROP INDEX meters_address_search")
    for name in (
        "switch_number",
        "controlled_device",
        "location",
        "notes",
        "registered_by",
        "updated_by",
        "retired",
        "retired_decommissioned",
    ):
        op.drop_constraint(f"controlled_switches_{name}", "controlled_switches", type_="check")
    op.execute("DROP INDEX controlled_switches_number_search")
    op.execute("DROP INDEX controlled_switches_number_in_service")
    # fails if a retired switch's number was given again: the schema before had one switch per number, ever
    op.create_unique_constraint("controlled_switches_switch_number_key", "controlled_switches", ["switch_number"])
    for column in ("retire_reason", "retired_by", "retired_at", "updated_at", "updated_by", "notes"):
        op.drop_column("controlled_switches", column)
    # fails while a viewer principal exists: take its token away first (a downgrade deletes no one's access silently)
    op.drop_constraint("api_principals_role", "api_principals", type_="check")
    op.create_check_constraint("api_principals_role", "api_principals", _in("role", ROLES_BEFORE))
