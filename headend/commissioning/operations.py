"""What people do with a commissioning test: start it on a switch, approve it, cancel it, record its result.

Field staff start a test with the customer present. It is refused at once, and kept as `refused` with the reason,
when the meter has an unresolved relay alarm (a relay already known to misbehave is not operated again before a site
visit resolves it) or a relay command not ended (the test would race it). A test of a protected or keep-supply (保电)
customer waits for an operator's approval (`awaiting_approval`) before anything is sent. Otherwise it is `pending`,
with its five steps planned, and the dispatcher's driver (headend.commissioning.driver) runs it. The switch is
`testing` from the start; once the steps are over, field staff record the switch `commissioned` (only after a test
that passed) or `failed`, with a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import errors
from psycopg.rows import dict_row

from headend.commissioning import store
from headend.commissioning.states import (
    NOTE_MAX,
    PLAN,
    REASON_MAX,
    StepKind,
    StepState,
    SwitchTestResult,
    SwitchTestState,
)
from headend.dispatch import store as commands
from headend.dispatch.lifecycle import OPEN_STATES, CommandState
from headend.registry.switches import CommissioningState, SwitchError, clean_actor

Connection = psycopg.Connection[Any]


class SwitchTestErrorKind(StrEnum):
    """Why a request about a test was refused; the API answers each with its own status."""

    INVALID = "invalid"  # a note or reason empty, too long or unstorable; who acts not a name (422)
    UNKNOWN_SWITCH = "unknown_switch"  # (404)
    UNKNOWN_TEST = "unknown_test"  # (404)
    RETIRED = "retired"  # the switch was retired (409)
    INACTIVE_METER = "inactive_meter"  # the switch's meter is not active (422)
    TESTING = "testing"  # a test of the switch, or of another switch on its meter, has not finished (409)
    REFUSED = "refused"  # a safety rule refused the test; it is kept as refused (409)
    STATE = "state"  # the test's state does not allow this (409)


class SwitchTestError(ValueError):
    """A request about a test refused, with its kind and, for a refused test (kept), the test's id."""

    def __init__(self, kind: SwitchTestErrorKind, message: str, *, test_id: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.test_id = test_id


def _actor(by: str) -> str:
    try:
        return clean_actor(by)
    except SwitchError as exc:
        raise SwitchTestError(SwitchTestErrorKind.INVALID, str(exc)) from None


def _words(field: str, value: str, max_chars: int) -> str:
    words = value.strip()
    if not words:
        raise SwitchTestError(SwitchTestErrorKind.INVALID, f"{field} is empty")
    if len(words) > max_chars:
        raise SwitchTestError(SwitchTestErrorKind.INVALID, f"{field} of {len(words)} characters exceeds {max_chars}")
    if "\x00" in words or any(0xD800 <= ord(c) <= 0xDFFF for c in words):
        raise SwitchTestError(SwitchTestErrorKind.INVALID, f"{field} holds NUL or a lone surrogate")
    return words


def plan_detail(kind: StepKind, reconnect_mode: str) -> str:
    """What a step will do, as shown before it runs."""
    if kind is StepKind.CLOSE_OR_ALLOW and reconnect_mode == "allowed":
        return "allow closing (合闸允许): the customer presses the meter's button on site"
    return {
        StepKind.READ_STATE: "read the relay's position",
        StepKind.OPEN: "open the relay (disconnect)",
        StepKind.CONFIRM_OPEN: "read the relay back: it must be open",
        StepKind.CLOSE_OR_ALLOW: "close the relay (reconnect)",
        StepKind.CONFIRM_CLOSED: "read the relay back: it must be closed",
        StepKind.RESTORE: "put the relay back where the customer's account requires it",
    }[kind]


@dataclass(frozen=True, slots=True)
class _Meter:
    status: str
    reconnect_mode: str
    account_id: str | None
    protection: str | None  # why an operator must approve, or None


def _meter(cur: store.Cursor, meter_id: str) -> _Meter:
    row = cur.execute("SELECT status, reconnect_mode FROM meters WHERE meter_id = %s", (meter_id,)).fetchone()
    assert row is not None, meter_id  # a switch's meter is registered (a foreign key)
    account = cur.execute(
        "SELECT account_id, protected, keep_supply FROM prepaid_accounts WHERE meter_id = %s", (meter_id,)
    ).fetchone()
    return _Meter(
        str(row["status"]),
        str(row["reconnect_mode"]),
        None if account is None else str(account["account_id"]),
        None if account is None else protection(account["account_id"], account["protected"], account["keep_supply"]),
    )


def protection(account_id: str, protected: bool, keep_supply: bool) -> str | None:
    """Why a test of this account's meter needs an operator's approval (None: it needs none)."""
    flags = [name for name, on in (("a protected customer", protected), ("on keep supply (保电)", keep_supply)) if on]
    if not flags:
        return None
    return f"account {account_id} is {' and '.join(flags)}: an operator must approve opening its relay"


def _refusal(cur: store.Cursor, meter_id: str) -> str | None:
    alarm = cur.execute(
        "SELECT alarm_id, kind FROM relay_alarms WHERE meter_id = %s AND resolved_at IS NULL ORDER BY alarm_id LIMIT 1",
        (meter_id,),
    ).fetchone()
    if alarm is not None:
        return (
            f"meter {meter_id} has unresolved relay alarm {alarm['alarm_id']} ({alarm['kind']}): "
            "resolve it after checking the meter, then test"
        )
    command = cur.execute(
        "SELECT command_id, action, state FROM commands WHERE meter_id = %s AND state = ANY(%s) "
        "ORDER BY issued_at LIMIT 1",
        (meter_id, sorted(str(s) for s in OPEN_STATES)),
    ).fetchone()
    if command is not None:
        return (
            f"command {command['command_id']} ({command['action']}, {command['state']}) has not ended on meter "
            f"{meter_id}: test once it has"
        )
    return None


def _open_test(cur: store.Cursor, switch_id: int, meter_id: str) -> SwitchTestError | None:
    row = cur.execute(
        "SELECT test_id, switch_id, state FROM switch_tests WHERE finished_at IS NULL AND (switch_id = %s OR "
        "meter_id = %s) ORDER BY test_id LIMIT 1",
        (switch_id, meter_id),
    ).fetchone()
    if row is None:
        return None
    whose = "this switch" if row["switch_id"] == switch_id else f"switch {row['switch_id']} on the same meter"
    return SwitchTestError(
        SwitchTestErrorKind.TESTING,
        f"test {row['test_id']} of {whose} is {row['state']} and has not finished: one test at a time on a meter",
        test_id=int(row["test_id"]),
    )


def start_test(conn: Connection, switch_id: int, *, by: str, now: datetime) -> store.SwitchTest:
    """Start a test of a switch in service; SwitchTestError when refused (a refused test is kept, its id given)."""
    actor = _actor(by)
    refused: store.SwitchTest | None = None
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            switch = store.switch_state(cur, switch_id)
            if switch is None:
                raise SwitchTestError(SwitchTestErrorKind.UNKNOWN_SWITCH, f"no switch {switch_id}")
            state, meter_id, retired_at = switch
            if retired_at is not None:
                raise SwitchTestError(
                    SwitchTestErrorKind.RETIRED, f"switch {switch_id} was retired: a retired switch is not tested"
                )
            meter = _meter(cur, meter_id)
            if meter.status != "active":
                raise SwitchTestError(
                    SwitchTestErrorKind.INACTIVE_METER, f"meter {meter_id!r} is {meter.status}: it can't be tested"
                )
            busy = _open_test(cur, switch_id, meter_id)
            if busy is not None:
                raise busy
            refusal = _refusal(cur, meter_id)
            if refusal is not None:
                test_state, detail = SwitchTestState.REFUSED, f"refused: {refusal}"
            elif meter.protection is not None:
                test_state, detail = SwitchTestState.AWAITING_APPROVAL, f"awaiting approval: {meter.protection}"
            else:
                test_state, detail = SwitchTestState.PENDING, "pending: the dispatcher starts it at its next step"
            # a switch under test counts as registered before it for a cancellation (never testing)
            before = CommissioningState.REGISTERED if state is CommissioningState.TESTING else state
            row = cur.execute(
                "INSERT INTO switch_tests (switch_id, meter_id, account_id, reconnect_mode, requested_by, "
                "requested_at, state, detail, approval_reason, finished_at, switch_state_before) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING test_id",
                (
                    switch_id,
                    meter_id,
                    meter.account_id,
                    meter.reconnect_mode,
                    actor,
                    now,
                    str(test_state),
                    store.text(detail),
                    None if test_state is not SwitchTestState.AWAITING_APPROVAL else store.text(str(meter.protection)),
                    now if test_state is SwitchTestState.REFUSED else None,
                    str(before),
                ),
            ).fetchone()
            assert row is not None
            test_id = int(row["test_id"])
            if test_state is not SwitchTestState.REFUSED:
                for ordinal, kind in enumerate(PLAN, start=1):
                    cur.execute(
                        "INSERT INTO switch_test_steps (test_id, ordinal, kind, state, detail) "
                        "VALUES (%s, %s, %s, 'pending', %s)",
                        (test_id, ordinal, str(kind), plan_detail(kind, meter.reconnect_mode)),
                    )
                store.note_on_switch(
                    cur,
                    switch_id,
                    by=actor,
                    now=now,
                    detail=f"test {test_id} started: {detail}",
                    state_from=state,
                    state_to=CommissioningState.TESTING,
                )
            started = store.lock_test(cur, test_id)
            assert started is not None
            if test_state is SwitchTestState.REFUSED:
                refused = started
    except errors.UniqueViolation:
        # another request started a test of the switch or its meter meanwhile
        with conn.cursor(row_factory=dict_row) as cur:
            busy = _open_test(cur, switch_id, _switch_meter(cur, switch_id))
        raise busy or SwitchTestError(SwitchTestErrorKind.TESTING, "a test started meanwhile: look again") from None
    if refused is not None:
        raise SwitchTestError(
            SwitchTestErrorKind.REFUSED, f"test {refused.test_id} {refused.detail}", test_id=refused.test_id
        )
    return started


def _switch_meter(cur: store.Cursor, switch_id: int) -> str:
    row = cur.execute("SELECT meter_id FROM controlled_switches WHERE switch_id = %s", (switch_id,)).fetchone()
    return "" if row is None else str(row["meter_id"])


def _locked(cur: store.Cursor, test_id: int) -> store.SwitchTest:
    test = store.lock_test(cur, test_id)
    if test is None:
        raise SwitchTestError(SwitchTestErrorKind.UNKNOWN_TEST, f"no switch test {test_id}")
    return test


def approve_test(conn: Connection, test_id: int, *, by: str, now: datetime) -> store.SwitchTest:
    """Release a test awaiting an operator's approval (a protected or keep-supply customer): it becomes pending."""
    actor = _actor(by)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        test = _locked(cur, test_id)
        if test.state is not SwitchTestState.AWAITING_APPROVAL:
            raise SwitchTestError(
                SwitchTestErrorKind.STATE, f"test {test_id} is {test.state}: only a test awaiting approval is approved"
            )
        detail = f"approved by {actor}; pending: the dispatcher starts it at its next step"
        store.update_test(
            cur, test_id, state=str(SwitchTestState.PENDING), approved_by=actor, approved_at=now, detail=detail
        )
        store.note_on_switch(
            cur, test.switch_id, by=actor, now=now, detail=f"test {test_id} approved: {test.approval_reason}"
        )
        approved = store.lock_test(cur, test_id)
    assert approved is not None
    return approved


def cancel_test(conn: Connection, test_id: int, *, by: str, reason: str, now: datetime) -> store.SwitchTest:
    """Withdraw a test that has not ended; a running one's relay is then put back by the driver."""
    actor = _actor(by)
    why = _words("reason", reason, REASON_MAX)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        test = _locked(cur, test_id)
        if test.state not in (
            SwitchTestState.PENDING,
            SwitchTestState.AWAITING_APPROVAL,
            SwitchTestState.RUNNING,
        ):
            raise SwitchTestError(SwitchTestErrorKind.STATE, f"test {test_id} is {test.state}: it has ended")
        cancelled = f"cancelled by {actor}: {why}"
        store.skip_pending_steps(cur, test_id, now, "not run: the test was cancelled")
        if test.started_at is None:
            store.update_test(
                cur,
                test_id,
                state=str(SwitchTestState.CANCELLED),
                cancelled_by=actor,
                finished_at=now,
                detail=store.text(f"{cancelled}; nothing was sent"),
            )
            switch = store.switch_state(cur, test.switch_id)
            assert switch is not None
            back = test.switch_state_before if switch[0] is CommissioningState.TESTING else None
            store.note_on_switch(
                cur,
                test.switch_id,
                by=actor,
                now=now,
                detail=f"test {test_id} {cancelled}",
                state_from=switch[0],
                state_to=back,
            )
        else:
            store.update_test(
                cur,
                test_id,
                state=str(SwitchTestState.CANCELLED),
                cancelled_by=actor,
                detail=store.text(f"{cancelled}; the relay is put back where the account requires it"),
            )
            step = test.current_step()
            if step is not None and step.command_id is not None and step.state is StepState.RUNNING:
                command = commands.lock_command(cur, step.command_id)
                if command is not None and commands.can_cancel(command.state):
                    commands.move(
                        cur,
                        command,
                        CommandState.CANCELLED,
                        now,
                        actor=actor,
                        detail=store.text(f"test {test_id} {cancelled}"),
                    )
        withdrawn = store.lock_test(cur, test_id)
    assert withdrawn is not None
    return withdrawn


def record_result(
    conn: Connection, test_id: int, result: SwitchTestResult, note: str, *, by: str, now: datetime
) -> store.SwitchTest:
    """Record the switch commissioned (after a test that passed) or failed, with a note, once the steps are over."""
    actor = _actor(by)
    words = _words("note", note, NOTE_MAX)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        test = _locked(cur, test_id)
        if test.result is not None:
            raise SwitchTestError(
                SwitchTestErrorKind.STATE,
                f"test {test_id}'s result was recorded by {test.result_by}: {test.result} ({test.result_note})",
            )
        if test.state not in (SwitchTestState.PASSED, SwitchTestState.FAILED) or test.finished_at is None:
            ended = "its steps have not ended" if test.finished_at is None else "it has no result to record"
            raise SwitchTestError(SwitchTestErrorKind.STATE, f"test {test_id} is {test.state}: {ended}")
        if test.state is SwitchTestState.FAILED and result is SwitchTestResult.COMMISSIONED:
            raise SwitchTestError(
                SwitchTestErrorKind.STATE,
                f"test {test_id} failed ({test.detail}): the switch can't be commissioned by it; test again",
            )
        switch = store.switch_state(cur, test.switch_id)
        assert switch is not None
        state, meter_id, retired_at = switch
        if retired_at is not None:
            raise SwitchTestError(SwitchTestErrorKind.RETIRED, f"switch {test.switch_id} was retired")
        if meter_id != test.meter_id:
            raise SwitchTestError(
                SwitchTestErrorKind.STATE,
                f"switch {test.switch_id} moved to meter {meter_id} after test {test_id} (on {test.meter_id}): "
                "test it on its meter",
            )
        later = cur.execute(
            "SELECT test_id FROM switch_tests WHERE switch_id = %s AND test_id > %s AND state <> 'refused' "
            "ORDER BY test_id DESC LIMIT 1",
            (test.switch_id, test_id),
        ).fetchone()
        if later is not None:
            raise SwitchTestError(
                SwitchTestErrorKind.STATE, f"switch {test.switch_id} was tested again since (test {later['test_id']})"
            )
        store.update_test(cur, test_id, result=str(result), result_note=words, result_by=actor, result_at=now)
        store.note_on_switch(
            cur,
            test.switch_id,
            by=actor,
            now=now,
            detail=f"test {test_id}: {result}: {words}",
            state_from=state,
            state_to=CommissioningState(str(result)),
        )
        recorded = store.lock_test(cur, test_id)
    assert recorded is not None
    return recorded
