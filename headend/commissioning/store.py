"""Commissioning tests and their steps as stored: the rows, reading them, the writes the doors and the driver share.

Every write here runs in the caller's transaction. A test's row is locked before its steps, its commands and its
switch, whoever writes (a person's request through the API or the command line, or the dispatcher's driver).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from headend.commissioning.states import DETAIL_MAX, StepKind, StepState, SwitchTestResult, SwitchTestState
from headend.db.text import storable
from headend.registry.switches import NOTES_MAX, ChangeAction, CommissioningState

Connection = psycopg.Connection[Any]
Cursor = psycopg.Cursor[dict[str, Any]]

TEST_COLUMNS: Final = (
    "test_id, switch_id, meter_id, account_id, reconnect_mode, requested_by, requested_at, state, detail, "
    "approval_reason, approved_by, approved_at, started_at, finished_at, cancelled_by, switch_state_before, result, "
    "result_note, result_by, result_at"
)
STEP_COLUMNS: Final = "test_id, ordinal, kind, state, command_id, detail, relay, started_at, finished_at"
MAX_LISTED: Final = 100


@dataclass(frozen=True, slots=True)
class SwitchTestStep:
    """One step of a test: what it does, where it is, the command it sent, what it found."""

    test_id: int
    ordinal: int
    kind: StepKind
    state: StepState
    command_id: str | None
    detail: str
    relay: str | None  # the relay position the step found (open, closed)
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class SwitchTest:
    """A commissioning test with its steps (in order), as stored."""

    test_id: int
    switch_id: int
    meter_id: str
    account_id: str | None
    reconnect_mode: str
    requested_by: str
    requested_at: datetime
    state: SwitchTestState
    detail: str
    approval_reason: str | None
    approved_by: str | None
    approved_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    cancelled_by: str | None
    switch_state_before: CommissioningState
    result: SwitchTestResult | None
    result_note: str | None
    result_by: str | None
    result_at: datetime | None
    steps: tuple[SwitchTestStep, ...] = ()

    def current_step(self) -> SwitchTestStep | None:
        """The step running or waiting for the button, if any."""
        return next((s for s in self.steps if s.state in (StepState.RUNNING, StepState.WAITING_BUTTON)), None)


def step_from_row(row: Mapping[str, Any]) -> SwitchTestStep:
    """A step from a row of STEP_COLUMNS."""
    return SwitchTestStep(**{**row, "kind": StepKind(row["kind"]), "state": StepState(row["state"])})


def switch_test_from_row(row: Mapping[str, Any], steps: tuple[SwitchTestStep, ...] = ()) -> SwitchTest:
    """A test from a row of TEST_COLUMNS."""
    return SwitchTest(
        **{
            **row,
            "state": SwitchTestState(row["state"]),
            "switch_state_before": CommissioningState(row["switch_state_before"]),
            "result": None if row["result"] is None else SwitchTestResult(row["result"]),
        },
        steps=steps,
    )


def steps_of(cur: Cursor, test_id: int) -> tuple[SwitchTestStep, ...]:
    """A test's steps in order."""
    rows = cur.execute(
        f"SELECT {STEP_COLUMNS} FROM switch_test_steps WHERE test_id = %s ORDER BY ordinal", (test_id,)
    ).fetchall()
    return tuple(step_from_row(row) for row in rows)


def lock_test(cur: Cursor, test_id: int, *, skip_locked: bool = False) -> SwitchTest | None:
    """The test with its steps, its row locked for the caller's transaction (None: unknown, or locked when skipping)."""
    row = cur.execute(
        f"SELECT {TEST_COLUMNS} FROM switch_tests WHERE test_id = %s FOR UPDATE{' SKIP LOCKED' if skip_locked else ''}",
        (test_id,),
    ).fetchone()
    return None if row is None else switch_test_from_row(row, steps_of(cur, test_id))


def get_test(conn: Connection, test_id: int) -> SwitchTest | None:
    """The test with its steps as committed, from one snapshot."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = cur.execute(f"SELECT {TEST_COLUMNS} FROM switch_tests WHERE test_id = %s", (test_id,)).fetchone()
        return None if row is None else switch_test_from_row(row, steps_of(cur, test_id))


def switch_tests_of(conn: Connection, switch_id: int, limit: int = 20) -> list[SwitchTest]:
    """A switch's latest tests, newest first, without their steps."""
    assert 1 <= limit <= MAX_LISTED, limit
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {TEST_COLUMNS} FROM switch_tests WHERE switch_id = %s ORDER BY test_id DESC LIMIT %s",
            (switch_id, limit),
        ).fetchall()
    return [switch_test_from_row(row) for row in rows]


def text(value: str, max_chars: int = DETAIL_MAX) -> str:
    """A sentence as the tables keep it: escaped where PostgreSQL can't store it, cut to `max_chars`."""
    return storable(value, max_chars)


def update_test(cur: Cursor, test_id: int, **values: Any) -> None:
    """Set columns of a test (constant names from the callers; the values are parameters)."""
    assignments = ", ".join(f"{column} = %({column})s" for column in values)
    cur.execute(f"UPDATE switch_tests SET {assignments} WHERE test_id = %(test_id)s", {**values, "test_id": test_id})


def update_step(cur: Cursor, test_id: int, ordinal: int, **values: Any) -> None:
    """Set columns of a step (constant names from the callers; the values are parameters)."""
    assignments = ", ".join(f"{column} = %({column})s" for column in values)
    cur.execute(
        f"UPDATE switch_test_steps SET {assignments} WHERE test_id = %(test_id)s AND ordinal = %(ordinal)s",
        {**values, "test_id": test_id, "ordinal": ordinal},
    )


def skip_pending_steps(cur: Cursor, test_id: int, now: datetime, why: str) -> None:
    """Mark the steps not reached as skipped."""
    cur.execute(
        "UPDATE switch_test_steps SET state = 'skipped', detail = %s, finished_at = %s "
        "WHERE test_id = %s AND state = 'pending'",
        (text(why), now, test_id),
    )


def note_on_switch(
    cur: Cursor,
    switch_id: int,
    *,
    by: str,
    now: datetime,
    detail: str,
    state_from: CommissioningState | None = None,
    state_to: CommissioningState | None = None,
) -> None:
    """Record a test's event in the switch's history (action commissioning), moving its state when given."""
    changes: dict[str, Any] = {}
    if state_to is not None and state_to != state_from:
        assert state_from is not None
        cur.execute(
            "UPDATE controlled_switches SET commissioning_state = %s WHERE switch_id = %s", (str(state_to), switch_id)
        )
        changes["commissioning_state"] = {"from": str(state_from), "to": str(state_to)}
    cur.execute(
        "INSERT INTO controlled_switch_changes (switch_id, at, actor, action, changes, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (switch_id, now, by, ChangeAction.COMMISSIONING.value, Jsonb(changes), text(detail, NOTES_MAX)),
    )


def switch_state(cur: Cursor, switch_id: int) -> tuple[CommissioningState, str, datetime | None] | None:
    """A switch's commissioning state, meter and retirement, its row locked; None if there is none."""
    row = cur.execute(
        "SELECT commissioning_state, meter_id, retired_at FROM controlled_switches WHERE switch_id = %s FOR UPDATE",
        (switch_id,),
    ).fetchone()
    if row is None:
        return None
    return CommissioningState(row["commissioning_state"]), str(row["meter_id"]), row["retired_at"]
