"""Daily settlement of one local day in one time zone: charge what is chargeable, then report the day.

The day's figures come from the data, not from this run: the interval charges whose interval starts within the
local day (whenever they were charged; summed from the `usage_tallies` each charging transaction appends with its
charges), and the accounts in arrears as of the instant the day ended (every posting dated at or before it; usage
postings never straddle a local midnight). Settling a day again recomputes the same figures from the same data,
so a re-run replaces the record instead of adding to it.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from headend.db.engine import connect_utc
from headend.engine.catalog import Catalog
from headend.engine.charging import ACCOUNT_FROM, BatchStats, charge_next
from headend.engine.runner import tune_gc_for_batches

Connection = psycopg.Connection[Any]


class SettlementError(ValueError):
    """A settlement that can't run yet or at all."""


@dataclass(frozen=True, slots=True)
class Arrears:
    """An account owing money at the end of the day: negative prepaid balance and/or outstanding debt."""

    account_id: str
    balance_fen: int
    emergency_credit_outstanding_fen: int
    debt_fen: int
    supply: str  # the supply state when the settlement ran (the relay's history is the command log's)

    @property
    def owed_fen(self) -> int:
        """What the customer owes: the overdrawn balance plus the debt."""
        return max(0, -self.balance_fen) + self.debt_fen


@dataclass(frozen=True, slots=True)
class DayUsage:
    """The interval charges of the day's intervals (interval start within the local day)."""

    charges: int
    energy_wh: int
    charged_fen: int


@dataclass(frozen=True, slots=True)
class Settlement:
    """The outcome of settling one local day of the accounts in one time zone."""

    local_day: date
    zone: str
    start_utc: datetime
    end_utc: datetime
    accounts: int  # opened before the day ended
    day: DayUsage
    run: BatchStats  # what this settlement itself charged (any day's intervals up to now minus the lateness)
    incomplete_accounts: int  # intervals of the day still uncharged: no reading after them yet
    arrears: tuple[Arrears, ...]

    @property
    def arrears_fen(self) -> int:
        """Total owed."""
        return sum(a.owed_fen for a in self.arrears)


def settle_workers(configured: int) -> int:
    """The processes a settlement charges with: `configured`, or (0) one per CPU and one more.

    A worker waits on its database backend for a good part of each batch (a round trip per statement, the commit's
    flush); with one worker more than CPUs those waits are filled: 1M accounts on 2 cores settled in 5.7× the SQL
    floor with three workers against 6.6× with two (docs/benchmarks.md).
    """
    assert configured >= 0, configured
    return configured or (os.cpu_count() or 1) + 1


def day_bounds_utc(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The instants the local day starts and ends, UTC."""
    start = datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
    return start, datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC)


def day_end_utc(day: date, zone: ZoneInfo) -> datetime:
    """The instant the local day ends, UTC."""
    return day_bounds_utc(day, zone)[1]


def settle_day(
    conn: Connection,
    catalog: Catalog,
    day: date,
    zone: ZoneInfo,
    *,
    now: datetime,
    lateness_s: float,
    batch_accounts: int,
    workers: int = 1,
    url: str | None = None,
) -> Settlement:
    """Charge the zone's accounts with something to do up to now minus lateness (the day must be over by then);
    record the day.

    With `workers` > 1 the charging is shared among that many processes, each with its own connection to `url`
    and its own part of the accounts (by a hash of the account id); the day is reported once all are done.
    """
    start, end = day_bounds_utc(day, zone)
    cu = now - timedelta(seconds=lateness_s)
    if cu < end:
        raise SettlementError(
            f"{day.isoformat()} ends at {end.isoformat()}; readings may arrive until "
            f"{(end + timedelta(seconds=lateness_s)).isoformat()}, settle after that"
        )
    assert workers >= 1, workers
    run = BatchStats()
    # worth starting workers only if each gets a batch at least; counting stops there (a scan of the zone at most)
    left = _left_to_charge(conn, zone, now, cu, at_most=workers * batch_accounts) if workers > 1 else None
    if left is not None and left >= workers * batch_accounts:
        if url is None:
            raise ValueError("settling with several worker processes needs the database URL")
        run += _charge_in_processes(
            url, zone, now=now, complete_until=cu, lateness_s=lateness_s, batch_accounts=batch_accounts, workers=workers
        )
    if left != 0:
        # alone, or after the workers: whatever is left (nothing, unless a runner committed behind them)
        run += charge_partition(
            conn, catalog, zone, now=now, complete_until=cu, lateness_s=lateness_s, batch_accounts=batch_accounts
        )
    with conn.transaction():
        settlement = _report(conn, day, zone, start, end, run)
        _record(conn, settlement)
    return settlement


# An account with something to charge or decide: readings stored since it last read its meter's (the meter's
# stored-readings counter past the account's, migration 0018 — a backlog stamped before what it has seen included,
# whenever it was stored); a meter replacement after its last consumed reading, up to `complete_until`; a reading
# that became chargeable since it was looked at (`due_at`); a deferred decision whose time came. Every other account
# is left as it is — on a day the runner kept up with, nearly all of them — so a settlement writes nothing for them.
# `s` is the meter's `meter_register_state` row, joined: about half the time of a subquery per account.
_HAS_WORK_SQL = """
    (a.due_at <= %(now)s OR a.wake_at <= %(now)s
     OR s.stored_seq > a.seen_stored_seq
     OR (a.seen_until < %(cu)s
         AND EXISTS (SELECT 1 FROM account_meters m
                     WHERE m.account_id = a.account_id AND m.installed_at > a.anchor_ts AND m.installed_at <= %(cu)s)))
"""


def _left_to_charge(conn: Connection, zone: ZoneInfo, now: datetime, cu: datetime, *, at_most: int) -> int:
    row = conn.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM {ACCOUNT_FROM} WHERE a.zone = %(zone)s AND {_HAS_WORK_SQL} "
        "LIMIT %(n)s) AS t",
        {"zone": zone.key, "now": now, "cu": cu, "n": at_most},
    ).fetchone()
    return 0 if row is None else int(row[0])


def charge_partition(
    conn: Connection,
    catalog: Catalog,
    zone: ZoneInfo,
    *,
    now: datetime,
    complete_until: datetime,
    lateness_s: float,
    batch_accounts: int,
    part: int = 0,
    parts: int = 1,
) -> BatchStats:
    """Charge, batch after batch, the zone's accounts with something to charge or decide in hash part `part` of
    `parts` (one pass in id order)."""
    assert 0 <= part < parts, (part, parts)
    run = BatchStats()
    after = ""
    while True:
        # waits for accounts a runner holds (FOR UPDATE, not SKIP LOCKED): every account with work is charged
        stats, taken = charge_next(
            conn,
            catalog,
            f"a.zone = %(zone)s AND (hashtext(a.account_id) & 2147483647) %% %(parts)s = %(part)s AND {_HAS_WORK_SQL}",
            {"zone": zone.key, "cu": complete_until, "parts": parts, "part": part},
            now=now,
            complete_until=complete_until,
            lateness_s=lateness_s,
            limit=batch_accounts,
            after=after,
            skip_locked=False,
        )
        if not taken:
            return run
        run += stats
        after = taken[-1]


def _charge_in_processes(
    url: str,
    zone: ZoneInfo,
    *,
    now: datetime,
    complete_until: datetime,
    lateness_s: float,
    batch_accounts: int,
    workers: int,
) -> BatchStats:
    """`charge_partition` of each of `workers` parts in a process of its own; their stats added up."""
    spawn = multiprocessing.get_context("spawn")  # no inherited connection, lock or thread
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=spawn) as pool:
        futures = [
            pool.submit(
                _charge_part_in_process, url, zone.key, now, complete_until, lateness_s, batch_accounts, part, workers
            )
            for part in range(workers)
        ]
        run = BatchStats()
        for future in futures:
            run += future.result()  # a worker's failure fails the settlement (what it committed stays committed)
    return run


def _charge_part_in_process(
    url: str,
    zone_key: str,
    now: datetime,
    complete_until: datetime,
    lateness_s: float,
    batch_accounts: int,
    part: int,
    parts: int,
) -> BatchStats:
    tune_gc_for_batches()
    with connect_utc(url) as conn:
        return charge_partition(
            conn,
            Catalog(),
            ZoneInfo(zone_key),
            now=now,
            complete_until=complete_until,
            lateness_s=lateness_s,
            batch_accounts=batch_accounts,
            part=part,
            parts=parts,
        )


def _report(conn: Connection, day: date, zone: ZoneInfo, start: datetime, end: datetime, run: BatchStats) -> Settlement:
    accounts, incomplete = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE charged_until < %(end)s) FROM prepaid_accounts "
        "WHERE zone = %(zone)s AND opened_at < %(end)s",
        {"zone": zone.key, "end": end},
    ).fetchone() or (0, 0)
    charges, energy_wh, charged_fen = conn.execute(
        "SELECT coalesce(sum(charges), 0), coalesce(sum(energy_wh), 0), coalesce(sum(charged_fen), 0) "
        "FROM usage_tallies WHERE zone = %s AND local_day = %s",
        (zone.key, day),
    ).fetchone() or (0, 0, 0)
    in_debt = [str(r[0]) for r in conn.execute(_ARREARS_CANDIDATES_SQL, {"end": end})]
    arrears = tuple(
        Arrears(str(r[0]), int(r[1]), int(r[2]), int(r[3]), str(r[4]))
        for r in conn.execute(_ARREARS_AT_END_SQL, {"end": end, "zone": zone.key, "customers": in_debt}).fetchall()
    )
    return Settlement(
        day,
        zone.key,
        start,
        end,
        int(accounts),
        DayUsage(int(charges), int(energy_wh), int(charged_fen)),
        run,
        int(incomplete),
        arrears,
    )


# The customers who may have owed money when the day ended: those who owe now, and those with postings since (a
# scan of the customer ledger rows, not a balance per account)
_ARREARS_CANDIDATES_SQL = """
    SELECT customer_id FROM ledger_accounts
    WHERE (kind = 'customer_prepaid' AND balance_fen < 0) OR (kind = 'debt_receivable' AND balance_fen > 0)
    UNION
    SELECT l.customer_id FROM ledger_postings p
    CROSS JOIN LATERAL (VALUES (p.debit_account_id), (p.credit_account_id)) AS v(account_id)
    JOIN ledger_accounts l ON l.account_id = v.account_id
    WHERE p.at > %(end)s AND l.customer_id IS NOT NULL
"""

# Their balances at the day's end: today's balance minus what postings dated after the end moved (a BRIN index on
# `at` keeps that scan to the postings written since).
_ARREARS_AT_END_SQL = """
    WITH moved AS (
        SELECT v.account_id, sum(v.credit_minus_debit_fen) AS credit_minus_debit_fen
        FROM ledger_postings p
        CROSS JOIN LATERAL (VALUES (p.credit_account_id, p.amount_fen), (p.debit_account_id, -p.amount_fen))
            AS v(account_id, credit_minus_debit_fen)
        WHERE p.at > %(end)s
        GROUP BY v.account_id
    ), at_end AS (
        SELECT l.customer_id, l.kind,
            l.balance_fen - CASE WHEN l.normal_side = 'credit' THEN coalesce(m.credit_minus_debit_fen, 0)
                ELSE -coalesce(m.credit_minus_debit_fen, 0) END AS balance_fen
        FROM ledger_accounts l LEFT JOIN moved m USING (account_id)
        WHERE l.customer_id = ANY(%(customers)b)
    )
    SELECT a.account_id,
        coalesce(sum(e.balance_fen) FILTER (WHERE e.kind = 'customer_prepaid'), 0),
        coalesce(sum(e.balance_fen) FILTER (WHERE e.kind = 'emergency_credit_receivable'), 0),
        coalesce(sum(e.balance_fen) FILTER (WHERE e.kind = 'debt_receivable'), 0),
        a.supply
    FROM prepaid_accounts a JOIN at_end e ON e.customer_id = a.account_id
    WHERE a.zone = %(zone)s AND a.opened_at < %(end)s AND a.account_id = ANY(%(customers)b)
    GROUP BY a.account_id, a.supply
    HAVING coalesce(sum(e.balance_fen) FILTER (WHERE e.kind = 'customer_prepaid'), 0) < 0
        OR coalesce(sum(e.balance_fen) FILTER (WHERE e.kind = 'debt_receivable'), 0) > 0
    ORDER BY a.account_id
"""


def tally_problems(conn: Connection) -> list[str]:
    """Zones and days whose `usage_tallies` differ from their `usage_charges` (none: the tallies are whole).

    Reads every charge: for tests, benchmarks and an operator's audit, not for each settlement.
    """
    rows = conn.execute(
        """
        WITH charged AS (
            SELECT a.zone, (c.interval_start AT TIME ZONE a.zone)::date AS local_day,
                count(*) AS charges, sum(c.energy_wh) AS energy_wh, sum(c.amount_fen) AS charged_fen
            FROM usage_charges c JOIN prepaid_accounts a USING (account_id) GROUP BY 1, 2
        ), tallied AS (
            SELECT zone, local_day, sum(charges) AS charges, sum(energy_wh) AS energy_wh,
                sum(charged_fen) AS charged_fen
            FROM usage_tallies GROUP BY 1, 2
        )
        SELECT zone, local_day, c.charges, c.energy_wh, c.charged_fen, t.charges, t.energy_wh, t.charged_fen
        FROM charged c FULL JOIN tallied t USING (zone, local_day)
        WHERE (c.charges, c.energy_wh, c.charged_fen) IS DISTINCT FROM (t.charges, t.energy_wh, t.charged_fen)
        ORDER BY 1, 2
        """
    ).fetchall()
    return [
        f"{zone} {day}: charges {c} / {e} Wh / {f} fen, tallied {tc} / {te} Wh / {tf} fen"
        for zone, day, c, e, f, tc, te, tf in rows
    ]


def _record(conn: Connection, s: Settlement) -> None:
    conn.execute(
        """
        INSERT INTO settlements (local_day, zone, start_utc, until_utc, accounts, charges, energy_wh, charged_fen,
            run_charges, run_charged_fen, incomplete_accounts, arrears_accounts, arrears_fen)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (local_day, zone) DO UPDATE SET start_utc = excluded.start_utc, until_utc = excluded.until_utc,
            accounts = excluded.accounts, charges = excluded.charges, energy_wh = excluded.energy_wh,
            charged_fen = excluded.charged_fen, run_charges = excluded.run_charges,
            run_charged_fen = excluded.run_charged_fen, incomplete_accounts = excluded.incomplete_accounts,
            arrears_accounts = excluded.arrears_accounts, arrears_fen = excluded.arrears_fen, settled_at = now()
        """,
        (
            s.local_day,
            s.zone,
            s.start_utc,
            s.end_utc,
            s.accounts,
            s.day.charges,
            s.day.energy_wh,
            s.day.charged_fen,
            s.run.charges,
            s.run.charged_fen,
            s.incomplete_accounts,
            len(s.arrears),
            s.arrears_fen,
        ),
    )
    conn.execute("DELETE FROM settlement_arrears WHERE local_day = %s AND zone = %s", (s.local_day, s.zone))
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY settlement_arrears (local_day, zone, account_id, balance_fen, emergency_credit_outstanding_fen, "
            "debt_fen, supply) FROM STDIN"
        ) as copy,
    ):
        for a in s.arrears:
            copy.write_row(
                (
                    s.local_day,
                    s.zone,
                    a.account_id,
                    a.balance_fen,
                    a.emergency_credit_outstanding_fen,
                    a.debt_fen,
                    a.supply,
                )
            )
