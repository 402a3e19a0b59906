"""Collection success for operators and viewers: the daily series by group, the drill-down lists, a meter's readings.

Every figure of a day comes from its summary (`headend.reports.collection_summary`), brought up to date before it is
read: a past day's is exact, today's at most a minute old. Any answer is JSON, or CSV with `Accept: text/csv` or
`?format=csv`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Any, Final
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from headend.api.auth import require_roles
from headend.api.credentials import Principal, Role
from headend.api.db import ApiState, Conn, Connection, State
from headend.api.errors import FieldError, ProblemError, problem_descriptions, problem_responses
from headend.api.schemas import PLAUSIBLE_YEARS
from headend.db.collection_days import local_day_bounds
from headend.reports import collection_lists, collection_summary
from headend.reports.collection_lists import ListedMeter, MeterList, MeterReadings
from headend.reports.collection_summary import Grouping

router = APIRouter(prefix="/v1/collection", tags=["collection"])
meters_router = APIRouter(prefix="/v1/meters", tags=["collection"])

Reader = Annotated[Principal, Depends(require_roles(Role.OPERATOR, Role.VIEWER))]

MAX_SERIES_DAYS: Final = 366
MAX_FAILING_DAYS: Final = 31
MAX_READING_DAYS: Final = 31
MAX_PAGE: Final = 1_000
CSV_MEDIA_TYPE: Final = "text/csv"
_DATE_PATTERN: Final = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_KEY_MAX_CHARS: Final = 100
_METER_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,32}$"


class By(StrEnum):
    """A breakdown of the collection: by region, transformer area (台区), concentrator or protocol."""

    REGION = "region"
    AREA = "area"
    CONCENTRATOR = "concentrator"
    PROTOCOL = "protocol"


class Format(StrEnum):
    """What the answer is written as; without it, the `Accept` header decides (JSON unless it prefers CSV)."""

    JSON = "json"
    CSV = "csv"


DayQuery = Annotated[
    str,
    Query(
        pattern=_DATE_PATTERN, description="A local day (collection time zone), YYYY-MM-DD.", examples=["2026-11-20"]
    ),
]
ByQuery = Annotated[
    By | None,
    Query(
        description="Break the figures down by `region`, `area` (transformer area, 台区), `concentrator` or `protocol`."
    ),
]
KeyQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=_KEY_MAX_CHARS,
        description="With `by`: the group's key as the series gives it; `by` without `key`: the meters without one "
        "(no region, no area, not behind a concentrator).",
    ),
]
FormatQuery = Annotated[Format | None, Query(description="`csv` or `json`; overrides the `Accept` header.")]
LimitQuery = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Meters per page.")]
AfterQuery = Annotated[
    str | None, Query(pattern=_METER_ID_PATTERN, description="Only meters after this id (from `next_after`).")
]

_ENTRY_EXAMPLE: Final[dict[str, Any]] = {
    "day": "2026-11-20",
    "key": "dcu-07",
    "expected": 240,
    "read": 233,
    "complete": 221,
    "rate": 0.970833,
    "read_after_reread": 238,
    "complete_after_reread": 230,
    "rate_after_reread": 0.991667,
    "reread": True,
    "final": True,
    "as_of": "2026-11-21T01:02:03.456789Z",
}


class DailyEntry(BaseModel):
    """One local day of the fleet or of one group: first pass (`read`, `complete`, `rate`) and after re-read."""

    day: date
    key: str | None = Field(
        description="The group (region, area, concentrator id or protocol); null: the whole fleet without `by`, or "
        "the meters without such a group (no region, no area, not behind a concentrator)."
    )
    expected: int = Field(
        description="Meters expected: active and installed (or registered) by the day, or read on it."
    )
    read: int = Field(description="Of those, read at the first pass: at least one reading of the day.")
    complete: int = Field(description="Read at the first pass with all 96 fifteen-minute load points.")
    rate: float | None = Field(description="First-pass success: `read` ÷ `expected` (6 decimals); null: none expected.")
    read_after_reread: int = Field(description="Meters read now, after the day's re-reads (补抄).")
    complete_after_reread: int
    rate_after_reread: float | None = Field(description="`read_after_reread` ÷ `expected`; null: none expected.")
    reread: bool = Field(
        description="Whether the day was re-read: its first pass was frozen before its first re-read. Otherwise the "
        "first pass is what is stored, equal to the figures after re-read."
    )
    final: bool = Field(
        description="The day ended more than an hour ago: the figures are exact as stored now. Not final (today, or "
        "the hour after midnight): as of `as_of`, at most 60 s old."
    )
    as_of: datetime = Field(description="When the day's figures were counted (UTC).")


class DailySeries(BaseModel):
    """The days of [`from`, `to`], each day's entries in key order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "from": "2026-11-20",
                    "to": "2026-11-20",
                    "by": "concentrator",
                    "timezone": "Asia/Shanghai",
                    "entries": [_ENTRY_EXAMPLE],
                }
            ]
        }
    )

    from_: date = Field(alias="from")
    to: date
    by: By | None
    timezone: str = Field(description="The zone the days are local to (the collection's).")
    entries: list[DailyEntry] = Field(description="By day, then key (null first).")


class FailureOut(BaseModel):
    """A meter's last failure up to the end of the day."""

    at: datetime
    kind: str = Field(
        description="The failed poll's kind (`timeout`, `no_connection`, `exception_response`, `bad_frame`, "
        "`meter_error`, `bad_value`), or `dead_letter` for an MQTT meter's message refused."
    )
    reason: str
    attempts: int | None = Field(
        description="Requests the poll took (0: its bus was unreachable); null for a dead letter."
    )


class ListedMeterOut(BaseModel):
    """A meter of a drill-down list."""

    meter_id: str
    protocol: str
    region: str | None
    area: str | None
    concentrator_id: str | None
    intervals_read: int = Field(description="Load points of the day read (now, after re-reads).")
    missing: list[str] = Field(
        description="The load points not read, as local `HH:MM-HH:MM` ranges, end exclusive (`00:00-24:00`: all)."
    )
    last_reading_at: datetime | None = Field(description="The meter's latest reading stored, whatever its day (UTC).")
    last_failure: FailureOut | None = Field(
        description="A polled meter's last failed poll up to the end of the day; an MQTT meter's last dead letter "
        "on `meters/{id}/readings` up to then; null when there is none."
    )


class MeterListPage(BaseModel):
    """A page of a drill-down list, by meter id."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "list": "incomplete",
                    "day": "2026-11-20",
                    "timezone": "Asia/Shanghai",
                    "by": "concentrator",
                    "key": "dcu-07",
                    "days": 1,
                    "meters": [
                        {
                            "meter_id": "m0001",
                            "protocol": "mqtt",
                            "region": "north",
                            "area": "east-3",
                            "concentrator_id": "dcu-07",
                            "intervals_read": 93,
                            "missing": ["13:00-13:45"],
                            "last_reading_at": "2026-11-21T01:45:00Z",
                            "last_failure": None,
                        }
                    ],
                    "next_after": None,
                }
            ]
        }
    )

    list_: MeterList = Field(alias="list", description="Which list: `never-read`, `incomplete` or `failing`.")
    day: date
    timezone: str
    by: By | None
    key: str | None
    days: int = Field(description="Days in a row without a reading, ending at `day` (the failing list; 1 otherwise).")
    meters: list[ListedMeterOut]
    next_after: str | None = Field(description="Pass as `after` for the next page; null on the last one.")


class ReadingOut(BaseModel):
    """One stored reading."""

    ts: datetime
    energy_import_wh: int
    energy_export_wh: int | None
    power_w: int | None
    voltage_v: float | None
    relay_state: str | None
    quality_flags: int = Field(description="Bits: 1 register decrease, 2 rollover, 4 off the 15-minute grid.")
    source: str
    received_at: datetime


class GapOut(BaseModel):
    """Consecutive 15-minute load points without a reading: [`from`, `to`)."""

    from_: datetime = Field(alias="from")
    to: datetime
    intervals: int


class MeterReadingsOut(BaseModel):
    """A meter's readings over [`from`, `to`) and the load points without one."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "meter_id": "m0001",
                    "from": "2026-11-19T16:00:00Z",
                    "to": "2026-11-20T16:00:00Z",
                    "intervals": 96,
                    "intervals_read": 95,
                    "gaps": [{"from": "2026-11-20T05:00:00Z", "to": "2026-11-20T05:15:00Z", "intervals": 1}],
                    "readings": [
                        {
                            "ts": "2026-11-19T16:00:00Z",
                            "energy_import_wh": 1234567,
                            "energy_export_wh": None,
                            "power_w": 812,
                            "voltage_v": 229.8,
                            "relay_state": "closed",
                            "quality_flags": 0,
                            "source": "mqtt",
                            "received_at": "2026-11-19T16:00:04.120533Z",
                        }
                    ],
                    "truncated": False,
                }
            ]
        }
    )

    meter_id: str
    from_: datetime = Field(alias="from")
    to: datetime
    intervals: int = Field(description="The 15-minute load points beginning in the range (on the quarter hour).")
    intervals_read: int = Field(description="Of those, with at least one reading.")
    gaps: list[GapOut] = Field(description="The runs of load points without a reading, in order.")
    readings: list[ReadingOut] = Field(description=f"Oldest first; the first {collection_lists.MAX_READINGS:,}.")
    truncated: bool = Field(description="More readings are stored in the range than listed.")


def _csv_content(example: str) -> dict[str, Any]:
    return {CSV_MEDIA_TYPE: {"schema": {"type": "string"}, "example": example}}


def _ok(description: str, csv_example: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": description, "content": _csv_content(csv_example)}}


_SERIES_CSV = (
    ",".join(collection_summary.SERIES_CSV_COLUMNS)
    + "\n2026-11-20,dcu-07,240,233,221,0.970833,238,230,0.991667,true,true,2026-11-21T01:02:03.456789Z\n"
)
_LIST_CSV_COLUMNS: Final = (
    "meter_id",
    "protocol",
    "region",
    "area",
    "concentrator_id",
    "intervals_read",
    "missing",
    "last_reading_at",
    "failure_at",
    "failure_kind",
    "failure_reason",
    "failure_attempts",
)
_LIST_CSV = ",".join(_LIST_CSV_COLUMNS) + ("\nm0001,mqtt,north,east-3,dcu-07,93,13:00-13:45,2026-11-21T01:45:00Z,,,,\n")
_READINGS_CSV_COLUMNS: Final = tuple(ReadingOut.model_fields)
_READINGS_CSV = ",".join(_READINGS_CSV_COLUMNS) + (
    "\n2026-11-19T16:00:00Z,1234567,,812,229.8,closed,0,mqtt,2026-11-19T16:00:04.120533Z\n"
)
_ERRORS = {
    **problem_responses(401, 503),
    **problem_descriptions(
        {
            403: "The role may not read the collection (operator, viewer and admin may).",
            422: "A query parameter is not valid: a day that is not a date YYYY-MM-DD (or is after today), a range "
            "that ends before it starts or is too long, `key` without `by`, a value out of range.",
        }
    ),
}


def _field_problem(name: str, msg: str, kind: str = "value_error") -> ProblemError:
    return ProblemError(422, f"query.{name}: {msg}", errors=[FieldError(loc=["query", name], msg=msg, type=kind)])


def _day(name: str, raw: str, today: date) -> date:
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise _field_problem(name, f"{raw!r} is not a date", "date_parsing") from None
    if day.year not in PLAUSIBLE_YEARS:
        raise _field_problem(name, f"must lie in the years {PLAUSIBLE_YEARS.start}–{PLAUSIBLE_YEARS.stop - 1}")
    if day > today:
        raise _field_problem(name, f"{day} is after today ({today}) in the collection's time zone")
    return day


def _today(conn: Connection, state: ApiState) -> tuple[date, ZoneInfo]:
    _, zone = collection_summary.collection_zone(conn)
    return state.clock().astimezone(zone).date(), zone


def _grouping(by: By | None, key: str | None) -> Grouping:
    if by is None:
        if key is not None:
            raise _field_problem("key", "a key needs `by`: the kind of group it names", "missing_by")
        return Grouping.ALL
    return Grouping(by.value)


def wants_csv(request: Request, fmt: Format | None) -> bool:
    """Whether to answer in CSV: `format`, else an `Accept` header preferring text/csv to application/json."""
    if fmt is not None:
        return fmt is Format.CSV
    accept = request.headers.get("accept")
    if not accept:
        return False
    return _quality(accept, "text", "csv") > _quality(accept, "application", "json")


_Q = re.compile(r"^q=([0-9](?:\.[0-9]{0,3})?)$")


def _quality(accept: str, kind: str, sub: str) -> float:
    """The q of the most specific media range of `accept` matching kind/sub (0 when none does)."""
    best: tuple[int, float] = (-1, 0.0)
    for part in accept.split(","):
        media, *params = (p.strip().lower() for p in part.split(";"))
        specificity = {f"{kind}/{sub}": 2, f"{kind}/*": 1, "*/*": 0}.get(media)
        if specificity is None or specificity < best[0]:
            continue
        q = 1.0
        for param in params:
            match = _Q.match(param.replace(" ", ""))
            if match:
                q = min(float(match.group(1)), 1.0)
        if specificity > best[0]:
            best = (specificity, q)
    return best[1]


def _csv_response(rows: list[list[Any]], columns: tuple[str, ...], headers: dict[str, str] | None = None) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return Response(out.getvalue().encode(), media_type=f"{CSV_MEDIA_TYPE}; charset=utf-8", headers=headers)


def _utc_text(at: datetime | None) -> str:
    if at is None:
        return ""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


@router.get(
    "/daily",
    summary="Collection success per day",
    description="One entry per local day of [`from`, `to`] (at most 366 days, none after today) — per group with "
    "`by` — with the meters expected, read and complete at the first pass and after re-read (补抄), and both rates. "
    "A past day's figures are exact; a day that is not final (today) is at most 60 s old. The first ask of a day "
    "counts it (a pass over its meter-days); later asks read its summary. CSV with `Accept: text/csv` or "
    "`format=csv`, one row per entry. Roles: operator, viewer, admin.",
    response_model=DailySeries,
    response_description="The series.",
    responses={**_ok("The series.", _SERIES_CSV), **_ERRORS},
)
def daily(
    request: Request,
    conn: Conn,
    state: State,
    principal: Reader,
    from_: Annotated[str, Query(alias="from", pattern=_DATE_PATTERN, description="First local day, YYYY-MM-DD.")],
    to: Annotated[str, Query(pattern=_DATE_PATTERN, description="Last local day (inclusive), YYYY-MM-DD.")],
    by: ByQuery = None,
    format_: Annotated[Format | None, Query(alias="format", description="`csv` or `json`; overrides `Accept`.")] = None,
) -> Response:
    """The daily collection series."""
    today, zone = _today(conn, state)
    first, last = _day("from", from_, today), _day("to", to, today)
    if last < first:
        raise _field_problem("to", f"{last} is before from ({first})")
    if (last - first).days + 1 > MAX_SERIES_DAYS:
        raise _field_problem("to", f"the range is {(last - first).days + 1} days; at most {MAX_SERIES_DAYS}")
    grouping = _grouping(by, None)
    collection_summary.ensure_summaries(conn, first, last)
    if wants_csv(request, format_):
        body = collection_lists.series_csv(conn, first, last, grouping)
        return Response(body, media_type=f"{CSV_MEDIA_TYPE}; charset=utf-8")
    entries = collection_lists.series_json(conn, first, last, grouping)
    # the entries come written out by the summary: only the envelope is written here
    head = json.dumps({"from": first.isoformat(), "to": last.isoformat(), "by": by, "timezone": zone.key})
    return Response(f'{head[:-1]},"entries":'.encode() + entries + b"}", media_type="application/json")


def _listed_out(m: ListedMeter) -> ListedMeterOut:
    failure = m.last_failure
    return ListedMeterOut(
        meter_id=m.meter_id,
        protocol=m.protocol,
        region=m.region,
        area=m.area,
        concentrator_id=m.concentrator_id,
        intervals_read=m.intervals_read,
        missing=m.missing,
        last_reading_at=m.last_reading_at,
        last_failure=None
        if failure is None
        else FailureOut(at=failure.at, kind=failure.kind, reason=failure.reason, attempts=failure.attempts),
    )


def _list_row(m: ListedMeter) -> list[Any]:
    f = m.last_failure
    return [
        m.meter_id,
        m.protocol,
        m.region or "",
        m.area or "",
        m.concentrator_id or "",
        m.intervals_read,
        " ".join(m.missing),
        _utc_text(m.last_reading_at),
        "" if f is None else _utc_text(f.at),
        "" if f is None else f.kind,
        "" if f is None else f.reason,
        "" if f is None or f.attempts is None else f.attempts,
    ]


def _meter_list(
    which: MeterList,
    request: Request,
    conn: Connection,
    state: ApiState,
    day_raw: str,
    by: By | None,
    key: str | None,
    days: int,
    limit: int,
    after: str | None,
    fmt: Format | None,
) -> Response | MeterListPage:
    today, zone = _today(conn, state)
    day = _day("day", day_raw, today)
    grouping = _grouping(by, key)
    first = day - timedelta(days=days - 1)
    collection_summary.ensure_summaries(conn, first, day)
    _, day_end = local_day_bounds(day, zone.key)
    meters, more = collection_lists.list_meters(
        conn, which, day, day_end, grouping=grouping, key=key, days=days, after=after or "", limit=limit
    )
    next_after = meters[-1].meter_id if more else None
    if wants_csv(request, fmt):
        headers = {}
        if next_after is not None:
            headers["Link"] = f'<{request.url.include_query_params(after=next_after)}>; rel="next"'
        return _csv_response([_list_row(m) for m in meters], _LIST_CSV_COLUMNS, headers)
    return MeterListPage.model_validate(
        {
            "list": which,
            "day": day,
            "timezone": zone.key,
            "by": by,
            "key": key,
            "days": days,
            "meters": [_listed_out(m) for m in meters],
            "next_after": next_after,
        }
    )


def _list_route(which: MeterList, summary: str, description: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": description + " Each meter with its groups, the load points it missed (local HH:MM ranges), "
        "its last reading and its last failure up to the end of the day. By meter id, a page at a time (`after`); in "
        'CSV the next page is the `Link` header\'s `rel="next"`. Roles: operator, viewer, admin.',
        "response_model": MeterListPage,
        "response_description": "A page of the list.",
        "responses": {**_ok("A page of the list.", _LIST_CSV), **_ERRORS},
    }


@router.get(
    "/never-read",
    **_list_route(
        MeterList.NEVER_READ,
        "Meters never read",
        "Meters expected on `day` with no reading that day and none stored at all (as of now).",
    ),
)
def never_read(
    request: Request,
    conn: Conn,
    state: State,
    principal: Reader,
    day: DayQuery,
    by: ByQuery = None,
    key: KeyQuery = None,
    limit: LimitQuery = 100,
    after: AfterQuery = None,
    format_: Annotated[Format | None, Query(alias="format", description="`csv` or `json`; overrides `Accept`.")] = None,
) -> Any:
    """Meters that never sent a reading."""
    return _meter_list(MeterList.NEVER_READ, request, conn, state, day, by, key, 1, limit, after, format_)


@router.get(
    "/incomplete",
    **_list_route(
        MeterList.INCOMPLETE,
        "Meters read but incomplete",
        "Meters with at least one reading on `day` but not all 96 fifteen-minute load points (after re-reads).",
    ),
)
def incomplete(
    request: Request,
    conn: Conn,
    state: State,
    principal: Reader,
    day: DayQuery,
    by: ByQuery = None,
    key: KeyQuery = None,
    limit: LimitQuery = 100,
    after: AfterQuery = None,
    format_: Annotated[Format | None, Query(alias="format", description="`csv` or `json`; overrides `Accept`.")] = None,
) -> Any:
    """Meters with some load points of the day missing."""
    return _meter_list(MeterList.INCOMPLETE, request, conn, state, day, by, key, 1, limit, after, format_)


@router.get(
    "/failing",
    **_list_route(
        MeterList.FAILING,
        "Meters failing days in a row",
        "Meters expected with no reading on each of the `days` days ending at `day` (`days`=1: unread on `day`).",
    ),
)
def failing(
    request: Request,
    conn: Conn,
    state: State,
    principal: Reader,
    day: DayQuery,
    days: Annotated[int, Query(ge=1, le=MAX_FAILING_DAYS, description="Days in a row without a reading.")] = 1,
    by: ByQuery = None,
    key: KeyQuery = None,
    limit: LimitQuery = 100,
    after: AfterQuery = None,
    format_: Annotated[Format | None, Query(alias="format", description="`csv` or `json`; overrides `Accept`.")] = None,
) -> Any:
    """Meters without a reading for `days` days in a row."""
    return _meter_list(MeterList.FAILING, request, conn, state, day, by, key, days, limit, after, format_)


def _instant(name: str, raw: str, zone: ZoneInfo) -> datetime:
    if re.fullmatch(_DATE_PATTERN, raw):
        try:
            at = datetime.combine(date.fromisoformat(raw), time(), zone)
        except ValueError:
            raise _field_problem(name, f"{raw!r} is not a date", "date_parsing") from None
    else:
        try:
            at = datetime.fromisoformat(raw)
        except ValueError:
            raise _field_problem(name, f"{raw!r} is not an ISO 8601 time or a date", "datetime_parsing") from None
        if at.tzinfo is None:
            raise _field_problem(name, "a time needs an offset (or give a date: its local midnight)", "timezone_aware")
    if at.year not in PLAUSIBLE_YEARS:
        raise _field_problem(name, f"must lie in the years {PLAUSIBLE_YEARS.start}–{PLAUSIBLE_YEARS.stop - 1}")
    return at.astimezone(UTC)


def _reading_rows(found: MeterReadings) -> list[list[Any]]:
    return [
        [
            _utc_text(r.ts),
            r.energy_import_wh,
            "" if r.energy_export_wh is None else r.energy_export_wh,
            "" if r.power_w is None else r.power_w,
            "" if r.voltage_v is None else r.voltage_v,
            r.relay_state or "",
            r.quality_flags,
            r.source,
            _utc_text(r.received_at),
        ]
        for r in found.readings
    ]


InstantQuery = Annotated[str, Query(max_length=64)]


@meters_router.get(
    "/{meter_id}/readings",
    summary="A meter's readings and gaps",
    description="The meter's readings over [`from`, `to`) (at most 31 days; each an ISO 8601 time with an offset, or "
    "a date: its local midnight in the collection's time zone), oldest first, and the runs of 15-minute load points "
    "without a reading. CSV (`Accept: text/csv` or `format=csv`): the readings. Roles: operator, viewer, admin.",
    response_model=MeterReadingsOut,
    response_description="The readings and gaps.",
    responses={
        **_ok("The readings and gaps.", _READINGS_CSV),
        **_ERRORS,
        **problem_descriptions({404: "No such meter (`unknown_meter`)."}),
        **problem_descriptions(
            {
                422: "A query parameter is not valid: not a time with an offset or a date, a range that ends before "
                "it starts or is longer than 31 days, a meter id that is not 1–32 of `A-Z a-z 0-9 _ -`."
            }
        ),
    },
)
def meter_readings(
    request: Request,
    conn: Conn,
    principal: Reader,
    meter_id: Annotated[str, Path(pattern=_METER_ID_PATTERN, description="The meter.", examples=["m0001"])],
    from_: Annotated[
        str,
        Query(alias="from", max_length=64, description="Start: ISO 8601 with an offset, or a date (local midnight)."),
    ],
    to: Annotated[str, Query(max_length=64, description="End, exclusive: ISO 8601 with an offset, or a date.")],
    format_: Annotated[Format | None, Query(alias="format", description="`csv` or `json`; overrides `Accept`.")] = None,
) -> Any:
    """A meter's readings and the load points without one."""
    _, zone = collection_summary.collection_zone(conn)
    start, end = _instant("from", from_, zone), _instant("to", to, zone)
    if end <= start:
        raise _field_problem("to", "the range ends before or when it starts")
    if end - start > timedelta(days=MAX_READING_DAYS):
        raise _field_problem("to", f"the range is longer than {MAX_READING_DAYS} days")
    if not collection_lists.meter_exists(conn, meter_id):
        raise ProblemError(404, f"no meter {meter_id!r}", code="unknown_meter")
    found = collection_lists.meter_readings(conn, meter_id, start, end)
    if wants_csv(request, format_):
        return _csv_response(_reading_rows(found), _READINGS_CSV_COLUMNS)
    return MeterReadingsOut.model_validate(
        {
            "meter_id": meter_id,
            "from": start,
            "to": end,
            "intervals": found.intervals,
            "intervals_read": found.intervals_read,
            "gaps": [{"from": g.start, "to": g.end, "intervals": g.intervals} for g in found.gaps],
            "readings": [ReadingOut.model_validate(r, from_attributes=True) for r in found.readings],
            "truncated": found.truncated,
        }
    )
