"""The relay command's state machine, retry schedule and the judging of a meter's answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from headend.dispatch.lifecycle import (
    OPEN_STATES,
    TERMINAL,
    AlarmKind,
    CommandState,
    ReconnectMode,
    RetryPolicy,
    can_move,
    expected_relay,
    interpret_answer,
)
from prepay_engine.account import RelayOutcome
from protocols.readings import RelayState
from protocols.relay_codec import CommandResult, MeterEvent, RelayAction

TS = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def _answer(result: CommandResult, relay: RelayState, armed: bool = False) -> MeterEvent:
    return MeterEvent("m1", relay, TS, command_id="c1", result=result, ready_for_reconnection=armed)


def test_terminal_states_go_nowhere_and_every_state_is_open_or_terminal() -> None:
    assert set(CommandState) == TERMINAL | OPEN_STATES
    assert not TERMINAL & OPEN_STATES
    for ended in TERMINAL:
        assert not any(can_move(ended, target) for target in CommandState)


@pytest.mark.parametrize(
    ("current", "target", "allowed"),
    [
        (CommandState.CREATED, CommandState.SENT, True),
        (CommandState.CREATED, CommandState.HELD, True),
        (CommandState.HELD, CommandState.SENT, False),  # approval goes back to created: re-checked before sending
        (CommandState.HELD, CommandState.CREATED, True),
        (CommandState.SENT, CommandState.SENT, True),  # a resend
        (CommandState.SENT, CommandState.HELD, False),
        (CommandState.ACKNOWLEDGED, CommandState.SENT, False),
        (CommandState.ACKNOWLEDGED, CommandState.CANCELLED, False),
        (CommandState.CREATED, CommandState.CONFIRMED, True),  # the answer to a send whose record was lost
    ],
)
def test_transitions(current: CommandState, target: CommandState, allowed: bool) -> None:
    assert can_move(current, target) is allowed


def test_resends_double_up_to_the_cap() -> None:
    policy = RetryPolicy(first_s=10, cap_s=60)
    delays = [(policy.next_attempt_at(TS, n) - TS).total_seconds() for n in range(1, 7)]
    assert delays == [10, 20, 40, 60, 60, 60]
    assert policy.next_attempt_at(TS, 10_000) == TS + timedelta(seconds=60)


@pytest.mark.parametrize(
    ("action", "mode", "event", "state", "outcome", "alarm"),
    [
        (
            RelayAction.DISCONNECT,
            ReconnectMode.DIRECT,
            _answer(CommandResult.EXECUTED, RelayState.OPEN),
            CommandState.CONFIRMED,
            RelayOutcome.CONFIRMED_OPEN,
            None,
        ),
        (
            RelayAction.DISCONNECT,
            ReconnectMode.DIRECT,
            _answer(CommandResult.EXECUTED, RelayState.CLOSED),
            CommandState.FAILED,
            RelayOutcome.FAILED,
            AlarmKind.RELAY_MISMATCH,
        ),
        (
            RelayAction.DISCONNECT,
            ReconnectMode.DIRECT,
            _answer(CommandResult.REJECTED, RelayState.CLOSED),
            CommandState.FAILED,
            RelayOutcome.FAILED,
            None,
        ),
        (
            RelayAction.DISCONNECT,
            ReconnectMode.DIRECT,
            _answer(CommandResult.FAILED, RelayState.CLOSED),
            CommandState.FAILED,
            RelayOutcome.FAILED,
            AlarmKind.COMMAND_FAILED,
        ),
        (
            RelayAction.RECONNECT,
            ReconnectMode.DIRECT,
            _answer(CommandResult.EXECUTED, RelayState.CLOSED),
            CommandState.CONFIRMED,
            RelayOutcome.CONFIRMED_CLOSED,
            None,
        ),
        (
            RelayAction.RECONNECT,
            ReconnectMode.ALLOWED,
            _answer(CommandResult.EXECUTED, RelayState.OPEN, armed=True),
            CommandState.CONFIRMED,
            RelayOutcome.CONFIRMED_RECONNECT_ALLOWED,
            None,
        ),
        (
            RelayAction.RECONNECT,
            ReconnectMode.ALLOWED,
            _answer(CommandResult.EXECUTED, RelayState.OPEN),
            CommandState.FAILED,
            RelayOutcome.FAILED,
            AlarmKind.RELAY_MISMATCH,
        ),
        (
            RelayAction.READ_RELAY,
            ReconnectMode.DIRECT,
            _answer(CommandResult.EXECUTED, RelayState.OPEN),
            CommandState.CONFIRMED,
            None,
            None,
        ),
        (
            RelayAction.READ_RELAY,
            ReconnectMode.DIRECT,
            _answer(CommandResult.REJECTED, RelayState.OPEN),
            CommandState.FAILED,
            None,
            None,
        ),
    ],
)
def test_answers_are_judged_by_the_relay_read_back(
    action: RelayAction,
    mode: ReconnectMode,
    event: MeterEvent,
    state: CommandState,
    outcome: RelayOutcome | None,
    alarm: AlarmKind | None,
) -> None:
    answer = interpret_answer(action, mode, event)
    assert (answer.state, answer.outcome, answer.alarm) == (state, outcome, alarm)
    assert answer.detail


def test_a_direct_meter_that_arms_is_confirmed_as_reconnect_allowed_with_a_note() -> None:
    answer = interpret_answer(
        RelayAction.RECONNECT, ReconnectMode.DIRECT, _answer(CommandResult.EXECUTED, RelayState.OPEN, armed=True)
    )
    assert answer.outcome is RelayOutcome.CONFIRMED_RECONNECT_ALLOWED
    assert "reconnect-allowed model" in answer.detail


def test_expected_relay_of_each_supply_state() -> None:
    assert expected_relay("connected") is RelayState.CLOSED
    assert expected_relay("disconnected") is RelayState.OPEN
    assert expected_relay("reconnect_allowed") is None
