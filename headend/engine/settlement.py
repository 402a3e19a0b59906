"""Daily settlement: charge what is still chargeable for a local day, then record the day's arrears report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from headend.engine.catalog import Catalog
from headend.engine.charging import BatchStats, charge_accounts

Connection = psycopg.Connection[Any]


class SettlementError(ValueError):
    """A settlement that can't run yet or at all."""


@dataclass(frozen=True, slots=True)
class Arrears:
    """An account owing money at settlement: negative prepaid balance and/or outstanding debt."""

    account_id: str
    balance_fen: int
    emergency_credit_outstanding_fen: int
    debt_fen: int
    supply: str

    @property
    def owed_fen(self) -> int:
        """What the customer owes: the overdrawn balance plus the debt."""
        return max(0, -self.balance_fen) + self.debt_fen


@dataclass(frozen=True, slots=True)
class Settlement:
    """The outcome of settling one local day."""

    local_day: date
    zone: str
    until_utc: datetime
    accounts: int
    run: BatchStats
    incomplete_accounts: int  # intervals of the day still uncharged: no reading after them yet
    arrears: tuple[Arrears, ...]

    @property
    def arrears_fen(self) -> int:
        """Total owed."""
        return sum(a.owed_fen for a in self.arrears)


def day_end_utc(day: date, zone: ZoneInfo) -> datetime:
    """The instant the local day ends, UTC."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC)


def settle_day(
    conn: Connection,
    catalog: Catalog,
    day: date,
    zone: ZoneInfo,
    *,
    now: datetime,
    lateness_s: float,
    batch_accounts: int,
) -> Settlement:
    """Charge every account with readings up to now minus lateness (the day must be over by then); record arrears."""
    end = day_end_utc(day, zone)
    cu = now - timedelta(seconds=lateness_s)
    if cu < end:
        raise SettlementError(
            f"{day.isoformat()} ends at {end.isoformat()}; readings may arrive until "
            f"{(end + timedelta(seconds=lateness_s)).isoformat()}, settle after that"
        )
    run = BatchStats()
    after = ""
    while True:
        rows = conn.execute(
            "SELECT account_id FROM prepaid_accounts WHERE account_id > %s AND seen_until < %s "
            "ORDER BY account_id LIMIT %s",
            (after, cu, batch_accounts),
        ).fetchall()
        if not rows:
            break
        ids = [str(r[0]) for r in rows]
        run += charge_accounts(conn, catalog, ids, now=now, complete_until=cu, lateness_s=lateness_s, wait=True)
        after = ids[-1]
    with conn.transaction():
        accounts, incomplete = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE charged_until < %s) FROM prepaid_accounts", (end,)
        ).fetchone() or (0, 0)
        arrears = tuple(
            Arrears(str(r[0]), int(r[1]), int(r[2]), int(r[3]), str(r[4]))
            for r in conn.execute(
                """
                SELECT a.account_id,
                    sum(l.balance_fen) FILTER (WHERE l.kind = 'customer_prepaid'),
                    sum(l.balance_fen) FILTER (WHERE l.kind = 'emergency_credit_receivable'),
                    sum(l.balance_fen) FILTER (WHERE l.kind = 'debt_receivable'),
                    a.supply
                FROM prepaid_accounts a JOIN ledger_accounts l ON l.customer_id = a.account_id
                GROUP BY a.account_id, a.supply
                HAVING sum(l.balance_fen) FILTER (WHERE l.kind = 'customer_prepaid') < 0
                    OR sum(l.balance_fen) FILTER (WHERE l.kind = 'debt_receivable') > 0
                ORDER BY a.account_id
                """
            ).fetchall()
        )
        settlement = Settlement(day, zone.key, end, int(accounts), run, int(incomplete), arrears)
        conn.execute(
            """
            INSERT INTO settlements (local_day, zone, until_utc, accounts, charges, charged_fen, incomplete_accounts,
                arrears_accounts, arrears_fen)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (local_day) DO UPDATE SET zone = excluded.zone, until_utc = excluded.until_utc,
                accounts = excluded.accounts, charges = settlements.charges + excluded.charges,
                charged_fen = settlements.charged_fen + excluded.charged_fen,
                incomplete_accounts = excluded.incomplete_accounts, arrears_accounts = excluded.arrears_accounts,
                arrears_fen = excluded.arrears_fen, settled_at = now()
            """,
            (
                day,
                zone.key,
                end,
                settlement.accounts,
                run.charges,
                run.charged_fen,
                settlement.incomplete_accounts,
                len(arrears),
                settlement.arrears_fen,
            ),
        )
        conn.execute("DELETE FROM settlement_arrears WHERE local_day = %s", (day,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO settlement_arrears (local_day, account_id, balance_fen, emergency_credit_outstanding_fen, "
                "debt_fen, supply) VALUES (%s, %s, %s, %s, %s, %s)",
                [
                    (day, a.account_id, a.balance_fen, a.emergency_credit_outstanding_fen, a.debt_fen, a.supply)
                    for a in arrears
                ],
            )
    return settlement
