"""The names of a commissioning test's states, steps and results: enums only, cheap to import.

The command line builds its options from them; `headend --help` must not import a database driver for them.
Migration 0025 checks the same values.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class SwitchTestState(StrEnum):
    """Where a commissioning test is."""

    PENDING = "pending"  # asked for; the dispatcher starts it at its next step
    AWAITING_APPROVAL = "awaiting_approval"  # a protected or keep-supply (保电) customer: an operator must approve
    RUNNING = "running"  # its steps are being sent and followed
    PASSED = "passed"  # every step passed (the relay may still be being put back: `finished_at` is then unset)
    FAILED = "failed"  # a step failed
    REFUSED = "refused"  # a safety rule refused it when it was asked for: nothing was sent
    CANCELLED = "cancelled"  # withdrawn by a person; the relay is put back where the account requires it


class StepKind(StrEnum):
    """What a step of the test does; each one sends a relay command."""

    READ_STATE = "read_state"  # read the relay's position
    OPEN = "open"  # open it (disconnect)
    CONFIRM_OPEN = "confirm_open"  # read it back: open
    CLOSE_OR_ALLOW = "close_or_allow"  # close it, or allow closing (合闸允许) and wait for the customer's button
    CONFIRM_CLOSED = "confirm_closed"  # read it back: closed
    RESTORE = "restore"  # put the relay back where the customer's account requires it (when the test left it elsewhere)


class StepState(StrEnum):
    """Where a step is."""

    PENDING = "pending"  # not reached yet
    RUNNING = "running"  # its command is on its way
    WAITING_BUTTON = "waiting_button"  # the meter is armed (合闸允许): the customer presses the button on site
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"  # never run: the test ended before it
    CANCELLED = "cancelled"  # the test was cancelled while it ran


class SwitchTestResult(StrEnum):
    """What field staff record once the steps are over."""

    COMMISSIONED = "commissioned"
    FAILED = "failed"


PLAN: Final = (
    StepKind.READ_STATE,
    StepKind.OPEN,
    StepKind.CONFIRM_OPEN,
    StepKind.CLOSE_OR_ALLOW,
    StepKind.CONFIRM_CLOSED,
)
ENDED: Final = frozenset(
    {SwitchTestState.PASSED, SwitchTestState.FAILED, SwitchTestState.REFUSED, SwitchTestState.CANCELLED}
)
STEP_OPEN: Final = frozenset({StepState.RUNNING, StepState.WAITING_BUTTON})
NOTE_MAX: Final = 1000  # a result's note
REASON_MAX: Final = 500  # a cancellation's reason
DETAIL_MAX: Final = 2000  # the sentences of a test and its steps (migration 0025)
