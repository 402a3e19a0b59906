"""Re-reads (补抄): ask for one over a meter, a list of meters or concentrators; follow it; list the latest.

A task asked for here is stored pending with its meters (`headend.reread.tasks`); the `headend poll` worker runs it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from headend.api.auth import body_within, require_roles
from headend.api.credentials import Principal, Role
from headend.api.db import Conn, State
from headend.api.errors import FieldError, ProblemError, problem_descriptions, problem_responses
from headend.api.schemas import PlausibleInstant, json_body, parse_body
from headend.reread import tasks
from headend.reread.states import MeterState, RereadPath, Scope, TaskState
from headend.reread.tasks import MAX_METERS, RereadError, RereadTask

router = APIRouter(prefix="/v1/rereads", tags=["rereads"])

Operator = Annotated[Principal, Depends(require_roles(Role.OPERATOR))]
Reader = Annotated[Principal, Depends(require_roles(Role.OPERATOR, Role.VIEWER))]
TaskPath = Annotated[str, Path(max_length=64, description="The task's id.", examples=["rr-3f9a0c2e71d84b5e9a10"])]

# a list of 100,000 meter ids of 32 characters is ~3.5 MB as compact JSON: room for it written out line by line
MAX_BODY_BYTES: Final = 8 * 1024 * 1024
# a list of 100,000 ids of the wrong type is as many validation errors: the first ones say enough
MAX_ERRORS_LISTED: Final = 20
_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,32}$"  # protocols.readings.METER_ID_PATTERN, the registry's ids
_ONE_OF: Final = ("meter_id", "meter_ids", "concentrator_ids")
# answers are in UTC, as the rest of the API's (pydantic writes them `…Z`)
UTC: Final = ZoneInfo("UTC")

MeterId = Annotated[
    str, Field(pattern=_ID_PATTERN, description="A registered meter: 1–32 of `A-Z a-z 0-9 _ -`.", examples=["m0001"])
]
ConcentratorId = Annotated[
    str, Field(pattern=_ID_PATTERN, description="A registered concentrator (DCU).", examples=["dcu-07"])
]


class RereadIn(BaseModel):
    """What to re-read: exactly one of `meter_id`, `meter_ids`, `concentrator_ids`, over [`from`, `to`)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "concentrator_ids": ["dcu-07"],
                    "from": "2026-11-20T00:00:00+08:00",
                    "to": "2026-11-21T00:00:00+08:00",
                },
                {"meter_id": "m0001", "from": "2026-11-21T08:00:00+08:00"},
            ]
        },
    )

    meter_id: MeterId | None = Field(default=None, description="One meter.")
    meter_ids: list[MeterId] | None = Field(
        default=None, min_length=1, max_length=MAX_METERS, description=f"A list of meters (at most {MAX_METERS:,})."
    )
    concentrator_ids: list[ConcentratorId] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_METERS,
        description="Concentrators: every active meter behind each of them.",
    )
    from_: PlausibleInstant = Field(
        alias="from", description="Start of the range, ISO 8601 with an offset; before now."
    )
    to: PlausibleInstant | None = Field(
        default=None,
        description="End of the range (exclusive), ISO 8601 with an offset; at most 31 days after `from`; "
        "omitted or null: now.",
    )


class RereadMeterOut(BaseModel):
    """One meter of a task: how it is asked, where it is, what was missing and what came back."""

    meter_id: str
    path: RereadPath = Field(
        description="How it is asked: `poll` (Modbus, now), `dlt645_frozen` (DL/T 645 daily freezes and a poll), "
        "`mqtt_meter` or `mqtt_concentrator` (a `read_readings` command)."
    )
    state: MeterState
    intervals_missing: int = Field(description="15-minute load points of the range missing when the task started.")
    intervals_recovered: int = Field(description="Of those, stored now.")
    detail: str | None = Field(description="Why it failed, or what it recovered.")


_TASK_EXAMPLE: Final[dict[str, Any]] = {
    "task_id": "rr-3f9a0c2e71d84b5e9a10",
    "scope": "concentrator",
    "scope_ids": ["dcu-07"],
    "from": "2026-11-19T16:00:00Z",
    "to": "2026-11-20T16:00:00Z",
    "state": "pending",
    "requested_by": "ops.zhang",
    "requested_at": "2026-11-21T01:02:03.456789Z",
    "started_at": None,
    "finished_at": None,
    "meters_total": 1,
    "intervals_missing": 0,
    "intervals_recovered": 0,
    "detail": None,
}
_METER_EXAMPLE: Final[dict[str, Any]] = {
    "meter_id": "m0001",
    "path": "mqtt_concentrator",
    "state": "pending",
    "intervals_missing": 0,
    "intervals_recovered": 0,
    "detail": None,
}


class RereadTaskSummary(BaseModel):
    """A re-read task: what it covers, its range, where it is, what it recovered (times in UTC)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_TASK_EXAMPLE]})

    task_id: str
    scope: Scope = Field(description="`meter`, `list` or `concentrator`: what `scope_ids` name.")
    scope_ids: list[str]
    from_: datetime = Field(alias="from", description="Start of the range (UTC).")
    to: datetime = Field(description="End of the range, exclusive (UTC).")
    state: TaskState = Field(
        description="`pending` until the `headend poll` worker takes it, `running`, then `done` or `failed`."
    )
    requested_by: str = Field(description="The principal who asked for it.")
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    meters_total: int
    intervals_missing: int = Field(description="Load points missing when it started, summed over its meters.")
    intervals_recovered: int = Field(description="Of those, recovered.")
    detail: str | None = Field(description="A summary when done, why when failed.")


class RereadTaskOut(RereadTaskSummary):
    """A re-read task with its meters."""

    model_config = ConfigDict(json_schema_extra={"examples": [{**_TASK_EXAMPLE, "meters": [_METER_EXAMPLE]}]})

    meters: list[RereadMeterOut] = Field(description="Every meter of the task, by id.")


class RereadTaskPage(BaseModel):
    """The latest re-read tasks, newest first, without their meters."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"tasks": [_TASK_EXAMPLE]}]})

    tasks: list[RereadTaskSummary]


async def reread_body(request: Request) -> bytes:
    """The request body as sent; 413 beyond MAX_BODY_BYTES (a list of meters is larger than other bodies)."""
    return await body_within(request, MAX_BODY_BYTES)


def _parse(body: bytes) -> RereadIn:
    try:
        return parse_body(RereadIn, body)
    except ProblemError as exc:
        if len(exc.errors) <= MAX_ERRORS_LISTED:
            raise
        listed = exc.errors[:MAX_ERRORS_LISTED]
        detail = "; ".join(f"{'.'.join(str(p) for p in e.loc)}: {e.msg}" for e in listed)
        more = len(exc.errors) - len(listed)
        raise ProblemError(exc.status, f"{detail}; and {more} more", code=exc.code, errors=listed) from None


def _scope(parsed: RereadIn) -> tuple[Scope, list[str]]:
    given = [name for name in _ONE_OF if getattr(parsed, name) is not None]
    if len(given) != 1:
        msg = f"name exactly one of {', '.join(_ONE_OF)}" + (f" (got {', '.join(given)})" if given else "")
        raise ProblemError(422, f"body: {msg}", errors=[FieldError(loc=["body"], msg=msg, type="exactly_one")])
    if parsed.meter_id is not None:
        return Scope.METER, [parsed.meter_id]
    if parsed.meter_ids is not None:
        return Scope.LIST, parsed.meter_ids
    assert parsed.concentrator_ids is not None
    return Scope.CONCENTRATOR, parsed.concentrator_ids


def _summary(task: RereadTask) -> dict[str, Any]:
    out = task.to_json(UTC)
    del out["meters"]
    return out


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Ask for a re-read (补抄)",
    description="Stores a pending re-read of one meter (`meter_id`), a list (`meter_ids`) or every active meter "
    "behind concentrators (`concentrator_ids`) over [`from`, `to`), each meter with the way it will be asked; the "
    "`headend poll` worker runs it. Follow it at the `Location` answered. Roles: operator, admin.",
    response_model=RereadTaskOut,
    response_description="The task, pending, with its meters.",
    responses=problem_descriptions(
        {
            401: "No valid credentials: missing, unknown or revoked token (see `WWW-Authenticate`).",
            403: "The role may not do this (operator and admin only).",
            413: "The body is larger than 8 MiB.",
            422: "The body is not valid (strict JSON types, no extra fields, exactly one of `meter_id`, `meter_ids`, "
            "`concentrator_ids`), or the re-read was refused (`reread_refused`: unknown or inactive meters, unknown "
            "concentrators, a range that ends before it starts, starts in the future or is longer than 31 days); "
            "nothing was stored.",
            503: "The database is unavailable or busy; retry later.",
        }
    ),
    openapi_extra=json_body(RereadIn),
)
def request_reread(
    principal: Operator,
    body: Annotated[bytes, Depends(reread_body)],
    conn: Conn,
    state: State,
    response: Response,
) -> dict[str, Any]:
    """Store a pending re-read task."""
    parsed = _parse(body)
    scope, ids = _scope(parsed)
    now = state.clock()
    to_at = now if parsed.to is None else parsed.to
    try:
        task = tasks.create_task(conn, scope, ids, parsed.from_, to_at, by=principal.name, now=now)
    except RereadError as exc:
        raise ProblemError(422, str(exc), code="reread_refused") from None
    response.headers["Location"] = f"{router.prefix}/{task.task_id}"
    return task.to_json(UTC)


@router.get(
    "",
    summary="List the latest re-reads",
    description="Re-read tasks newest first (by `requested_at`), without their meters. Roles: operator, viewer, admin.",
    response_model=RereadTaskPage,
    response_description="The latest tasks, newest first.",
    responses=problem_responses(401, 403, 422, 503),
)
def list_rereads(
    conn: Conn,
    principal: Reader,
    limit: Annotated[int, Query(ge=1, le=500, description="How many tasks.")] = 50,
) -> dict[str, Any]:
    """The latest tasks, newest first."""
    return {"tasks": [_summary(task) for task in tasks.list_tasks(conn, limit)]}


@router.get(
    "/{task_id}",
    summary="Read a re-read with its meters",
    description="The task and each of its meters: how it is asked, its state, the load points it missed and "
    "recovered. Roles: operator, viewer, admin.",
    response_model=RereadTaskOut,
    response_description="The task and its meters.",
    responses={
        **problem_responses(401, 403, 503),
        **problem_descriptions({404: "No such task.", 422: "The task id is not valid (longer than 64 characters)."}),
    },
)
def read_reread(task_id: TaskPath, conn: Conn, principal: Reader) -> dict[str, Any]:
    """One task with its meters."""
    task = tasks.load_task(conn, task_id)
    if task is None:
        raise ProblemError(404, f"no re-read task {task_id!r}", code="unknown_reread")
    return task.to_json(UTC)
