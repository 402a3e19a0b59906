"""The load relay of one simulated meter: commands answered after a delay, faults, and "reconnect allowed" (合闸允许).

Pure: no I/O, no clock reads; every method takes `now`. A meter works through its commands one at a time,
so answers leave in the order the commands arrived. Each command's answer is decided when it arrives, from
the relay position the meter will have when it gets to it, and the relay moves at the answer's `due_at`.
A button press waits for the command in hand, so it never changes what an answer already promised.
"""

from __future__ import annotations

import bisect
import random
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from protocols.readings import RelayState
from protocols.relay_codec import CommandResult, EventCause, MeterEvent, RelayAction, RelayCommandMessage

ReconnectMode = Literal["direct", "allowed"]
RECONNECT_MODES: tuple[ReconnectMode, ...] = ("direct", "allowed")
DEFAULT_DELAY_S = (0.2, 1.5)
# a real meter remembers only its recent command ids; enough for every retry of a dispatcher
MAX_REMEMBERED_COMMANDS = 256

DETAIL_REJECTED = "rejected by meter"
DETAIL_EXPIRED = "expired"


class RelayFault(StrEnum):
    """How a meter misbehaves on relay commands."""

    NONE = "none"
    OFFLINE = "offline"  # receives nothing, answers nothing
    REJECT = "reject"  # answers every command with rejected
    SILENT = "silent"  # receives commands, answers none, the relay does not move
    STUCK = "stuck"  # answers executed, but the relay does not move


@dataclass(frozen=True, slots=True)
class ScheduledEvent:
    """An event the meter sends at `due_at` (its own clock)."""

    due_at: datetime
    event: MeterEvent


@dataclass(frozen=True, slots=True)
class RelayStatus:
    """The relay's position and whether a reconnect-allowed meter is armed, waiting for the button."""

    relay: RelayState
    armed: bool = False


@dataclass(frozen=True, slots=True)
class _Step:
    """One thing the meter does at `due_at`: execute (or refuse) a command, repeat an old answer, or a press."""

    due_at: datetime
    kind: Literal["command", "repeat", "press"]
    command_id: str | None = None
    action: RelayAction | None = None
    result: CommandResult | None = None
    detail: str | None = None
    stuck: bool = False


class RelaySim:
    """The relay model of one meter, driven by commands and button presses at given instants."""

    def __init__(
        self,
        meter_id: str,
        *,
        seed: int = 0,
        reconnect_mode: ReconnectMode = "direct",
        relay: RelayState = RelayState.CLOSED,
        fault: RelayFault = RelayFault.NONE,
        delay_s: tuple[float, float] = DEFAULT_DELAY_S,
        button_delay_s: float | None = None,
    ) -> None:
        low, high = delay_s
        if not 0.0 <= low <= high:
            raise ValueError(f"delay_s must be (low, high) with 0 <= low <= high, got {delay_s}")
        if button_delay_s is not None and button_delay_s < 0:
            raise ValueError(f"button_delay_s must not be negative, got {button_delay_s}")
        if reconnect_mode not in RECONNECT_MODES:
            raise ValueError(f"reconnect_mode must be 'direct' or 'allowed', got {reconnect_mode!r}")
        self.meter_id = meter_id
        self.reconnect_mode: ReconnectMode = reconnect_mode
        self.fault = fault
        self.delay_s = delay_s
        self.button_delay_s = button_delay_s
        self._rng = random.Random(f"relay:{seed}:{meter_id}")  # noqa: S311 - reproducible simulation, not security
        self._status = RelayStatus(relay)
        self._steps: list[_Step] = []
        self._answered: OrderedDict[str, tuple[CommandResult, str | None]] = OrderedDict()
        # commands taken in (not while offline), and those answered "executed" the first time
        self.commands_received = 0
        self.commands_executed = 0

    # --- reading the state ---------------------------------------------------------------

    @property
    def status(self) -> RelayStatus:
        """Relay and arming as of the last `pop_due`."""
        return self._status

    @property
    def relay(self) -> RelayState:
        """Relay position as of the last `pop_due`."""
        return self._status.relay

    def status_at(self, now: datetime) -> RelayStatus:
        """Relay and arming at `now`, counting every step due by then (nothing is applied)."""
        status = self._status
        for step in self._steps:
            if step.due_at > now:
                break
            status, _ = self._apply(status, step)
        return status

    def relay_at(self, now: datetime) -> RelayState:
        """Relay position at `now`, counting every step due by then."""
        return self.status_at(now).relay

    def next_due(self) -> datetime | None:
        """When the next pending step is due, or None when the meter is idle."""
        return self._steps[0].due_at if self._steps else None

    @property
    def pending(self) -> int:
        """Steps received or scheduled and not yet due."""
        return len(self._steps)

    # --- inputs ----------------------------------------------------------------------------

    def set_fault(self, fault: RelayFault) -> None:
        """Change the fault; it applies to commands received from now on."""
        self.fault = fault

    def receive(self, command: RelayCommandMessage, now: datetime) -> list[ScheduledEvent]:
        """Take a command at `now`; return the answer it will send (none when offline or silent)."""
        if command.meter_id != self.meter_id:
            raise ValueError(f"command for {command.meter_id} given to meter {self.meter_id}")
        if self.fault is RelayFault.OFFLINE:
            return []
        self.commands_received += 1
        # one draw for every command received, so one fault does not reshuffle the delays of the rest
        delay = timedelta(seconds=self._rng.uniform(*self.delay_s))
        if self.fault is RelayFault.SILENT:
            return []
        due_at = max([now + delay, *(s.due_at for s in self._steps if s.kind != "press")])
        remembered = self._answered.get(command.command_id)
        if remembered is not None:
            result, detail = remembered
            step = _Step(due_at, "repeat", command.command_id, command.action, result, detail)
        else:
            # the meter acts when it gets to the command, so expiry is judged at due_at, not on arrival
            if due_at > command.expires_at:
                result, detail = CommandResult.REJECTED, DETAIL_EXPIRED
            elif self.fault is RelayFault.REJECT:
                result, detail = CommandResult.REJECTED, DETAIL_REJECTED
            else:
                result, detail = CommandResult.EXECUTED, None
            stuck = self.fault is RelayFault.STUCK
            step = _Step(due_at, "command", command.command_id, command.action, result, detail, stuck)
            self._remember(command.command_id, result, detail)
        before = self.status_at(due_at)
        after, event = self._apply(before, step)
        self._insert(step)
        if step.kind == "command" and step.result is CommandResult.EXECUTED:
            self.commands_executed += 1
            if after.armed and not before.armed and self.button_delay_s is not None:
                # the simulated customer walks to the meter and presses the button
                self._insert(_Step(due_at + timedelta(seconds=self.button_delay_s), "press"))
        assert event is not None
        return [ScheduledEvent(due_at, event)]

    def press_button(self, now: datetime) -> list[ScheduledEvent]:
        """The customer presses the button at `now`: an armed relay closes (a spontaneous event), else nothing.

        A press while the meter still works on a command takes effect right after that command.
        """
        due_at = max([now, *(s.due_at for s in self._steps if s.kind != "press")])
        step = _Step(due_at, "press")
        _, event = self._apply(self.status_at(due_at), step)
        if event is None:
            return []
        self._insert(step)
        return [ScheduledEvent(due_at, event)]

    def pop_due(self, now: datetime) -> list[ScheduledEvent]:
        """Apply every step due by `now` and return the events to send, oldest first (none while offline)."""
        events: list[ScheduledEvent] = []
        while self._steps and self._steps[0].due_at <= now:
            step = self._steps.pop(0)
            self._status, event = self._apply(self._status, step)
            if event is not None:
                events.append(ScheduledEvent(step.due_at, event))
        # an offline meter still moves its relay, but the event never leaves it
        return [] if self.fault is RelayFault.OFFLINE else events

    # --- internals ----------------------------------------------------------------------

    def _insert(self, step: _Step) -> None:
        # after every step due at the same instant: steps at one instant run in arrival order
        index = bisect.bisect_right([s.due_at for s in self._steps], step.due_at)
        self._steps.insert(index, step)

    def _remember(self, command_id: str, result: CommandResult, detail: str | None) -> None:
        self._answered[command_id] = (result, detail)
        while len(self._answered) > MAX_REMEMBERED_COMMANDS:
            self._answered.popitem(last=False)

    def _apply(self, status: RelayStatus, step: _Step) -> tuple[RelayStatus, MeterEvent | None]:
        """The status after `step` and the event it produces; the same inputs always give the same outputs."""
        if step.kind == "press":
            if not status.armed or status.relay is RelayState.CLOSED:
                return status, None
            after = RelayStatus(RelayState.CLOSED)
            event = MeterEvent(self.meter_id, after.relay, step.due_at, cause=EventCause.BUTTON_PRESSED)
            return after, event
        after = status
        if step.kind == "command" and step.result is CommandResult.EXECUTED and not step.stuck:
            after = _execute(status, step.action, self.reconnect_mode)
        assert step.command_id is not None
        assert step.result is not None
        event = MeterEvent(
            self.meter_id,
            after.relay,
            step.due_at,
            command_id=step.command_id,
            result=step.result,
            ready_for_reconnection=after.armed,
            detail=step.detail,
        )
        return after, event


def _execute(status: RelayStatus, action: RelayAction | None, mode: ReconnectMode) -> RelayStatus:
    if action is RelayAction.DISCONNECT:
        return RelayStatus(RelayState.OPEN)
    if action is RelayAction.RECONNECT:
        if mode == "allowed" and status.relay is RelayState.OPEN:
            return replace(status, armed=True)
        return RelayStatus(RelayState.CLOSED)
    return status


def plan_relay_faults(
    meter_ids: Sequence[str],
    seed: int,
    *,
    stuck_fraction: float = 0.0,
    reject_fraction: float = 0.0,
    silent_fraction: float = 0.0,
    offline_ids: Iterable[str] = (),
) -> dict[str, RelayFault]:
    """Pick, deterministically from `seed`, disjoint sets of stuck, rejecting and silent meters; healthy ones left out.

    `offline_ids` (meters offline for readings too) are offline for commands as well and take precedence.
    """
    fractions = {
        RelayFault.STUCK: stuck_fraction,
        RelayFault.REJECT: reject_fraction,
        RelayFault.SILENT: silent_fraction,
    }
    for fault, fraction in fractions.items():
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"{fault.value} fraction must be within 0..1, got {fraction}")
    counts = {fault: round(fraction * len(meter_ids)) for fault, fraction in fractions.items()}
    if sum(counts.values()) > len(meter_ids):
        raise ValueError("the stuck, reject and silent fractions add up to more than every meter")
    order = list(meter_ids)
    random.Random(f"relay-faults:{seed}").shuffle(order)  # noqa: S311 - reproducible simulation, not security
    plan: dict[str, RelayFault] = {}
    start = 0
    for fault, n in counts.items():
        plan.update((meter_id, fault) for meter_id in order[start : start + n])
        start += n
    plan.update((meter_id, RelayFault.OFFLINE) for meter_id in offline_ids)
    return plan
