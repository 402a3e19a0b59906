"""Field staff's registry of controlled switches (接控开关) and their meter search, from a phone.

Register, correct and retire a switch, import many from a CSV, list and read them with their history; find a meter by
its id, address, Modbus endpoint and unit, the customer's account or a switch number (`headend.registry`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from headend.api.auth import RawBody, body_within, require_roles
from headend.api.credentials import Principal, Role
from headend.api.db import Conn, State
from headend.api.errors import FieldError, ProblemError, problem_descriptions, problem_responses
from headend.api.schemas import json_body, parse_body
from headend.registry import meter_search, switch_import, switches
from headend.registry.switches import (
    ChangeAction,
    CommissioningState,
    Switch,
    SwitchChange,
    SwitchError,
    SwitchErrorKind,
)
from prepay_engine.ledger import MAX_BIGINT

router = APIRouter(prefix="/v1/switches", tags=["switches"])
meters_router = APIRouter(prefix="/v1/meters", tags=["meters"])

Writer = Annotated[Principal, Depends(require_roles(Role.FIELD_STAFF))]
Reader = Annotated[Principal, Depends(require_roles(Role.FIELD_STAFF, Role.OPERATOR, Role.VIEWER))]
SwitchPath = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="The switch's id.", examples=[17])]

# a CSV of MAX_ROWS rows of a few hundred characters: room for it, not for anything bigger
MAX_IMPORT_BYTES: Final = 4 * 1024 * 1024
MAX_ERRORS_LISTED: Final = 1_000
# the API calls the switch number `switch_no` (issue 17's interface); the registry `switch_number`
_API_NAMES: Final = {"switch_number": "switch_no"}
_REGISTRY_NAMES: Final = {"switch_no": "switch_number"}

_STATUS: Final = {
    SwitchErrorKind.INVALID: (422, "invalid_switch"),
    SwitchErrorKind.UNKNOWN_METER: (422, "unknown_meter"),
    SwitchErrorKind.INACTIVE_METER: (422, "inactive_meter"),
    SwitchErrorKind.UNKNOWN_SWITCH: (404, "unknown_switch"),
    SwitchErrorKind.NUMBER_IN_SERVICE: (409, "switch_number_in_service"),
    SwitchErrorKind.RETIRED: (409, "switch_retired"),
    SwitchErrorKind.TESTING: (409, "switch_testing"),
}

SwitchNo = Annotated[
    str,
    Field(
        max_length=switches.SWITCH_NUMBER_MAX,
        description=f"The switch's number as labelled on site: 1–{switches.SWITCH_NUMBER_MAX} characters of one line "
        "(trimmed); unique among the switches in service.",
        examples=["QF-0101"],
    ),
]
Device = Annotated[
    str,
    Field(
        max_length=switches.DEVICE_MAX,
        description=f"What the switch controls: 1–{switches.DEVICE_MAX} characters of one line.",
        examples=["box transformer 1 main switch"],
    ),
]
MeterId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="The meter whose relay serves the switch: registered and active.",
        examples=["000000000001"],
    ),
]
Location = Annotated[
    str,
    Field(
        max_length=switches.LOCATION_MAX,
        description=f"Where it is: up to {switches.LOCATION_MAX} characters of one line.",
        examples=["building 3, unit 2, meter room"],
    ),
]
Notes = Annotated[
    str,
    Field(
        max_length=switches.NOTES_MAX,
        description=f"Anything else: up to {switches.NOTES_MAX} characters, line breaks allowed.",
        examples=["customer asks for a call before any visit"],
    ),
]

_SWITCH_IN_EXAMPLE: Final[dict[str, Any]] = {
    "switch_no": "QF-0101",
    "controlled_device": "box transformer 1 main switch",
    "meter_id": "000000000001",
    "location": "building 3, unit 2, meter room",
}


class SwitchIn(BaseModel):
    """A switch to register: its number, the device it controls, its meter, where it is, notes."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [_SWITCH_IN_EXAMPLE]})

    switch_no: SwitchNo
    controlled_device: Device
    meter_id: MeterId
    location: Location | None = None
    notes: Notes | None = None


class SwitchPatch(BaseModel):
    """The fields to change; a field left out stays, `location` or `notes` null clears it."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"location": "building 3, unit 2, meter room, left cabinet"}]},
    )

    switch_no: SwitchNo | None = None
    controlled_device: Device | None = None
    meter_id: MeterId | None = Field(
        default=None,
        description="Another registered, active meter; the switch is `registered` again (its test was on the old one).",
    )
    location: Location | None = None
    notes: Notes | None = None


class RetireIn(BaseModel):
    """Why the switch is retired."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"reason": "replaced by QF-0101A after a fault"}]}
    )

    reason: str = Field(
        max_length=switches.REASON_MAX,
        description=f"Why: 1–{switches.REASON_MAX} characters, line breaks allowed.",
        examples=["replaced by QF-0101A after a fault"],
    )


_SWITCH_EXAMPLE: Final[dict[str, Any]] = {
    "id": 17,
    **_SWITCH_IN_EXAMPLE,
    "notes": None,
    "commissioning_state": "registered",
    "registered_by": "field.li",
    "registered_at": "2026-12-08T02:15:00.481223Z",
    "updated_by": "field.li",
    "updated_at": "2026-12-08T02:15:00.481223Z",
    "retired_at": None,
    "retired_by": None,
    "retire_reason": None,
}


class SwitchOut(BaseModel):
    """A registered switch (times in UTC)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SWITCH_EXAMPLE]})

    id: int = Field(description="The switch's id: `GET /v1/switches/{id}`.")
    switch_no: str
    controlled_device: str
    meter_id: str
    location: str | None
    notes: str | None
    commissioning_state: CommissioningState = Field(
        description="`registered` until its commissioning test: `testing`, then `commissioned` or `failed`; "
        "`decommissioned` once retired."
    )
    registered_by: str = Field(description="The principal who registered it.")
    registered_at: datetime
    updated_by: str = Field(description="Who changed it last (at registration: who registered it).")
    updated_at: datetime
    retired_at: datetime | None = Field(description="When it was retired; null: in service.")
    retired_by: str | None
    retire_reason: str | None


class SwitchChangeOut(BaseModel):
    """One change of a switch: who, when, what, each field from and to."""

    change_id: int
    at: datetime
    actor: str
    action: ChangeAction
    changes: dict[str, Any] = Field(description='Each field changed: `{"field": {"from": …, "to": …}}`.')
    detail: str | None = Field(description="The reason of a retirement, the line of an import.")


class SwitchDetail(SwitchOut):
    """A switch with its history, oldest change first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_SWITCH_EXAMPLE,
                    "history": [
                        {
                            "change_id": 41,
                            "at": "2026-12-08T02:15:00.481223Z",
                            "actor": "field.li",
                            "action": "registered",
                            "changes": {"switch_no": {"from": None, "to": "QF-0101"}},
                            "detail": None,
                        }
                    ],
                }
            ]
        }
    )

    history: list[SwitchChangeOut]


class SwitchPage(BaseModel):
    """Switches by id; pass `next_after` as `after` for the next page."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"switches": [_SWITCH_EXAMPLE], "next_after": None}]})

    switches: list[SwitchOut]
    next_after: int | None = Field(description="`after` of the next page; null on the last page.")


class RowErrorOut(BaseModel):
    """Why one line of an imported file was refused."""

    line: int = Field(description="The line of the file the row starts on (the header is line 1).")
    reason: str
    kind: switch_import.RowErrorKind


class SwitchImportOut(BaseModel):
    """What an import did: switches created, rows already registered as they are, rows refused (skipped)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"created": 1, "unchanged": 0, "switches": [_SWITCH_EXAMPLE], "errors": []}]}
    )

    created: int
    unchanged: int = Field(description="Rows equal to the switch in service under their number: nothing changed.")
    switches: list[SwitchOut] = Field(description="The switches created, in the file's order.")
    errors: list[RowErrorOut] = Field(description="Rows refused and skipped (`skip_invalid=true` only).")


class FoundRelayOut(BaseModel):
    """The meter's last reported relay position."""

    relay: str = Field(description="`open` or `closed`.")
    ready_for_reconnection: bool | None = Field(description="Armed for a reconnect by the button on site (合闸允许).")
    reported_at: datetime


class FoundAccountOut(BaseModel):
    """The prepaid account on the meter now."""

    account_id: str
    supply: str = Field(description="`connected`, `disconnected`, … as last confirmed.")
    balance_fen: int | None = Field(description="Prepaid balance in fen; null before its first posting.")
    protected: bool
    keep_supply: bool = Field(description="Keep supply (保电).")


class FoundMeterOut(BaseModel):
    """A meter found, how it matched, and what staff on site need of it (times in UTC)."""

    meter_id: str
    matched_by: list[str] = Field(
        description="How it matched, best first: `meter_id`, `address`, `endpoint`, `account`, `switch_number`, "
        "`meter_id_prefix`."
    )
    protocol: str
    model: str | None
    status: str
    region: str | None
    concentrator_id: str | None
    endpoint: str | None = Field(description="host:port of a polled meter or its gateway.")
    bus: str | None
    unit_id: int | None = Field(description="Modbus unit id.")
    address: str | None = Field(description="DL/T 645 address (12 digits).")
    last_reading_at: datetime | None
    relay: FoundRelayOut | None
    account: FoundAccountOut | None
    switches: list[SwitchOut] = Field(description="Its switches in service.")


class MeterSearchOut(BaseModel):
    """Meters matching the query, best matches first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "query": "A0001",
                    "meters": [
                        {
                            "meter_id": "000000000001",
                            "matched_by": ["account"],
                            "protocol": "dlt645",
                            "model": None,
                            "status": "active",
                            "region": "north",
                            "concentrator_id": None,
                            "endpoint": "10.1.2.3:8899",
                            "bus": None,
                            "unit_id": None,
                            "address": "000000000001",
                            "last_reading_at": "2026-12-08T02:00:00Z",
                            "relay": {
                                "relay": "closed",
                                "ready_for_reconnection": None,
                                "reported_at": "2026-12-08T01:00:00Z",
                            },
                            "account": {
                                "account_id": "A0001",
                                "supply": "connected",
                                "balance_fen": 7450,
                                "protected": False,
                                "keep_supply": False,
                            },
                            "switches": [_SWITCH_EXAMPLE],
                        }
                    ],
                    "more": False,
                }
            ]
        }
    )

    query: str = Field(description="The query as searched (trimmed).")
    meters: list[FoundMeterOut]
    more: bool = Field(description="More meters matched than `limit`: narrow the query.")


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _switch_out(switch: Switch) -> SwitchOut:
    return SwitchOut(
        id=switch.switch_id,
        switch_no=switch.switch_number,
        controlled_device=switch.controlled_device,
        meter_id=switch.meter_id,
        location=switch.location,
        notes=switch.notes,
        commissioning_state=switch.commissioning_state,
        registered_by=switch.registered_by,
        registered_at=switch.registered_at.astimezone(UTC),
        updated_by=switch.updated_by,
        updated_at=switch.updated_at.astimezone(UTC),
        retired_at=_utc(switch.retired_at),
        retired_by=switch.retired_by,
        retire_reason=switch.retire_reason,
    )


def _change_out(change: SwitchChange) -> SwitchChangeOut:
    return SwitchChangeOut(
        change_id=change.change_id,
        at=change.at.astimezone(UTC),
        actor=change.actor,
        action=change.action,
        changes={_API_NAMES.get(field, field): value for field, value in change.changes.items()},
        detail=change.detail,
    )


def _problem(exc: SwitchError) -> ProblemError:
    status_code, code = _STATUS[exc.kind]
    errors: list[FieldError] = []
    if exc.field is not None and status_code == 422:
        loc: list[str | int] = ["body"] if exc.field == "body" else ["body", _API_NAMES.get(exc.field, exc.field)]
        errors.append(FieldError(loc=loc, msg=str(exc), type=code))
    return ProblemError(status_code, str(exc), code=code, errors=errors)


_WRITE_ERRORS: Final = {
    401: "No valid credentials: missing, unknown or revoked token (see `WWW-Authenticate`).",
    403: "The role may not do this (field_staff and admin only).",
    413: "The body is larger than 16 KiB.",
    503: "The database is unavailable or busy; retry later.",
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Register a controlled switch",
    description="Registers a customer's controlled switch (接控开关) on an active meter; who registered it is the "
    "calling principal. The answer's `id` names it from then on (`Location`). Roles: field_staff, admin.",
    response_model=SwitchOut,
    response_description="The switch, registered.",
    responses=problem_descriptions(
        {
            **_WRITE_ERRORS,
            409: "The number is in service on another switch (`switch_number_in_service`); nothing was stored.",
            422: "The body is not valid (strict JSON types, no extra fields, a field empty, too long or holding "
            "control characters: `invalid_switch`), or the meter is not registered (`unknown_meter`) or not active "
            "(`inactive_meter`); nothing was stored.",
        }
    ),
    openapi_extra=json_body(SwitchIn),
)
def register_switch(principal: Writer, body: RawBody, conn: Conn, state: State, response: Response) -> SwitchOut:
    """Register a switch."""
    parsed = parse_body(SwitchIn, body)
    try:
        draft = switches.validate_draft(
            parsed.switch_no, parsed.controlled_device, parsed.meter_id, parsed.location, parsed.notes
        )
        switch = switches.register(conn, draft, by=principal.name, now=state.clock())
    except SwitchError as exc:
        raise _problem(exc) from None
    response.headers["Location"] = f"{router.prefix}/{switch.switch_id}"
    return _switch_out(switch)


@router.get(
    "",
    summary="List controlled switches",
    description="Switches by id, in service (or every one with `retired=true`), of a meter (`meter_id`), whose "
    "number starts with `switch_no` (any case). Keyset pagination: pass a page's `next_after` as `after`. Roles: "
    "field_staff, operator, viewer, admin.",
    response_model=SwitchPage,
    response_description="A page of switches by id.",
    responses=problem_responses(401, 403, 422, 503),
)
def list_switches(
    conn: Conn,
    principal: Reader,
    meter_id: Annotated[str | None, Query(max_length=32, description="Only this meter's switches.")] = None,
    switch_no: Annotated[
        str | None,
        Query(max_length=switches.SWITCH_NUMBER_MAX, description="Only numbers starting with this (any case)."),
    ] = None,
    retired: Annotated[bool, Query(description="true: retired switches too.")] = False,
    limit: Annotated[int, Query(ge=1, le=switches.MAX_PAGE, description="Switches per page.")] = 50,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_BIGINT, description="Only switches after this id (from `next_after`).")
    ] = None,
) -> SwitchPage:
    """A page of switches by id."""
    page = switches.list_switches(
        conn, meter_id=meter_id, number=switch_no, include_retired=retired, limit=limit, after=after
    )
    return SwitchPage(switches=[_switch_out(s) for s in page.switches], next_after=page.next_after)


async def import_body(request: Request) -> bytes:
    """The CSV as sent; 413 beyond MAX_IMPORT_BYTES."""
    return await body_within(request, MAX_IMPORT_BYTES)


_CSV_EXAMPLE: Final = (
    "switch_number,controlled_device,meter_id,location,notes\n"
    "QF-0101,box transformer 1 main switch,000000000001,building 3 meter room,\n"
)


def _row_errors(errors: list[switch_import.SwitchRowError]) -> list[RowErrorOut]:
    return [RowErrorOut(line=e.line, reason=e.reason, kind=e.kind) for e in errors]


@router.post(
    "/import",
    summary="Register controlled switches from a CSV",
    description="The body is a CSV (UTF-8, a BOM allowed) with the header `switch_number,controlled_device,"
    "meter_id,location,notes` (`location`, `notes` may be left out). Every refused row is reported with its line: a "
    "field empty, too long or holding control characters, a number repeating an earlier row, an unknown or inactive "
    "meter, a number in service on a different switch. Nothing is stored while a row is refused, unless "
    "`skip_invalid=true`. A row equal to the switch in service under its number changes nothing: sending the "
    "same file again creates nothing. Roles: field_staff, admin.",
    response_model=SwitchImportOut,
    response_description="What was created, what was already there, what was skipped.",
    responses=problem_descriptions(
        {
            **_WRITE_ERRORS,
            409: "A number of the file was registered by someone else meanwhile; nothing was stored (send it again).",
            413: f"The body is larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MiB.",
            422: "The file is not UTF-8 CSV with the header's required columns, or has more than 10,000 rows "
            '(`invalid_file`), or rows were refused (`rows_refused`: each in `errors`, `loc` `["body", <line>]`, '
            "`type` the kind: `invalid`, `repeated`, `unknown_meter`, `inactive_meter`, `number_in_service`); "
            "nothing was stored.",
        }
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string"}, "example": _CSV_EXAMPLE}},
        }
    },
)
def import_switches(
    principal: Writer,
    body: Annotated[bytes, Depends(import_body)],
    conn: Conn,
    state: State,
    skip_invalid: Annotated[
        bool, Query(description="true: store the valid rows even when others are refused (they are listed).")
    ] = False,
) -> SwitchImportOut:
    """Register the switches of a CSV."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProblemError(422, "body: the file is not UTF-8 text", code="invalid_file") from None
    try:
        parsed = switch_import.parse_switch_text(text)
    except switch_import.SwitchFileError as exc:
        raise ProblemError(422, f"body: {exc}", code="invalid_file") from None
    try:
        result = switch_import.import_switches(
            conn, parsed, by=principal.name, now=state.clock(), skip_invalid=skip_invalid, source="API import"
        )
    except SwitchError as exc:
        raise _problem(exc) from None
    if not result.imported:
        listed = result.errors[:MAX_ERRORS_LISTED]
        more = len(result.errors) - len(listed)
        detail = (
            f"{len(result.errors)} row(s) refused; nothing imported (fix them, or pass skip_invalid=true): "
            + "; ".join(str(e) for e in listed[:5])
            + ("; …" if len(result.errors) > 5 else "")
        )
        errors = [FieldError(loc=["body", e.line], msg=e.reason, type=e.kind.value) for e in listed]
        if more:
            errors.append(FieldError(loc=["body"], msg=f"and {more} more row(s) refused", type="more"))
        raise ProblemError(422, detail, code="rows_refused", errors=errors)
    return SwitchImportOut(
        created=len(result.created),
        unchanged=result.unchanged,
        switches=[_switch_out(s) for s in result.created],
        errors=_row_errors(result.errors),
    )


@router.get(
    "/{switch_id}",
    summary="Read a controlled switch with its history",
    description="The switch, retired or not, and every change of it oldest first: who, when, what, each field "
    "from and to. Roles: field_staff, operator, viewer, admin.",
    response_model=SwitchDetail,
    response_description="The switch and its history.",
    responses={
        **problem_responses(401, 403, 503),
        **problem_descriptions({404: "No such switch.", 422: "The switch id is not a positive whole number."}),
    },
)
def read_switch(switch_id: SwitchPath, conn: Conn, principal: Reader) -> SwitchDetail:
    """One switch with its history."""
    # one snapshot: the history matches the row
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        switch = switches.get_switch(conn, switch_id)
        if switch is None:
            raise ProblemError(404, f"no switch {switch_id}", code="unknown_switch")
        trail = switches.history(conn, switch_id)
    return SwitchDetail(**_switch_out(switch).model_dump(), history=[_change_out(c) for c in trail])


@router.patch(
    "/{switch_id}",
    summary="Correct a controlled switch",
    description="Changes the fields given (a field left out stays; `location` or `notes` null clears it) of a "
    "switch in service, audited with each field from and to; values equal to those stored change nothing. A new "
    "meter must be registered and active, and makes the switch `registered` again (its commissioning test was on "
    "the old meter); refused while its test runs. Roles: field_staff, admin.",
    response_model=SwitchOut,
    response_description="The switch as it is now.",
    responses=problem_descriptions(
        {
            **_WRITE_ERRORS,
            404: "No such switch.",
            409: "The switch is retired (`switch_retired`), its new number is in service on another switch "
            "(`switch_number_in_service`), or its test is running (`switch_testing`); nothing was changed.",
            422: "The body is not valid (strict JSON types, no extra fields, nothing to change, a required field "
            "null or empty, a field too long: `invalid_switch`), or the new meter is unknown or not active; nothing "
            "was changed.",
        }
    ),
    openapi_extra=json_body(SwitchPatch),
)
def edit_switch(switch_id: SwitchPath, principal: Writer, body: RawBody, conn: Conn, state: State) -> SwitchOut:
    """Change some fields of a switch."""
    parsed = parse_body(SwitchPatch, body)
    changes = {_REGISTRY_NAMES.get(f, f): getattr(parsed, f) for f in sorted(parsed.model_fields_set)}
    try:
        switch, _ = switches.edit(conn, switch_id, changes, by=principal.name, now=state.clock())
    except SwitchError as exc:
        raise _problem(exc) from None
    return _switch_out(switch)


@router.post(
    "/{switch_id}/retire",
    summary="Retire a controlled switch",
    description="Takes a switch out of service with a reason: it stays, with its history, `decommissioned`, and its "
    "number may be given to the switch that replaces it. Refused while its commissioning test runs. Roles: "
    "field_staff, admin.",
    response_model=SwitchOut,
    response_description="The switch, retired.",
    responses=problem_descriptions(
        {
            **_WRITE_ERRORS,
            404: "No such switch.",
            409: "The switch was retired before (`switch_retired`) or its test is running (`switch_testing`); "
            "nothing was changed.",
            422: "The body is not valid (strict JSON types, no extra fields, an empty or too long reason).",
        }
    ),
    openapi_extra=json_body(RetireIn),
)
def retire_switch(switch_id: SwitchPath, principal: Writer, body: RawBody, conn: Conn, state: State) -> SwitchOut:
    """Retire a switch."""
    parsed = parse_body(RetireIn, body)
    try:
        switch = switches.retire(conn, switch_id, parsed.reason, by=principal.name, now=state.clock())
    except SwitchError as exc:
        raise _problem(exc) from None
    return _switch_out(switch)


def _found_out(found: meter_search.FoundMeter) -> FoundMeterOut:
    relay = found.relay
    account = found.account
    return FoundMeterOut(
        meter_id=found.meter_id,
        matched_by=found.matched_by,
        protocol=found.protocol,
        model=found.model,
        status=found.status,
        region=found.region,
        concentrator_id=found.concentrator_id,
        endpoint=found.endpoint,
        bus=found.bus,
        unit_id=found.unit_id,
        address=found.address,
        last_reading_at=_utc(found.last_reading_at),
        relay=None
        if relay is None
        else FoundRelayOut(
            relay=relay.relay,
            ready_for_reconnection=relay.ready_for_reconnection,
            reported_at=relay.reported_at.astimezone(UTC),
        ),
        account=None
        if account is None
        else FoundAccountOut(
            account_id=account.account_id,
            supply=account.supply,
            balance_fen=account.balance_fen,
            protected=account.protected,
            keep_supply=account.keep_supply,
        ),
        switches=[_switch_out(s) for s in found.switches],
    )


@meters_router.get(
    "/search",
    summary="Find meters",
    description="Meters matching `q` every way it can: the meter id (exactly, then as a prefix), the DL/T 645 "
    "address (12 digits; fewer are zero-padded), `host:port` or `host:port/unit` of a polled meter, the prepaid "
    "account id, the number of a switch in service. Best matches first, each with how it matched, its account "
    "(supply, balance in fen), its switches, its relay position and its last reading time. Roles: field_staff, "
    "operator, viewer, admin.",
    response_model=MeterSearchOut,
    response_description="The meters found, best first.",
    responses=problem_responses(401, 403, 422, 503),
)
def search_meters(
    conn: Conn,
    principal: Reader,
    q: Annotated[
        str,
        Query(
            min_length=1,
            max_length=meter_search.MAX_QUERY_CHARS,
            description="A meter id, an address, host:port[/unit], an account id or a switch number.",
            examples=["A0001"],
        ),
    ],
    limit: Annotated[int, Query(ge=1, le=meter_search.MAX_RESULTS, description="Meters to return at most.")] = 20,
) -> MeterSearchOut:
    """Meters matching the query."""
    try:
        found = meter_search.search_meters(conn, q, limit=limit)
    except meter_search.SearchError as exc:
        raise ProblemError(
            422, f"query.q: {exc}", errors=[FieldError(loc=["query", "q"], msg=str(exc), type="invalid_query")]
        ) from None
    return MeterSearchOut(query=found.query, meters=[_found_out(m) for m in found.meters], more=found.more)
