"""Request and response bodies of the command, alarm and relay endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from headend.api.schemas import StorableText
from headend.dispatch.lifecycle import AlarmKind, CommandState, ReconnectMode
from protocols.readings import RelayState
from protocols.relay_codec import RelayAction

NOTE_MAX: Final = 256

_COMMAND_EXAMPLE: Final[dict[str, Any]] = {
    "command_id": "relay:A0001:3:disconnect",
    "account_id": "A0001",
    "sequence": 3,
    "meter_id": "000000000001",
    "concentrator_id": None,
    "action": "disconnect",
    "reconnect_mode": "direct",
    "state": "created",
    "attempts": 0,
    "next_attempt_at": "2026-11-22T02:31:07.120455Z",
    "issued_at": "2026-11-22T02:15:00.481223Z",
    "expires_at": "2026-11-22T02:25:00.481223Z",
    "sent_at": None,
    "acknowledged_at": None,
    "finished_at": None,
    "relay": None,
    "superseded_by": None,
    "requested_by": "engine",
    "approved_by": "ops.zhang",
    "detail": "approved by ops.zhang",
    "version": 2,
}


class CommandOut(BaseModel):
    """A relay command as the dispatcher tracks it."""

    model_config = ConfigDict(json_schema_extra={"examples": [_COMMAND_EXAMPLE]})

    command_id: str = Field(description="The command's id: the outbox request id for the engine's commands.")
    account_id: str | None = Field(description="The prepaid account it acts for; null for an operator's relay read.")
    sequence: int | None = Field(description="The account's command sequence number; null without an account.")
    meter_id: str
    concentrator_id: str | None = Field(description="Sent through this concentrator; null: to the meter directly.")
    action: RelayAction
    reconnect_mode: ReconnectMode = Field(description="How the meter reconnects: `direct`, or `allowed` (合闸允许).")
    state: CommandState
    attempts: int = Field(description="How many times it was published.")
    next_attempt_at: datetime | None = Field(description="When the dispatcher next looks at it (UTC).")
    issued_at: datetime = Field(description="When the dispatcher took it from the outbox (UTC).")
    expires_at: datetime = Field(description="The meter must not execute it after this (UTC).")
    sent_at: datetime | None = Field(description="First published (UTC).")
    acknowledged_at: datetime | None
    finished_at: datetime | None = Field(description="When it reached a final state (UTC).")
    relay: RelayState | None = Field(description="The relay position the meter reported with its answer.")
    superseded_by: str | None
    requested_by: str = Field(description="Who asked for it: the engine's policy, a payment, an operator.")
    approved_by: str | None = Field(description="The operator who released it from `held`.")
    detail: str = Field(description="The latest transition's sentence.")
    version: int = Field(description="Incremented by every transition.")


class AuditEntryOut(BaseModel):
    """One transition of a command: when, from and to which state, by whom, why, and on which inputs."""

    seq: int = Field(description="The audit trail's global sequence.")
    at: datetime = Field(description="When (UTC).")
    from_state: CommandState | None = Field(description="Null for the creation.")
    to_state: CommandState
    actor: str = Field(description="`dispatcher`, `meter:<id>`, the policy, a payment, or an operator's name.")
    detail: str
    inputs: dict[str, Any] = Field(description="What the transition was judged on (balance, reasons, flags, …).")


class CommandDetail(CommandOut):
    """A command with its audit trail, oldest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_COMMAND_EXAMPLE,
                    "history": [
                        {
                            "seq": 812,
                            "at": "2026-11-22T02:15:00.481223Z",
                            "from_state": None,
                            "to_state": "created",
                            "actor": "engine",
                            "detail": "disconnect requested",
                            "inputs": {
                                "reasons": [
                                    {
                                        "code": "credit_exhausted",
                                        "text": "balance -120 fen is at or below the disconnect threshold 0 fen",
                                    }
                                ]
                            },
                        },
                        {
                            "seq": 813,
                            "at": "2026-11-22T02:15:00.502114Z",
                            "from_state": "created",
                            "to_state": "held",
                            "actor": "dispatcher",
                            "detail": "storm limit: 500 disconnects sent in the last 0:10:00 (limit 500): an "
                            "operator must approve",
                            "inputs": {},
                        },
                        {
                            "seq": 820,
                            "at": "2026-11-22T02:31:07.120455Z",
                            "from_state": "held",
                            "to_state": "created",
                            "actor": "ops.zhang",
                            "detail": "approved by ops.zhang",
                            "inputs": {},
                        },
                    ],
                }
            ]
        }
    )

    history: list[AuditEntryOut]


class CommandPage(BaseModel):
    """A page of commands, newest first."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"commands": [_COMMAND_EXAMPLE], "next_before": "relay:A0001:3:disconnect"}]}
    )

    commands: list[CommandOut]
    next_before: str | None = Field(
        description="`before` of the next (older) page: the last command's id; null on the last page."
    )


class ApproveIn(BaseModel):
    """An approval, optionally with a note for the audit trail."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"note": "storm checked with the feeder"}]}
    )

    note: StorableText | None = Field(
        default=None, min_length=1, max_length=NOTE_MAX, description="Recorded in the command's audit trail."
    )


class CancelIn(BaseModel):
    """Why a command is withdrawn."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"reason": "site visit"}]})

    reason: StorableText = Field(
        min_length=1, max_length=NOTE_MAX, description="Recorded in the command's audit trail."
    )


class ResolveIn(BaseModel):
    """An alarm's resolution, optionally with a note."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"note": "relay replaced on site"}]}
    )

    note: StorableText | None = Field(
        default=None,
        min_length=1,
        max_length=NOTE_MAX,
        description="Written to the API's log with the resolution (relay_alarms has no column for it).",
    )


_ALARM_EXAMPLE: Final[dict[str, Any]] = {
    "alarm_id": 17,
    "meter_id": "000000000001",
    "command_id": "relay:A0001:3:disconnect",
    "kind": "relay_mismatch",
    "detail": "the meter reports the disconnect executed but the relay is closed",
    "relay": "closed",
    "raised_at": "2026-11-22T02:16:12.004187Z",
    "resolved_at": None,
    "resolved_by": None,
}


class AlarmOut(BaseModel):
    """A relay alarm: a meter whose relay is not where it should be."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ALARM_EXAMPLE]})

    alarm_id: int
    meter_id: str
    command_id: str | None = Field(description="The command whose answer raised it; null for a spontaneous change.")
    kind: AlarmKind
    detail: str
    relay: RelayState = Field(description="The relay position reported.")
    raised_at: datetime = Field(description="UTC.")
    resolved_at: datetime | None = Field(description="UTC; null while open.")
    resolved_by: str | None


class AlarmPage(BaseModel):
    """A page of alarms, newest first."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"alarms": [_ALARM_EXAMPLE], "next_before_id": None}]})

    alarms: list[AlarmOut]
    next_before_id: int | None = Field(
        description="`before_id` of the next (older) page: the last alarm's id; null on the last page."
    )


class RelayOut(BaseModel):
    """The relay position a meter last reported (by the meter's clock)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "meter_id": "000000000001",
                    "relay": "open",
                    "ready_for_reconnection": False,
                    "reported_at": "2026-11-22T02:16:11Z",
                    "received_at": "2026-11-22T02:16:12.004187Z",
                    "source": "relay:A0001:3:disconnect",
                }
            ]
        }
    )

    meter_id: str
    relay: RelayState
    ready_for_reconnection: bool = Field(description="Open and armed: the customer may close it with the button.")
    reported_at: datetime = Field(description="When the meter read it, by its clock (UTC).")
    received_at: datetime = Field(description="When the head-end received it (UTC).")
    source: str = Field(description="The command it answered, or the cause of a spontaneous change.")
