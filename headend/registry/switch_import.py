"""Register controlled switches from a CSV file, with a per-row error report; re-running the same file changes nothing.

The header names the columns `switch_number,controlled_device,meter_id,location,notes` (any order; `location` and
`notes` may be left out). A row is refused, with its line, when a required field is empty, a field is too long or not
text a form may hold, its number repeats an earlier row, its meter is not registered or not active, or its number is
in service on a switch that differs from the row. A row equal to the switch in service under its number is unchanged.
Nothing is imported while a row is refused, unless the caller skips the refused rows; each switch created is audited
as registered, with the line it came from.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from headend.db.text import storable
from headend.registry.switches import (
    FIELDS,
    NOTES_MAX,
    REQUIRED_FIELDS,
    SWITCH_COLUMNS,
    ChangeAction,
    Switch,
    SwitchDraft,
    SwitchError,
    SwitchErrorKind,
    clean_actor,
    created_changes,
    switch_from_row,
    validate_draft,
)

COLUMNS: Final = FIELDS  # switch_number, controlled_device, meter_id, location, notes
REQUIRED_COLUMNS: Final = REQUIRED_FIELDS
MAX_ROWS: Final = 10_000
MAX_ERRORS: Final = 1_000  # a file refused on every row is told its first errors, and how many more there are

Connection = psycopg.Connection[Any]


class RowErrorKind(StrEnum):
    """Why a row was refused."""

    INVALID = "invalid"  # a field empty, too long or not storable; more fields than the header has
    REPEATED = "repeated"  # its number repeats an earlier row of the file
    UNKNOWN_METER = "unknown_meter"
    INACTIVE_METER = "inactive_meter"
    NUMBER_IN_SERVICE = "number_in_service"  # another switch, in service, has the number


@dataclass(frozen=True, slots=True)
class SwitchRowError:
    """Why one line of the file was refused."""

    line: int
    reason: str
    kind: RowErrorKind

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class SwitchRow:
    """One valid row of the file and the line it starts on."""

    line: int
    draft: SwitchDraft


@dataclass(frozen=True, slots=True)
class ParsedSwitches:
    """Valid rows and refused rows of one file."""

    rows: list[SwitchRow]
    errors: list[SwitchRowError]


class SwitchFileError(ValueError):
    """The file as a whole cannot be read (missing header columns, not CSV, too many rows)."""


@dataclass(frozen=True, slots=True)
class SwitchImport:
    """What an import did: the switches created, the rows already registered as they are, the rows refused.

    `imported` is False when rows were refused and not skipped: then nothing was stored.
    """

    created: list[Switch]
    unchanged: int
    errors: list[SwitchRowError]
    imported: bool


def parse_switches(lines: Iterable[str]) -> ParsedSwitches:
    """Parse a switch CSV (header row first); every bad row is reported, none is dropped silently."""
    # strict: an unclosed quote is an error, not the rest of the file swallowed into one field
    reader = csv.reader(lines, strict=True)
    end_of_previous = 0
    try:
        header = [column.strip() for column in next(reader, [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise SwitchFileError(f"header lacks required column(s): {', '.join(missing)}")
        unknown = [c for c in header if c not in COLUMNS]
        if unknown:
            raise SwitchFileError(
                f"header names unknown column(s): {', '.join(unknown)} (columns: {', '.join(COLUMNS)})"
            )
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise SwitchFileError(f"header names column(s) twice: {', '.join(repeated)}")
        rows: list[SwitchRow] = []
        row_errors: list[SwitchRowError] = []
        first_line: dict[str, int] = {}
        end_of_previous = reader.line_num
        for fields in reader:
            # a quoted field may span lines: report a record at the line it starts on
            line, end_of_previous = end_of_previous + 1, reader.line_num
            if not fields or fields == [""]:
                continue
            if len(rows) + len(row_errors) >= MAX_ROWS:
                raise SwitchFileError(f"more than {MAX_ROWS:,} rows: split the file")
            if len(fields) > len(header):
                row_errors.append(SwitchRowError(line, "more fields than header columns", RowErrorKind.INVALID))
                continue
            record = dict(zip(header, fields, strict=False))
            try:
                draft = validate_draft(
                    record.get("switch_number"),
                    record.get("controlled_device"),
                    record.get("meter_id"),
                    record.get("location"),
                    record.get("notes"),
                )
            except SwitchError as exc:
                row_errors.append(SwitchRowError(line, str(exc), RowErrorKind.INVALID))
                continue
            if draft.switch_number in first_line:
                reason = f"switch_number {draft.switch_number!r} repeats line {first_line[draft.switch_number]}"
                row_errors.append(SwitchRowError(line, reason, RowErrorKind.REPEATED))
                continue
            first_line[draft.switch_number] = line
            rows.append(SwitchRow(line, draft))
    except csv.Error as exc:
        raise SwitchFileError(f"not readable as CSV after line {end_of_previous}: {exc}") from None
    return ParsedSwitches(rows, row_errors)


def parse_switch_text(text: str) -> ParsedSwitches:
    """Parse a switch CSV given as one text (a leading BOM ignored)."""
    return parse_switches(text.removeprefix("\ufeff").splitlines(keepends=True))


def read_switch_file(path: Path) -> ParsedSwitches:
    """Parse the switch file at `path` (UTF-8, a BOM allowed)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return parse_switches(handle)


def _same(draft: SwitchDraft, stored: dict[str, Any]) -> bool:
    return all(getattr(draft, field) == stored[field] for field in FIELDS)


def _registry_errors(conn: Connection, rows: list[SwitchRow]) -> tuple[list[SwitchRow], int, list[SwitchRowError]]:
    """The rows to create, how many are registered as they are, and the rows the registry refuses."""
    with conn.cursor(row_factory=dict_row) as cur:
        meters = {
            row["meter_id"]: row["status"]
            for row in cur.execute(
                "SELECT meter_id, status FROM meters WHERE meter_id = ANY(%s)",
                (sorted({r.draft.meter_id for r in rows}),),
            )
        }
        in_service = {
            row["switch_number"]: row
            for row in cur.execute(
                "SELECT switch_id, switch_number, controlled_device, meter_id, location, notes "
                "FROM controlled_switches WHERE switch_number = ANY(%s) AND retired_at IS NULL",
                ([r.draft.switch_number for r in rows],),
            )
        }
    new: list[SwitchRow] = []
    unchanged = 0
    refused: list[SwitchRowError] = []
    for row in rows:
        draft = row.draft
        stored = in_service.get(draft.switch_number)
        if stored is not None:
            if _same(draft, stored):
                unchanged += 1
                continue
            differ = ", ".join(f for f in FIELDS if getattr(draft, f) != stored[f])
            reason = (
                f"switch_number {draft.switch_number!r} is in service as switch {stored['switch_id']} with another "
                f"{differ} (edit that switch, or retire it first)"
            )
            refused.append(SwitchRowError(row.line, reason, RowErrorKind.NUMBER_IN_SERVICE))
            continue
        status = meters.get(draft.meter_id)
        if status is None:
            reason = f"meter_id {draft.meter_id!r} is not registered"
            refused.append(SwitchRowError(row.line, reason, RowErrorKind.UNKNOWN_METER))
            continue
        if status != "active":
            reason = f"meter {draft.meter_id!r} is {status}: a switch is registered on an active meter"
            refused.append(SwitchRowError(row.line, reason, RowErrorKind.INACTIVE_METER))
            continue
        new.append(row)
    return new, unchanged, refused


def import_switches(
    conn: Connection,
    parsed: ParsedSwitches,
    *,
    by: str,
    now: datetime,
    skip_invalid: bool = False,
    source: str | None = None,
) -> SwitchImport:
    """Register the parsed rows in one transaction, unless a row is refused and `skip_invalid` is not set.

    SwitchError (number in service) when another import registered one of the numbers meanwhile: nothing imported.
    """
    actor = clean_actor(by)
    origin = source or "import"
    try:
        with conn.transaction():
            new, unchanged, refused = _registry_errors(conn, parsed.rows)
            all_errors = sorted([*parsed.errors, *refused], key=lambda e: e.line)
            if all_errors and not skip_invalid:
                return SwitchImport([], unchanged, all_errors, imported=False)
            created = _insert(conn, new, by=actor, now=now, origin=origin)
    except errors.UniqueViolation:
        raise SwitchError(
            SwitchErrorKind.NUMBER_IN_SERVICE,
            "a switch number of the file was registered meanwhile; nothing imported (run the import again)",
            field="switch_number",
        ) from None
    return SwitchImport(created, unchanged, all_errors, imported=True)


def _insert(conn: Connection, rows: list[SwitchRow], *, by: str, now: datetime, origin: str) -> list[Switch]:
    if not rows:
        return []
    columns = {field: [getattr(r.draft, field) for r in rows] for field in FIELDS}
    with conn.cursor(row_factory=dict_row) as cur:
        inserted = cur.execute(
            "INSERT INTO controlled_switches (switch_number, controlled_device, meter_id, location, notes, "
            "registered_by, registered_at, updated_by, updated_at) "
            "SELECT n, d, m, l, o, %(by)s, %(now)s, %(by)s, %(now)s FROM unnest(%(n)s::text[], %(d)s::text[], "
            f"%(m)s::text[], %(l)s::text[], %(o)s::text[]) AS u(n, d, m, l, o) RETURNING {SWITCH_COLUMNS}",
            {
                "by": by,
                "now": now,
                "n": columns["switch_number"],
                "d": columns["controlled_device"],
                "m": columns["meter_id"],
                "l": columns["location"],
                "o": columns["notes"],
            },
        ).fetchall()
    # the numbers of the new rows are distinct (a repeat is refused) and were free: each names its row
    by_number = {row["switch_number"]: switch_from_row(row) for row in inserted}
    created = [by_number[r.draft.switch_number] for r in rows]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO controlled_switch_changes (switch_id, at, actor, action, changes, detail) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (
                    switch.switch_id,
                    now,
                    by,
                    ChangeAction.REGISTERED.value,
                    Jsonb(created_changes(r.draft)),
                    storable(f"{origin}, line {r.line}", NOTES_MAX),
                )
                for r, switch in zip(rows, created, strict=True)
            ],
        )
    return created
