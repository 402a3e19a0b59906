"""The dispatcher's driver of commissioning tests: each step a relay command, the next one once it has ended.

At each of its steps the dispatcher calls `SwitchTestDriver.step`. A pending test starts when its meter has no relay
command of another in flight (a protected or keep-supply customer's test goes back to awaiting an operator's approval
if it was not approved); each step's command is created as the dispatcher's own are (`created`, due now, audited) and
sent, re-checked, retried and confirmed by the dispatcher like any other; when it ends, the step is judged from the
relay position the meter read back and the next one is created. A reconnect-allowed meter's close is an allowed
close (合闸允许): the step then waits for the customer's button (the meter reports the press) up to `button_wait`.

A test that ended — passed, failed at a step, or cancelled — never leaves the customer otherwise than the account
requires: when a command that may have moved the relay was sent and the relay is not known to be where the
account's supply wants it (closed for a customer with supply, open for one disconnected; without an account, where
the test found it), a last `restore` step sends it back. The test is finished once that has ended. Each step's end
and the test's outcome are recorded in the switch's history; a failed test leaves the switch `failed`, a cancelled
one gives it back its state before, a passed one leaves it `testing` until field staff record the result.

`recheck` is the dispatcher's send-time check of a test's command: still its test's running step, the test still
running (a restore goes whatever the test's state), and an open of a protected or keep-supply customer approved.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row

from headend.commissioning import store
from headend.commissioning.operations import plan_detail, protection
from headend.commissioning.states import StepKind, StepState, SwitchTestState
from headend.db.faults import is_data_fault
from headend.dispatch import store as commands
from headend.dispatch.lifecycle import OPEN_STATES, TERMINAL, CommandState
from headend.registry.switches import CommissioningState
from protocols.relay_codec import RelayAction

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]
DRIVER_ACTOR: Final = "dispatcher"
MAX_TESTS_A_STEP: Final = 200
_ACTIONS: Final = {
    StepKind.READ_STATE: RelayAction.READ_RELAY,
    StepKind.OPEN: RelayAction.DISCONNECT,
    StepKind.CONFIRM_OPEN: RelayAction.READ_RELAY,
    StepKind.CLOSE_OR_ALLOW: RelayAction.RECONNECT,
    StepKind.CONFIRM_CLOSED: RelayAction.READ_RELAY,
}


@dataclass(frozen=True, slots=True)
class TestCheck:
    """The send-time check of a test's command: send it or not, why, and what was looked at."""

    __test__ = False  # a name pytest would otherwise take for a test class

    send: bool
    detail: str
    inputs: dict[str, Any]


def recheck(cur: store.Cursor, command: commands.Command) -> TestCheck:
    """Judge a test's command just before it is sent: its test's running step, and the customer's protection."""
    assert command.test_id is not None
    row = cur.execute(
        "SELECT t.state AS test_state, t.approved_by, s.ordinal, s.kind, s.state AS step_state "
        "FROM switch_tests t JOIN switch_test_steps s ON s.test_id = t.test_id AND s.command_id = %s "
        "WHERE t.test_id = %s",
        (command.command_id, command.test_id),
    ).fetchone()
    inputs: dict[str, Any] = {"test_id": command.test_id}
    if row is None:
        return TestCheck(False, f"not a step of test {command.test_id}", inputs)
    inputs |= {"step": row["ordinal"], "kind": row["kind"], "test_state": row["test_state"]}
    if row["step_state"] != StepState.RUNNING:
        return TestCheck(False, f"test {command.test_id}'s step {row['ordinal']} is {row['step_state']}", inputs)
    if row["kind"] == StepKind.RESTORE:
        return TestCheck(True, f"putting the relay back after test {command.test_id}", inputs)
    if row["test_state"] != SwitchTestState.RUNNING:
        return TestCheck(False, f"test {command.test_id} is {row['test_state']}", inputs)
    if command.action is RelayAction.DISCONNECT:
        account = cur.execute(
            "SELECT account_id, protected, keep_supply, supply FROM prepaid_accounts WHERE meter_id = %s",
            (command.meter_id,),
        ).fetchone()
        if account is not None:
            inputs |= {
                "account_id": account["account_id"],
                "protected": account["protected"],
                "keep_supply": account["keep_supply"],
                "supply": account["supply"],
                "approved_by": row["approved_by"],
            }
            why = protection(account["account_id"], account["protected"], account["keep_supply"])
            if why is not None and row["approved_by"] is None:
                return TestCheck(False, f"{why}; test {command.test_id} was not approved", inputs)
    return TestCheck(True, f"test {command.test_id}, step {row['ordinal']} ({row['kind']})", inputs)


@dataclass(frozen=True, slots=True)
class _Judged:
    state: StepState
    detail: str
    relay: str | None


def _judge(kind: StepKind, command: commands.Command, test_cancelled: bool) -> _Judged:
    """A step's outcome from its ended command and the relay position the meter read back."""
    relay = command.relay
    if command.state is not CommandState.CONFIRMED:
        state = StepState.CANCELLED if test_cancelled and command.state is CommandState.CANCELLED else StepState.FAILED
        return _Judged(state, f"{command.state}: {command.detail}", relay)
    if kind is StepKind.OPEN:
        return _Judged(StepState.PASSED, "relay opened: read back open", relay)
    if kind is StepKind.CONFIRM_OPEN:
        if relay == "open":
            return _Judged(StepState.PASSED, "relay read back open", relay)
        return _Judged(StepState.FAILED, f"relay read back {relay}: it did not stay open", relay)
    if kind is StepKind.CONFIRM_CLOSED:
        if relay == "closed":
            return _Judged(StepState.PASSED, "relay read back closed", relay)
        return _Judged(StepState.FAILED, f"relay read back {relay}: it is not closed", relay)
    if kind is StepKind.CLOSE_OR_ALLOW:
        if relay == "closed":
            return _Judged(StepState.PASSED, "relay closed: read back closed", relay)
        # a confirmed reconnect that left the relay open left it armed (headend.dispatch.lifecycle)
        return _Judged(
            StepState.WAITING_BUTTON,
            "relay armed (合闸允许): waiting for the customer to press the meter's button on site",
            relay,
        )
    if kind is StepKind.RESTORE:
        armed = ", armed for the customer's button (合闸允许)" if relay == "open" and _is_reconnect(command) else ""
        return _Judged(StepState.PASSED, f"relay put back {relay}{armed}", relay)
    return _Judged(StepState.PASSED, f"relay read {relay}", relay)


def _is_reconnect(command: commands.Command) -> bool:
    return command.action is RelayAction.RECONNECT


def _span(span: timedelta) -> str:
    seconds = span.total_seconds()
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


def _command_id(test_id: int, ordinal: int, kind: StepKind) -> str:
    return f"test:{test_id}:{ordinal}:{kind}"


class SwitchTestDriver:
    """Advances the commissioning tests not finished, each in a transaction of its own (dispatch role)."""

    def __init__(self, command_ttl: timedelta, button_wait: timedelta) -> None:
        self._ttl = command_ttl
        self._button_wait = button_wait
        self._failing: set[int] = set()  # tests whose advance raised: logged once, tried again each step

    def step(self, conn: Connection, now: datetime) -> int:
        """Advance every test not finished once; how many changed."""
        rows = conn.execute(
            "SELECT test_id FROM switch_tests WHERE finished_at IS NULL AND state <> 'awaiting_approval' "
            "ORDER BY test_id LIMIT %s",
            (MAX_TESTS_A_STEP,),
        ).fetchall()
        changed = 0
        for (test_id,) in rows:
            try:
                with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                    changed += self._advance(cur, int(test_id), now)
                self._failing.discard(int(test_id))
            except Exception as exc:
                if isinstance(exc, psycopg.Error) and not is_data_fault(exc):
                    raise  # the database's own failure: the dispatcher's loop reconnects
                # a bug, most likely: one test must not stop the dispatcher or the other tests
                if int(test_id) not in self._failing:
                    log.exception("commissioning test %s could not be advanced", test_id)
                    self._failing.add(int(test_id))
        return changed

    def _advance(self, cur: store.Cursor, test_id: int, now: datetime) -> int:
        test = store.lock_test(cur, test_id, skip_locked=True)
        if test is None or test.finished_at is not None:
            return 0
        if test.state is SwitchTestState.PENDING:
            return int(self._start(cur, test, now))
        if test.state is SwitchTestState.AWAITING_APPROVAL:
            return 0
        moved = False
        current = test.current_step()
        if current is not None:
            judged = self._follow(cur, test, current, now)
            if judged is None:
                return 0
            self._end_step(cur, test, current, judged, now)
            moved = True
            test = store.lock_test(cur, test_id)
            assert test is not None
            if test.current_step() is not None:
                return 1  # armed: the customer's button comes next
        if test.state is SwitchTestState.RUNNING:
            failed = next((s for s in test.steps if s.state is StepState.FAILED), None)
            following = next((s for s in test.steps if s.state is StepState.PENDING), None)
            if failed is None and following is not None:
                self._send(cur, test, following, _ACTIONS[following.kind], following.detail, now)
                return 1
            if failed is None:
                verdict, detail = SwitchTestState.PASSED, "every step passed"
            else:
                verdict, detail = (
                    SwitchTestState.FAILED,
                    f"failed at step {failed.ordinal} ({failed.kind}): {failed.detail}",
                )
            store.update_test(cur, test_id, state=str(verdict), detail=store.text(detail))
            store.skip_pending_steps(cur, test_id, now, "not run: an earlier step failed")
            test = store.lock_test(cur, test_id)
            assert test is not None
            moved = True
        return int(self._conclude(cur, test, now) or moved)

    def _start(self, cur: store.Cursor, test: store.SwitchTest, now: datetime) -> bool:
        """Start a pending test once its meter is free and its customer's protection approved."""
        busy = cur.execute(
            "SELECT command_id, action, state FROM commands WHERE meter_id = %s AND state = ANY(%s) "
            "AND test_id IS DISTINCT FROM %s ORDER BY issued_at LIMIT 1",
            (test.meter_id, sorted(str(s) for s in OPEN_STATES), test.test_id),
        ).fetchone()
        if busy is not None:
            waiting = (
                f"pending: waiting for command {busy['command_id']} ({busy['action']}, {busy['state']}) on the meter "
                "to end"
            )
            if test.detail != waiting:
                store.update_test(cur, test.test_id, detail=store.text(waiting))
                return True
            return False
        account = cur.execute(
            "SELECT account_id, protected, keep_supply FROM prepaid_accounts WHERE meter_id = %s", (test.meter_id,)
        ).fetchone()
        why = (
            None if account is None else protection(account["account_id"], account["protected"], account["keep_supply"])
        )
        if why is not None and test.approved_by is None:
            store.update_test(
                cur,
                test.test_id,
                state=str(SwitchTestState.AWAITING_APPROVAL),
                approval_reason=store.text(why),
                detail=store.text(f"awaiting approval: {why}"),
            )
            return True
        store.update_test(
            cur, test.test_id, state=str(SwitchTestState.RUNNING), started_at=now, detail="running: step 1 (read_state)"
        )
        first = test.steps[0]
        assert first.kind is StepKind.READ_STATE, first
        assert first.state is StepState.PENDING, first
        self._send(cur, test, first, RelayAction.READ_RELAY, first.detail, now)
        return True

    def _send(
        self,
        cur: store.Cursor,
        test: store.SwitchTest,
        step: store.SwitchTestStep,
        action: RelayAction,
        what: str,
        now: datetime,
    ) -> None:
        command_id = _command_id(test.test_id, step.ordinal, step.kind)
        commands.create_test_command(
            cur,
            command_id,
            test.meter_id,
            action,
            test.test_id,
            by=test.requested_by,
            now=now,
            ttl=self._ttl,
            detail=store.text(
                f"{action} requested by test {test.test_id} of switch {test.switch_id}, step "
                f"{step.ordinal} ({step.kind}): {what}"
            ),
            inputs={"test_id": test.test_id, "switch_id": test.switch_id, "step": step.ordinal, "kind": str(step.kind)},
        )
        store.update_step(
            cur,
            test.test_id,
            step.ordinal,
            state=str(StepState.RUNNING),
            command_id=command_id,
            started_at=now,
            detail=store.text(f"{what}: command {command_id} created"),
        )
        if test.state is SwitchTestState.RUNNING:
            store.update_test(cur, test.test_id, detail=f"running: step {step.ordinal} ({step.kind})")

    def _follow(
        self, cur: store.Cursor, test: store.SwitchTest, step: store.SwitchTestStep, now: datetime
    ) -> _Judged | None:
        """The outcome of the step in hand once it has one; None while it goes on (its progress noted)."""
        assert step.command_id is not None
        command = commands.lock_command(cur, step.command_id)
        assert command is not None, step.command_id
        cancelled = test.state is SwitchTestState.CANCELLED
        if step.state is StepState.WAITING_BUTTON:
            assert command.finished_at is not None
            relay = cur.execute(
                "SELECT relay, received_at FROM meter_relays WHERE meter_id = %s", (test.meter_id,)
            ).fetchone()
            if relay is not None and relay["relay"] == "closed" and relay["received_at"] >= command.finished_at:
                return _Judged(StepState.PASSED, "relay closed by the customer's button", "closed")
            if cancelled:
                return _Judged(StepState.CANCELLED, "cancelled while waiting for the customer's button", "open")
            if now - command.finished_at >= self._button_wait:
                return _Judged(
                    StepState.FAILED,
                    f"no press of the button within {_span(self._button_wait)}: the relay stays open, armed",
                    "open",
                )
            return None
        if command.state not in TERMINAL:
            if cancelled and step.kind is not StepKind.RESTORE and commands.can_cancel(command.state):
                command = commands.move(
                    cur,
                    command,
                    CommandState.CANCELLED,
                    now,
                    actor=DRIVER_ACTOR,
                    detail=store.text(f"test {test.test_id} was {test.detail}"),
                )
            else:
                progress = store.text(
                    f"{plan_detail(step.kind, test.reconnect_mode)}: {command.state}, {command.detail}"
                )
                if step.kind is StepKind.RESTORE:
                    progress = store.text(f"put the relay back: {command.state}, {command.detail}")
                if progress != step.detail:
                    store.update_step(cur, test.test_id, step.ordinal, detail=progress)
                return None
        return _judge(step.kind, command, cancelled)

    def _end_step(
        self,
        cur: store.Cursor,
        test: store.SwitchTest,
        step: store.SwitchTestStep,
        judged: _Judged,
        now: datetime,
    ) -> None:
        waiting = judged.state is StepState.WAITING_BUTTON
        store.update_step(
            cur,
            test.test_id,
            step.ordinal,
            state=str(judged.state),
            detail=store.text(judged.detail),
            relay=judged.relay,
            finished_at=None if waiting else now,
        )
        store.note_on_switch(
            cur,
            test.switch_id,
            by=DRIVER_ACTOR,
            now=now,
            detail=f"test {test.test_id}, step {step.ordinal} ({step.kind}): {judged.state}: {judged.detail}",
        )

    def _conclude(self, cur: store.Cursor, test: store.SwitchTest, now: datetime) -> bool:
        """Put the relay back when needed, then finish the test; whether anything changed."""
        if test.state not in (SwitchTestState.PASSED, SwitchTestState.FAILED, SwitchTestState.CANCELLED):
            return False
        if test.current_step() is not None:
            return False
        restore = next((s for s in test.steps if s.kind is StepKind.RESTORE), None)
        if restore is None:
            wanted = self._restore_needed(cur, test)
            if wanted is not None:
                action, why = wanted
                ordinal = max(s.ordinal for s in test.steps) + 1
                cur.execute(
                    "INSERT INTO switch_test_steps (test_id, ordinal, kind, state, detail) "
                    "VALUES (%s, %s, 'restore', 'pending', %s)",
                    (test.test_id, ordinal, store.text(why)),
                )
                added = next(s for s in store.steps_of(cur, test.test_id) if s.ordinal == ordinal)
                self._send(cur, test, added, action, why, now)
                store.update_test(cur, test.test_id, detail=store.text(f"{test.detail}; putting the relay back: {why}"))
                return True
        self._finish(cur, test, restore, now)
        return True

    def _restore_needed(self, cur: store.Cursor, test: store.SwitchTest) -> tuple[RelayAction, str] | None:
        """The command that puts the relay back where the account wants it, and why; None when it is there already."""
        position: str | None = None
        moved = False
        found_at_start: str | None = None
        for step in test.steps:
            if step.command_id is None:
                continue
            command = commands.lock_command(cur, step.command_id)
            assert command is not None, step.command_id
            may_have_moved = command.action is not RelayAction.READ_RELAY and command.attempts > 0
            moved = moved or may_have_moved
            if command.relay is not None:
                position = command.relay
            elif may_have_moved:
                position = None  # sent, never answered: nobody knows where the relay is
            if step.state is StepState.PASSED and step.relay is not None:
                position = step.relay
            if step.kind is StepKind.READ_STATE and step.state is StepState.PASSED:
                found_at_start = step.relay
        if not moved:
            return None
        account = cur.execute(
            "SELECT account_id, supply FROM prepaid_accounts WHERE meter_id = %s", (test.meter_id,)
        ).fetchone()
        if account is not None:
            wanted = "open" if account["supply"] == "disconnected" else "closed"
            because = f"account {account['account_id']}'s supply is {account['supply']}"
        elif found_at_start is not None:
            wanted, because = found_at_start, "no account on the meter: as the test found it"
        else:
            return None
        if position == wanted:
            return None
        where = "unknown" if position is None else position
        action = RelayAction.DISCONNECT if wanted == "open" else RelayAction.RECONNECT
        return action, f"put the relay back {wanted} ({because}; it is {where})"

    def _finish(
        self, cur: store.Cursor, test: store.SwitchTest, restore: store.SwitchTestStep | None, now: datetime
    ) -> None:
        state, detail = test.state, test.detail
        if restore is not None and restore.state is not StepState.PASSED:
            detail = f"{detail}; the relay could NOT be put back ({restore.detail}): check the meter on site"
            if state is SwitchTestState.PASSED:
                state = SwitchTestState.FAILED
        elif state is SwitchTestState.PASSED:
            detail = f"{detail}: record the result (commissioned or failed) with a note"
        store.update_test(cur, test.test_id, state=str(state), detail=store.text(detail), finished_at=now)
        switch = store.switch_state(cur, test.switch_id)
        assert switch is not None
        switch_now, meter_id, retired_at = switch
        target: CommissioningState | None = None
        if retired_at is None and meter_id == test.meter_id and switch_now is CommissioningState.TESTING:
            if state is SwitchTestState.FAILED:
                target = CommissioningState.FAILED
            elif state is SwitchTestState.CANCELLED:
                target = test.switch_state_before
        store.note_on_switch(
            cur,
            test.switch_id,
            by=test.cancelled_by or DRIVER_ACTOR,
            now=now,
            detail=f"test {test.test_id} {state}: {detail}",
            state_from=switch_now,
            state_to=target,
        )
