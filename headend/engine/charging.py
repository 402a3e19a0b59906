"""Charge a set of prepaid accounts in one transaction: readings → charges → postings → decisions → outboxes.

One call of `charge_accounts` locks the accounts' rows (SKIP LOCKED: a second runner takes others), feeds each
account the readings and meter replacements after its last consumed reading up to `complete_until` (the
lateness promise, see `prepay_engine.usage`), and writes everything the pure core returns — the interval
charges (`usage_charges`, one row per meter and 15-minute interval), one ledger posting per account for their
sum, ledger balances, notifications, relay commands, anomalies and the new account state — before it commits.
Nothing is written for an account unless all of it is, so a runner killed mid-batch leaves the accounts as
they were and the next runner charges them; the charge ids are deterministic and `usage_charges`' primary
key, so a replay could never charge an interval twice either.

Locks are taken in one order everywhere: account rows, then the customers' ledger rows (C collation; the prepaid
rows of the customers charged are locked by the UPDATE that charges them), then the shared revenue account last
and only for the append, so two runners overlap their charging and queue only on the short tail that appends
postings.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_loads

from headend.engine.account_rows import (
    ACCOUNT_COLUMNS,
    METER_COLUMNS,
    STATE_COLUMNS,
    USAGE_COLUMNS,
    AccountMeter,
    account_from_row,
    meter_from_row,
    replacements,
    state_values,
    usage_state_from_row,
    usage_values,
)
from headend.engine.catalog import Catalog
from headend.engine.outbox import write_requests
from headend.engine.plan_changes import PendingChanges, pending_changes, save_plans
from headend.money.ledger_store import NEXT_POSTING_SEQS_SQL, POSTING_ROW_COLUMNS, posting_row
from prepay_engine.account import (
    CommandRequest,
    NotificationRequest,
    PrepaidAccount,
    is_quiet,
    usage_day_postings,
)
from prepay_engine.ledger import (
    DEFAULT_MAX_POSTING_FEN,
    MAX_BIGINT,
    REVENUE_ACCOUNT_ID,
    Posting,
    emergency_credit_account_id,
    prepaid_account_id,
)
from prepay_engine.policy import SupplyState
from prepay_engine.usage import (
    IntervalCharge,
    RegisterReading,
    TariffChange,
    UsageEvent,
    UsageState,
    charge_usage,
)

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]
Cursor = psycopg.Cursor[Any]

ENGINE_ACTOR: Final = "engine"
# and, from `s`, the current meter's `meter_register_state` row: the time of its newest stored reading (a meter with
# none after the batch's window needs no look for its next reading) and its stored-readings counter, read before the
# readings are (migration 0018): what the batch reads includes every reading stored up to it, so the account has
# seen that far
_ACCOUNT_SELECT: Final = ", ".join(f"a.{c}" for c in ACCOUNT_COLUMNS) + (
    ", a.seen_stored_seq, s.last_ts AS meter_last_ts, s.stored_seq AS meter_stored_seq"
)
# one look-up of the meter's row per account serves both the selection and the select list; NULL: nothing stored
ACCOUNT_FROM: Final = "prepaid_accounts a LEFT JOIN meter_register_state s ON s.meter_id = a.meter_id"
_STAGE_SQL: Final = f"""
    CREATE TEMP TABLE IF NOT EXISTS engine_account_stage ON COMMIT DELETE ROWS AS
    SELECT account_id, {", ".join(STATE_COLUMNS)}, seen_until, seen_stored_seq, due_at, wake_at, NULL::bool AS decided
    FROM prepaid_accounts WITH NO DATA
"""
_STAGE_TYPES: Final = [
    "text",
    "bool",
    "bool",
    "text",
    "jsonb",
    "int4",
    "int4",
    "jsonb",
    "int4",
    "bool",
    "varchar",
    "timestamptz",
    "int8",
    "timestamptz",
    "varchar",
    "int8",
    "int8",
    "int8",
    "numeric",
    "int8",
    "timestamptz",
    "int8",
    "timestamptz",
    "timestamptz",
    "bool",
]
# the state columns that only a decision changes: an account charged but not decided keeps them as they are
_DECISION_COLUMNS: Final = STATE_COLUMNS[: -len(USAGE_COLUMNS)]
_POSTING_TYPES: Final = [
    "text",
    "text",
    "text",
    "int8",
    "text",
    "timestamptz",
    "text",
    "text",
    "bool",
    "int8",
    "int8",
    "int8",
    "int8",
]


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one transaction did."""

    accounts: int = 0  # locked and looked at
    decided: int = 0
    charges: int = 0  # interval charges, including those of 0 fen
    postings: int = 0
    charged_fen: int = 0
    notifications: int = 0
    commands: int = 0
    anomalies: int = 0

    def __add__(self, other: BatchStats) -> BatchStats:
        return BatchStats(
            self.accounts + other.accounts,
            self.decided + other.decided,
            self.charges + other.charges,
            self.postings + other.postings,
            self.charged_fen + other.charged_fen,
            self.notifications + other.notifications,
            self.commands + other.commands,
            self.anomalies + other.anomalies,
        )

    def __sub__(self, other: BatchStats) -> BatchStats:
        return BatchStats(
            self.accounts - other.accounts,
            self.decided - other.decided,
            self.charges - other.charges,
            self.postings - other.postings,
            self.charged_fen - other.charged_fen,
            self.notifications - other.notifications,
            self.commands - other.commands,
            self.anomalies - other.anomalies,
        )


class BatchFailedError(RuntimeError):
    """Charging a batch raised; nothing of it was committed. `account_ids` were in it."""

    def __init__(self, account_ids: list[str]) -> None:
        super().__init__(f"charging {len(account_ids)} accounts failed")
        self.account_ids = account_ids


# one condition per row, so that a scan in id order from a cursor finds the next due accounts without
# evaluating the whole table (a UNION of the three cases costs a pass over every account per batch). The third case:
# the meter has readings stored since the account last read them — newer ones, or a backlog stamped before what the
# account has seen, however long ago it was stored (the counter is durable: `reading_batches` is not)
_DUE_ROW_SQL: Final = """
    (a.due_at <= %(now)s OR a.wake_at <= %(now)s
     OR (a.due_at IS NULL AND (a.seen_until < %(cu)s OR %(eager)s) AND s.stored_seq > a.seen_stored_seq))
"""


def charge_due(
    conn: Connection,
    catalog: Catalog,
    *,
    now: datetime,
    complete_until: datetime,
    lateness_s: float,
    limit: int,
    after: str = "",
    eager_on_grid: bool = False,
) -> tuple[BatchStats, list[str]]:
    """Lock up to `limit` due accounts with ids after `after` that no one else holds; charge them in one transaction.

    Returns what was done and the ids taken, in order (none: nothing after `after` is due that is not held
    elsewhere). Raises `BatchFailedError` with the ids when the batch fails for any reason but a lost connection.
    """
    # SKIP LOCKED with LIMIT: a second runner passes over the first one's batch and takes the next
    return charge_next(
        conn,
        catalog,
        _DUE_ROW_SQL,
        {"cu": complete_until, "eager": eager_on_grid},
        now=now,
        complete_until=complete_until,
        lateness_s=lateness_s,
        limit=limit,
        after=after,
        skip_locked=True,
        eager_on_grid=eager_on_grid,
    )


def charge_next(
    conn: Connection,
    catalog: Catalog,
    condition_sql: str,
    params: Mapping[str, Any],
    *,
    now: datetime,
    complete_until: datetime,
    lateness_s: float,
    limit: int,
    after: str,
    skip_locked: bool,
    eager_on_grid: bool = False,
) -> tuple[BatchStats, list[str]]:
    """Lock up to `limit` accounts with ids after `after` that meet `condition_sql`, in id order, and charge them in
    one transaction; with `skip_locked`, accounts another transaction holds are passed over instead of waited for.

    `condition_sql` is a condition on `a`, the `prepaid_accounts` row, and `s`, its meter's `meter_register_state`
    row (NULL when the meter has stored nothing), with named placeholders from `params` (and `now`). Returns what
    was done and the ids taken, in order (none: no such account after `after`). Raises `BatchFailedError` with the
    ids when the batch fails for any reason but a lost connection.
    """
    assert complete_until <= now
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        rows = _lock_account_rows(
            cur,
            catalog,
            f"a.account_id > %(after)s AND {condition_sql}",
            {**params, "now": now, "after": after},
            skip_locked=skip_locked,
            limit=limit,
        )
        ids = [str(r["account_id"]) for r in rows]
        if not rows:
            return BatchStats(), ids
        try:
            stats = _charge_locked(
                cur,
                catalog,
                rows,
                now=now,
                complete_until=complete_until,
                lateness_s=lateness_s,
                eager_on_grid=eager_on_grid,
            )
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except Exception as exc:
            raise BatchFailedError(ids) from exc
    return stats, ids


def charge_accounts(
    conn: Connection,
    catalog: Catalog,
    account_ids: Sequence[str],
    *,
    now: datetime,
    complete_until: datetime,
    lateness_s: float,
    wait: bool = False,
    eager_on_grid: bool = False,
) -> BatchStats:
    """Charge and decide the given accounts in one transaction; accounts locked elsewhere are skipped unless `wait`."""
    assert now.utcoffset() is not None
    assert complete_until.utcoffset() is not None
    assert complete_until <= now
    if not account_ids:
        return BatchStats()
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        rows = _lock_account_rows(
            cur, catalog, "a.account_id = ANY(%(ids)b)", {"ids": list(account_ids)}, skip_locked=not wait
        )
        if not rows:
            return BatchStats()
        return _charge_locked(
            cur,
            catalog,
            rows,
            now=now,
            complete_until=complete_until,
            lateness_s=lateness_s,
            eager_on_grid=eager_on_grid,
        )


def _lock_account_rows(
    cur: Cursor,
    catalog: Catalog,
    condition_sql: str,
    params: Mapping[str, Any],
    *,
    skip_locked: bool,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The `prepaid_accounts` rows meeting `condition_sql` (on `a` and `s`: see `charge_next`), in id order, at most
    `limit`, locked FOR UPDATE — or, with `skip_locked`, passed over while another transaction holds them; the
    catalog refreshed first."""
    catalog.refresh(cur.connection)
    set_json_loads(_load_json, cur)
    cur.execute(
        f"SELECT {_ACCOUNT_SELECT} FROM {ACCOUNT_FROM} WHERE {condition_sql} ORDER BY a.account_id"
        f"{'' if limit is None else ' LIMIT %(limit)s'} FOR UPDATE OF a{' SKIP LOCKED' if skip_locked else ''}",
        params if limit is None else {**params, "limit": limit},
    )
    return cur.fetchall()


def _load_json(data: str | bytes) -> Any:
    # most accounts hold no notices ('[]'): json.loads costs ~1 µs of a row for that
    return [] if data == b"[]" else json.loads(data)


@dataclass(slots=True)
class _Work:
    account_id: str
    row: dict[str, Any]
    usage: UsageState  # after this batch's charging
    account: PrepaidAccount | None = None  # built only to decide (most accounts are quiet: see `is_quiet`)
    days: tuple[tuple[Posting | None, tuple[IntervalCharge, ...]], ...] = ()  # usage postings, one per local day
    decide: bool = False
    plan: PendingChanges | None = None  # its tariff and policy changes not yet applied, when it has any
    replanned: bool = False  # some of them applied: its row has the codes and next changes' instants to store


def _charge_locked(
    cur: Cursor,
    catalog: Catalog,
    rows: list[dict[str, Any]],
    *,
    now: datetime,
    complete_until: datetime,
    lateness_s: float,
    eager_on_grid: bool,
) -> BatchStats:
    cu = complete_until.astimezone(UTC)
    ids = [r["account_id"] for r in rows]
    history = _meter_history(cur, ids)
    # eager: readings up to now are read, those closing the next on-grid interval are charged without waiting
    events, next_ts = _usage_events(cur, rows, history, cu, now.astimezone(UTC) if eager_on_grid else cu)

    # the few accounts with a tariff or policy change not yet applied (headend.engine.plan_changes); an idle one
    # has none due: a policy change wakes its account (wake_at), a tariff change waits for charging to reach it
    plans = pending_changes(
        cur,
        [
            r["account_id"]
            for r in rows
            if r["next_tariff_change_at"] is not None or r["next_policy_change_at"] is not None
        ],
    )

    works: list[_Work] = []
    idle: list[dict[str, Any]] = []
    anomalies: list[tuple[str, str, datetime, str, str]] = []
    postings: list[Posting] = []
    stats_charges = 0
    for row in rows:
        account_id = row["account_id"]
        wake_at = row["wake_at"]
        account_events = events.get(account_id)
        if not account_events and (wake_at is None or wake_at > now):
            idle.append(row)
            continue
        work = _Work(account_id, row, usage_state_from_row(row, history[account_id]))
        work.decide = wake_at is not None and wake_at <= now
        tariff_changes: Sequence[TariffChange] = ()
        if plans and account_id in plans:
            tariff_changes = _take_plan(work, plans[account_id], catalog, now)
            row = work.row
        if account_events:
            tariff = catalog.tariffs[row["tariff_code"]]
            usage = charge_usage(
                work.usage,
                account_events,
                tariff,
                complete_until=cu,
                eager_on_grid=eager_on_grid,
                tariff_changes=tariff_changes,
            )
            if usage.tariff_changes_applied:
                _tariff_changes_applied(work, usage.tariff_changes_applied)
            waiting = usage.state.pending_readings
            if waiting:
                # read again from `readings` next time (they are after the anchor); they become due with the lateness
                next_ts[account_id] = min(
                    [r.ts for r in waiting] + ([next_ts[account_id]] if account_id in next_ts else [])
                )
            work.usage = replace(usage.state, pending_readings=()) if waiting else usage.state
            work.days = usage_day_postings(account_id, usage.charges, ZoneInfo(row["zone"]))
            for posting, _ in work.days:
                if posting is not None:
                    postings.append(posting)
                    work.decide = True
            stats_charges += len(usage.charges)
            if usage.anomalies:
                anomalies.extend((account_id, a.meter_id, a.ts, str(a.kind), a.detail) for a in usage.anomalies)
        works.append(work)

    # the accounts charged something: their prepaid balances lowered (and locked) by one UPDATE; the others to be
    # decided (a deferred decision due): locked as they are
    balances = _charge_prepaid_balances(cur, postings)
    balances.update(
        _lock_prepaid_balances(
            cur, [w.account_id for w in works if w.decide and prepaid_account_id(w.account_id) not in balances]
        )
    )
    customer_rows = _balances_after_each(postings, balances)

    notifications: list[NotificationRequest] = []
    commands: list[CommandRequest] = []
    wake: dict[str, datetime | None] = {}
    deciding: list[_Work] = []
    for work in works:
        if not work.decide:
            continue
        row = work.row
        if is_quiet(
            catalog.policies[row["policy_code"]],
            balances[prepaid_account_id(work.account_id)],
            in_episode=row["in_episode"],
            has_notices=bool(row["notices"]),
            has_pending=row["pending_command"] is not None,
            supply=SupplyState(row["supply"]),
        ):
            wake[work.account_id] = None  # the policy's answer would be NoAction (see there); most accounts, most days
        else:
            deciding.append(work)
    lent = _emergency_credit_balances(cur, [w.account_id for w in deciding])
    for work in deciding:
        account_id = work.account_id
        row = work.row
        policy = catalog.policies[row["policy_code"]]
        account = account_from_row(
            row,
            catalog.tariffs[row["tariff_code"]],
            policy,
            history[account_id],
            catalog.calendar,
            usage=work.usage,
        )
        step = account.decide_at(balances[prepaid_account_id(account_id)], lent[account_id], now)
        work.account = step.account
        notifications.extend(step.notifications)
        commands.extend(step.commands)
        wake[account_id] = step.wake_at
    planned = [w for w in works if w.plan is not None] if plans else []
    for work in planned:
        _wake_for_policy_change(work, wake)

    write_requests(cur, notifications, commands, requested_by=ENGINE_ACTOR)
    if anomalies:
        cur.executemany(
            "INSERT INTO usage_anomalies (account_id, meter_id, ts, kind, detail) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            anomalies,
        )
    # before the accounts' new state, as the checks on the next changes' instants need (see there)
    save_plans(cur, [w.row for w in planned if w.replanned])
    _save_accounts(cur, works, wake, next_ts, cu, lateness_s)
    _reschedule_idle(cur, idle, next_ts, cu, lateness_s)
    _copy_usage_charges(cur, works)
    _append_usage_tallies(cur, works)
    charged_fen = _append_usage_postings(cur, postings, customer_rows)
    return BatchStats(
        accounts=len(rows),
        decided=sum(w.decide for w in works),
        charges=stats_charges,
        postings=len(postings),
        charged_fen=charged_fen,
        notifications=len(notifications),
        commands=len(commands),
        anomalies=len(anomalies),
    )


def _take_plan(work: _Work, plan: PendingChanges, catalog: Catalog, now: datetime) -> tuple[TariffChange, ...]:
    """Apply the account's policy changes due by `now` to its row (its new policy decides at once); the tariff
    changes ahead, for the charging to apply as it reaches them."""
    due = [c for c in plan.policy if c.effective_at <= now]
    if due:
        work.decide = True
        work.replanned = True
        work.row = {
            **work.row,
            "policy_code": due[-1].new_code,
            "next_policy_change_at": plan.policy[len(due)].effective_at if len(due) < len(plan.policy) else None,
        }
    work.plan = PendingChanges(plan.tariff, plan.policy[len(due) :])
    return tuple(TariffChange(c.effective_at, catalog.tariffs[c.new_code]) for c in plan.tariff)


def _tariff_changes_applied(work: _Work, applied: int) -> None:
    """The first `applied` of the account's pending tariff changes are in force now: its row says so."""
    assert work.plan is not None
    tariff = work.plan.tariff
    work.replanned = True
    work.row = {
        **work.row,
        "tariff_code": tariff[applied - 1].new_code,
        "next_tariff_change_at": tariff[applied].effective_at if applied < len(tariff) else None,
    }
    work.plan = PendingChanges(tariff[applied:], work.plan.policy)


def _wake_for_policy_change(work: _Work, wake: dict[str, datetime | None]) -> None:
    """Wake the account at its next policy change at the latest, whatever its decision said."""
    upcoming: datetime | None = work.row["next_policy_change_at"]
    if upcoming is None:
        return
    current = wake[work.account_id] if work.account_id in wake else work.row["wake_at"]
    wake[work.account_id] = upcoming if current is None else min(current, upcoming)


def _meter_history(cur: Cursor, account_ids: list[str]) -> dict[str, list[AccountMeter]]:
    history: dict[str, list[AccountMeter]] = defaultdict(list)
    with cur.connection.cursor() as rows:  # plain tuples in METER_COLUMNS order: one per account and meter
        rows.execute(
            f"SELECT {', '.join(METER_COLUMNS)} FROM account_meters WHERE account_id = ANY(%b) "
            "ORDER BY account_id, installed_at",
            (account_ids,),
        )
        for row in rows.fetchall():
            meter = meter_from_row(row)
            history[meter.account_id].append(meter)
    return history


def _usage_events(
    cur: Cursor,
    rows: list[dict[str, Any]],
    history: Mapping[str, list[AccountMeter]],
    cu: datetime,
    read_until: datetime,
) -> tuple[dict[str, list[UsageEvent]], dict[str, datetime]]:
    """Replacements after each account's anchor up to `cu`, readings up to `read_until`, the next reading after."""
    pair_accounts: list[str] = []
    pair_meters: list[str] = []
    pair_after: list[datetime] = []
    later_accounts: list[str] = []  # the pairs that may have a reading after `read_until`
    later_meters: list[str] = []
    events: dict[str, list[UsageEvent]] = defaultdict(list)
    for row in rows:
        account_id = row["account_id"]
        anchor: datetime = row["anchor_ts"]
        newest: datetime | None = row["meter_last_ts"]
        meters = history[account_id]
        for meter in meters:
            if meter.removed_at is None or meter.removed_at > anchor:
                pair_accounts.append(account_id)
                pair_meters.append(meter.meter_id)
                pair_after.append(meter.installed_at if meter.installed_at > anchor else anchor)
                if meter.meter_id != row["meter_id"] or (newest is not None and newest > read_until):
                    later_accounts.append(account_id)
                    later_meters.append(meter.meter_id)
        if len(meters) > 1:  # one meter ever: no replacement
            for event in replacements(meters):
                if anchor < event.at <= cu:
                    events[account_id].append(event)
    if not pair_accounts:
        return events, {}
    lowest = min(pair_after)
    # the constant bounds let PostgreSQL prune the readings partitions outside the window; the LATERAL (kept apart
    # by OFFSET 0) makes it an index range scan per meter: a join planned from the statistics of a partition
    # whose newest readings they don't know yet can turn into a scan of the whole partition (seconds a batch)
    readings = cur.connection.cursor()  # plain tuples: one row per reading, the most numerous rows of a batch
    readings.execute(
        """
        SELECT q.account_id, r.meter_id, r.ts, r.energy_import_wh
        FROM unnest(%b::text[], %b::text[], %b::timestamptz[]) AS q(account_id, meter_id, after_ts)
        CROSS JOIN LATERAL (
            SELECT r.meter_id, r.ts, r.energy_import_wh FROM readings r
            WHERE r.meter_id = q.meter_id AND r.ts > q.after_ts AND r.ts > %s AND r.ts <= %s
            OFFSET 0
        ) AS r
        """,
        (pair_accounts, pair_meters, pair_after, lowest, read_until),
    )
    for account_id, meter_id, ts, register_wh in readings.fetchall():
        # in UTC (psycopg gives the session's zone): the usage core then takes the batch as it comes
        events[account_id].append(
            RegisterReading(meter_id, ts if ts.tzinfo is UTC else ts.astimezone(UTC), register_wh)
        )
    readings.close()
    if not later_accounts:
        return events, {}
    cur.execute(
        """
        SELECT q.account_id, min(n.ts) AS next_ts
        FROM unnest(%b::text[], %b::text[]) AS q(account_id, meter_id)
        CROSS JOIN LATERAL (
            SELECT r.ts FROM readings r WHERE r.meter_id = q.meter_id AND r.ts > %s ORDER BY r.ts LIMIT 1
        ) AS n
        GROUP BY q.account_id
        """,
        (later_accounts, later_meters, read_until),
    )
    return events, {row["account_id"]: row["next_ts"] for row in cur.fetchall()}


def _lock_prepaid_balances(cur: Cursor, account_ids: list[str]) -> dict[str, int]:
    """Lock the prepaid balances of customers decided without a charge (a charge's UPDATE locks its own: see
    `_charge_prepaid_balances`); balance_fen by ledger account id.

    Their emergency-credit rows need no lock: every posting that moves one also moves the customer's prepaid
    account (a loan credits it, a repayment debits it), so it waits on the prepaid row, locked in this batch.
    """
    ids = sorted(prepaid_account_id(i) for i in account_ids)
    if not ids:
        return {}
    # one global lock order with headend.money.ledger_store: C collation of the account id
    cur.execute(
        "SELECT account_id, balance_fen FROM ledger_accounts "
        'WHERE account_id = ANY(%b) ORDER BY account_id COLLATE "C" FOR UPDATE',
        (ids,),
    )
    return _fetched_balances(cur, ids)


def _emergency_credit_balances(cur: Cursor, account_ids: list[str]) -> dict[str, int]:
    """The emergency credit outstanding of each account (its prepaid row locked: see `_lock_prepaid_balances`)."""
    if not account_ids:
        return {}
    ids = [emergency_credit_account_id(i) for i in account_ids]
    cur.execute("SELECT account_id, balance_fen FROM ledger_accounts WHERE account_id = ANY(%b)", (ids,))
    lent = _fetched_balances(cur, ids)
    return {i: lent[emergency_credit_account_id(i)] for i in account_ids}


def _charge_prepaid_balances(cur: Cursor, postings: list[Posting]) -> dict[str, int]:
    """Lower each customer's prepaid balance by its usage postings in one UPDATE, which locks the rows; the balances
    after, by ledger account id.

    No lock of the rows before: the UPDATE takes them (in the order of the sorted ids, a nested loop over the
    array, as `headend.money.ledger_store` does) and the amounts don't depend on the balances. Within the engine
    only this transaction writes these customers' rows (it holds their `prepaid_accounts` rows); the shared revenue
    account comes last (`_append_usage_postings`).
    """
    charged_fen: dict[str, int] = defaultdict(int)
    for p in postings:
        assert 0 < p.amount_fen <= DEFAULT_MAX_POSTING_FEN, p
        charged_fen[p.debit_account_id] += p.amount_fen
    if not charged_fen:
        return {}
    ids = sorted(charged_fen)
    # customer prepaid is credit-normal: balance = credits - debits; a debit total beyond bigint fails the batch
    cur.execute(
        """
        UPDATE ledger_accounts AS a
        SET debits_fen = a.debits_fen + v.amount_fen, balance_fen = a.credits_fen - a.debits_fen - v.amount_fen,
            version = a.version + 1
        FROM unnest(%b::text[], %b::bigint[]) AS v(account_id, amount_fen)
        WHERE a.account_id = v.account_id
        RETURNING a.account_id, a.balance_fen
        """,
        (ids, [charged_fen[i] for i in ids]),
    )
    return _fetched_balances(cur, ids)


def _fetched_balances(cur: Cursor, ids: Sequence[str]) -> dict[str, int]:
    """The (account_id, balance_fen) rows the last statement returned, by id; every one of `ids` must be there."""
    balances = {str(r["account_id"]): int(r["balance_fen"]) for r in cur.fetchall()}
    missing = [i for i in ids if i not in balances]
    if missing:
        raise RuntimeError(f"ledger accounts not open: {', '.join(missing[:5])}")
    return balances


def _balances_after_each(postings: list[Posting], balances: Mapping[str, int]) -> dict[str, list[int]]:
    """The customer's prepaid balance after each of its postings (in order), from the balance after all of them."""
    after: dict[str, list[int]] = {}
    later_fen: dict[str, int] = {}  # the amount of the customer's posting after the one at hand
    for p in reversed(postings):
        account_id = p.debit_account_id
        running = after.get(account_id)
        if running is None:
            after[account_id] = [balances[account_id]]
        else:
            running.append(running[-1] + later_fen[account_id])
        later_fen[account_id] = p.amount_fen
    for running in after.values():
        running.reverse()
    return after


def _append_usage_postings(cur: Cursor, postings: list[Posting], customer_rows: Mapping[str, list[int]]) -> int:
    """Append the usage postings with running balances; the revenue account is locked only for this."""
    if not postings:
        return 0
    cur.execute(
        "SELECT debits_fen, credits_fen, version FROM ledger_accounts WHERE account_id = %s FOR UPDATE",
        (REVENUE_ACCOUNT_ID,),
    )
    revenue = cur.fetchone()
    if revenue is None:
        raise RuntimeError(f"the house account {REVENUE_ACCOUNT_ID} is not open")
    cur.execute(NEXT_POSTING_SEQS_SQL, (len(postings),))
    seqs = sorted(int(r["nextval"]) for r in cur.fetchall())
    credits = int(revenue["credits_fen"])
    position: dict[str, int] = defaultdict(int)
    total = 0
    with cur.copy(f"COPY ledger_postings ({POSTING_ROW_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_POSTING_TYPES)
        for p, seq in zip(postings, seqs, strict=True):
            credits += p.amount_fen
            total += p.amount_fen
            customer_after = customer_rows[p.debit_account_id][position[p.debit_account_id]]
            position[p.debit_account_id] += 1
            revenue_after = credits - int(revenue["debits_fen"])
            copy.write_row(posting_row(p, customer_after, revenue_after, seqs[0], seq))
    if credits > MAX_BIGINT:
        raise OverflowError(f"{REVENUE_ACCOUNT_ID}: credit total would exceed {MAX_BIGINT}")
    cur.execute(
        "UPDATE ledger_accounts SET credits_fen = %s, balance_fen = %s - debits_fen, version = version + 1 "
        "WHERE account_id = %s",
        (credits, credits, REVENUE_ACCOUNT_ID),
    )
    return total


_CHARGE_TYPES: Final = ["text", "text", "varchar", "timestamptz", "int8", "numeric", "int8", "text"]


def _copy_usage_charges(cur: Cursor, works: list[_Work]) -> None:
    """Record every interval charge; its primary key refuses an interval charged a second time."""
    with cur.copy(
        "COPY usage_charges (charge_id, account_id, meter_id, interval_start, energy_wh, amount_yuan, amount_fen, "
        "posting_id) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(_CHARGE_TYPES)
        for work in works:
            account_id = work.account_id
            for posting, charges in work.days:
                posting_id = None if posting is None else posting.posting_id
                for c in charges:
                    copy.write_row(
                        (
                            c.charge_id,
                            account_id,
                            c.meter_id,
                            c.interval_start,
                            c.energy_wh,
                            c.amount_yuan,
                            c.amount_fen,
                            posting_id,
                        )
                    )


def _append_usage_tallies(cur: Cursor, works: list[_Work]) -> None:
    """Tally the batch's charges for the daily settlement: one `usage_tallies` row per zone and local day."""
    tallies: dict[tuple[str, date], list[int]] = {}
    for work in works:
        zone = work.row["zone"]
        for _, charges in work.days:
            # a day's charges (`usage_day_postings`): the first one's local day is theirs
            key = (zone, _local_day(charges[0].interval_start, zone))
            tally = tallies.get(key)
            if tally is None:
                tally = tallies[key] = [0, 0, 0]
            tally[0] += len(charges)
            for c in charges:
                tally[1] += c.energy_wh
                tally[2] += c.amount_fen
    if tallies:
        cur.executemany(
            "INSERT INTO usage_tallies (zone, local_day, charges, energy_wh, charged_fen) VALUES (%s, %s, %s, %s, %s)",
            [(zone, day, *tally) for (zone, day), tally in sorted(tallies.items())],
        )


@functools.lru_cache(maxsize=8192)
def _local_day(instant: datetime, zone: str) -> date:
    # every account charges the same grid: each interval start is converted once per zone
    return instant.astimezone(ZoneInfo(zone)).date()


def _due_at(next_ts: Mapping[str, datetime], account_id: str, lateness_s: float) -> datetime | None:
    """When the account's next reading (after what it has seen) becomes chargeable; None if there is none yet."""
    following = next_ts.get(account_id)
    return None if following is None else following + timedelta(seconds=lateness_s)


def _seen_stored_seq(row: Mapping[str, Any]) -> int:
    """The account's meter's stored-readings counter as of this batch (a meter with none yet: the account's own)."""
    stored: int | None = row["meter_stored_seq"]
    return int(row["seen_stored_seq"]) if stored is None else stored


def _reschedule_idle(
    cur: Cursor, rows: list[dict[str, Any]], next_ts: Mapping[str, datetime], cu: datetime, lateness_s: float
) -> None:
    """Accounts with nothing to charge or decide: only their scheduling moves on (their state is untouched)."""
    if not rows:
        return
    cur.execute(
        """
        UPDATE prepaid_accounts AS a SET seen_until = v.seen_until, seen_stored_seq = v.seen_stored_seq,
            due_at = v.due_at
        FROM unnest(%b::text[], %b::timestamptz[], %b::int8[], %b::timestamptz[])
            AS v(account_id, seen_until, seen_stored_seq, due_at)
        WHERE a.account_id = v.account_id
        """,
        (
            [r["account_id"] for r in rows],
            [max(r["seen_until"], cu) for r in rows],
            [_seen_stored_seq(r) for r in rows],
            [_due_at(next_ts, r["account_id"], lateness_s) for r in rows],
        ),
    )
    assert cur.rowcount == len(rows), (cur.rowcount, len(rows))


def _save_accounts(
    cur: Cursor,
    works: list[_Work],
    wake: Mapping[str, datetime | None],
    next_ts: Mapping[str, datetime],
    cu: datetime,
    lateness_s: float,
) -> None:
    if not works:
        return
    cur.execute(_STAGE_SQL)
    no_decision = (None,) * len(_DECISION_COLUMNS)
    with cur.copy(
        f"COPY engine_account_stage (account_id, {', '.join(STATE_COLUMNS)}, seen_until, seen_stored_seq, due_at, "
        "wake_at, decided) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(_STAGE_TYPES)
        for work in works:
            account_id = work.account_id
            if work.account is None:
                # charged, or decided to be quiet: the decision's columns stay as they are
                values: tuple[Any, ...] = (*no_decision, *usage_values(work.usage))
            else:
                decided = list(state_values(work.account))
                decided[3] = None if decided[3] is None else Jsonb(decided[3])
                decided[6] = Jsonb(decided[6])
                values = tuple(decided)
            due_at = _due_at(next_ts, account_id, lateness_s)
            wake_at = wake[account_id] if account_id in wake else work.row["wake_at"]
            # eager charging may have consumed readings beyond `cu`: everything up to the anchor was fed
            seen_until = max(work.row["seen_until"], cu, work.usage.anchor_ts)
            copy.write_row(
                (account_id, *values, seen_until, _seen_stored_seq(work.row), due_at, wake_at, work.account is not None)
            )
    assignments = ", ".join(
        [f"{c} = CASE WHEN s.decided THEN s.{c} ELSE a.{c} END" for c in _DECISION_COLUMNS]
        + [f"{c} = s.{c}" for c in (*USAGE_COLUMNS, "seen_until", "seen_stored_seq", "due_at", "wake_at")]
    )
    cur.execute(
        f"UPDATE prepaid_accounts AS a SET {assignments}, version = a.version + 1, updated_at = now() "
        "FROM engine_account_stage s WHERE a.account_id = s.account_id"
    )
    assert cur.rowcount == len(works), (cur.rowcount, len(works))


__all__ = ["ACCOUNT_FROM", "BatchFailedError", "BatchStats", "charge_accounts", "charge_due", "charge_next"]
