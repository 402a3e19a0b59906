"""Look meters up: the registry page by page, and one meter with what collection, dispatch and the engine know of it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from headend.dispatch import store as dispatch_store
from headend.ingest.validation import QualityFlag
from headend.money import ledger_store
from prepay_engine.ledger import prepaid_account_id
from protocols.readings import RelayState

Connection = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class MeterSummary:
    """One registered meter with its latest reading time and reported relay position."""

    meter_id: str
    protocol: str
    concentrator_id: str | None
    region: str | None
    status: str
    last_reading_at: datetime | None
    relay: RelayState | None
    ready_for_reconnection: bool | None


@dataclass(frozen=True, slots=True)
class MeterPage:
    """Meters by id; `next_after` is the last one's id when more follow."""

    meters: list[MeterSummary]
    next_after: str | None


def list_meters(
    conn: Connection,
    *,
    concentrator_id: str | None = None,
    region: str | None = None,
    status: str | None = None,
    limit: int = 100,
    after: str | None = None,
) -> MeterPage:
    """A page of registered meters ordered by id, after the meter id `after`, optionally filtered."""
    # constant fragments only; the values are parameters
    where: list[str] = []
    params: dict[str, Any] = {"n": limit + 1}
    for column, value in (("concentrator_id", concentrator_id), ("region", region), ("status", status)):
        if value is not None:
            where.append(f"m.{column} = %({column})s")
            params[column] = value
    if after is not None:
        where.append("m.meter_id > %(after)s")
        params["after"] = after
    condition = f"WHERE {' AND '.join(where)}" if where else ""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT m.meter_id, m.protocol, m.concentrator_id, m.region, m.status, s.last_ts AS last_reading_at, "
            "r.relay, r.ready_for_reconnection FROM meters m "
            "LEFT JOIN meter_register_state s ON s.meter_id = m.meter_id "
            f"LEFT JOIN meter_relays r ON r.meter_id = m.meter_id {condition} ORDER BY m.meter_id LIMIT %(n)s",
            params,
        ).fetchall()
    meters = [
        MeterSummary(**{**row, "relay": None if row["relay"] is None else RelayState(row["relay"])})
        for row in rows[:limit]
    ]
    return MeterPage(meters, meters[-1].meter_id if len(rows) > limit else None)


@dataclass(frozen=True, slots=True)
class Registration:
    """A meter's registry row."""

    meter_id: str
    protocol: str
    model: str | None
    concentrator_id: str | None
    region: str | None
    status: str
    multiplier: int
    register_max_wh: int
    installed_on: date | None
    reconnect_mode: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class LastReading:
    """The meter's newest stored reading."""

    ts: datetime
    energy_import_wh: int
    quality_flags: QualityFlag
    relay_state: str | None
    source: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class AccountOnMeter:
    """The prepaid account the meter supplies."""

    account_id: str
    balance_fen: int
    supply: str
    protected: bool
    keep_supply: bool


@dataclass(frozen=True, slots=True)
class MeterDetail:
    """One meter: its registration, last reading, relay, open commands and alarms, and its prepaid account."""

    meter: Registration
    last_reading: LastReading | None
    relay: dispatch_store.RelayPosition | None
    open_commands: list[dispatch_store.Command]
    more_open_commands: bool
    open_alarms: list[dispatch_store.Alarm]
    more_open_alarms: bool
    account: AccountOnMeter | None


_REGISTRATION = (
    "SELECT meter_id, protocol, model, concentrator_id, region, status, multiplier, register_max_wh, installed_on, "
    "reconnect_mode, created_at, updated_at FROM meters WHERE meter_id = %s"
)
# the newest reading is the one meter_register_state points at: no scan over the meter's partitions
_LAST_READING = (
    "SELECT r.ts, r.energy_import_wh, r.quality_flags, r.relay_state, r.source, r.received_at "
    "FROM meter_register_state s JOIN readings r ON r.meter_id = s.meter_id AND r.ts = s.last_ts "
    "WHERE s.meter_id = %s"
)
_ACCOUNT = "SELECT account_id, supply, protected, keep_supply FROM prepaid_accounts WHERE meter_id = %s"


def meter_detail(conn: Connection, meter_id: str, *, items: int = 20) -> MeterDetail | None:
    """Everything known of one meter, as of one snapshot, up to `items` open commands and alarms; None if unknown."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(_REGISTRATION, (meter_id,)).fetchone()
            if row is None:
                return None
            registration = Registration(**row)
            reading = cur.execute(_LAST_READING, (meter_id,)).fetchone()
            account_row = cur.execute(_ACCOUNT, (meter_id,)).fetchone()
        commands = dispatch_store.open_commands(conn, meter_id, limit=items + 1)
        alarms = dispatch_store.list_alarms(conn, unresolved=True, meter_id=meter_id, limit=items)
        relay = dispatch_store.relay_position(conn, meter_id)
        account = (
            None
            if account_row is None
            else AccountOnMeter(
                balance_fen=ledger_store.balance_fen(conn, prepaid_account_id(account_row["account_id"])),
                **account_row,
            )
        )
    return MeterDetail(
        meter=registration,
        last_reading=None
        if reading is None
        else LastReading(**{**reading, "quality_flags": QualityFlag(reading["quality_flags"])}),
        relay=relay,
        open_commands=commands[:items],
        more_open_commands=len(commands) > items,
        open_alarms=alarms.alarms,
        more_open_alarms=alarms.next_before_id is not None,
        account=account,
    )
