"""Payments in PostgreSQL: exact cases, the pure payments module as reference, concurrent deliveries."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg import errors

from headend.money import ledger_store, payment_store
from prepay_engine import payments as pure
from prepay_engine.ledger import (
    DEFAULT_MAX_POSTING_FEN,
    Conflict,
    Ledger,
    LedgerReason,
    Posted,
    Rejected,
    cash_in_transit_account_id,
    customer_accounts,
    debt_account_id,
    emergency_credit_account_id,
    house_accounts,
    prepaid_account_id,
    usage_posting,
)
from prepay_engine.payments import (
    AlreadyReversed,
    AlreadyToppedUp,
    Applied,
    CustomerBalances,
    PaymentReason,
    PaymentTerms,
    Reversed,
    Split,
    ToppedUp,
    TopUp,
    TopUpReversal,
)
from tests.integration.conftest import admin_connection, count, register

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
CST = timezone(timedelta(hours=8))
AT = datetime(2026, 3, 1, 8, 0, tzinfo=CST)
CHANNELS = ("wechat", "alipay")
TERMS = PaymentTerms(emergency_credit_fen=3_000, debt_recovery_bps=1_000)
RECEIVER = "test-callback"


def open_customer(conn: Conn, customer_id: str, *, credit_limit_fen: int = 0) -> None:
    """A prepaid account row with only the columns it can't do without, its meter, and its ledger accounts."""
    for kind, table in (("tariff", "tariffs"), ("policy", "policies")):
        conn.execute(
            f"INSERT INTO {kind}_revisions ({kind}_code, revision, definition, stored_by) "
            "VALUES ('test', 1, '{}'::jsonb, 'test') ON CONFLICT DO NOTHING"
        )
        conn.execute(f"INSERT INTO {table} ({kind}_code, revision) VALUES ('test', 1) ON CONFLICT DO NOTHING")
    meter_id = f"m-{customer_id}"[:32]
    register(conn, [meter_id])
    conn.execute(
        "INSERT INTO prepaid_accounts (account_id, tariff_code, policy_code, zone, usage_meter_id, anchor_ts, "
        "anchor_register_wh, charged_until, open_interval_meter_id, meter_id, seen_until, opened_at) "
        "VALUES (%(a)s, 'test', 'test', 'Asia/Shanghai', %(m)s, %(t)s, 0, %(t)s, %(m)s, %(m)s, %(t)s, %(t)s)",
        {"a": customer_id, "m": meter_id, "t": AT},
    )
    accounts = (*house_accounts(CHANNELS), *customer_accounts(customer_id, credit_limit_fen=credit_limit_fen))
    assert ledger_store.open_accounts(conn, accounts) is None


def pure_ledger(*customers: str, credit_limit_fen: int = 0) -> Ledger:
    """A pure ledger with the same chart as `open_customer` gives the store."""
    ledger = Ledger()
    assert ledger.open_accounts(house_accounts(CHANNELS)) is None
    for customer_id in customers:
        assert ledger.open_accounts(customer_accounts(customer_id, credit_limit_fen=credit_limit_fen)) is None
    return ledger


def mirror(conn: Conn, outcome: object) -> None:
    """Post to the store what a pure operation just posted."""
    assert isinstance(outcome, Applied), outcome
    assert isinstance(ledger_store.post_batch(conn, outcome.postings), Posted)


def balances(conn: Conn, customer_id: str) -> CustomerBalances:
    """The customer's stored balances now."""
    ids = (prepaid_account_id(customer_id), emergency_credit_account_id(customer_id), debt_account_id(customer_id))
    found = ledger_store.balances_fen(conn, ids)
    return CustomerBalances(*(found[i] for i in ids))


def pay(txn: str, amount_fen: int, customer_id: str, channel: str = "wechat", at: datetime = AT) -> TopUp:
    """A channel's top-up."""
    return TopUp(channel, txn, customer_id, amount_fen, at)


def snapshot(conn: Conn) -> tuple[int, int, list[tuple[Any, ...]]]:
    """Postings and payments stored, and every balance."""
    return (
        count(conn, "SELECT count(*) FROM ledger_postings"),
        count(conn, "SELECT count(*) FROM payments"),
        conn.execute("SELECT account_id, balance_fen, version FROM ledger_accounts ORDER BY 1").fetchall(),
    )


def _reason(outcome: object) -> object:
    assert isinstance(outcome, Rejected), outcome
    return outcome.reason


def _with_emergency_credit_and_debt(conn: Conn, ledger: Ledger, customer_id: str, debt_fen: int) -> None:
    """Leave the customer at zero balance owing 3000 fen emergency credit and debt_fen of debt, in both ledgers."""
    mirror(conn, pure.lend_emergency_credit(ledger, customer_id, "L1", TERMS, AT))
    usage = usage_posting(customer_id, f"usage:{customer_id}:1", 3_000 + debt_fen, AT)
    assert isinstance(ledger.post(usage), Posted)
    assert isinstance(ledger_store.post_batch(conn, [usage]), Posted)
    mirror(conn, pure.convert_arrears_to_debt(ledger, customer_id, "A1", debt_fen, AT))
    assert balances(conn, customer_id) == CustomerBalances(0, 3_000, debt_fen)


# --------------------------------------------------------------------------- top-ups


def test_a_top_up_credits_the_balance_and_records_the_payment(db: Conn) -> None:
    open_customer(db, "c-1")
    outcome = payment_store.top_up(db, pay("4200001", 10_000, "c-1"), TERMS, received_by=RECEIVER)
    assert isinstance(outcome, ToppedUp)
    assert outcome.split == Split(0, 0, 10_000)
    assert outcome.balances == CustomerBalances(10_000, 0, 0)
    assert [p.posting_id for p in outcome.postings] == ["topup:wechat:4200001"]
    assert balances(db, "c-1") == CustomerBalances(10_000, 0, 0)
    assert ledger_store.balance_fen(db, cash_in_transit_account_id("wechat")) == 10_000
    stored = payment_store.payment(db, "wechat", "4200001")
    assert stored is not None
    assert stored == payment_store.Payment(
        channel="wechat",
        channel_txn_id="4200001",
        account_id="c-1",
        amount_fen=10_000,
        paid_at=AT,
        received_at=stored.received_at,
        received_by=RECEIVER,
        posting_id="topup:wechat:4200001",
        split=Split(0, 0, 10_000),
        reversed_at=None,
        reversal_reference=None,
    )
    assert stored.paid_at.utcoffset() == timedelta(0)
    assert payment_store.payment(db, "wechat", "nope") is None
    assert payment_store.payment(db, "alipay", "4200001") is None
    assert ledger_store.check_invariants(db) == ()


def test_a_top_up_repays_emergency_credit_then_recovers_debt_as_the_pure_one_does(db: Conn) -> None:
    open_customer(db, "c-1")
    ledger = pure_ledger("c-1")
    _with_emergency_credit_and_debt(db, ledger, "c-1", debt_fen=5_000)
    request = pay("4200001", 10_000, "c-1")
    expected = pure.top_up(ledger, request, TERMS)
    outcome = payment_store.top_up(db, request, TERMS, received_by=RECEIVER)
    assert outcome == expected
    assert isinstance(outcome, ToppedUp)
    assert outcome.split == Split(emergency_credit_repaid_fen=3_000, debt_recovered_fen=700, credited_fen=6_300)
    assert outcome.balances == CustomerBalances(prepaid_fen=6_300, emergency_credit_fen=0, debt_fen=4_300)
    assert [p.posting_id for p in outcome.postings] == [
        "topup:wechat:4200001",
        "topup:wechat:4200001:emergency_credit_repay",
        "topup:wechat:4200001:debt_recovery",
    ]
    stored = payment_store.payment(db, "wechat", "4200001")
    assert stored is not None
    assert stored.split == outcome.split
    assert ledger_store.check_invariants(db) == ()


def test_a_duplicate_returns_the_first_result_and_posts_nothing(db: Conn) -> None:
    open_customer(db, "c-1")
    ledger = pure_ledger("c-1")
    _with_emergency_credit_and_debt(db, ledger, "c-1", debt_fen=5_000)
    first = payment_store.top_up(db, pay("4200001", 10_000, "c-1"), TERMS, received_by=RECEIVER)
    assert isinstance(first, ToppedUp)
    more_usage = usage_posting("c-1", "usage:c-1:2", 1_000, AT)
    assert isinstance(ledger_store.post_batch(db, [more_usage]), Posted)
    before = snapshot(db)
    # the emergency credit is repaid by now: re-planning would credit 9000 more; it must not
    again = pay("4200001", 10_000, "c-1", at=AT.astimezone(UTC))
    outcome = payment_store.top_up(db, again, TERMS, received_by="someone-else")
    assert outcome == AlreadyToppedUp(first)
    assert snapshot(db) == before
    assert balances(db, "c-1") == CustomerBalances(5_300, 0, 4_300)
    stored = payment_store.payment(db, "wechat", "4200001")
    assert stored is not None
    assert stored.received_by == RECEIVER


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"amount_fen": 10_001}, ("amount_fen",)),
        ({"customer_id": "c-2"}, ("customer_id",)),
        ({"paid_at": AT + timedelta(seconds=1)}, ("paid_at",)),
        (
            {"customer_id": "c-2", "amount_fen": 1, "paid_at": AT + timedelta(days=1)},
            ("customer_id", "amount_fen", "paid_at"),
        ),
    ],
)
def test_the_same_channel_transaction_with_different_fields_is_a_conflict(
    db: Conn, changes: dict[str, Any], fields: tuple[str, ...]
) -> None:
    open_customer(db, "c-1")
    open_customer(db, "c-2")
    assert isinstance(payment_store.top_up(db, pay("4200001", 10_000, "c-1"), TERMS, received_by=RECEIVER), ToppedUp)
    before = snapshot(db)
    request = replace(pay("4200001", 10_000, "c-1"), **changes)
    outcome = payment_store.top_up(db, request, TERMS, received_by=RECEIVER)
    assert outcome == Conflict("topup:wechat:4200001", fields)
    assert snapshot(db) == before


def test_invalid_top_ups_and_unknown_customers_are_rejected_like_the_pure_ones(db: Conn) -> None:
    open_customer(db, "c-1")
    # ledger accounts but no engine row: not a customer the payments table can refer to
    assert ledger_store.open_accounts(db, customer_accounts("ghost", credit_limit_fen=0)) is None
    ledger = pure_ledger("c-1")
    cases = [
        (TopUp("WeChat", "1", "c-1", 1, AT), PaymentReason.INVALID_CHANNEL),
        (TopUp("wechat", "a:b", "c-1", 1, AT), PaymentReason.INVALID_CLIENT_ID),
        (TopUp("wechat", "1", "c:1", 1, AT), PaymentReason.INVALID_CUSTOMER),
        (TopUp("wechat", "1", "nobody", 1, AT), PaymentReason.UNKNOWN_CUSTOMER),
        (TopUp("wechat", "1", "nobody", 0, AT), PaymentReason.UNKNOWN_CUSTOMER),
        (TopUp("wechat", "1", "c-1", 0, AT), LedgerReason.INVALID_AMOUNT),
        (TopUp("wechat", "1", "c-1", DEFAULT_MAX_POSTING_FEN + 1, AT), LedgerReason.AMOUNT_TOO_LARGE),
        (TopUp("bank", "1", "c-1", 1, AT), LedgerReason.UNKNOWN_ACCOUNT),
        (TopUp("wechat", "1", "c-1", 1, datetime(2026, 3, 1)), LedgerReason.NAIVE_TIME),  # noqa: DTZ001
    ]
    before = snapshot(db)
    for request, reason in cases:
        outcome = payment_store.top_up(db, request, TERMS, received_by=RECEIVER)
        assert _reason(outcome) is reason, request
        assert outcome == pure.top_up(ledger, request, TERMS)
    assert _reason(payment_store.top_up(db, pay("1", 1, "ghost"), TERMS, received_by=RECEIVER)) is (
        PaymentReason.UNKNOWN_CUSTOMER
    )
    assert snapshot(db) == before
    assert ledger.postings() == ()


def test_inside_a_callers_transaction_the_postings_and_the_payment_commit_or_roll_back_together(db: Conn) -> None:
    open_customer(db, "c-1")
    with db.transaction(force_rollback=True):
        assert isinstance(payment_store.top_up(db, pay("t1", 500, "c-1"), TERMS, received_by=RECEIVER), ToppedUp)
        assert payment_store.payment(db, "wechat", "t1") is not None
        # a rejection leaves the caller's transaction usable
        assert _reason(payment_store.top_up(db, pay("t2", 0, "c-1"), TERMS, received_by=RECEIVER)) is (
            LedgerReason.INVALID_AMOUNT
        )
    assert payment_store.payment(db, "wechat", "t1") is None
    assert ledger_store.posting(db, "topup:wechat:t1") is None
    assert balances(db, "c-1") == CustomerBalances(0, 0, 0)
    # a payment row that can't be written takes the postings down with it
    with admin_connection(db) as admin:
        admin.execute("ALTER TABLE payments ADD CONSTRAINT test_no_counter CHECK (received_by <> 'counter') NOT VALID")
    with pytest.raises(errors.CheckViolation):
        payment_store.top_up(db, pay("t3", 500, "c-1"), TERMS, received_by="counter")
    assert ledger_store.posting(db, "topup:wechat:t3") is None
    assert balances(db, "c-1") == CustomerBalances(0, 0, 0)
    assert ledger_store.check_invariants(db) == ()


# --------------------------------------------------------------------------- reversals


def _reversal(txn: str, amount_fen: int, at: datetime = AT + timedelta(days=2)) -> TopUpReversal:
    return TopUpReversal("wechat", txn, amount_fen, at, "refund-" + txn)


def test_a_top_up_is_reversed_once_with_its_carve_outs(db: Conn) -> None:
    open_customer(db, "c-1")
    ledger = pure_ledger("c-1")
    _with_emergency_credit_and_debt(db, ledger, "c-1", debt_fen=5_000)
    request = pay("t1", 10_000, "c-1")
    assert payment_store.top_up(db, request, TERMS, received_by=RECEIVER) == pure.top_up(ledger, request, TERMS)
    usage = usage_posting("c-1", "usage:c-1:2", 2_000, AT)
    assert isinstance(ledger.post(usage), Posted)
    assert isinstance(ledger_store.post_batch(db, [usage]), Posted)

    reversal = _reversal("t1", 10_000)
    first = payment_store.reverse_top_up(db, reversal)
    assert first == pure.reverse_top_up(ledger, reversal)
    assert isinstance(first, Reversed)
    assert first.split == Split(3_000, 700, 6_300)
    assert [p.posting_id for p in first.postings] == [
        "reversal:topup:wechat:t1:debt_recovery",
        "reversal:topup:wechat:t1:emergency_credit_repay",
        "reversal:topup:wechat:t1",
    ]
    assert first.balances == CustomerBalances(-2_000, 3_000, 5_000)
    stored = payment_store.payment(db, "wechat", "t1")
    assert stored is not None
    assert (stored.reversed_at, stored.reversal_reference) == (AT + timedelta(days=2), "refund-t1")

    assert isinstance(payment_store.top_up(db, pay("t2", 500, "c-1"), TERMS, received_by=RECEIVER), ToppedUp)
    before = snapshot(db)
    assert payment_store.reverse_top_up(db, reversal) == AlreadyReversed(first)
    later = _reversal("t1", 10_000, AT + timedelta(days=3))
    assert payment_store.reverse_top_up(db, later) == Conflict("reversal:topup:wechat:t1", ("reversed_at",))
    assert _reason(payment_store.reverse_top_up(db, _reversal("t2", 499))) is PaymentReason.REVERSAL_AMOUNT_MISMATCH
    assert _reason(payment_store.reverse_top_up(db, _reversal("t9", 10_000))) is PaymentReason.UNKNOWN_TOP_UP
    assert _reason(payment_store.reverse_top_up(db, _reversal("a:b", 1))) is PaymentReason.INVALID_CLIENT_ID
    assert snapshot(db) == before
    # a reversed payment's channel transaction stays taken
    assert payment_store.top_up(db, request, TERMS, received_by=RECEIVER) == pure.top_up(ledger, request, TERMS)
    assert ledger_store.check_invariants(db) == ()


# --------------------------------------------------------------------------- the pure module as reference

TIMES = (AT, AT.astimezone(UTC), AT + timedelta(hours=1))
AMOUNTS = (1, 999, 3_000, 10_000, 49_999)
CHANGEABLE = ("amount_fen", "customer_id", "paid_at")
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("top_up"),
            st.sampled_from(CHANNELS),
            st.integers(0, 3),
            st.sampled_from((*AMOUNTS, *AMOUNTS, DEFAULT_MAX_POSTING_FEN + 1)),
            st.sampled_from(TIMES),
            st.integers(0, 1),
        ),
        st.tuples(st.just("again"), st.integers(0, 20), st.sampled_from((None, None, *CHANGEABLE))),
        st.tuples(
            st.just("reverse"),
            st.sampled_from(CHANNELS),
            st.integers(0, 3),
            st.sampled_from(TIMES),
            st.sampled_from((0, 0, 1)),
        ),
        st.tuples(st.just("reverse_known"), st.integers(0, 20), st.sampled_from(TIMES), st.booleans()),
        st.tuples(st.just("lend"), st.integers(0, 2), st.integers(0, 1)),
        st.tuples(st.just("use"), st.sampled_from((1, 700, 4_000, 20_000)), st.integers(0, 1)),
        st.tuples(st.just("arrears"), st.integers(0, 1)),
    ),
    min_size=4,
    max_size=24,
)


def _changed(request: TopUp, field: str | None, customers: tuple[str, str]) -> TopUp:
    if field == "amount_fen":
        return replace(request, amount_fen=request.amount_fen + 1)
    if field == "customer_id":
        return replace(request, customer_id=customers[request.customer_id == customers[0]])
    if field == "paid_at":
        return replace(request, paid_at=request.paid_at + timedelta(minutes=1))
    return request


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=steps,
    terms=st.builds(PaymentTerms, st.sampled_from((0, 3_000, 3_000)), st.sampled_from((0, 1_000, 3_333, 10_000))),
    credit_limit_fen=st.sampled_from((0, 500)),
)
def test_the_store_agrees_with_the_pure_payments(
    db: Conn, steps: list[tuple[Any, ...]], terms: PaymentTerms, credit_limit_fen: int
) -> None:
    token = uuid.uuid4().hex[:8]
    customers = (f"a{token}", f"b{token}")
    for customer_id in customers:
        open_customer(db, customer_id, credit_limit_fen=credit_limit_fen)
    ledger = pure_ledger(*customers, credit_limit_fen=credit_limit_fen)
    paid: dict[tuple[str, str], TopUp] = {}
    carved: set[tuple[str, str]] = set()
    for n, step in enumerate(steps):
        match step:
            case ("top_up", channel, txn, amount_fen, at, who):
                request = TopUp(channel, f"{token}-{txn}", customers[who], amount_fen, at)
                expected: object = pure.top_up(ledger, request, terms)
                outcome: object = payment_store.top_up(db, request, terms, received_by=RECEIVER)
                if isinstance(expected, ToppedUp):
                    paid[(channel, request.channel_txn_id)] = request
                    if len(expected.postings) > 1:
                        carved.add((channel, request.channel_txn_id))
            case ("again", i, field):
                if not paid:
                    continue
                request = _changed(paid[sorted(paid)[i % len(paid)]], field, customers)
                expected = pure.top_up(ledger, request, terms)
                outcome = payment_store.top_up(db, request, terms, received_by=RECEIVER)
            case ("reverse", channel, txn, at, short_fen):
                known = paid.get((channel, f"{token}-{txn}"))
                amount_fen = (known.amount_fen if known else 1_000) - short_fen
                reversal = TopUpReversal(channel, f"{token}-{txn}", amount_fen, at, f"rev-{txn}")
                expected = pure.reverse_top_up(ledger, reversal)
                outcome = payment_store.reverse_top_up(db, reversal)
            case ("reverse_known", i, at, carved_only):
                # top-ups with carve-outs are rarer, and their reversals the most interesting
                pool = [k for k in paid if k in carved] if carved_only and carved else list(paid)
                if not pool:
                    continue
                request = paid[pool[i % len(pool)]]
                reversal = TopUpReversal(request.channel, request.channel_txn_id, request.amount_fen, at, "rev")
                expected = pure.reverse_top_up(ledger, reversal)
                outcome = payment_store.reverse_top_up(db, reversal)
            case ("lend", lend_no, who):
                expected = outcome = pure.lend_emergency_credit(ledger, customers[who], f"L{lend_no}", terms, AT)
                if isinstance(expected, Applied):
                    mirror(db, expected)
            case ("use", amount_fen, who):
                usage = usage_posting(customers[who], f"usage:{token}:{n}", amount_fen, AT)
                # the house accounts serve every example: only the customers' balances (below) can agree
                expected = outcome = ledger.post(usage)
                assert isinstance(expected, Posted)
                assert isinstance(ledger_store.post_batch(db, [usage]), Posted)
            case ("arrears", who):
                arrears = -ledger.balance_fen(prepaid_account_id(customers[who]))
                if arrears <= 0:
                    continue
                expected = outcome = pure.convert_arrears_to_debt(ledger, customers[who], f"A{n}", arrears, AT)
                mirror(db, expected)
        detail = expected.reason if isinstance(expected, Rejected) else ""
        if isinstance(expected, ToppedUp | Reversed):
            detail = "with carve-outs" if len(expected.postings) > 1 else "whole"
        event(f"{step[0]}: {type(expected).__name__} {detail}")
        assert outcome == expected, step
        for customer_id in customers:
            assert balances(db, customer_id) == pure.customer_balances(ledger, customer_id)
    for (channel, txn), request in paid.items():
        stored = payment_store.payment(db, channel, txn)
        assert stored is not None
        primary = ledger.posting(pure.top_up_posting_id(channel, txn))
        assert primary is not None
        assert (stored.account_id, stored.amount_fen, stored.paid_at) == (
            request.customer_id,
            request.amount_fen,
            request.paid_at,
        )
        undone = ledger.reversal_of(primary.posting_id)
        assert (stored.reversed_at, stored.reversal_reference) == (
            (None, None) if undone is None else (undone.at, undone.reference)
        )
    assert count(db, "SELECT count(*) FROM payments WHERE channel_txn_id LIKE %s", f"{token}-%") == len(paid)
    assert ledger_store.check_invariants(db) == ()


# --------------------------------------------------------------------------- concurrency


def _deliver_concurrently(database_url: str, request: TopUp, threads: int, *, engine_lock: bool) -> list[object]:
    barrier = threading.Barrier(threads)

    def deliver(_: int) -> object:
        with psycopg.connect(database_url, autocommit=True) as conn:
            barrier.wait()
            for _attempt in range(20):
                try:
                    with conn.transaction():
                        if engine_lock:
                            conn.execute(
                                "SELECT 1 FROM prepaid_accounts WHERE account_id = %s FOR UPDATE",
                                (request.customer_id,),
                            )
                        return payment_store.top_up(conn, request, TERMS, received_by=RECEIVER)
                except (errors.SerializationFailure, errors.DeadlockDetected):
                    continue
            raise AssertionError("no attempt got through")

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(deliver, range(threads)))


@pytest.mark.parametrize("engine_lock", [True, False], ids=["engine-lock", "ledger-locks-only"])
def test_the_same_top_up_delivered_on_eight_threads_is_credited_once(
    database_url: str, db: Conn, engine_lock: bool
) -> None:
    open_customer(db, "c-1")
    ledger = pure_ledger("c-1")
    _with_emergency_credit_and_debt(db, ledger, "c-1", debt_fen=5_000)
    request = pay("4200001", 10_000, "c-1")
    outcomes = _deliver_concurrently(database_url, request, 8, engine_lock=engine_lock)
    first = [o for o in outcomes if isinstance(o, ToppedUp)]
    assert len(first) == 1, outcomes
    assert first[0] == pure.top_up(ledger, request, TERMS)
    assert sorted(outcomes, key=lambda o: type(o).__name__) == [AlreadyToppedUp(first[0])] * 7 + first
    assert balances(db, "c-1") == CustomerBalances(6_300, 0, 4_300)
    assert count(db, "SELECT count(*) FROM payments") == 1
    assert count(db, "SELECT count(*) FROM ledger_postings WHERE posting_id LIKE 'topup:%'") == 3
    assert ledger_store.check_invariants(db) == ()
