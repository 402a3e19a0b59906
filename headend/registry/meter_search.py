"""Find a meter the way field staff know it: its id, its DL/T 645 address, its Modbus endpoint and unit, the customer's
prepaid account, or the number of a switch on it; with what they need on site.

One query text is tried every way that can match it: the meter id (exactly, then as a prefix), the 12-digit address
(shorter digits are zero-padded, as a nameplate's leading zeros are often left out), `host:port` or `host:port/unit`,
the prepaid account id, the number of a switch in service. Each meter found says how it matched, and comes with its
prepaid account (supply, balance in fen), its switches in service, its last reported relay position and the time of
its last reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row

from headend.registry.switches import Switch, switches_of_meters
from prepay_engine.ledger import prepaid_account_id

Connection = psycopg.Connection[Any]

MAX_QUERY_CHARS: Final = 100
MAX_RESULTS: Final = 50
ADDRESS_DIGITS: Final = 12
# host:port or host:port/unit, the host as the registry writes endpoints (migration 0021)
_ENDPOINT: Final = re.compile(r"((?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5})(?:/([0-9]{1,3}))?")
_DIGITS: Final = re.compile(r"[0-9]{1,12}")
_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
# how a meter matched, best first
MATCHES: Final = ("meter_id", "address", "endpoint", "account", "switch_number", "meter_id_prefix")


class SearchError(ValueError):
    """The query can't be searched for (empty, too long)."""


@dataclass(frozen=True, slots=True)
class FoundAccount:
    """The prepaid account on the meter now."""

    account_id: str
    supply: str
    balance_fen: int | None  # None: its ledger account is not open yet
    protected: bool
    keep_supply: bool


@dataclass(frozen=True, slots=True)
class FoundRelay:
    """The meter's last reported relay position."""

    relay: str
    ready_for_reconnection: bool | None
    reported_at: datetime


@dataclass(frozen=True, slots=True)
class FoundMeter:
    """A meter found, how it matched, and what staff on site need to know of it."""

    meter_id: str
    matched_by: list[str]
    protocol: str
    model: str | None
    status: str
    region: str | None
    concentrator_id: str | None
    endpoint: str | None
    bus: str | None
    unit_id: int | None
    address: str | None
    last_reading_at: datetime | None
    relay: FoundRelay | None
    account: FoundAccount | None
    switches: list[Switch]


@dataclass(frozen=True, slots=True)
class MeterSearch:
    """The meters found for a query, best matches first; `more`: others matched beyond the limit."""

    query: str
    meters: list[FoundMeter]
    more: bool


def clean_query(query: str) -> str:
    """The query as searched: trimmed; SearchError when empty or longer than MAX_QUERY_CHARS."""
    text = query.strip()
    if not text:
        raise SearchError("the query is empty: give a meter id, an address, host:port[/unit], an account or a switch")
    if len(text) > MAX_QUERY_CHARS:
        raise SearchError(f"the query of {len(text)} characters exceeds {MAX_QUERY_CHARS}")
    return text


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _candidates(q: str) -> tuple[list[str], dict[str, Any]]:
    """The SELECTs (meter_id, how, rank) that may match `q`, and their parameters."""
    params: dict[str, Any] = {"q": q}
    # constant fragments only; the values are parameters
    parts = [
        "SELECT meter_id, 'meter_id' AS how, 0 AS rank FROM meters WHERE meter_id = %(q)s",
        "SELECT meter_id, 'account', 3 FROM prepaid_accounts WHERE account_id = %(q)s",
        "SELECT meter_id, 'switch_number', 4 FROM controlled_switches "
        "WHERE switch_number = %(q)s AND retired_at IS NULL",
    ]
    if _DIGITS.fullmatch(q):
        params["address"] = q.zfill(ADDRESS_DIGITS)
        parts.append("SELECT meter_id, 'address', 1 FROM meters WHERE address = %(address)s")
    endpoint = _ENDPOINT.fullmatch(q)
    if endpoint is not None:
        params["endpoint"] = endpoint.group(1)
        unit = "" if endpoint.group(2) is None else " AND unit_id = %(unit)s"
        if endpoint.group(2) is not None:
            params["unit"] = int(endpoint.group(2))
        parts.append(f"SELECT meter_id, 'endpoint', 2 FROM meters WHERE endpoint = %(endpoint)s{unit}")
    if _ID.fullmatch(q):
        params["prefix"] = _like_prefix(q)
        parts.append(
            "(SELECT meter_id, 'meter_id_prefix', 5 FROM meters WHERE meter_id LIKE %(prefix)s AND meter_id <> %(q)s "
            "ORDER BY meter_id LIMIT %(n)s)"
        )
    return parts, params


def search_meters(conn: Connection, query: str, *, limit: int = 20) -> MeterSearch:
    """Meters matching `query` every way it can, best matches first (then by id), with account, switches and relay."""
    assert 1 <= limit <= MAX_RESULTS, limit
    q = clean_query(query)
    parts, params = _candidates(q)
    params["n"] = limit + 1
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        found = conn.execute(
            "SELECT meter_id, array_agg(how ORDER BY rank) FROM ("
            + " UNION ALL ".join(parts)
            + ") AS c GROUP BY meter_id ORDER BY min(rank), meter_id LIMIT %(n)s",
            params,
        ).fetchall()
        matched = {str(meter_id): list(dict.fromkeys(hows)) for meter_id, hows in found[:limit]}
        meters = _details(conn, list(matched), matched)
    return MeterSearch(q, meters, len(found) > limit)


def _details(conn: Connection, meter_ids: list[str], matched: dict[str, list[str]]) -> list[FoundMeter]:
    if not meter_ids:
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        rows = {
            row["meter_id"]: row
            for row in cur.execute(
                "SELECT m.meter_id, m.protocol, m.model, m.status, m.region, m.concentrator_id, m.endpoint, m.bus, "
                "m.unit_id, m.address, s.last_ts AS last_reading_at, r.relay, r.ready_for_reconnection, "
                "r.reported_at AS relay_reported_at, a.account_id, a.supply, a.protected, a.keep_supply "
                "FROM meters m LEFT JOIN meter_register_state s ON s.meter_id = m.meter_id "
                "LEFT JOIN meter_relays r ON r.meter_id = m.meter_id "
                "LEFT JOIN prepaid_accounts a ON a.meter_id = m.meter_id WHERE m.meter_id = ANY(%s)",
                (meter_ids,),
            )
        }
        ledger_ids = {
            prepaid_account_id(row["account_id"]): row["meter_id"] for row in rows.values() if row["account_id"]
        }
        balances = {
            ledger_ids[account_id]: int(balance)
            for account_id, balance in conn.execute(
                "SELECT account_id, balance_fen FROM ledger_accounts WHERE account_id = ANY(%s)", (list(ledger_ids),)
            )
        }
    switches = switches_of_meters(conn, meter_ids)
    meters: list[FoundMeter] = []
    for meter_id in meter_ids:
        row = rows[meter_id]
        relay = (
            None
            if row["relay"] is None
            else FoundRelay(row["relay"], row["ready_for_reconnection"], row["relay_reported_at"])
        )
        account = (
            None
            if row["account_id"] is None
            else FoundAccount(
                row["account_id"], row["supply"], balances.get(meter_id), row["protected"], row["keep_supply"]
            )
        )
        meters.append(
            FoundMeter(
                meter_id=meter_id,
                matched_by=matched[meter_id],
                protocol=row["protocol"],
                model=row["model"],
                status=row["status"],
                region=row["region"],
                concentrator_id=row["concentrator_id"],
                endpoint=row["endpoint"],
                bus=row["bus"],
                unit_id=row["unit_id"],
                address=row["address"],
                last_reading_at=row["last_reading_at"],
                relay=relay,
                account=account,
                switches=switches[meter_id],
            )
        )
    return meters
