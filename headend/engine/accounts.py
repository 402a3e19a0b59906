"""Operator operations on prepaid accounts: open, replace a meter, set flags, post payments — each one transaction.

Every operation locks the account's row first (the order the runner uses too), so it never interleaves with a
charging batch of the same account; the operations that move money or flags end with a policy decision whose
notifications and relay commands are written to the outboxes in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from headend.engine.account_rows import (
    ACCOUNT_COLUMNS,
    METER_COLUMNS,
    STATE_COLUMNS,
    account_from_row,
    meter_from_row,
    state_values,
)
from headend.engine.catalog import Catalog
from headend.engine.outbox import write_requests
from headend.engine.plan_changes import apply_due_policy_changes
from headend.money import ledger_store, payment_store
from prepay_engine.account import Decided, PrepaidAccount, RelayAction, RelayCommand, RelayOutcome
from prepay_engine.ledger import (
    CUSTOMER_ID_PATTERN,
    Conflict,
    Rejected,
    customer_accounts,
    emergency_credit_account_id,
    house_accounts,
    prepaid_account_id,
)
from prepay_engine.payments import (
    AlreadyReversed,
    AlreadyToppedUp,
    PaymentTerms,
    Reversed,
    ToppedUp,
    TopUp,
    TopUpReversal,
)
from prepay_engine.policy import Disconnect, DisconnectDeferred, Reconnect
from prepay_engine.usage import DEFAULT_REGISTER_STEP_WH, MeterRegister, open_usage

Connection = psycopg.Connection[Any]
Cursor = psycopg.Cursor[dict[str, Any]]

OPERATOR_ACTOR: Final = "operator"


class AccountError(ValueError):
    """An account operation refused before anything changed."""


@dataclass(frozen=True, slots=True)
class PaymentResult:
    """A payment's outcome and, when it changed the balance, the decision taken right after it."""

    outcome: ToppedUp | AlreadyToppedUp | Reversed | AlreadyReversed | Conflict | Rejected
    decided: Decided | None


def _lock(cur: Cursor, account_id: str, now: datetime | None = None) -> dict[str, Any]:
    """The account's row, locked; with `now`, under the policy in force then (its due policy changes applied)."""
    cur.execute(
        f"SELECT {', '.join(ACCOUNT_COLUMNS)} FROM prepaid_accounts WHERE account_id = %s FOR UPDATE", (account_id,)
    )
    row = cur.fetchone()
    if row is None:
        raise AccountError(f"no prepaid account {account_id!r}")
    return row if now is None else apply_due_policy_changes(cur, row, now)


def _load(cur: Cursor, catalog: Catalog, row: dict[str, Any]) -> PrepaidAccount:
    cur.execute(
        f"SELECT {', '.join(METER_COLUMNS)} FROM account_meters WHERE account_id = %s ORDER BY installed_at",
        (row["account_id"],),
    )
    history = [meter_from_row([r[c] for c in METER_COLUMNS]) for r in cur.fetchall()]
    return account_from_row(
        row, catalog.tariffs[row["tariff_code"]], catalog.policies[row["policy_code"]], history, catalog.calendar
    )


def _save(cur: Cursor, account: PrepaidAccount, wake_at: datetime | None) -> None:
    values = list(state_values(account))
    values[3] = None if values[3] is None else Jsonb(values[3])
    values[6] = Jsonb(values[6])
    assignments = ", ".join(f"{c} = %s" for c in STATE_COLUMNS)
    # woken at the next policy change at the latest, whatever the decision said (headend.engine.plan_changes)
    cur.execute(
        f"UPDATE prepaid_accounts SET {assignments}, wake_at = LEAST(%s::timestamptz, next_policy_change_at), "
        "version = version + 1, updated_at = now() WHERE account_id = %s",
        (*values, wake_at, account.account_id),
    )


def _decide(cur: Cursor, account: PrepaidAccount, now: datetime, actor: str) -> Decided:
    step = account.decide_at(*_balances(cur, account.account_id), now)
    write_requests(cur, step.notifications, step.commands, requested_by=actor)
    _save(cur, step.account, step.wake_at)
    return step


def open_account(
    conn: Connection,
    catalog: Catalog,
    account_id: str,
    *,
    meter_id: str,
    tariff_code: str,
    policy_code: str,
    opened_at: datetime,
    opening_register_wh: int | None = None,
    terms: PaymentTerms | None = None,
    cycle_usage_wh: int = 0,
    protected: bool = False,
    keep_supply: bool = False,
    zone: ZoneInfo,
    actor: str = OPERATOR_ACTOR,
) -> PrepaidAccount:
    """Open an account charging from `opened_at` on `meter_id` (opening register: given, or the last reading then)."""
    if not CUSTOMER_ID_PATTERN.fullmatch(account_id):
        raise AccountError(f"account id {account_id!r} must be 1–32 letters, digits, '_' or '-'")
    if opened_at.utcoffset() is None:
        raise AccountError("opened_at must be timezone-aware")
    terms = terms or PaymentTerms()
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        catalog.refresh(conn)
        tariff = catalog.tariffs.get(tariff_code)
        policy = catalog.policies.get(policy_code)
        if tariff is None:
            raise AccountError(f"no tariff {tariff_code!r}")
        if policy is None:
            raise AccountError(f"no policy {policy_code!r}")
        cur.execute("SELECT status, multiplier, register_max_wh FROM meters WHERE meter_id = %s", (meter_id,))
        meter = cur.fetchone()
        if meter is None:
            raise AccountError(f"meter {meter_id!r} is not registered")
        if meter["status"] != "active":
            raise AccountError(f"meter {meter_id!r} is {meter['status']}, not active")
        cur.execute("SELECT account_id FROM account_meters WHERE meter_id = %s AND removed_at IS NULL", (meter_id,))
        serving = cur.fetchone()
        if serving is not None:
            raise AccountError(f"meter {meter_id!r} already serves account {serving['account_id']!r}")
        cur.execute("SELECT 1 FROM prepaid_accounts WHERE account_id = %s", (account_id,))
        if cur.fetchone() is not None:
            raise AccountError(f"account {account_id!r} already exists")
        if opening_register_wh is None:
            cur.execute(
                "SELECT ts, energy_import_wh FROM readings WHERE meter_id = %s AND ts <= %s ORDER BY ts DESC LIMIT 1",
                (meter_id, opened_at),
            )
            last = cur.fetchone()
            if last is None:
                raise AccountError(f"meter {meter_id!r} has no reading at or before {opened_at.isoformat()}")
            opening_register_wh = int(last["energy_import_wh"])
        problem = ledger_store.open_accounts(
            conn,
            (
                *house_accounts(()),
                *customer_accounts(account_id, credit_limit_fen=-policy.disconnect_threshold_fen),
            ),
        )
        if problem is not None:
            raise AccountError(f"ledger: {problem}")
        register_max_wh = int(meter["register_max_wh"])
        register = MeterRegister(meter_id, int(meter["multiplier"]), register_max_wh, DEFAULT_REGISTER_STEP_WH)
        account = PrepaidAccount(
            account_id=account_id,
            tariff=tariff,
            terms=terms,
            policy=policy,
            usage=open_usage(register, opened_at, opening_register_wh, cycle_usage_wh=cycle_usage_wh),
            protected=protected,
            keep_supply=keep_supply,
            zone=zone,
            calendar=catalog.calendar,
        )
        values = list(state_values(account))
        values[3] = None if values[3] is None else Jsonb(values[3])
        values[6] = Jsonb(values[6])
        columns = (
            "account_id, tariff_code, policy_code, emergency_credit_fen, debt_recovery_bps, zone, "
            f"{', '.join(STATE_COLUMNS)}, meter_id, seen_until, opened_at"
        )
        cur.execute(
            f"INSERT INTO prepaid_accounts ({columns}) VALUES ({', '.join(['%s'] * (len(STATE_COLUMNS) + 9))})",
            (
                account_id,
                tariff_code,
                policy_code,
                terms.emergency_credit_fen,
                terms.debt_recovery_bps,
                zone.key,
                *values,
                meter_id,
                account.usage.anchor_ts,
                opened_at,
            ),
        )
        cur.execute(
            "INSERT INTO account_meters (account_id, meter_id, installed_at, start_register_wh, multiplier, "
            "register_max_wh, register_step_wh, recorded_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                account_id,
                meter_id,
                account.usage.anchor_ts,
                opening_register_wh,
                register.multiplier,
                register.register_max_wh,
                register.register_step_wh,
                actor,
            ),
        )
        return account


def replace_meter(
    conn: Connection,
    account_id: str,
    *,
    at: datetime,
    old_final_register_wh: int,
    new_meter_id: str,
    new_start_register_wh: int,
    actor: str = OPERATOR_ACTOR,
) -> None:
    """Record that the account's meter was replaced at `at`; its charging continues on the new meter from then."""
    if at.utcoffset() is None:
        raise AccountError("the replacement time must be timezone-aware")
    if old_final_register_wh < 0 or new_start_register_wh < 0:
        raise AccountError("register values are non-negative")
    at = at.astimezone(UTC)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = _lock(cur, account_id)
        if at <= row["seen_until"]:
            raise AccountError(
                f"account {account_id} is charged up to {row['seen_until'].isoformat()}; "
                "a replacement before that would re-open charged intervals"
            )
        cur.execute(
            "SELECT meter_id, installed_at FROM account_meters WHERE account_id = %s AND removed_at IS NULL",
            (account_id,),
        )
        current = cur.fetchone()
        assert current is not None, account_id
        if current["meter_id"] == new_meter_id:
            raise AccountError(f"meter {new_meter_id} is already the account's meter")
        cur.execute("SELECT status, multiplier, register_max_wh FROM meters WHERE meter_id = %s", (new_meter_id,))
        meter = cur.fetchone()
        if meter is None or meter["status"] != "active":
            raise AccountError(f"meter {new_meter_id!r} is not a registered active meter")
        cur.execute(
            "UPDATE account_meters SET removed_at = %s, final_register_wh = %s "
            "WHERE account_id = %s AND installed_at = %s",
            (at, old_final_register_wh, account_id, current["installed_at"]),
        )
        cur.execute(
            "INSERT INTO account_meters (account_id, meter_id, installed_at, start_register_wh, multiplier, "
            "register_max_wh, register_step_wh, recorded_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                account_id,
                new_meter_id,
                at,
                new_start_register_wh,
                meter["multiplier"],
                meter["register_max_wh"],
                DEFAULT_REGISTER_STEP_WH,
                actor,
            ),
        )
        # the stored-readings counter is the new meter's from now on: read its readings at the next look
        cur.execute(
            "UPDATE prepaid_accounts SET meter_id = %s, seen_stored_seq = 0, version = version + 1, updated_at = now() "
            "WHERE account_id = %s",
            (new_meter_id, account_id),
        )


def set_flags(
    conn: Connection,
    catalog: Catalog,
    account_id: str,
    *,
    protected: bool,
    keep_supply: bool,
    now: datetime,
    actor: str = OPERATOR_ACTOR,
) -> Decided:
    """Set the protected and keep-supply (保电) flags, then decide."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        catalog.refresh(conn)
        account = _load(cur, catalog, _lock(cur, account_id, now))
        return _decide(cur, replace(account, protected=protected, keep_supply=keep_supply), now, actor)


def pay(conn: Connection, catalog: Catalog, request: TopUp, *, now: datetime, received_by: str) -> PaymentResult:
    """Credit a channel's top-up once, then decide (a reconnect if it lifts the account above the threshold)."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        catalog.refresh(conn)
        if not CUSTOMER_ID_PATTERN.fullmatch(request.customer_id):
            raise AccountError(f"no prepaid account {request.customer_id!r}")
        account = _load(cur, catalog, _lock(cur, request.customer_id, now))
        opened = ledger_store.open_accounts(conn, house_accounts((request.channel,)))
        if opened is not None:
            return PaymentResult(opened, None)
        outcome = payment_store.top_up(conn, request, account.terms, received_by=received_by)
        if not isinstance(outcome, ToppedUp):
            return PaymentResult(outcome, None)
        return PaymentResult(outcome, _decide(cur, account, now, f"payment:{request.channel}"))


def reverse_payment(conn: Connection, catalog: Catalog, request: TopUpReversal, *, now: datetime) -> PaymentResult:
    """Reverse a whole top-up once (the balance may go negative), then decide."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        catalog.refresh(conn)
        stored = payment_store.payment(conn, request.channel, request.channel_txn_id)
        if stored is None:
            outcome = payment_store.reverse_top_up(conn, request)
            return PaymentResult(outcome, None)
        account = _load(cur, catalog, _lock(cur, stored.account_id, now))
        outcome = payment_store.reverse_top_up(conn, request)
        if not isinstance(outcome, Reversed):
            return PaymentResult(outcome, None)
        return PaymentResult(outcome, _decide(cur, account, now, f"reversal:{request.channel}"))


@dataclass(frozen=True, slots=True)
class SendCheck:
    """The send-time re-check of an account's relay command: send it or not, why, and the inputs judged."""

    send: bool
    detail: str
    inputs: dict[str, Any]


def recheck_before_send(cur: Cursor, catalog: Catalog, command: RelayCommand, now: datetime) -> SendCheck:
    """Lock the account and judge its command again now: still its pending one; a disconnect still decided."""
    row = _lock(cur, command.account_id, now)
    account = _load(cur, catalog, row)
    balance_fen, emergency_fen = _balances(cur, account.account_id)
    inputs: dict[str, Any] = {
        "account_version": int(row["version"]),
        "balance_fen": balance_fen,
        "emergency_credit_outstanding_fen": emergency_fen,
        "supply": str(account.supply),
        "protected": account.protected,
        "keep_supply": account.keep_supply,
        "checked_at": now.isoformat(),
    }
    if account.pending != command:
        return SendCheck(False, "no longer the account's pending command", inputs)
    if command.action is not RelayAction.DISCONNECT:
        return SendCheck(True, "the account's pending reconnect", inputs)
    decision = replace(account, pending=None).decide_at(balance_fen, emergency_fen, now).decision
    if decision.of(Disconnect):
        reasons = decision.of(Disconnect)[0].reasons
        inputs["reasons"] = [{"code": str(r.code), "text": r.text} for r in reasons]
        return SendCheck(True, "; ".join(r.text for r in reasons), inputs)
    why = [r for a in decision.actions if isinstance(a, DisconnectDeferred | Reconnect) for r in a.reasons]
    why = why or list(decision.notes)
    inputs["reasons"] = [{"code": str(r.code), "text": r.text} for r in why]
    return SendCheck(False, "the policy no longer disconnects: " + "; ".join(r.text for r in why), inputs)


def record_relay_outcome(
    cur: Cursor, catalog: Catalog, command: RelayCommand, outcome: RelayOutcome, now: datetime, actor: str
) -> bool:
    """Let the account's supply follow the relay, then decide (in the caller's transaction); True if it moved."""
    account = _load(cur, catalog, _lock(cur, command.account_id, now))
    observed = account.with_command_outcome(command, outcome)
    if isinstance(observed, Rejected):
        raise AccountError(observed.detail)
    after, supply_updated, _ = observed
    _decide(cur, after, now, actor)
    return supply_updated


def _balances(cur: Cursor, account_id: str) -> tuple[int, int]:
    cur.execute(
        "SELECT account_id, balance_fen FROM ledger_accounts WHERE account_id = ANY(%s)",
        ([prepaid_account_id(account_id), emergency_credit_account_id(account_id)],),
    )
    balances = {r["account_id"]: int(r["balance_fen"]) for r in cur.fetchall()}
    return balances[prepaid_account_id(account_id)], balances[emergency_credit_account_id(account_id)]
