"""The relay command's state machine, retry schedule and the judging of a meter's answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from headend.dispatch.lifecycle import (
    OPEN_STATES,
    TERMINAL,
    AlarmKind,
    CommandState,
    EventWindow,
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


WINDOW = EventWindow(timedelta(seconds=300), timedelta(days=7), timedelta(hours=1))


def test_an_event_inside_the_window_is_applied_up_to_its_edges() -> None:
    assert WINDOW.refusal(TS, TS) is None
    assert WINDOW.refusal(TS + timedelta(seconds=300), TS) is None
    assert WINDOW.refusal(TS - timedelta(days=7), TS) is None
    issued = TS - timedelta(minutes=5)
    assert WINDOW.refusal(issued - timedelta(hours=1), TS, issued) is None


@pytest.mark.parametrize(
    ("ts", "issued_at", "reason"),
    [
        (TS + timedelta(seconds=301), None, "ts 2026-11-22T08:05:01+00:00 is more than 300 s in the future"),
        (datetime(2099, 1, 1, tzinfo=UTC), TS, "ts 2099-01-01T00:00:00+00:00 is more than 300 s in the future"),
        (TS - timedelta(days=7, seconds=1), None, "ts 2026-11-15T07:59:59+00:00 is more than 7 days old"),
        (
            TS - timedelta(hours=1, seconds=1),
            TS,
            "ts 2026-11-22T06:59:59+00:00 is more than 3600 s before its command was issued "
            "(2026-11-22T08:00:00+00:00)",
        ),
    ],
)
def test_an_event_outside_the_window_is_refused_with_its_reason(
    ts: datetime, issued_at: datetime | None, reason: str
) -> None:
    assert WINDOW.refusal(ts, TS, issued_at) == reason


@pytest.mark.parametrize(
    "ts",
    [
        datetime.fromisoformat("0001-01-01T00:00:00+23:59"),
        datetime.fromisoformat("9999-12-31T23:59:59.999999-23:59"),
        datetime.min.replace(tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC),
    ],
)
def test_times_at_the_edge_of_datetime_are_refused_without_overflow(ts: datetime) -> None:
    # the first two cannot even be converted to UTC: the window compares, it never converts
    assert WINDOW.refusal(ts, TS, TS) is not None
