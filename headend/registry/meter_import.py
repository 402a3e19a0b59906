"""Register meters and concentrators from a CSV file, with a per-row error report; idempotent."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import psycopg

from headend.db.models import DEFAULT_REGISTER_MAX_WH
from protocols.readings import is_valid_id

REQUIRED_COLUMNS = ("meter_id", "protocol", "concentrator_id", "region")
OPTIONAL_COLUMNS = ("model", "multiplier", "status", "register_max_wh", "installed_on", "reconnect_mode")
PROTOCOLS = ("mqtt", "modbus")
STATUSES = ("active", "inactive", "removed")
RECONNECT_MODES = ("direct", "allowed")  # allowed: 合闸允许, the customer closes the relay with the button


@dataclass(frozen=True, slots=True)
class MeterRow:
    """One valid row of the registry file."""

    meter_id: str
    protocol: str
    concentrator_id: str | None
    region: str
    model: str | None
    multiplier: int
    status: str
    register_max_wh: int | None
    installed_on: date | None = None
    reconnect_mode: str = "direct"


@dataclass(frozen=True, slots=True)
class RowError:
    """Why one line of the file was refused."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ParsedRegistry:
    """Valid rows and errors of one file."""

    rows: list[MeterRow]
    errors: list[RowError]


class RegistryFileError(ValueError):
    """The file as a whole cannot be read (missing header columns, not CSV)."""


def _positive_int(raw: str, field: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{field} {raw!r} is not a whole number") from None
    if value <= 0:
        raise ValueError(f"{field} must be positive, got {value}")
    return value


def parse_row(record: dict[str, str]) -> MeterRow:
    """Validate one CSV record; raise ValueError with the reason."""
    get = {k: (v or "").strip() for k, v in record.items() if k is not None}
    meter_id = get.get("meter_id", "")
    if not is_valid_id(meter_id):
        raise ValueError(f"meter_id {meter_id!r} does not match [A-Za-z0-9_-]{{1,32}}")
    protocol = get.get("protocol", "").lower()
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {get.get('protocol', '')!r} is not one of {', '.join(PROTOCOLS)}")
    concentrator_id = get.get("concentrator_id") or None
    if concentrator_id is not None and not is_valid_id(concentrator_id):
        raise ValueError(f"concentrator_id {concentrator_id!r} does not match [A-Za-z0-9_-]{{1,32}}")
    region = get.get("region", "")
    if not region:
        raise ValueError("region is empty")
    status = get.get("status") or "active"
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    multiplier = _positive_int(get["multiplier"], "multiplier") if get.get("multiplier") else 1
    register_max = get.get("register_max_wh")
    installed = get.get("installed_on")
    try:
        installed_on = date.fromisoformat(installed) if installed else None
    except ValueError:
        raise ValueError(f"installed_on {installed!r} is not a date YYYY-MM-DD") from None
    reconnect_mode = get.get("reconnect_mode") or "direct"
    if reconnect_mode not in RECONNECT_MODES:
        raise ValueError(f"reconnect_mode {reconnect_mode!r} is not one of {', '.join(RECONNECT_MODES)}")
    return MeterRow(
        meter_id=meter_id,
        protocol=protocol,
        concentrator_id=concentrator_id,
        region=region,
        model=get.get("model") or None,
        multiplier=multiplier,
        status=status,
        register_max_wh=_positive_int(register_max, "register_max_wh") if register_max else None,
        installed_on=installed_on,
        reconnect_mode=reconnect_mode,
    )


def parse_registry(lines: Iterable[str]) -> ParsedRegistry:
    """Parse a registry CSV (header row first); every bad row is reported, none is dropped silently."""
    reader = csv.reader(lines)
    try:
        header = [column.strip() for column in next(reader, [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise RegistryFileError(f"header lacks required column(s): {', '.join(missing)}")
        rows: list[MeterRow] = []
        errors: list[RowError] = []
        first_line: dict[str, int] = {}
        end_of_previous = reader.line_num
        for fields in reader:
            # a quoted field may span lines: report a record at the line it starts on
            line, end_of_previous = end_of_previous + 1, reader.line_num
            if not fields:
                continue
            try:
                if len(fields) > len(header):
                    raise ValueError("more fields than header columns")
                row = parse_row(dict(zip(header, fields, strict=False)))
            except ValueError as exc:
                errors.append(RowError(line, str(exc)))
                continue
            if row.meter_id in first_line:
                errors.append(RowError(line, f"meter_id {row.meter_id!r} repeats line {first_line[row.meter_id]}"))
                continue
            first_line[row.meter_id] = line
            rows.append(row)
    except csv.Error as exc:
        raise RegistryFileError(f"not readable as CSV after line {end_of_previous if header else 0}: {exc}") from None
    return ParsedRegistry(rows, errors)


def read_registry_file(path: Path) -> ParsedRegistry:
    """Parse the registry file at `path` (UTF-8, a BOM allowed)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return parse_registry(handle)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import changed."""

    meters_created: int
    meters_updated: int
    concentrators_created: int


def import_meters(conn: psycopg.Connection[Any], rows: list[MeterRow]) -> ImportResult:
    """Upsert `rows` in one transaction; concentrators are created as needed. Re-running changes nothing."""
    with conn.transaction():
        conn.execute(
            "CREATE TEMP TABLE import_meters (meter_id text, protocol text, concentrator_id text, region text, "
            "model text, multiplier int, status text, register_max_wh bigint, installed_on date, reconnect_mode text) "
            "ON COMMIT DROP"
        )
        with conn.cursor().copy(
            "COPY import_meters (meter_id, protocol, concentrator_id, region, model, multiplier, status, "
            "register_max_wh, installed_on, reconnect_mode) FROM STDIN"
        ) as copy:
            for r in rows:
                copy.write_row(
                    (
                        r.meter_id,
                        r.protocol,
                        r.concentrator_id,
                        r.region,
                        r.model,
                        r.multiplier,
                        r.status,
                        r.register_max_wh,
                        r.installed_on,
                        r.reconnect_mode,
                    )
                )
        created_dcus = conn.execute(
            "WITH ins AS (INSERT INTO concentrators (concentrator_id, region) "
            "SELECT DISTINCT ON (concentrator_id) concentrator_id, region FROM import_meters "
            "WHERE concentrator_id IS NOT NULL ORDER BY concentrator_id, region "
            "ON CONFLICT (concentrator_id) DO NOTHING RETURNING 1) SELECT count(*) FROM ins"
        ).fetchone()
        counts = conn.execute(
            """
            WITH up AS (
                INSERT INTO meters AS m (meter_id, protocol, concentrator_id, region, model, multiplier, status,
                                         register_max_wh, installed_on, reconnect_mode)
                SELECT meter_id, protocol, concentrator_id, region, model, multiplier, status,
                       coalesce(register_max_wh, %(default_register_max_wh)s), installed_on, reconnect_mode
                FROM import_meters ORDER BY meter_id
                ON CONFLICT (meter_id) DO UPDATE SET
                    protocol = excluded.protocol, concentrator_id = excluded.concentrator_id,
                    region = excluded.region, model = excluded.model, multiplier = excluded.multiplier,
                    status = excluded.status, register_max_wh = excluded.register_max_wh,
                    installed_on = excluded.installed_on, reconnect_mode = excluded.reconnect_mode,
                    updated_at = now()
                WHERE (m.protocol, m.concentrator_id, m.region, m.model, m.multiplier, m.status, m.register_max_wh,
                       m.installed_on, m.reconnect_mode)
                      IS DISTINCT FROM (excluded.protocol, excluded.concentrator_id, excluded.region,
                                        excluded.model, excluded.multiplier, excluded.status,
                                        excluded.register_max_wh, excluded.installed_on, excluded.reconnect_mode)
                RETURNING (xmax = 0) AS created
            )
            SELECT count(*) FILTER (WHERE created), count(*) FILTER (WHERE NOT created) FROM up
            """,
            {"default_register_max_wh": DEFAULT_REGISTER_MAX_WH},
        ).fetchone()
    assert created_dcus is not None
    assert counts is not None
    return ImportResult(int(counts[0]), int(counts[1]), int(created_dcus[0]))
