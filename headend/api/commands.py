"""Relay commands, relay alarms and meters' relay positions: list and read them, approve, cancel, resolve."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query
from psycopg.rows import dict_row
from pydantic import BaseModel

from headend.api.auth import RawBody, require_roles
from headend.api.command_schemas import (
    AlarmOut,
    AlarmPage,
    ApproveIn,
    AuditEntryOut,
    CancelIn,
    CommandDetail,
    CommandOut,
    CommandPage,
    RelayOut,
    ResolveIn,
)
from headend.api.credentials import Principal, Role
from headend.api.db import Conn, Connection, State
from headend.api.errors import FieldError, ProblemError, problem_descriptions, problem_responses
from headend.api.schemas import json_body, parse_body
from headend.dispatch import operations, store
from headend.dispatch.lifecycle import CommandState
from prepay_engine.ledger import MAX_BIGINT
from protocols.relay_codec import RelayAction

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/commands", tags=["commands"])
alarms_router = APIRouter(prefix="/v1/alarms", tags=["alarms"])
meters_router = APIRouter(prefix="/v1/meters", tags=["meters"])

Reader = Annotated[Principal, Depends(require_roles(Role.OPERATOR, Role.FIELD_STAFF))]
Actor = Annotated[Principal, Depends(require_roles(Role.OPERATOR))]
CommandPath = Annotated[
    str, Path(max_length=200, description="The command's id.", examples=["relay:A0001:3:disconnect"])
]
AlarmPath = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="The alarm's id.", examples=[17])]
MeterPath = Annotated[str, Path(max_length=32, description="Meter id.", examples=["000000000001"])]

_TIME_FIELDS: Final = frozenset(
    {"next_attempt_at", "issued_at", "expires_at", "sent_at", "acknowledged_at", "finished_at"}
)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _command_out(command: store.Command) -> CommandOut:
    values: dict[str, Any] = {c: getattr(command, c) for c in store.COMMAND_COLUMNS}
    for name in _TIME_FIELDS:
        values[name] = _utc(values[name])
    return CommandOut(**values)


def _unknown_command(command_id: str) -> ProblemError:
    return ProblemError(404, f"no command {command_id!r}", code="unknown_command")


def _alarm_out(alarm: store.Alarm) -> AlarmOut:
    values: dict[str, Any] = {c: getattr(alarm, c) for c in store.ALARM_COLUMNS}
    return AlarmOut(**{**values, "raised_at": _utc(alarm.raised_at), "resolved_at": _utc(alarm.resolved_at)})


def _alarm(conn: Connection, alarm_id: int) -> AlarmOut | None:
    alarm = store.get_alarm(conn, alarm_id)
    return None if alarm is None else _alarm_out(alarm)


def _optional_body(model: type[BaseModel]) -> dict[str, Any]:
    extra = json_body(model)
    extra["requestBody"]["required"] = False
    return extra


_READ_ERRORS: Final = problem_responses(401, 403, 422, 503)
_ACTION_ERRORS: Final = problem_descriptions(
    {
        401: "No valid credentials: missing, unknown or revoked token (see `WWW-Authenticate`).",
        403: "The role may not do this (operator and admin only).",
        404: "No such command.",
        409: "The command's state does not allow this; nothing was changed.",
        413: "The body is larger than 16 KiB.",
        422: "The body is not valid (strict JSON types, no extra fields).",
        503: "The database is unavailable or busy; retry later.",
    }
)


@router.get(
    "",
    summary="List relay commands",
    description="Commands newest first (by `issued_at`, then id), optionally filtered by state, account, meter and "
    "action. Keyset pagination: pass a page's `next_before` as `before` for the next (older) page; pages don't "
    "shift when commands arrive. Roles: operator, field_staff, admin.",
    response_model=CommandPage,
    response_description="A page of commands, newest first.",
    responses=_READ_ERRORS,
)
def list_commands(
    conn: Conn,
    principal: Reader,
    state: Annotated[CommandState | None, Query(description="Only commands in this state.")] = None,
    account_id: Annotated[str | None, Query(max_length=32, description="Only this account's commands.")] = None,
    meter_id: Annotated[str | None, Query(max_length=32, description="Only this meter's commands.")] = None,
    action: Annotated[RelayAction | None, Query(description="Only commands of this action.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Commands per page.")] = 50,
    before: Annotated[
        str | None, Query(max_length=200, description="Only commands older than this one (from `next_before`).")
    ] = None,
) -> CommandPage:
    """A page of commands, newest first."""
    try:
        page = store.list_commands(
            conn, state=state, account_id=account_id, meter_id=meter_id, action=action, limit=limit, before=before
        )
    except store.CommandError:
        raise ProblemError(
            422,
            f"query.before: no command {before!r}",
            errors=[FieldError(loc=["query", "before"], msg=f"no command {before!r}", type="unknown_command")],
        ) from None
    return CommandPage(commands=[_command_out(c) for c in page.commands], next_before=page.next_before)


@router.get(
    "/{command_id}",
    summary="Read a relay command with its history",
    description="The command and its audit trail, oldest first: every transition with its actor, its sentence and "
    "the inputs it was judged on. Roles: operator, field_staff, admin.",
    response_model=CommandDetail,
    response_description="The command and its history.",
    responses={
        **problem_responses(401, 403, 503),
        **problem_descriptions({404: "No such command."}),
    },
)
def read_command(command_id: CommandPath, conn: Conn, principal: Reader) -> CommandDetail:
    """One command with its audit trail."""
    # one snapshot: the trail matches the row
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        command = store.get_command(conn, command_id)
        if command is None:
            raise _unknown_command(command_id)
        trail = store.history(conn, command_id)
    history = [AuditEntryOut(**{**entry, "at": entry["at"].astimezone(UTC)}) for entry in trail]
    return CommandDetail(**_command_out(command).model_dump(), history=history)


@router.post(
    "/{command_id}/approve",
    summary="Approve a held relay command",
    description="Releases a command held for approval (storm limit, open relay alarm): it returns to `created`, is "
    "re-checked against the account and sent at the dispatcher's next step. The approver is the calling principal; "
    "a note goes into the audit trail. Roles: operator, admin.",
    response_model=CommandOut,
    response_description="The command, approved.",
    responses=_ACTION_ERRORS,
    openapi_extra=_optional_body(ApproveIn),
)
def approve_command(command_id: CommandPath, principal: Actor, body: RawBody, conn: Conn, state: State) -> CommandOut:
    """Approve a held command."""
    parsed = parse_body(ApproveIn, body) if body.strip() else ApproveIn()
    now = state.clock()
    if store.get_command(conn, command_id) is None:
        raise _unknown_command(command_id)
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            approved = operations.approve(conn, command_id, by=principal.name, now=now)
            if parsed.note is not None:
                store.audit(
                    cur,
                    command_id,
                    now,
                    approved.state,
                    approved.state,
                    principal.name,
                    f"approval note: {parsed.note}",
                    {"note": parsed.note},
                )
    except store.CommandError as exc:
        raise ProblemError(409, str(exc), code="command_state") from None
    return _command_out(approved)


@router.post(
    "/{command_id}/cancel",
    summary="Cancel a relay command",
    description="Withdraws a command that has not ended; the reason goes into the audit trail. The account is told "
    "the command did not move the relay and decides again: an exhausted balance gets a fresh disconnect request "
    "(set keep-supply to stop disconnects). Roles: operator, admin.",
    response_model=CommandOut,
    response_description="The command, cancelled.",
    responses=_ACTION_ERRORS,
    openapi_extra=json_body(CancelIn),
)
def cancel_command(command_id: CommandPath, principal: Actor, body: RawBody, conn: Conn, state: State) -> CommandOut:
    """Cancel a command that has not ended."""
    parsed = parse_body(CancelIn, body)
    now = state.clock()
    if store.get_command(conn, command_id) is None:
        raise _unknown_command(command_id)
    try:
        cancelled = operations.cancel(
            conn, state.catalog(), command_id, by=principal.name, reason=parsed.reason, now=now
        )
    except store.CommandError as exc:
        raise ProblemError(409, str(exc), code="command_state") from None
    return _command_out(cancelled)


@alarms_router.get(
    "",
    summary="List relay alarms",
    description="Relay alarms newest first: open ones (default) or resolved ones, optionally of one meter. Keyset "
    "pagination: pass a page's `next_before_id` as `before_id` for the next (older) page. Roles: operator, "
    "field_staff, admin.",
    response_model=AlarmPage,
    response_description="A page of alarms, newest first.",
    responses=_READ_ERRORS,
)
def list_alarms(
    conn: Conn,
    principal: Reader,
    unresolved: Annotated[
        bool, Query(alias="open", description="true: unresolved alarms; false: resolved ones.")
    ] = True,
    meter_id: Annotated[str | None, Query(max_length=32, description="Only this meter's alarms.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Alarms per page.")] = 50,
    before_id: Annotated[
        int | None, Query(ge=1, le=MAX_BIGINT, description="Only alarms before this id (from `next_before_id`).")
    ] = None,
) -> AlarmPage:
    """A page of alarms, newest first."""
    page = store.list_alarms(conn, unresolved=unresolved, meter_id=meter_id, limit=limit, before_id=before_id)
    return AlarmPage(alarms=[_alarm_out(a) for a in page.alarms], next_before_id=page.next_before_id)


@alarms_router.post(
    "/{alarm_id}/resolve",
    summary="Resolve a relay alarm",
    description="Marks the alarm resolved by the calling principal (after a site visit): the meter's disconnects "
    "are no longer held for it. The note is written to the API's log. Roles: operator, admin.",
    response_model=AlarmOut,
    response_description="The alarm, resolved.",
    responses=problem_descriptions(
        {
            401: "No valid credentials: missing, unknown or revoked token (see `WWW-Authenticate`).",
            403: "The role may not do this (operator and admin only).",
            404: "No such alarm.",
            409: "The alarm was resolved before; nothing was changed.",
            413: "The body is larger than 16 KiB.",
            422: "The body or the alarm id is not valid.",
            503: "The database is unavailable or busy; retry later.",
        }
    ),
    openapi_extra=_optional_body(ResolveIn),
)
def resolve_alarm(alarm_id: AlarmPath, principal: Actor, body: RawBody, conn: Conn, state: State) -> AlarmOut:
    """Resolve an open alarm."""
    parsed = parse_body(ResolveIn, body) if body.strip() else ResolveIn()
    if not store.resolve_alarm(conn, alarm_id, principal.name, state.clock()):
        alarm = _alarm(conn, alarm_id)
        if alarm is None:
            raise ProblemError(404, f"no alarm {alarm_id}", code="unknown_alarm")
        when = "?" if alarm.resolved_at is None else alarm.resolved_at.isoformat().replace("+00:00", "Z")
        raise ProblemError(
            409, f"alarm {alarm_id} was resolved by {alarm.resolved_by} at {when}", code="alarm_resolved"
        )
    log.info("alarm %d resolved by %s: %s", alarm_id, principal.name, parsed.note or "-")
    resolved = _alarm(conn, alarm_id)
    assert resolved is not None, alarm_id
    return resolved


@meters_router.get(
    "/{meter_id}/relay",
    summary="Read a meter's last reported relay position",
    description="The relay position the meter last reported, in an answer to a command or spontaneously, by the "
    "meter's clock. Roles: operator, field_staff, admin.",
    response_model=RelayOut,
    response_description="The last reported position.",
    responses={
        **problem_responses(401, 403, 503),
        **problem_descriptions({404: "No relay position reported for this meter (or no such meter)."}),
    },
)
def read_relay(meter_id: MeterPath, conn: Conn, principal: Reader) -> RelayOut:
    """The meter's last reported relay position."""
    position = store.relay_position(conn, meter_id)
    if position is None:
        raise ProblemError(404, f"no relay position reported for meter {meter_id!r}", code="unknown_relay")
    return RelayOut(
        meter_id=position.meter_id,
        relay=position.relay,
        ready_for_reconnection=position.ready_for_reconnection,
        reported_at=position.reported_at.astimezone(UTC),
        received_at=position.received_at.astimezone(UTC),
        source=position.source,
    )


@meters_router.post(
    "/{meter_id}/relay/read",
    status_code=202,
    summary="Ask a meter to read its relay back",
    description="Creates a `read_relay` command (a field test on site, a check after an alarm); the dispatcher sends "
    "it, and the answer confirms the position or raises an alarm when it disagrees with the account's supply. "
    "Follow it with `GET /v1/commands/{command_id}`. Roles: field_staff, operator, admin.",
    response_model=CommandOut,
    response_description="The relay read, created.",
    responses={
        **problem_responses(401, 403, 503),
        **problem_descriptions({404: "No such meter."}),
    },
)
def request_relay_read(meter_id: MeterPath, conn: Conn, principal: Reader, state: State) -> CommandOut:
    """Create a relay read of the meter."""
    try:
        command = operations.request_relay_read(
            conn, meter_id, by=principal.name, now=state.clock(), ttl=state.command_ttl
        )
    except store.CommandError as exc:
        raise ProblemError(404, str(exc), code="unknown_meter") from None
    return _command_out(command)
