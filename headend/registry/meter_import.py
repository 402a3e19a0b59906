"""Register meters and concentrators from a CSV file, with a per-row error report; idempotent."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import psycopg

from headend.db.models import DEFAULT_REGISTER_MAX_WH
from protocols.readings import is_valid_id
from protocols.register_map import available_models

REQUIRED_COLUMNS = ("meter_id", "protocol", "concentrator_id", "region")
OPTIONAL_COLUMNS = (
    "model",
    "multiplier",
    "status",
    "register_max_wh",
    "installed_on",
    "reconnect_mode",
    "endpoint",
    "unit_id",
    "address",
    "bus",
    "framing",
    "area",
)
PROTOCOLS = ("mqtt", "modbus", "dlt645")
POLLED_PROTOCOLS = ("modbus", "dlt645")
# host:port; the host a name, an IPv4 address or a bracketed IPv6 address (as migration 0021 checks)
ENDPOINT_PATTERN = re.compile(r"([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):([0-9]{1,5})")
ADDRESS_PATTERN = re.compile(r"[0-9]{12}")
BUS_MAX_CHARS = 64
# how a Modbus meter's requests travel: Modbus TCP (MBAP), or RTU frames through a transparent serial-to-TCP gateway
FRAMINGS = ("tcp", "rtu")
DEFAULT_FRAMING = "tcp"
STATUSES = ("active", "inactive", "removed")
RECONNECT_MODES = ("direct", "allowed")  # allowed: 合闸允许, the customer closes the relay with the button
AREA_MAX_CHARS = 100  # migration 0026's meters_area
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
    endpoint: str | None = None  # host:port of a polled meter or of its serial-to-TCP gateway
    unit_id: int | None = None  # Modbus
    address: str | None = None  # DL/T 645: the 12 digits of the nameplate
    bus: str | None = None  # the serial bus behind the gateway; None: one bus per endpoint
    framing: str | None = None  # Modbus: tcp or rtu (None: tcp); None for other protocols
    area: str | None = None  # the transformer area (台区) the meter is supplied from; the collection groups by it


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


class RegistryConflictError(ValueError):
    """Rows that would make two meters answer at the same place (unit id or address on one bus), or frame one bus two
    ways; nothing imported."""


def place_of(row: MeterRow) -> tuple[str, str, str] | None:
    """Where a polled meter answers: endpoint, bus and unit id or address; None for a meter that is not polled."""
    if row.endpoint is None:
        return None
    return (row.endpoint, row.bus or "", f"unit {row.unit_id}" if row.unit_id is not None else f"address {row.address}")


def framing_of(row: MeterRow) -> str | None:
    """How a meter's requests are framed: the row's framing, tcp for a Modbus meter without one, None for others."""
    if row.protocol != "modbus":
        return None
    return row.framing or DEFAULT_FRAMING


def bus_of(row: MeterRow) -> tuple[str, str] | None:
    """The endpoint and bus a Modbus meter is reached on, whose meters share one framing; None for other meters."""
    if row.protocol != "modbus" or row.endpoint is None:
        return None
    return (row.endpoint, row.bus or "")


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
    endpoint, unit_id, address, bus = _how_reached(protocol, get, concentrator_id)
    framing = _framing(protocol, get.get("framing", "").lower())
    model = get.get("model") or None
    area = get.get("area") or None
    if area is not None and (len(area) > AREA_MAX_CHARS or _CONTROL.search(area)):
        raise ValueError(f"area must be at most {AREA_MAX_CHARS} characters of one line")
    if protocol == "modbus" and model not in available_models():
        raise ValueError(f"model {model!r} of a modbus meter is not one of {', '.join(available_models())}")
    return MeterRow(
        meter_id=meter_id,
        protocol=protocol,
        concentrator_id=concentrator_id,
        region=region,
        model=model,
        multiplier=multiplier,
        status=status,
        register_max_wh=_positive_int(register_max, "register_max_wh") if register_max else None,
        installed_on=installed_on,
        reconnect_mode=reconnect_mode,
        endpoint=endpoint,
        unit_id=unit_id,
        address=address,
        bus=bus,
        framing=framing,
        area=area,
    )


def _framing(protocol: str, framing: str) -> str | None:
    """A row's framing, checked against its protocol: tcp or rtu for Modbus (tcp when empty), none for others."""
    if protocol != "modbus":
        if framing:
            raise ValueError(f"framing is for modbus meters (tcp or rtu); a {protocol} meter has none")
        return None
    if not framing:
        return DEFAULT_FRAMING
    if framing not in FRAMINGS:
        raise ValueError(f"framing {framing!r} of a modbus meter is not one of {', '.join(FRAMINGS)}")
    return framing


def _how_reached(
    protocol: str, get: dict[str, str], concentrator_id: str | None
) -> tuple[str | None, int | None, str | None, str | None]:
    """Endpoint, unit id, address and bus of a row, checked against its protocol."""
    endpoint, unit, address, bus = (get.get(c) or None for c in ("endpoint", "unit_id", "address", "bus"))
    if protocol not in POLLED_PROTOCOLS:
        given = [c for c, v in (("endpoint", endpoint), ("unit_id", unit), ("address", address), ("bus", bus)) if v]
        if given:
            raise ValueError(f"{', '.join(given)} given for a {protocol} meter, which is not polled")
        return None, None, None, None
    if concentrator_id is not None:
        raise ValueError(f"a {protocol} meter is polled at its endpoint, not through concentrator {concentrator_id!r}")
    if endpoint is None:
        raise ValueError(f"a {protocol} meter needs an endpoint (host:port)")
    match = ENDPOINT_PATTERN.fullmatch(endpoint)
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise ValueError(f"endpoint {endpoint!r} is not host:port with a port 1-65535")
    if bus is not None and len(bus) > BUS_MAX_CHARS:
        raise ValueError(f"bus name of {len(bus)} characters exceeds {BUS_MAX_CHARS}")
    if protocol == "modbus":
        if address is not None:
            raise ValueError("address is for DL/T 645 meters; a modbus meter has a unit_id")
        if unit is None:
            raise ValueError("a modbus meter needs a unit_id (1-247)")
        try:
            unit_id = int(unit)
        except ValueError:
            raise ValueError(f"unit_id {unit!r} is not a whole number") from None
        if not 1 <= unit_id <= 247:
            raise ValueError(f"unit_id {unit_id} is outside 1-247")
        return endpoint, unit_id, None, bus
    if unit is not None:
        raise ValueError("unit_id is for modbus meters; a dlt645 meter has an address")
    if address is None or ADDRESS_PATTERN.fullmatch(address) is None:
        raise ValueError(f"a dlt645 meter needs an address of 12 digits as on its nameplate, got {address!r}")
    return endpoint, None, address, bus


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
        place_line: dict[tuple[str, str, str], int] = {}
        bus_framing: dict[tuple[str, str], tuple[str | None, int]] = {}
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
            place = place_of(row)
            if place is not None and place in place_line:
                endpoint, bus, which = place
                on_bus = f" bus {bus!r} of" if bus else ""
                errors.append(RowError(line, f"{which} on{on_bus} {endpoint} repeats line {place_line[place]}"))
                continue
            row_bus = bus_of(row)
            if row_bus is not None and row_bus in bus_framing and bus_framing[row_bus][0] != framing_of(row):
                endpoint, name = row_bus
                framing, first = bus_framing[row_bus]
                errors.append(
                    RowError(
                        line,
                        f"framing {framing_of(row)} on{f' bus {name!r} of' if name else ''} {endpoint} differs from "
                        f"{framing} of line {first} (the meters of one bus share a framing)",
                    )
                )
                continue
            first_line[row.meter_id] = line
            if place is not None:
                place_line[place] = line
            if row_bus is not None:
                bus_framing.setdefault(row_bus, (framing_of(row), line))
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
            "model text, multiplier int, status text, register_max_wh bigint, installed_on date, reconnect_mode text, "
            "endpoint text, unit_id smallint, address text, bus text, framing text, area text) ON COMMIT DROP"
        )
        with conn.cursor().copy(
            "COPY import_meters (meter_id, protocol, concentrator_id, region, model, multiplier, status, "
            "register_max_wh, installed_on, reconnect_mode, endpoint, unit_id, address, bus, framing, area) FROM STDIN"
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
                        r.endpoint,
                        r.unit_id,
                        r.address,
                        r.bus,
                        framing_of(r),
                        r.area,
                    )
                )
        _refuse_taken_places(conn)
        _refuse_mixed_framings(conn)
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
                                         register_max_wh, installed_on, reconnect_mode, endpoint, unit_id, address,
                                         bus, framing, area)
                SELECT meter_id, protocol, concentrator_id, region, model, multiplier, status,
                       coalesce(register_max_wh, %(default_register_max_wh)s), installed_on, reconnect_mode,
                       endpoint, unit_id, address, bus, framing, area
                FROM import_meters ORDER BY meter_id
                ON CONFLICT (meter_id) DO UPDATE SET
                    protocol = excluded.protocol, concentrator_id = excluded.concentrator_id,
                    region = excluded.region, model = excluded.model, multiplier = excluded.multiplier,
                    status = excluded.status, register_max_wh = excluded.register_max_wh,
                    installed_on = excluded.installed_on, reconnect_mode = excluded.reconnect_mode,
                    endpoint = excluded.endpoint, unit_id = excluded.unit_id, address = excluded.address,
                    bus = excluded.bus, framing = excluded.framing, area = excluded.area, updated_at = now()
                -- a Modbus meter registered before framing was (NULL) is tcp: importing it as tcp changes nothing
                WHERE (m.protocol, m.concentrator_id, m.region, m.model, m.multiplier, m.status, m.register_max_wh,
                       m.installed_on, m.reconnect_mode, m.endpoint, m.unit_id, m.address, m.bus,
                       CASE WHEN m.protocol = 'modbus' THEN coalesce(m.framing, 'tcp') END, m.area)
                      IS DISTINCT FROM (excluded.protocol, excluded.concentrator_id, excluded.region,
                                        excluded.model, excluded.multiplier, excluded.status,
                                        excluded.register_max_wh, excluded.installed_on, excluded.reconnect_mode,
                                        excluded.endpoint, excluded.unit_id, excluded.address, excluded.bus,
                                        excluded.framing, excluded.area)
                RETURNING (xmax = 0) AS created
            )
            SELECT count(*) FILTER (WHERE created), count(*) FILTER (WHERE NOT created) FROM up
            """,
            {"default_register_max_wh": DEFAULT_REGISTER_MAX_WH},
        ).fetchone()
    assert created_dcus is not None
    assert counts is not None
    return ImportResult(int(counts[0]), int(counts[1]), int(created_dcus[0]))


def _refuse_taken_places(conn: psycopg.Connection[Any]) -> None:
    """Raise RegistryConflictError when an imported meter would answer where a registered meter already does."""
    taken = conn.execute(
        """
        SELECT i.meter_id, m.meter_id, i.endpoint, coalesce(i.bus, ''), i.unit_id, i.address
        FROM import_meters i
        JOIN meters m ON m.endpoint = i.endpoint AND coalesce(m.bus, '') = coalesce(i.bus, '')
                     AND (m.unit_id = i.unit_id OR m.address = i.address) AND m.meter_id <> i.meter_id
        ORDER BY i.meter_id
        """
    ).fetchall()
    if taken:
        lines = [
            f"meter {new!r}: {f'unit {unit}' if unit is not None else f'address {address}'} on"
            f"{f' bus {bus!r} of' if bus else ''} {endpoint} is taken by meter {old!r}"
            for new, old, endpoint, bus, unit, address in taken
        ]
        raise RegistryConflictError("; ".join(lines) + " (move or remove the registered meter first)")


def _refuse_mixed_framings(conn: psycopg.Connection[Any]) -> None:
    """Raise RegistryConflictError when an imported Modbus meter is framed unlike a registered one on its bus."""
    mixed = conn.execute(
        """
        SELECT DISTINCT ON (i.meter_id) i.meter_id, m.meter_id, i.endpoint, coalesce(i.bus, ''), i.framing,
               coalesce(m.framing, 'tcp')
        FROM import_meters i
        JOIN meters m ON m.endpoint = i.endpoint AND coalesce(m.bus, '') = coalesce(i.bus, '')
                     AND m.protocol = 'modbus' AND coalesce(m.framing, 'tcp') <> i.framing
        WHERE i.protocol = 'modbus' AND NOT EXISTS (SELECT FROM import_meters o WHERE o.meter_id = m.meter_id)
        ORDER BY i.meter_id, m.meter_id
        """
    ).fetchall()
    if mixed:
        lines = [
            f"meter {new!r}: framing {framing} on{f' bus {bus!r} of' if bus else ''} {endpoint} differs from "
            f"{registered} of meter {old!r}"
            for new, old, endpoint, bus, framing, registered in mixed
        ]
        raise RegistryConflictError(
            "; ".join(lines) + " (the meters of one bus share a framing: import them all with the new one)"
        )
