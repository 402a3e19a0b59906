"""The names of a relay command's states, reconnect modes and alarm kinds: enums only, cheap to import.

The command line builds its options from them, and `headend --help` must not import the engine that
`headend.dispatch.lifecycle` needs for its transitions.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class CommandState(StrEnum):
    """Where a relay command is in its life."""

    CREATED = "created"  # accepted from the outbox, not sent yet
    HELD = "held"  # waits for an operator's approval (storm limit, open alarm on the meter)
    SENT = "sent"  # published at least once, no answer yet
    ACKNOWLEDGED = "acknowledged"  # the meter answered "executed"; the relay position is not confirmed yet
    CONFIRMED = "confirmed"  # the relay was read back in the intended position
    FAILED = "failed"  # the meter refused or could not; or reported the wrong position
    EXPIRED = "expired"  # no answer before the deadline: nothing is known to have happened
    SUPERSEDED = "superseded"  # a later command for the meter replaced it
    CANCELLED = "cancelled"  # an operator, or the send-time re-check, withdrew it


class ReconnectMode(StrEnum):
    """How a meter model reconnects."""

    DIRECT = "direct"  # the relay closes on command
    ALLOWED = "allowed"  # 合闸允许: the meter arms, the customer presses the button on site


class AlarmKind(StrEnum):
    """What an alarm about a meter's relay says."""

    RELAY_MISMATCH = "relay_mismatch"  # executed, but the relay is not where the command put it
    COMMAND_FAILED = "command_failed"  # the meter tried and failed
    UNEXPECTED_RELAY_CHANGE = "unexpected_relay_change"  # the relay moved without a command or a button press


TERMINAL: Final = frozenset(
    {CommandState.CONFIRMED, CommandState.FAILED, CommandState.EXPIRED, CommandState.SUPERSEDED, CommandState.CANCELLED}
)
OPEN_STATES: Final = frozenset({CommandState.CREATED, CommandState.HELD, CommandState.SENT, CommandState.ACKNOWLEDGED})
