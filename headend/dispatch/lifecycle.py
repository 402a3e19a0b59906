"""The relay command's state machine and how a meter's answer moves it: pure, `now` is an argument.

created → sent → acknowledged → confirmed, or held (waiting for an operator's approval) / failed / expired /
superseded / cancelled. A meter's "executed" answer is its acknowledgement; the relay position it reports with
it (read back by the meter after acting) confirms the command when it is the intended one, and raises a
mismatch alarm when it is not. Retries resend the same command id (meters execute an id once) with a doubling
delay until the command expires.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final

# the names live where the command line can import them cheaply; re-exported for the state machine's users
from headend.dispatch.states import OPEN_STATES as OPEN_STATES
from headend.dispatch.states import TERMINAL as TERMINAL
from headend.dispatch.states import AlarmKind as AlarmKind
from headend.dispatch.states import CommandState as CommandState
from headend.dispatch.states import ReconnectMode as ReconnectMode
from prepay_engine.account import RelayOutcome
from protocols.readings import RelayState
from protocols.relay_codec import CommandResult, MeterEvent, RelayAction

_NEXT: Final[Mapping[CommandState, frozenset[CommandState]]] = MappingProxyType(
    {
        # an answer to a send whose record was lost (a crash after publishing) still counts
        CommandState.CREATED: frozenset(
            {
                CommandState.HELD,
                CommandState.SENT,
                CommandState.ACKNOWLEDGED,
                CommandState.CONFIRMED,
                CommandState.FAILED,
                CommandState.SUPERSEDED,
                CommandState.CANCELLED,
                CommandState.EXPIRED,
            }
        ),
        CommandState.HELD: frozenset(
            {CommandState.CREATED, CommandState.SUPERSEDED, CommandState.CANCELLED, CommandState.EXPIRED}
        ),
        CommandState.SENT: frozenset(
            {
                CommandState.SENT,
                CommandState.ACKNOWLEDGED,
                CommandState.CONFIRMED,
                CommandState.FAILED,
                CommandState.EXPIRED,
                CommandState.SUPERSEDED,
                CommandState.CANCELLED,
            }
        ),
        CommandState.ACKNOWLEDGED: frozenset(
            {CommandState.CONFIRMED, CommandState.FAILED, CommandState.EXPIRED, CommandState.SUPERSEDED}
        ),
    }
)


def can_move(current: CommandState, target: CommandState) -> bool:
    """Whether the state machine allows `current` → `target`."""
    return target in _NEXT.get(current, frozenset())


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When an unanswered command is sent again: `first_s`, doubling, at most `cap_s` apart."""

    first_s: float = 15.0
    cap_s: float = 120.0

    def __post_init__(self) -> None:
        assert 0 < self.first_s <= self.cap_s, (self.first_s, self.cap_s)

    def next_attempt_at(self, sent_at: datetime, attempts: int) -> datetime:
        """When to resend after the `attempts`-th send at `sent_at`."""
        assert attempts >= 1, attempts
        return sent_at + timedelta(seconds=min(self.cap_s, self.first_s * 2 ** min(attempts - 1, 30)))


@dataclass(frozen=True, slots=True)
class EventWindow:
    """When a meter event may be stamped to be applied: a forged or wild clock must not pin a relay's state.

    Never later than now plus `future_tolerance` (the readings' HEADEND_FUTURE_TOLERANCE_S), never older than
    `max_age`, and an answer never earlier than its command's issue time less `answer_skew` (a clock running behind).
    """

    future_tolerance: timedelta = timedelta(minutes=5)
    max_age: timedelta = timedelta(days=7)
    answer_skew: timedelta = timedelta(hours=1)

    def refusal(self, ts: datetime, now: datetime, issued_at: datetime | None = None) -> str | None:
        """Why an event stamped `ts` is refused at `now` (answering a command issued at `issued_at`); None if not."""
        assert now.utcoffset() is not None
        # comparing aware datetimes subtracts their offsets into a timedelta: no overflow, whatever the year
        if ts > now + self.future_tolerance:
            return f"ts {ts.isoformat()} is more than {_seconds(self.future_tolerance)} s in the future"
        if ts < now - self.max_age:
            return f"ts {ts.isoformat()} is more than {self.max_age / timedelta(days=1):g} days old"
        if issued_at is not None and ts < issued_at - self.answer_skew:
            return (
                f"ts {ts.isoformat()} is more than {_seconds(self.answer_skew)} s before its command was issued "
                f"({issued_at.isoformat()})"
            )
        return None


def _seconds(span: timedelta) -> int:
    return int(span.total_seconds())


@dataclass(frozen=True, slots=True)
class Answer:
    """What a meter's answer to a command means: the new state, the account's outcome, an alarm if any."""

    state: CommandState
    outcome: RelayOutcome | None  # for the account's supply state; None for a relay read
    alarm: AlarmKind | None
    detail: str


def interpret_answer(action: RelayAction, mode: ReconnectMode, event: MeterEvent) -> Answer:
    """Judge a meter's answer to `action` by its result and the relay position it read back."""
    assert event.result is not None, "a spontaneous event is not an answer"
    if event.result is CommandResult.REJECTED:
        return Answer(CommandState.FAILED, _failed(action), None, f"rejected by the meter: {event.detail or '-'}")
    if event.result is CommandResult.FAILED:
        return Answer(
            CommandState.FAILED,
            _failed(action),
            AlarmKind.COMMAND_FAILED,
            f"failed at the meter: {event.detail or '-'}",
        )
    relay, armed = event.relay, event.ready_for_reconnection
    if action is RelayAction.READ_RELAY:
        return Answer(CommandState.CONFIRMED, None, None, f"relay read {relay}" + (", armed" if armed else ""))
    if action is RelayAction.DISCONNECT:
        if relay is RelayState.OPEN:
            return Answer(CommandState.CONFIRMED, RelayOutcome.CONFIRMED_OPEN, None, "relay read back open")
        return Answer(
            CommandState.FAILED,
            RelayOutcome.FAILED,
            AlarmKind.RELAY_MISMATCH,
            "the meter reports the disconnect executed but the relay is closed",
        )
    if relay is RelayState.CLOSED:
        return Answer(CommandState.CONFIRMED, RelayOutcome.CONFIRMED_CLOSED, None, "relay read back closed")
    if armed:
        note = "" if mode is ReconnectMode.ALLOWED else " (the meter behaves as a reconnect-allowed model)"
        return Answer(
            CommandState.CONFIRMED,
            RelayOutcome.CONFIRMED_RECONNECT_ALLOWED,
            None,
            "relay open and armed: the customer closes it with the button" + note,
        )
    return Answer(
        CommandState.FAILED,
        RelayOutcome.FAILED,
        AlarmKind.RELAY_MISMATCH,
        "the meter reports the reconnect executed but the relay is open and not armed",
    )


def _failed(action: RelayAction) -> RelayOutcome | None:
    return None if action is RelayAction.READ_RELAY else RelayOutcome.FAILED


def account_outcome_on_end(action: RelayAction, state: CommandState) -> RelayOutcome | None:
    """The account's outcome when a command ends without an answer (expired, superseded, cancelled)."""
    assert state in (CommandState.EXPIRED, CommandState.SUPERSEDED, CommandState.CANCELLED), state
    return _failed(action)


def expected_relay(supply: str) -> RelayState | None:
    """Where the relay of an account in `supply` should be; None when either position is legitimate."""
    if supply == "connected":
        return RelayState.CLOSED
    if supply == "disconnected":
        return RelayState.OPEN
    return None  # reconnect allowed: open until the customer presses the button
