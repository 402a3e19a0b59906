"""Customers' controlled switches (接控开关): register, edit, retire, find; every change audited.

A switch has a number (its label on site, unique among the switches in service), the device it controls (e.g. "box
transformer 1 main switch"), the meter whose relay serves it, a location and notes. Field staff register it, correct
it and retire it (with a reason); a retired switch keeps its row and its history, its commissioning state becomes
`decommissioned`, and its number may be given to the switch that replaces it. Each change appends one row to
`controlled_switch_changes`: who, when, what, and each changed field before and after.

The validation is pure (`validate_draft`, `validate_changes`) and shared by the API, the command line and the CSV
import; `SwitchError` and its kinds say why something was refused, in a sentence fit for the person who asked.
The commissioning test owns `commissioning_state` beyond this: a switch whose test is running (`testing`) can't be
retired or moved to another meter, and moving a switch to another meter makes it `registered` again (its test was
on the old meter).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

import psycopg
from psycopg import errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from protocols.readings import METER_ID_PATTERN

Connection = psycopg.Connection[Any]

# migration 0023 checks the same bounds
SWITCH_NUMBER_MAX: Final = 64
DEVICE_MAX: Final = 200
LOCATION_MAX: Final = 200
NOTES_MAX: Final = 1000
REASON_MAX: Final = 500
ACTOR_MAX: Final = 64
MAX_PAGE: Final = 500

REQUIRED_FIELDS: Final = ("switch_number", "controlled_device", "meter_id")
OPTIONAL_FIELDS: Final = ("location", "notes")
FIELDS: Final = (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)
_LIMITS: Final = {
    "switch_number": SWITCH_NUMBER_MAX,
    "controlled_device": DEVICE_MAX,
    "location": LOCATION_MAX,
    "notes": NOTES_MAX,
}
# line and paragraph separators count as control characters to PostgreSQL's [[:cntrl:]] (glibc), as to a form
_LINE_BREAKING: Final = frozenset("\u2028\u2029")
_MULTILINE_ALLOWED: Final = frozenset("\t\n\r")


class CommissioningState(StrEnum):
    """Where a switch stands in commissioning (the test itself sets testing, commissioned and failed)."""

    REGISTERED = "registered"
    TESTING = "testing"
    COMMISSIONED = "commissioned"
    FAILED = "failed"
    DECOMMISSIONED = "decommissioned"


class ChangeAction(StrEnum):
    """What a row of `controlled_switch_changes` records."""

    REGISTERED = "registered"
    EDITED = "edited"
    RETIRED = "retired"
    COMMISSIONING = "commissioning"  # a state change by the commissioning test


class SwitchErrorKind(StrEnum):
    """Why a switch operation was refused; the API answers each with its own status."""

    INVALID = "invalid"  # a field is missing, too long, or not text a form may hold (422)
    UNKNOWN_METER = "unknown_meter"  # the meter is not registered (422)
    INACTIVE_METER = "inactive_meter"  # the meter is registered but not active (422)
    UNKNOWN_SWITCH = "unknown_switch"  # (404)
    NUMBER_IN_SERVICE = "number_in_service"  # another switch in service has the number (409)
    RETIRED = "retired"  # the switch was retired: nothing more changes it (409)
    TESTING = "testing"  # its commissioning test is running (409)


class SwitchError(ValueError):
    """A switch operation refused, with its kind, the field at fault (if one) and a sentence; nothing was changed."""

    def __init__(self, kind: SwitchErrorKind, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.field = field


@dataclass(frozen=True, slots=True)
class SwitchDraft:
    """A new switch's fields, validated."""

    switch_number: str
    controlled_device: str
    meter_id: str
    location: str | None = None
    notes: str | None = None


@dataclass(frozen=True, slots=True)
class Switch:
    """A registered switch as stored (times aware, UTC from the database)."""

    switch_id: int
    switch_number: str
    controlled_device: str
    meter_id: str
    location: str | None
    notes: str | None
    commissioning_state: CommissioningState
    registered_by: str
    registered_at: datetime
    updated_by: str
    updated_at: datetime
    retired_at: datetime | None
    retired_by: str | None
    retire_reason: str | None


@dataclass(frozen=True, slots=True)
class SwitchChange:
    """One audited change of a switch."""

    change_id: int
    switch_id: int
    at: datetime
    actor: str
    action: ChangeAction
    changes: dict[str, Any]
    detail: str | None


@dataclass(frozen=True, slots=True)
class SwitchPage:
    """Switches by id; `next_after` is the last one's id when more follow."""

    switches: list[Switch]
    next_after: int | None


def _invalid(field: str, message: str) -> SwitchError:
    return SwitchError(SwitchErrorKind.INVALID, message, field=field)


def _text_problem(value: str, *, multiline: bool) -> str | None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    for char in value:
        if multiline and char in _MULTILINE_ALLOWED:
            continue
        if char in _LINE_BREAKING or unicodedata.category(char) == "Cc":
            return "holds a control character" + ("" if multiline else " (one line of text)")
    return None


def clean_text(field: str, value: str | None, *, required: bool) -> str | None:
    """A field's text as stored: trimmed, empty as none; SwitchError when required and empty, too long or unstorable."""
    text = (value or "").strip()
    if not text:
        if required:
            raise _invalid(field, f"{field} is empty")
        return None
    limit = _LIMITS[field]
    if len(text) > limit:
        raise _invalid(field, f"{field} of {len(text)} characters exceeds {limit}")
    problem = _text_problem(text, multiline=field == "notes")
    if problem is not None:
        raise _invalid(field, f"{field} {problem}")
    return text


def clean_required(field: str, value: str | None) -> str:
    """A required field's text as stored; SwitchError when empty, too long or unstorable."""
    text = clean_text(field, value, required=True)
    if text is None:
        raise _invalid(field, f"{field} is empty")
    return text


def clean_meter_id(value: str | None) -> str:
    """A meter id as the registry writes it; SwitchError when empty or not one."""
    meter_id = (value or "").strip()
    if not meter_id:
        raise _invalid("meter_id", "meter_id is empty")
    if not METER_ID_PATTERN.fullmatch(meter_id):
        raise _invalid("meter_id", f"meter_id {meter_id!r} does not match [A-Za-z0-9_-]{{1,32}}")
    return meter_id


def clean_reason(value: str | None) -> str:
    """A retirement's reason: required, at most REASON_MAX characters, line breaks allowed."""
    text = (value or "").strip()
    if not text:
        raise _invalid("reason", "reason is empty: say why the switch is retired")
    if len(text) > REASON_MAX:
        raise _invalid("reason", f"reason of {len(text)} characters exceeds {REASON_MAX}")
    problem = _text_problem(text, multiline=True)
    if problem is not None:
        raise _invalid("reason", f"reason {problem}")
    return text


def clean_actor(value: str) -> str:
    """Who acts (a principal's name, or `--by` of the command line): 1–64 characters of one line."""
    actor = value.strip()
    if not actor or len(actor) > ACTOR_MAX or _text_problem(actor, multiline=False) is not None:
        raise _invalid("by", f"who acts must be 1–{ACTOR_MAX} characters of one line, got {value!r}")
    return actor


def _clean_field(field: str, value: str | None) -> str | None:
    if field == "meter_id":
        return clean_meter_id(value)
    return clean_text(field, value, required=field in REQUIRED_FIELDS)


def validate_draft(
    switch_number: str | None,
    controlled_device: str | None,
    meter_id: str | None,
    location: str | None = None,
    notes: str | None = None,
) -> SwitchDraft:
    """A new switch's fields checked and trimmed; SwitchError (kind invalid) naming the first field at fault."""
    return SwitchDraft(
        switch_number=clean_required("switch_number", switch_number),
        controlled_device=clean_required("controlled_device", controlled_device),
        meter_id=clean_meter_id(meter_id),
        location=clean_text("location", location, required=False),
        notes=clean_text("notes", notes, required=False),
    )


def validate_changes(changes: Mapping[str, str | None]) -> dict[str, str | None]:
    """An edit's fields checked and trimmed: only FIELDS, at least one; a required field can't be cleared."""
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise _invalid(unknown[0], f"{', '.join(unknown)}: not a field of a switch (fields: {', '.join(FIELDS)})")
    if not changes:
        raise _invalid("body", f"nothing to change: give one or more of {', '.join(FIELDS)}")
    return {field: _clean_field(field, value) for field, value in changes.items()}


SWITCH_COLUMNS: Final = (
    "switch_id, switch_number, controlled_device, meter_id, location, notes, commissioning_state, registered_by, "
    "registered_at, updated_by, updated_at, retired_at, retired_by, retire_reason"
)


def switch_from_row(row: Mapping[str, Any]) -> Switch:
    """A Switch from a row of SWITCH_COLUMNS."""
    return Switch(**{**row, "commissioning_state": CommissioningState(row["commissioning_state"])})


def check_meter(conn: Connection, meter_id: str) -> None:
    """SwitchError unless the meter is registered and active."""
    row = conn.execute("SELECT status FROM meters WHERE meter_id = %s", (meter_id,)).fetchone()
    if row is None:
        raise SwitchError(SwitchErrorKind.UNKNOWN_METER, f"no meter {meter_id!r} is registered", field="meter_id")
    if row[0] != "active":
        raise SwitchError(
            SwitchErrorKind.INACTIVE_METER,
            f"meter {meter_id!r} is {row[0]}: a switch is registered on an active meter",
            field="meter_id",
        )


def _number_taken(conn: Connection, number: str) -> SwitchError:
    row = conn.execute(
        "SELECT switch_id, meter_id FROM controlled_switches WHERE switch_number = %s AND retired_at IS NULL",
        (number,),
    ).fetchone()
    where = f": switch {row[0]} on meter {row[1]!r}" if row is not None else ""
    return SwitchError(
        SwitchErrorKind.NUMBER_IN_SERVICE,
        f"switch number {number!r} is in service{where} (edit that switch, or retire it first)",
        field="switch_number",
    )


def _refused_by_database(exc: errors.CheckViolation) -> SwitchError:
    # the checks above mirror the migration's; this only answers a difference between them as a refusal
    name = exc.diag.constraint_name or "a check"
    return SwitchError(SwitchErrorKind.INVALID, f"refused by the database's constraint {name}")


def _audit(
    conn: Connection,
    switch_id: int,
    action: ChangeAction,
    changes: Mapping[str, Any],
    *,
    by: str,
    now: datetime,
    detail: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO controlled_switch_changes (switch_id, at, actor, action, changes, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (switch_id, now, by, action.value, Jsonb(dict(changes)), detail),
    )


def created_changes(draft: SwitchDraft) -> dict[str, Any]:
    """The audited changes of a new switch: each field given, from none."""
    return {field: {"from": None, "to": getattr(draft, field)} for field in FIELDS if getattr(draft, field) is not None}


def register(conn: Connection, draft: SwitchDraft, *, by: str, now: datetime, detail: str | None = None) -> Switch:
    """Store a new switch on an active meter, audited; SwitchError when the meter isn't usable or the number taken."""
    actor = clean_actor(by)
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            check_meter(conn, draft.meter_id)
            row = cur.execute(
                "INSERT INTO controlled_switches (switch_number, controlled_device, meter_id, location, notes, "
                "registered_by, registered_at, updated_by, updated_at) "
                f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {SWITCH_COLUMNS}",
                (
                    draft.switch_number,
                    draft.controlled_device,
                    draft.meter_id,
                    draft.location,
                    draft.notes,
                    actor,
                    now,
                    actor,
                    now,
                ),
            ).fetchone()
            assert row is not None
            switch = switch_from_row(row)
            _audit(
                conn,
                switch.switch_id,
                ChangeAction.REGISTERED,
                created_changes(draft),
                by=actor,
                now=now,
                detail=detail,
            )
    except errors.UniqueViolation:
        raise _number_taken(conn, draft.switch_number) from None
    except errors.CheckViolation as exc:
        raise _refused_by_database(exc) from None
    return switch


def get_switch(conn: Connection, switch_id: int) -> Switch | None:
    """One switch by id, retired or not; None if there is none."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT {SWITCH_COLUMNS} FROM controlled_switches WHERE switch_id = %s", (switch_id,)
        ).fetchone()
    return None if row is None else switch_from_row(row)


def _locked(conn: Connection, switch_id: int) -> Switch:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT {SWITCH_COLUMNS} FROM controlled_switches WHERE switch_id = %s FOR UPDATE", (switch_id,)
        ).fetchone()
    if row is None:
        raise SwitchError(SwitchErrorKind.UNKNOWN_SWITCH, f"no switch {switch_id}")
    switch = switch_from_row(row)
    if switch.retired_at is not None:
        raise SwitchError(
            SwitchErrorKind.RETIRED,
            f"switch {switch_id} ({switch.switch_number!r}) was retired at {switch.retired_at.isoformat()} by "
            f"{switch.retired_by}: it can't change any more (register the switch that replaces it)",
        )
    return switch


def edit(
    conn: Connection, switch_id: int, changes: Mapping[str, str | None], *, by: str, now: datetime
) -> tuple[Switch, dict[str, Any]]:
    """Change some fields of a switch in service; the switch after, and each field changed (none: nothing stored).

    A new meter must be registered and active; a switch moved to another meter is `registered` again (a test is
    needed on its new meter), refused while its test is running. Values equal to those stored change nothing.
    """
    actor = clean_actor(by)
    wanted = validate_changes(changes)
    try:
        with conn.transaction():
            switch = _locked(conn, switch_id)
            diff = {
                field: {"from": getattr(switch, field), "to": value}
                for field, value in wanted.items()
                if getattr(switch, field) != value
            }
            if not diff:
                return switch, {}
            state = switch.commissioning_state
            if "meter_id" in diff:
                if state is CommissioningState.TESTING:
                    raise SwitchError(
                        SwitchErrorKind.TESTING,
                        f"switch {switch_id} is being tested on meter {switch.meter_id!r}: its meter can't change "
                        "until the test ends",
                        field="meter_id",
                    )
                check_meter(conn, str(diff["meter_id"]["to"]))
                if state is not CommissioningState.REGISTERED:
                    diff["commissioning_state"] = {"from": state.value, "to": CommissioningState.REGISTERED.value}
            values = {field: change["to"] for field, change in diff.items()}
            # constant column names from FIELDS and the state; the values are parameters
            assignments = ", ".join(f"{column} = %({column})s" for column in values)
            with conn.cursor(row_factory=dict_row) as cur:
                row = cur.execute(
                    f"UPDATE controlled_switches SET {assignments}, updated_by = %(by)s, updated_at = %(now)s "
                    f"WHERE switch_id = %(switch_id)s RETURNING {SWITCH_COLUMNS}",
                    {**values, "by": actor, "now": now, "switch_id": switch_id},
                ).fetchone()
            assert row is not None
            _audit(conn, switch_id, ChangeAction.EDITED, diff, by=actor, now=now)
    except errors.UniqueViolation:
        raise _number_taken(conn, str(wanted["switch_number"])) from None
    except errors.CheckViolation as exc:
        raise _refused_by_database(exc) from None
    return switch_from_row(row), diff


def retire(conn: Connection, switch_id: int, reason: str, *, by: str, now: datetime) -> Switch:
    """Retire a switch in service with a reason, audited: it stays, `decommissioned`, its number free again."""
    actor = clean_actor(by)
    why = clean_reason(reason)
    with conn.transaction():
        switch = _locked(conn, switch_id)
        if switch.commissioning_state is CommissioningState.TESTING:
            raise SwitchError(
                SwitchErrorKind.TESTING, f"switch {switch_id} is being tested: retire it when the test has ended"
            )
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                "UPDATE controlled_switches SET retired_at = %(now)s, retired_by = %(by)s, retire_reason = %(why)s, "
                "commissioning_state = 'decommissioned', updated_by = %(by)s, updated_at = %(now)s "
                f"WHERE switch_id = %(switch_id)s RETURNING {SWITCH_COLUMNS}",
                {"now": now, "by": actor, "why": why, "switch_id": switch_id},
            ).fetchone()
        assert row is not None
        changes = {
            "commissioning_state": {"from": switch.commissioning_state.value, "to": "decommissioned"},
            "retired_at": {"from": None, "to": now.isoformat()},
        }
        _audit(conn, switch_id, ChangeAction.RETIRED, changes, by=actor, now=now, detail=why)
    return switch_from_row(row)


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def list_switches(
    conn: Connection,
    *,
    meter_id: str | None = None,
    number: str | None = None,
    include_retired: bool = False,
    limit: int = 50,
    after: int | None = None,
) -> SwitchPage:
    """Switches by id after `after`: of a meter, whose number starts with `number` (any case), in service or all."""
    assert 1 <= limit <= MAX_PAGE, limit
    where: list[str] = []
    params: dict[str, Any] = {"n": limit + 1}
    # constant fragments only; the values are parameters
    if meter_id is not None:
        where.append("meter_id = %(meter_id)s")
        params["meter_id"] = meter_id
    if number is not None:
        where.append("lower(switch_number) LIKE lower(%(number)s)")
        params["number"] = _like_prefix(number.strip())
    if not include_retired:
        where.append("retired_at IS NULL")
    if after is not None:
        where.append("switch_id > %(after)s")
        params["after"] = after
    condition = f"WHERE {' AND '.join(where)}" if where else ""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {SWITCH_COLUMNS} FROM controlled_switches {condition} ORDER BY switch_id LIMIT %(n)s", params
        ).fetchall()
    switches = [switch_from_row(row) for row in rows[:limit]]
    return SwitchPage(switches, switches[-1].switch_id if len(rows) > limit else None)


def switches_of_meters(conn: Connection, meter_ids: list[str]) -> dict[str, list[Switch]]:
    """The switches in service on each of these meters, by number."""
    found: dict[str, list[Switch]] = {meter_id: [] for meter_id in meter_ids}
    with conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute(
            f"SELECT {SWITCH_COLUMNS} FROM controlled_switches WHERE meter_id = ANY(%s) AND retired_at IS NULL "
            "ORDER BY switch_number, switch_id",
            (meter_ids,),
        ):
            found[row["meter_id"]].append(switch_from_row(row))
    return found


def history(conn: Connection, switch_id: int) -> list[SwitchChange]:
    """A switch's changes, oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT change_id, switch_id, at, actor, action, changes, detail FROM controlled_switch_changes "
            "WHERE switch_id = %s ORDER BY change_id",
            (switch_id,),
        ).fetchall()
    return [SwitchChange(**{**row, "action": ChangeAction(row["action"])}) for row in rows]
