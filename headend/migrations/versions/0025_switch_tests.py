"""The on-site commissioning test of a controlled switch: the test, its steps, and the commands it sends.

`switch_tests` holds each test field staff started on a switch, with the customer present: the switch and its meter,
who asked and when, its state (`pending` until the dispatcher takes it, `awaiting_approval` for a protected or
keep-supply (保电) customer until an operator approves, `running`, then `passed`, `failed` or `cancelled`; `refused`
when a safety rule refused it at once), a sentence of where it stands (`detail`), the approval, when it started and
finished, the switch's commissioning state before it (given back when a test is cancelled), and the result field
staff record once the steps are over (`commissioned` or `failed`, with their note). One test at a time on a switch,
and on a meter (its switches share the relay): a partial unique index over the tests not finished.

`switch_test_steps` holds the test's steps in order: read the relay, open it, confirm it open, close it (or allow
closing, 合闸允许, for the customer's button), confirm it closed, and when needed a last step that puts the relay
back where the customer's account requires it (`restore`). Each step that talks to the meter is a relay command
(`command_id`) going through the dispatcher's lifecycle, audit and executors like any other.

`commands.test_id` names the test a command belongs to (never an account's: a test's open is not a decision about
the customer's supply), so the dispatcher re-checks it against the test before sending it and does not take the
relay the test opened for an unexpected change.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# headend.commissioning.tests: TestState, StepKind, StepState, TestResult and the bounds of their text
TEST_STATES = ("pending", "awaiting_approval", "running", "passed", "failed", "refused", "cancelled")
ENDED_STATES = ("passed", "failed", "refused", "cancelled")
STEP_KINDS = ("read_state", "open", "confirm_open", "close_or_allow", "confirm_closed", "restore")
STEP_STATES = ("pending", "running", "waiting_button", "passed", "failed", "skipped", "cancelled")
STEP_OPEN_STATES = ("running", "waiting_button")
RESULTS = ("commissioned", "failed")
SWITCH_STATES = ("registered", "testing", "commissioned", "failed")
ACTOR_MAX = 64
DETAIL_MAX = 2000
NOTE_MAX = 1000


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(map(repr, values))})"


def _ts(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "switch_tests",
        sa.Column("test_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("switch_id", sa.BigInteger, sa.ForeignKey("controlled_switches.switch_id"), nullable=False),
        sa.Column("meter_id", sa.String(32), sa.ForeignKey("meters.meter_id"), nullable=False),
        sa.Column("account_id", sa.Text, sa.ForeignKey("prepaid_accounts.account_id")),
        sa.Column("reconnect_mode", sa.Text, nullable=False),
        sa.Column("requested_by", sa.Text, nullable=False),
        _ts("requested_at", nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("approval_reason", sa.Text),
        sa.Column("approved_by", sa.Text),
        _ts("approved_at"),
        _ts("started_at"),
        _ts("finished_at"),
        sa.Column("cancelled_by", sa.Text),
        sa.Column("switch_state_before", sa.Text, nullable=False),
        sa.Column("result", sa.Text),
        sa.Column("result_note", sa.Text),
        sa.Column("result_by", sa.Text),
        _ts("result_at"),
        sa.CheckConstraint(_in("state", TEST_STATES), name="switch_tests_state"),
        sa.CheckConstraint("reconnect_mode IN ('direct', 'allowed')", name="switch_tests_reconnect_mode"),
        sa.CheckConstraint(_in("switch_state_before", SWITCH_STATES), name="switch_tests_switch_state_before"),
        sa.CheckConstraint(f"char_length(requested_by) BETWEEN 1 AND {ACTOR_MAX}", name="switch_tests_requested_by"),
        sa.CheckConstraint(f"char_length(detail) BETWEEN 1 AND {DETAIL_MAX}", name="switch_tests_detail"),
        sa.CheckConstraint(
            f"approval_reason IS NULL OR char_length(approval_reason) BETWEEN 1 AND {DETAIL_MAX}",
            name="switch_tests_approval_reason",
        ),
        sa.CheckConstraint(
            "(approved_by IS NULL) = (approved_at IS NULL) AND "
            f"(approved_by IS NULL OR char_length(approved_by) BETWEEN 1 AND {ACTOR_MAX})",
            name="switch_tests_approval",
        ),
        sa.CheckConstraint(
            f"cancelled_by IS NULL OR (state = 'cancelled' AND char_length(cancelled_by) BETWEEN 1 AND {ACTOR_MAX})",
            name="switch_tests_cancelled_by",
        ),
        # a test that ended may still be putting the relay back (finished_at NULL); one that finished has ended
        sa.CheckConstraint(f"finished_at IS NULL OR {_in('state', ENDED_STATES)}", name="switch_tests_finished"),
        sa.CheckConstraint("state <> 'running' OR started_at IS NOT NULL", name="switch_tests_started"),
        sa.CheckConstraint(
            "(result IS NULL AND result_note IS NULL AND result_by IS NULL AND result_at IS NULL) OR "
            f"({_in('result', RESULTS)} AND char_length(result_note) BETWEEN 1 AND {NOTE_MAX} "
            f"AND char_length(result_by) BETWEEN 1 AND {ACTOR_MAX} AND result_at IS NOT NULL "
            "AND finished_at IS NOT NULL AND (state = 'passed' OR (state = 'failed' AND result = 'failed')))",
            name="switch_tests_result",
        ),
    )
    # one test at a time on a switch, and on a meter: its switches share the relay
    op.create_index(
        "switch_tests_one_open_per_switch",
        "switch_tests",
        ["switch_id"],
        unique=True,
        postgresql_where=sa.text("finished_at IS NULL"),
    )
    op.create_index(
        "switch_tests_one_open_per_meter",
        "switch_tests",
        ["meter_id"],
        unique=True,
        postgresql_where=sa.text("finished_at IS NULL"),
    )
    op.create_index("switch_tests_switch", "switch_tests", ["switch_id", "test_id"])

    op.add_column("commands", sa.Column("test_id", sa.BigInteger, sa.ForeignKey("switch_tests.test_id")))
    op.create_check_constraint("commands_test_not_account", "commands", "test_id IS NULL OR account_id IS NULL")
    op.create_index("ix_commands_test", "commands", ["test_id"], postgresql_where=sa.text("test_id IS NOT NULL"))

    op.create_table(
        "switch_test_steps",
        sa.Column("test_id", sa.BigInteger, sa.ForeignKey("switch_tests.test_id"), primary_key=True),
        sa.Column("ordinal", sa.SmallInteger, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("command_id", sa.Text, sa.ForeignKey("commands.command_id")),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("relay", sa.Text),
        _ts("started_at"),
        _ts("finished_at"),
        sa.CheckConstraint("ordinal BETWEEN 1 AND 20", name="switch_test_steps_ordinal"),
        sa.CheckConstraint(_in("kind", STEP_KINDS), name="switch_test_steps_kind"),
        sa.CheckConstraint(_in("state", STEP_STATES), name="switch_test_steps_state"),
        sa.CheckConstraint("relay IS NULL OR relay IN ('open', 'closed')", name="switch_test_steps_relay"),
        sa.CheckConstraint(f"char_length(detail) BETWEEN 1 AND {DETAIL_MAX}", name="switch_test_steps_detail"),
        sa.CheckConstraint(
            "(state = 'pending') = (started_at IS NULL) OR state = 'skipped'", name="switch_test_steps_started"
        ),
        sa.CheckConstraint(
            f"({_in('state', ('pending', *STEP_OPEN_STATES))}) = (finished_at IS NULL)",
            name="switch_test_steps_finished",
        ),
    )
    op.create_index(
        "switch_test_steps_command",
        "switch_test_steps",
        ["command_id"],
        unique=True,
        postgresql_where=sa.text("command_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_table("switch_test_steps")
    op.drop_index("ix_commands_test", "commands")
    op.drop_constraint("commands_test_not_account", "commands", type_="check")
    # the commands a test sent stay, as commands of no account (their audit trail references them)
    op.drop_column("commands", "test_id")
    op.drop_table("switch_tests")
