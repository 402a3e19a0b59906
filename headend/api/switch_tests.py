"""The on-site commissioning test of a controlled switch: field staff start it, see each step, record the result.

`POST /v1/switches/{id}/tests` starts a test (202); the running `headend dispatch` sends its steps as relay commands;
`GET /v1/switch-tests/{id}` shows each step as it goes. Operators approve a test of a protected or keep-supply
customer; a test is cancelled by whoever may start or approve one; field staff record the switch commissioned or
failed with a note once the steps are over (`headend.commissioning`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from headend.api.auth import RawBody, require_roles
from headend.api.credentials import Principal, Role
from headend.api.db import Conn, State
from headend.api.errors import FieldError, ProblemError, problem_descriptions, problem_responses
from headend.api.schemas import StorableText, json_body, parse_body
from headend.commissioning import operations, store
from headend.commissioning.operations import SwitchTestError, SwitchTestErrorKind
from headend.commissioning.states import (
    NOTE_MAX,
    REASON_MAX,
    StepKind,
    StepState,
    SwitchTestResult,
    SwitchTestState,
)
from headend.registry.switches import CommissioningState
from prepay_engine.ledger import MAX_BIGINT

router = APIRouter(prefix="/v1/switch-tests", tags=["switch tests"])
switches_router = APIRouter(prefix="/v1/switches", tags=["switch tests"])

Starter = Annotated[Principal, Depends(require_roles(Role.FIELD_STAFF))]
Reader = Annotated[Principal, Depends(require_roles(Role.FIELD_STAFF, Role.OPERATOR, Role.VIEWER))]
Approver = Annotated[Principal, Depends(require_roles(Role.OPERATOR))]
Canceller = Annotated[Principal, Depends(require_roles(Role.FIELD_STAFF, Role.OPERATOR))]
SwitchPath = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="The switch's id.", examples=[17])]
TestPath = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="The test's id.", examples=[42])]

_STATUS: Final = {
    SwitchTestErrorKind.INVALID: (422, "invalid_switch_test"),
    SwitchTestErrorKind.UNKNOWN_SWITCH: (404, "unknown_switch"),
    SwitchTestErrorKind.UNKNOWN_TEST: (404, "unknown_switch_test"),
    SwitchTestErrorKind.RETIRED: (409, "switch_retired"),
    SwitchTestErrorKind.INACTIVE_METER: (422, "inactive_meter"),
    SwitchTestErrorKind.TESTING: (409, "switch_testing"),
    SwitchTestErrorKind.REFUSED: (409, "switch_test_refused"),
    SwitchTestErrorKind.STATE: (409, "switch_test_state"),
}

_STEP_EXAMPLES: Final[list[dict[str, Any]]] = [
    {
        "ordinal": 1,
        "kind": "read_state",
        "state": "passed",
        "command_id": "test:42:1:read_state",
        "detail": "relay read closed",
        "relay": "closed",
        "started_at": "2026-12-08T02:20:01.102311Z",
        "finished_at": "2026-12-08T02:20:02.310954Z",
    },
    {
        "ordinal": 2,
        "kind": "open",
        "state": "running",
        "command_id": "test:42:2:open",
        "detail": "open the relay (disconnect): sent, sent attempt 1 via dlt645 at 10.1.2.3:8899: 000000000001",
        "relay": None,
        "started_at": "2026-12-08T02:20:02.310954Z",
        "finished_at": None,
    },
    {
        "ordinal": 3,
        "kind": "confirm_open",
        "state": "pending",
        "command_id": None,
        "detail": "read the relay back: it must be open",
        "relay": None,
        "started_at": None,
        "finished_at": None,
    },
]
_TEST_EXAMPLE: Final[dict[str, Any]] = {
    "id": 42,
    "switch_id": 17,
    "meter_id": "000000000001",
    "account_id": "A0001",
    "reconnect_mode": "direct",
    "state": "running",
    "detail": "running: step 2 (open)",
    "requested_by": "field.li",
    "requested_at": "2026-12-08T02:20:00.481223Z",
    "approval_reason": None,
    "approved_by": None,
    "approved_at": None,
    "started_at": "2026-12-08T02:20:01.102311Z",
    "finished_at": None,
    "cancelled_by": None,
    "switch_state_before": "registered",
    "result": None,
    "result_note": None,
    "result_by": None,
    "result_at": None,
    "steps": _STEP_EXAMPLES,
}


class SwitchTestStepOut(BaseModel):
    """One step of a test: what it does, where it is, the relay command it sent and what it found (times UTC)."""

    ordinal: int = Field(description="1 for the first step.")
    kind: StepKind = Field(
        description="`read_state`, `open`, `confirm_open`, `close_or_allow` (close, or allow closing: 合闸允许), "
        "`confirm_closed`; `restore` when the relay is put back where the customer's account requires it."
    )
    state: StepState = Field(
        description="`pending`, `running`, `waiting_button` (armed: the customer presses the meter's button), "
        "`passed`, `failed`, `skipped`, `cancelled`."
    )
    command_id: str | None = Field(description="Its relay command: `GET /v1/commands/{command_id}`.")
    detail: str = Field(description="What it does, how far it got, or what it found.")
    relay: str | None = Field(description="The relay position it found: `open`, `closed`.")
    started_at: datetime | None
    finished_at: datetime | None


class SwitchTestOut(BaseModel):
    """A commissioning test with its steps (times UTC)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_TEST_EXAMPLE]})

    id: int = Field(description="The test's id: `GET /v1/switch-tests/{id}`.")
    switch_id: int
    meter_id: str
    account_id: str | None = Field(description="The prepaid account on the meter when the test was asked for.")
    reconnect_mode: str = Field(description="`direct`, or `allowed` (合闸允许: the customer's button closes it).")
    state: SwitchTestState = Field(
        description="`pending`, `awaiting_approval` (protected or keep-supply customer), `running`, `passed`, "
        "`failed`, `refused`, `cancelled`."
    )
    detail: str = Field(description="Where it stands, in a sentence.")
    requested_by: str
    requested_at: datetime
    approval_reason: str | None = Field(description="Why an operator must approve it.")
    approved_by: str | None
    approved_at: datetime | None
    started_at: datetime | None = Field(description="When the dispatcher sent its first step.")
    finished_at: datetime | None = Field(
        description="When it was over, the relay put back where the account requires it; null while it goes on."
    )
    cancelled_by: str | None
    switch_state_before: CommissioningState = Field(description="The switch's state before; given back on cancel.")
    result: SwitchTestResult | None = Field(description="What field staff recorded: `commissioned` or `failed`.")
    result_note: str | None
    result_by: str | None
    result_at: datetime | None
    steps: list[SwitchTestStepOut]


class SwitchTestPage(BaseModel):
    """A switch's tests, newest first, without their steps."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"tests": [{**_TEST_EXAMPLE, "steps": []}]}]})

    tests: list[SwitchTestOut]


class SwitchTestCancelIn(BaseModel):
    """Why a test is withdrawn."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"reason": "the customer asks to stop"}]}
    )

    reason: StorableText = Field(
        min_length=1, max_length=REASON_MAX, description="Recorded with the test and in the switch's history."
    )


class SwitchTestResultIn(BaseModel):
    """What field staff saw on site, once the steps are over."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"result": "commissioned", "note": "the pump room went dark on open and back on close"}]
        },
    )

    result: SwitchTestResult = Field(
        description="`commissioned` (only after a test that passed) or `failed`: the switch's state from now on."
    )
    note: StorableText = Field(
        min_length=1, max_length=NOTE_MAX, description="What was seen on site; kept in the switch's history."
    )


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _step_out(step: store.SwitchTestStep) -> SwitchTestStepOut:
    return SwitchTestStepOut(
        ordinal=step.ordinal,
        kind=step.kind,
        state=step.state,
        command_id=step.command_id,
        detail=step.detail,
        relay=step.relay,
        started_at=_utc(step.started_at),
        finished_at=_utc(step.finished_at),
    )


def _test_out(test: store.SwitchTest) -> SwitchTestOut:
    return SwitchTestOut(
        id=test.test_id,
        switch_id=test.switch_id,
        meter_id=test.meter_id,
        account_id=test.account_id,
        reconnect_mode=test.reconnect_mode,
        state=test.state,
        detail=test.detail,
        requested_by=test.requested_by,
        requested_at=test.requested_at.astimezone(UTC),
        approval_reason=test.approval_reason,
        approved_by=test.approved_by,
        approved_at=_utc(test.approved_at),
        started_at=_utc(test.started_at),
        finished_at=_utc(test.finished_at),
        cancelled_by=test.cancelled_by,
        switch_state_before=test.switch_state_before,
        result=test.result,
        result_note=test.result_note,
        result_by=test.result_by,
        result_at=_utc(test.result_at),
        steps=[_step_out(s) for s in test.steps],
    )


def _problem(exc: SwitchTestError) -> ProblemError:
    status_code, code = _STATUS[exc.kind]
    headers = {}
    if exc.kind is SwitchTestErrorKind.REFUSED and exc.test_id is not None:
        headers["Location"] = f"{router.prefix}/{exc.test_id}"
    errors = [FieldError(loc=["body"], msg=str(exc), type=code)] if status_code == 422 else []
    return ProblemError(status_code, str(exc), code=code, headers=headers, errors=errors)


_AUTH_ERRORS: Final = {
    401: "No valid credentials: missing, unknown or revoked token (see `WWW-Authenticate`).",
    503: "The database is unavailable or busy; retry later.",
}


@switches_router.post(
    "/{switch_id}/tests",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Start a commissioning test of a switch",
    description="Starts the on-site test of the switch's relay, with the customer present: read the relay, open it, "
    "read it back open, close it (or allow closing, 合闸允许, for the customer's button), read it back closed — each "
    "step a relay command sent by the running dispatcher. The answer is the test, `pending` (`Location`: follow it "
    "with `GET /v1/switch-tests/{id}`), or `awaiting_approval` when the meter's customer is protected or on keep "
    "supply (保电): an operator approves it first. The switch is `testing` from now on. Refused, and kept as "
    "`refused` for the record, when the meter has an unresolved relay alarm or a relay command not ended. Roles: "
    "field_staff, admin.",
    response_model=SwitchTestOut,
    response_description="The test, pending or awaiting approval.",
    responses=problem_descriptions(
        {
            **_AUTH_ERRORS,
            403: "The role may not do this (field_staff and admin only).",
            404: "No such switch (`unknown_switch`).",
            409: "The switch is retired (`switch_retired`); a test of it, or of another switch on its meter, has "
            "not finished (`switch_testing`); or a safety rule refused the test (`switch_test_refused`: an open "
            "relay alarm, a relay command not ended — the refused test is kept, its `Location` given).",
            422: "The switch id is not a positive whole number, or its meter is not active (`inactive_meter`).",
        }
    ),
)
def start_test(
    switch_id: SwitchPath, principal: Starter, conn: Conn, state: State, response: Response
) -> SwitchTestOut:
    """Start a test of a switch."""
    try:
        test = operations.start_test(conn, switch_id, by=principal.name, now=state.clock())
    except SwitchTestError as exc:
        raise _problem(exc) from None
    response.headers["Location"] = f"{router.prefix}/{test.test_id}"
    return _test_out(test)


@switches_router.get(
    "/{switch_id}/tests",
    summary="List a switch's commissioning tests",
    description="The switch's latest tests, newest first, without their steps (`GET /v1/switch-tests/{id}` has "
    "them). Roles: field_staff, operator, viewer, admin.",
    response_model=SwitchTestPage,
    response_description="The switch's tests, newest first.",
    responses={
        **problem_responses(401, 403, 503),
        **problem_descriptions({404: "No such switch.", 422: "The switch id or `limit` is not valid."}),
    },
)
def list_tests(
    switch_id: SwitchPath,
    principal: Reader,
    conn: Conn,
    limit: Annotated[int, Query(ge=1, le=store.MAX_LISTED, description="Tests to return at most.")] = 20,
) -> SwitchTestPage:
    """A switch's latest tests."""
    if conn.execute("SELECT 1 FROM controlled_switches WHERE switch_id = %s", (switch_id,)).fetchone() is None:
        raise ProblemError(404, f"no switch {switch_id}", code="unknown_switch")
    return SwitchTestPage(tests=[_test_out(t) for t in store.switch_tests_of(conn, switch_id, limit)])


@router.get(
    "/{test_id}",
    summary="Read a commissioning test with its steps",
    description="The test now: its state, where it stands, and each step with its relay command, its state "
    "(`waiting_button` while the customer is to press the meter's button), what it found and when; poll it to "
    "follow the test live. Roles: field_staff, operator, viewer, admin.",
    response_model=SwitchTestOut,
    response_description="The test and its steps.",
    responses={
        **problem_responses(401, 403, 503),
        **problem_descriptions({404: "No such test.", 422: "The test id is not a positive whole number."}),
    },
)
def read_test(test_id: TestPath, principal: Reader, conn: Conn) -> SwitchTestOut:
    """One test with its steps."""
    test = store.get_test(conn, test_id)
    if test is None:
        raise ProblemError(404, f"no switch test {test_id}", code="unknown_switch_test")
    return _test_out(test)


@router.post(
    "/{test_id}/approve",
    summary="Approve a commissioning test of a protected customer",
    description="Releases a test awaiting approval (the meter's customer is protected or on keep supply, 保电): it "
    "becomes `pending` and the dispatcher runs it; the approver is the calling principal. Roles: operator, admin.",
    response_model=SwitchTestOut,
    response_description="The test, approved.",
    responses=problem_descriptions(
        {
            **_AUTH_ERRORS,
            403: "The role may not do this (operator and admin only).",
            404: "No such test.",
            409: "The test is not awaiting approval (`switch_test_state`); nothing was changed.",
            422: "The test id is not a positive whole number.",
        }
    ),
)
def approve_test(test_id: TestPath, principal: Approver, conn: Conn, state: State) -> SwitchTestOut:
    """Approve a test awaiting approval."""
    try:
        return _test_out(operations.approve_test(conn, test_id, by=principal.name, now=state.clock()))
    except SwitchTestError as exc:
        raise _problem(exc) from None


@router.post(
    "/{test_id}/cancel",
    summary="Cancel a commissioning test",
    description="Withdraws a test that has not ended, with a reason. A test that has not started ends at once; a "
    "running one's command in flight is withdrawn when it still can be, and the dispatcher puts the relay back "
    "where the customer's account requires it before the test finishes (`finished_at`). The switch gets back its "
    "state from before the test. Roles: field_staff, operator, admin.",
    response_model=SwitchTestOut,
    response_description="The test, cancelled.",
    responses=problem_descriptions(
        {
            **_AUTH_ERRORS,
            403: "The role may not do this (field_staff, operator and admin only).",
            404: "No such test.",
            409: "The test has ended (`switch_test_state`); nothing was changed.",
            413: "The body is larger than 16 KiB.",
            422: "The body is not valid (strict JSON types, no extra fields, a reason of 1–500 characters).",
        }
    ),
    openapi_extra=json_body(SwitchTestCancelIn),
)
def cancel_test(test_id: TestPath, principal: Canceller, body: RawBody, conn: Conn, state: State) -> SwitchTestOut:
    """Cancel a test."""
    parsed = parse_body(SwitchTestCancelIn, body)
    try:
        cancelled = operations.cancel_test(conn, test_id, by=principal.name, reason=parsed.reason, now=state.clock())
    except SwitchTestError as exc:
        raise _problem(exc) from None
    return _test_out(cancelled)


@router.post(
    "/{test_id}/result",
    summary="Record a commissioning test's result",
    description="Once the steps are over, field staff record what they saw on site: `commissioned` (only after a "
    "test that passed) or `failed`, with a note; the switch takes that state, kept in its history. Once per test, "
    "and only for the switch's latest test on its meter. Roles: field_staff, admin.",
    response_model=SwitchTestOut,
    response_description="The test with its result.",
    responses=problem_descriptions(
        {
            **_AUTH_ERRORS,
            403: "The role may not do this (field_staff and admin only).",
            404: "No such test.",
            409: "The steps are not over, the test was refused or cancelled, a failed test can't commission the "
            "switch, the result was recorded before, or the switch was tested again or moved since "
            "(`switch_test_state`); the switch was retired (`switch_retired`). Nothing was changed.",
            413: "The body is larger than 16 KiB.",
            422: "The body is not valid (strict JSON types, no extra fields, `result` one of its values, a note of "
            "1–1000 characters).",
        }
    ),
    openapi_extra=json_body(SwitchTestResultIn),
)
def record_result(test_id: TestPath, principal: Starter, body: RawBody, conn: Conn, state: State) -> SwitchTestOut:
    """Record a test's result."""
    parsed = parse_body(SwitchTestResultIn, body)
    try:
        recorded = operations.record_result(
            conn, test_id, parsed.result, parsed.note, by=principal.name, now=state.clock()
        )
    except SwitchTestError as exc:
        raise _problem(exc) from None
    return _test_out(recorded)
