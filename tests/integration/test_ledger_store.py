"""The PostgreSQL ledger: exact cases, the pure ledger as the reference model, and concurrent writers."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg import IsolationLevel, errors

from headend.money import ledger_store as store
from prepay_engine import ledger as pure
from prepay_engine.ledger import (
    Account,
    AccountKind,
    AlreadyPosted,
    Conflict,
    Ledger,
    LedgerReason,
    Posted,
    Posting,
    PostingKind,
    PostOutcome,
    Rejected,
    Side,
)
from tests.integration.conftest import count, fresh_database, wait_for

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
CST = timezone(timedelta(hours=8))
AT = datetime(2026, 3, 1, 8, 0, tzinfo=CST)
CREDIT_LIMIT_FEN = 1_000


@pytest.fixture(scope="module")
def shared_url() -> Iterator[str]:
    """One migrated database for the property and concurrency tests (as the operator role); each its own accounts."""
    with fresh_database() as database:
        yield database.url


@pytest.fixture(scope="module")
def shared(shared_url: str) -> Iterator[Conn]:
    """An autocommit connection to the shared database."""
    with psycopg.connect(shared_url, autocommit=True) as conn:
        yield conn


class Chart:
    """The accounts of one test: two channels, house accounts and customers, all under a unique prefix."""

    def __init__(self, prefix: str, customers: Sequence[str] = ("a",), credit_limit_fen: int = CREDIT_LIMIT_FEN):
        self.prefix = prefix
        self.revenue = f"{prefix}revenue"
        self.refunds = f"{prefix}refunds_payable"
        self.wechat = f"{prefix}cash_in_transit:wechat"
        self.alipay = f"{prefix}cash_in_transit:alipay"
        self.accounts: list[Account] = [
            Account(self.revenue, AccountKind.REVENUE),
            Account(self.refunds, AccountKind.REFUNDS_PAYABLE, 0),
            Account(self.wechat, AccountKind.CASH_IN_TRANSIT),
            Account(self.alipay, AccountKind.CASH_IN_TRANSIT),
        ]
        for c in customers:
            self.accounts += [
                Account(self.prepaid(c), AccountKind.CUSTOMER_PREPAID, -credit_limit_fen),
                Account(self.emergency(c), AccountKind.EMERGENCY_CREDIT_RECEIVABLE, 0),
                Account(self.debt(c), AccountKind.DEBT_RECEIVABLE, 0),
            ]

    def prepaid(self, customer: str) -> str:
        """Prepaid account id of a customer."""
        return f"{self.prefix}customer:{customer}:prepaid"

    def emergency(self, customer: str) -> str:
        """Emergency credit receivable id of a customer."""
        return f"{self.prefix}customer:{customer}:emergency_credit"

    def debt(self, customer: str) -> str:
        """Debt receivable id of a customer."""
        return f"{self.prefix}customer:{customer}:debt"

    def open(self, conn: Conn, ledger: Ledger | None = None) -> None:
        """Open every account in the store (and in a pure ledger)."""
        assert store.open_accounts(conn, self.accounts) is None
        if ledger is not None:
            assert ledger.open_accounts(self.accounts) is None

    def balances(self, conn: Conn) -> dict[str, int]:
        """Stored balance of every account."""
        return {a.account_id: store.balance_fen(conn, a.account_id) for a in self.accounts}


def _chart(conn: Conn, **kwargs: Any) -> Chart:
    chart = Chart(f"t{uuid.uuid4().hex[:8]}:", **kwargs)
    chart.open(conn)
    return chart


def top_up(chart: Chart, posting_id: str, amount_fen: int, customer: str = "a", **changes: Any) -> Posting:
    """A top-up from WeChat Pay."""
    p = Posting(posting_id, chart.wechat, chart.prepaid(customer), amount_fen, PostingKind.TOP_UP, AT, "420000")
    return replace(p, **changes)


def usage(chart: Chart, posting_id: str, amount_fen: int, customer: str = "a", **changes: Any) -> Posting:
    """A usage charge, flagged to overdraw."""
    p = Posting(posting_id, chart.prepaid(customer), chart.revenue, amount_fen, PostingKind.USAGE, AT, overdraw=True)
    return replace(p, **changes)


def adjustment(chart: Chart, posting_id: str, amount_fen: int, customer: str = "a") -> Posting:
    """An operator adjustment lowering a customer's balance, never overdrawing."""
    return Posting(posting_id, chart.prepaid(customer), chart.revenue, amount_fen, PostingKind.ADJUSTMENT, AT)


def reversal(posting_id: str, original: Posting) -> Posting:
    """The mirror of a posting."""
    return Posting(
        posting_id,
        original.credit_account_id,
        original.debit_account_id,
        original.amount_fen,
        PostingKind.REVERSAL,
        AT + timedelta(days=1),
        reverses=original.posting_id,
        overdraw=True,
    )


def _reason(outcome: object) -> object:
    assert isinstance(outcome, Rejected), outcome
    return outcome.reason


def _version(conn: Conn, account_id: str) -> int:
    return count(conn, "SELECT version FROM ledger_accounts WHERE account_id = %s", account_id)


def _waiting_for_a_lock(conn: Conn) -> bool:
    return (
        count(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        > 0
    )


# --------------------------------------------------------------------------- schema


def test_accounts_open_idempotently_all_or_nothing_with_derived_columns(db: Conn) -> None:
    prepaid = Account("customer:c-1:prepaid", AccountKind.CUSTOMER_PREPAID, -500)
    cash = Account("cash_in_transit:wechat", AccountKind.CASH_IN_TRANSIT)
    assert store.open_accounts(db, [prepaid, cash]) is None
    assert store.open_accounts(db, [cash, prepaid]) is None
    assert store.account(db, prepaid.account_id) == prepaid
    assert store.account(db, "nope") is None
    rows = db.execute(
        "SELECT account_id, normal_side, customer_id, channel, credit_limit_fen FROM ledger_accounts ORDER BY 1"
    ).fetchall()
    assert rows == [
        ("cash_in_transit:wechat", "debit", None, "wechat", None),
        ("customer:c-1:prepaid", "credit", "c-1", None, 500),
    ]
    changed = Account("customer:c-1:prepaid", AccountKind.CUSTOMER_PREPAID, -600)
    revenue = Account("revenue:electricity", AccountKind.REVENUE)
    assert store.open_accounts(db, [revenue, changed]) == Conflict("customer:c-1:prepaid", ("floor_fen",))
    assert store.open_accounts(db, [revenue, Account("has space", AccountKind.REVENUE)]) == Rejected(
        LedgerReason.INVALID_ID, "account id 'has space' is not 1..160 printable ASCII"
    )
    assert (
        _reason(store.open_accounts(db, [revenue, Account("x", AccountKind.REVENUE, 1)])) is LedgerReason.INVALID_FLOOR
    )
    twice = [revenue, Account("revenue:electricity", AccountKind.CASH_IN_TRANSIT)]
    assert store.open_accounts(db, twice) == Conflict("revenue:electricity", ("kind",))
    assert store.account(db, "revenue:electricity") is None


def test_accounts_opened_concurrently_with_another_definition_conflict_all_or_nothing(
    database_url: str, db: Conn
) -> None:
    mine = Account("customer:c-1:prepaid", AccountKind.CUSTOMER_PREPAID, -100)
    theirs = [Account("revenue:electricity", AccountKind.REVENUE), replace(mine, floor_fen=-200)]
    with psycopg.connect(database_url, autocommit=True) as other, ThreadPoolExecutor(1) as pool:
        with db.transaction():
            assert store.open_accounts(db, [mine]) is None
            # the other writer finds no such account yet and waits on our uncommitted row
            future = pool.submit(store.open_accounts, other, theirs)
            wait_for(lambda: _waiting_for_a_lock(db), 5, "the other writer to wait on the account row")
        assert future.result(timeout=10) == Conflict("customer:c-1:prepaid", ("floor_fen",))
    assert store.account(db, "customer:c-1:prepaid") == mine
    assert store.account(db, "revenue:electricity") is None


def test_postings_are_append_only(db: Conn, admin_db: Conn) -> None:
    chart = _chart(db)
    assert isinstance(store.post_batch(db, [top_up(chart, "t1", 100)]), Posted)
    # the trigger refuses even the superuser (no head-end role is granted these at all: test_db_roles.py)
    for sql in (
        "UPDATE ledger_postings SET amount_fen = 1",
        "UPDATE ledger_postings SET reference = 'x'",
        "DELETE FROM ledger_postings",
        "TRUNCATE ledger_postings CASCADE",
    ):
        with pytest.raises(errors.RestrictViolation, match="append-only"):
            admin_db.execute(sql)
    assert count(db, "SELECT amount_fen FROM ledger_postings") == 100


def test_ledger_accounts_stay_while_postings_refer_to_them(db: Conn, admin_db: Conn) -> None:
    chart = _chart(db)
    assert isinstance(store.post_batch(db, [top_up(chart, "t1", 100)]), Posted)
    for sql in (
        "DELETE FROM ledger_accounts",
        "UPDATE ledger_accounts SET account_id = account_id || ':old'",
        "TRUNCATE ledger_accounts CASCADE",
    ):
        with pytest.raises(errors.RestrictViolation, match="ledger accounts stay"):
            admin_db.execute(sql)
    assert store.check_invariants(db) == ()


def test_one_posting_to_a_missing_account_refuses_the_whole_statement(db: Conn) -> None:
    chart = _chart(db)
    columns = (
        "posting_id, debit_account_id, credit_account_id, amount_fen, kind, at, reverses, overdraw, "
        "debit_balance_after_fen, credit_balance_after_fen, batch_id, seq"
    )
    good = ("c1", chart.wechat, chart.prepaid("a"), 1, "top_up", AT, None, False, 0, 0, 2000, 2000)
    missing = ("c2", chart.wechat, "customer:nobody:prepaid", 1, "top_up", AT, None, False, 0, 0, 2000, 2001)

    def copy_both() -> None:
        with db.transaction(), db.cursor().copy(f"COPY ledger_postings ({columns}) FROM STDIN") as copy:
            copy.write_row(good)
            copy.write_row(missing)

    with pytest.raises(errors.ForeignKeyViolation, match="c2 refers to what does not exist"):
        copy_both()
    assert count(db, "SELECT count(*) FROM ledger_postings WHERE posting_id IN ('c1', 'c2')") == 0


def test_check_constraints_mirror_the_rules_the_schema_can_express(db: Conn) -> None:
    chart = _chart(db)
    store.post_batch(db, [top_up(chart, "t1", 100)])
    insert = (
        "INSERT INTO ledger_postings (posting_id, debit_account_id, credit_account_id, amount_fen, kind, at, "
        "reverses, overdraw, debit_balance_after_fen, credit_balance_after_fen, batch_id, seq) "
        "VALUES (%s, %s, %s, %s, %s, now(), %s, %s, 0, 0, 1000, 1000)"
    )
    cases: list[tuple[type[Exception], tuple[object, ...]]] = [
        (errors.CheckViolation, ("x0", chart.wechat, chart.prepaid("a"), 0, "top_up", None, False)),
        (errors.CheckViolation, ("x1", chart.wechat, chart.wechat, 1, "top_up", None, False)),
        (errors.CheckViolation, ("x2", chart.wechat, chart.prepaid("a"), 1, "gift", None, False)),
        (errors.CheckViolation, ("x3", chart.wechat, chart.prepaid("a"), 1, "top_up", None, True)),
        (errors.CheckViolation, ("x4", chart.prepaid("a"), chart.wechat, 1, "reversal", None, True)),
        (errors.CheckViolation, ("has space", chart.wechat, chart.prepaid("a"), 1, "top_up", None, False)),
        (errors.ForeignKeyViolation, ("x5", chart.prepaid("a"), chart.wechat, 1, "reversal", "nope", True)),
        (errors.ForeignKeyViolation, ("x6", "nope", chart.prepaid("a"), 1, "top_up", None, False)),
    ]
    for error, params in cases:
        with pytest.raises(error):
            db.execute(insert, params)
    # receivables have hard floors; a balance always agrees with the account's totals
    with pytest.raises(errors.CheckViolation, match="ledger_accounts_hard_floor"):
        db.execute(
            "UPDATE ledger_accounts SET credits_fen = 1, balance_fen = -1 WHERE account_id = %s",
            (chart.emergency("a"),),
        )
    with pytest.raises(errors.CheckViolation, match="ledger_accounts_balance"):
        db.execute("UPDATE ledger_accounts SET balance_fen = 7 WHERE account_id = %s", (chart.wechat,))
    assert store.check_invariants(db) == ()


# --------------------------------------------------------------------------- posting


def test_a_posting_moves_money_and_a_retry_is_a_no_op_returning_the_stored_posting(db: Conn) -> None:
    chart = _chart(db)
    posting = top_up(chart, "t1", 10_000)
    assert store.post_batch(db, [posting]) == Posted((posting,), {chart.wechat: 10_000, chart.prepaid("a"): 10_000})
    before = (chart.balances(db), _version(db, chart.wechat))
    # the same instant written in another zone is the same time
    retry = top_up(chart, "t1", 10_000, at=AT.astimezone(UTC))
    outcome = store.post_batch(db, [retry])
    assert outcome == AlreadyPosted((posting,))
    assert isinstance(outcome, AlreadyPosted)
    assert outcome.postings[0].at.utcoffset() == timedelta(0)
    assert (chart.balances(db), _version(db, chart.wechat)) == before
    assert store.posting(db, "t1") == posting
    assert store.posting(db, "nope") is None
    assert db.execute("SELECT at FROM ledger_postings").fetchone() == (AT,)
    assert store.check_invariants(db) == ()


def test_the_same_id_with_different_fields_is_a_conflict_naming_them(db: Conn) -> None:
    chart = _chart(db)
    store.post_batch(db, [top_up(chart, "t1", 10_000)])
    before = chart.balances(db)
    assert store.post_batch(db, [top_up(chart, "t1", 10_001)]) == Conflict("t1", ("amount_fen",))
    outcome = store.post_batch(db, [top_up(chart, "t1", 9_000, at=AT + timedelta(seconds=1), reference="other")])
    assert outcome == Conflict("t1", ("amount_fen", "at", "reference"))
    assert store.post_batch(db, [usage(chart, "t1", 10_000)]) == Conflict(
        "t1", ("debit_account_id", "credit_account_id", "kind", "reference", "overdraw")
    )
    assert chart.balances(db) == before
    assert count(db, "SELECT count(*) FROM ledger_postings") == 1


def test_a_batch_below_the_floor_is_rejected_whole_and_usage_may_overdraw(db: Conn) -> None:
    chart = _chart(db)
    prepaid = chart.prepaid("a")
    outcome = store.post_batch(db, [usage(chart, "u1", 10), adjustment(chart, "adj", CREDIT_LIMIT_FEN + 1)])
    assert outcome == Rejected(
        LedgerReason.BELOW_FLOOR, f"adj: {prepaid} would be -{CREDIT_LIMIT_FEN + 11} fen, below its floor -1000"
    )
    assert count(db, "SELECT count(*) FROM ledger_postings") == 0
    assert isinstance(store.post_batch(db, [adjustment(chart, "adj1", CREDIT_LIMIT_FEN)]), Posted)
    assert _reason(store.post_batch(db, [adjustment(chart, "adj2", 1)])) is LedgerReason.BELOW_FLOOR
    not_flagged = usage(chart, "u2", 1, overdraw=False)
    assert _reason(store.post_batch(db, [not_flagged])) is LedgerReason.BELOW_FLOOR
    assert store.post_batch(db, [usage(chart, "u3", 50_000)]) == Posted(
        (usage(chart, "u3", 50_000),), {prepaid: -51_000, chart.revenue: 51_000}
    )
    assert store.balance_fen(db, prepaid) == -51_000
    assert store.check_invariants(db) == ()


def test_batch_rules_partial_retries_and_limits(db: Conn) -> None:
    chart = _chart(db)
    batch = [top_up(chart, "t1", 100), top_up(chart, "t2", 200)]
    assert isinstance(store.post_batch(db, batch), Posted)
    assert store.post_batch(db, batch) == AlreadyPosted(tuple(batch))
    assert store.post_batch(db, batch[1:]) == AlreadyPosted((batch[1],))
    assert _reason(store.post_batch(db, [batch[0], top_up(chart, "t3", 300)])) is LedgerReason.PARTIALLY_POSTED
    assert store.posting(db, "t3") is None
    assert _reason(store.post_batch(db, [])) is LedgerReason.EMPTY_BATCH
    too_many = [top_up(chart, f"m{i}", 1) for i in range(pure.MAX_BATCH_POSTINGS + 1)]
    assert _reason(store.post_batch(db, too_many)) is LedgerReason.BATCH_TOO_LARGE
    assert _reason(store.post_batch(db, [top_up(chart, "x", 1), top_up(chart, "x", 1)])) is (
        LedgerReason.DUPLICATE_IN_BATCH
    )
    assert _reason(store.post_batch(db, [top_up(chart, "x", 5_001)], max_posting_fen=5_000)) is (
        LedgerReason.AMOUNT_TOO_LARGE
    )
    naive = top_up(chart, "x", 1, at=datetime(2026, 3, 1))  # noqa: DTZ001
    assert _reason(store.post_batch(db, [naive])) is LedgerReason.NAIVE_TIME
    unknown = top_up(chart, "x", 1, credit_account_id="customer:nobody:prepaid")
    assert store.post_batch(db, [unknown]) == Rejected(
        LedgerReason.UNKNOWN_ACCOUNT, "x: no account customer:nobody:prepaid"
    )
    assert store.balance_fen(db, chart.prepaid("a")) == 300
    with pytest.raises(KeyError):
        store.balance_fen(db, "nope")


def test_a_posting_is_reversed_once_only(db: Conn) -> None:
    chart = _chart(db)
    original = top_up(chart, "t1", 10_000)
    store.post_batch(db, [original, usage(chart, "u1", 4_000)])
    rev = reversal("rev:t1", original)
    assert store.post_batch(db, [rev]) == Posted((rev,), {chart.prepaid("a"): -4_000, chart.wechat: 0})
    assert store.post_batch(db, [rev]) == AlreadyPosted((rev,))
    assert store.post_batch(db, [reversal("rev2:t1", original)]) == Rejected(
        LedgerReason.ALREADY_REVERSED, "rev2:t1: t1 is already reversed"
    )
    assert _reason(store.post_batch(db, [reversal("rr", rev)])) is LedgerReason.REVERSAL_MISMATCH
    assert _reason(store.post_batch(db, [reversal("r?", top_up(chart, "t9", 1))])) is LedgerReason.UNKNOWN_POSTING
    twice = [reversal("ru1", usage(chart, "u1", 4_000)), reversal("ru2", usage(chart, "u1", 4_000))]
    assert _reason(store.post_batch(db, twice)) is LedgerReason.ALREADY_REVERSED
    # the schema holds the rule too: one reversal per posting
    with pytest.raises(errors.UniqueViolation, match="ledger_postings_reverses_key"):
        db.execute(
            "INSERT INTO ledger_postings (posting_id, debit_account_id, credit_account_id, amount_fen, kind, at, "
            "reverses, overdraw, debit_balance_after_fen, credit_balance_after_fen, batch_id, seq) "
            "VALUES ('rev3:t1', %s, %s, 10000, 'reversal', now(), 't1', true, 0, 0, 1000, 1000)",
            (chart.prepaid("a"), chart.wechat),
        )
    assert store.check_invariants(db) == ()


def test_history_lists_an_accounts_postings_with_running_balance(db: Conn) -> None:
    chart = _chart(db)
    ledger = Ledger()
    assert ledger.open_accounts(chart.accounts) is None
    batches = [
        [top_up(chart, "t1", 500)],
        [usage(chart, "u1", 800), usage(chart, "u2", 1)],
        [top_up(chart, "t2", 1_000, debit_account_id=chart.alipay)],
    ]
    for batch in batches:
        assert store.post_batch(db, batch) == ledger.post_all(batch)
    prepaid = chart.prepaid("a")
    entries = store.history(db, prepaid, limit=10)
    assert [(e.posting.posting_id, e.side, e.delta_fen, e.balance_after_fen) for e in entries] == [
        ("t1", Side.CREDIT, 500, 500),
        ("u1", Side.DEBIT, -800, -300),
        ("u2", Side.DEBIT, -1, -301),
        ("t2", Side.CREDIT, 1_000, 699),
    ]
    assert [e.seq for e in entries] == sorted(e.seq for e in entries)
    assert [(e.posting, e.side, e.delta_fen, e.balance_after_fen) for e in entries] == [
        (e.posting, e.side, e.delta_fen, e.balance_after_fen) for e in ledger.history(prepaid)
    ]
    assert [e.posting.posting_id for e in store.history(db, prepaid, limit=2)] == ["u2", "t2"]
    assert [e.balance_after_fen for e in store.history(db, chart.revenue)] == [800, 801]
    assert store.history(db, chart.refunds) == ()
    with pytest.raises(KeyError):
        store.history(db, "nope")


def test_balances_now_and_right_after_a_posting_are_the_pure_ledgers(db: Conn) -> None:
    chart = _chart(db)
    ledger = Ledger()
    assert ledger.open_accounts(chart.accounts) is None
    batches = [
        [top_up(chart, "t1", 500)],
        [usage(chart, "u1", 800), usage(chart, "u2", 1)],
        [top_up(chart, "t2", 1_000, debit_account_id=chart.alipay)],
    ]
    for batch in batches:
        assert store.post_batch(db, batch) == ledger.post_all(batch)
    ids = [a.account_id for a in chart.accounts]
    assert store.balances_fen(db, ids) == {a: ledger.balance_fen(a) for a in ids}
    for posting_id in ("t1", "u1", "u2", "t2"):
        expected = {a: ledger.balance_fen(a, after_posting_id=posting_id) for a in ids}
        assert store.balances_fen(db, ids, after_posting_id=posting_id) == expected
    assert list(store.balances_fen(db, [chart.revenue, chart.wechat])) == [chart.revenue, chart.wechat]
    with pytest.raises(KeyError):
        store.balances_fen(db, [chart.revenue, "nope"])
    with pytest.raises(KeyError):
        store.balances_fen(db, [chart.revenue], after_posting_id="nope")
    assert store.postings(db, ["u2", "nope", "t1"]) == (usage(chart, "u2", 1), top_up(chart, "t1", 500))
    assert store.postings(db, []) == ()


def test_check_invariants_reports_corruption(db: Conn, admin_db: Conn) -> None:
    chart = _chart(db)
    store.post_batch(db, [top_up(chart, "t1", 100), usage(chart, "u1", 30)])
    assert store.check_invariants(db) == ()
    # one-sided: the prepaid account claims a credit no posting made
    db.execute(
        "UPDATE ledger_accounts SET credits_fen = credits_fen + 1, balance_fen = balance_fen + 1 WHERE account_id = %s",
        (chart.prepaid("a"),),
    )
    problems = store.check_invariants(db)
    assert any(p.startswith("debits 130 fen != credits 131 fen") for p in problems), problems
    assert any(p.startswith(f"{chart.prepaid('a')}: balance 71") for p in problems), problems
    db.execute(
        "UPDATE ledger_accounts SET credits_fen = credits_fen - 1, balance_fen = balance_fen - 1 WHERE account_id = %s",
        (chart.prepaid("a"),),
    )
    assert store.check_invariants(db) == ()
    # a wrong running balance in the history (the trigger lifted, as only a superuser could)
    admin_db.execute("ALTER TABLE ledger_postings DISABLE TRIGGER ledger_postings_no_update_delete")
    admin_db.execute("UPDATE ledger_postings SET credit_balance_after_fen = 99 WHERE posting_id = 't1'")
    admin_db.execute("ALTER TABLE ledger_postings ENABLE TRIGGER ledger_postings_no_update_delete")
    assert store.check_invariants(db) == (
        f"{chart.prepaid('a')}: running balance 99 fen after t1 != Σ postings up to it",
    )


def test_inside_a_callers_transaction_the_batch_commits_or_rolls_back_with_it(db: Conn) -> None:
    chart = _chart(db)
    with db.transaction(force_rollback=True):
        assert isinstance(store.post_batch(db, [top_up(chart, "t1", 100)]), Posted)
        # a rejection leaves the caller's transaction usable
        assert _reason(store.post_batch(db, [adjustment(chart, "adj", 5_000)])) is LedgerReason.BELOW_FLOOR
        assert store.balance_fen(db, chart.prepaid("a")) == 100
    assert store.posting(db, "t1") is None
    assert store.balance_fen(db, chart.prepaid("a")) == 0
    with db.transaction():
        store.post_batch(db, [top_up(chart, "t1", 100)])
    assert store.balance_fen(db, chart.prepaid("a")) == 100
    assert store.check_invariants(db) == ()


# --------------------------------------------------------------------------- the pure ledger as reference

ACCOUNT_NAMES = ("pa", "ea", "da", "pb", "eb", "db", "rev", "ref", "wx", "ali")
# (kind, debit, credit) shapes the chart allows, by abstract account name
SHAPES: tuple[tuple[PostingKind, str, str], ...] = (
    (PostingKind.USAGE, "pa", "rev"),
    (PostingKind.USAGE, "pb", "rev"),
    (PostingKind.TOP_UP, "wx", "pa"),
    (PostingKind.TOP_UP, "ali", "pb"),
    (PostingKind.EMERGENCY_CREDIT_LEND, "ea", "pa"),
    (PostingKind.EMERGENCY_CREDIT_REPAY, "pa", "ea"),
    (PostingKind.DEBT_RECOVERY, "pb", "db"),
    (PostingKind.REFUND, "pa", "ref"),
    (PostingKind.REFUND, "ref", "wx"),
    (PostingKind.ADJUSTMENT, "db", "pb"),
    (PostingKind.ADJUSTMENT, "pa", "rev"),
)
# a top-up and the carve-out that repays emergency credit or recovers debt from it, per customer
CARVE_OUTS = (
    ("wx", "pa", PostingKind.EMERGENCY_CREDIT_REPAY, "ea"),
    ("ali", "pb", PostingKind.DEBT_RECOVERY, "db"),
)

# postings that take an account exactly to its floor, one fen short of it, or one fen past it
EDGES = ("pa_adjustment", "pb_refund", "ref_payout", "ea_repay", "db_recovery")

# an abstract posting: (id number, kind, debit name, credit name, amount, overdraw, minutes after AT, reference)
Spec = tuple[int, PostingKind, str, str, int, bool, int, str]

valid_amounts = st.one_of(st.integers(1, 3_000), st.integers(1, 600))


def rarely(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], one_in: int) -> st.SearchStrategy[Any]:
    """`rare` about once in `one_in` draws, else `usual` (one_of would pick them about equally often)."""
    return st.integers(0, one_in - 1).flatmap(lambda k: rare if k == one_in // 2 else usual)


amounts = rarely(valid_amounts, st.sampled_from([0, -5, 10**9]), 12)
posting_numbers = st.integers(0, 29)


def _shaped(n: int, shape: tuple[PostingKind, str, str], amount: int, flip: bool, minutes: int, ref: str) -> Spec:
    # overdraw as the kind would normally carry it (carve-outs only in a top-up's batch), rarely the opposite
    usual = shape[0] in pure.OVERDRAW_KINDS and shape[0] not in (
        PostingKind.EMERGENCY_CREDIT_REPAY,
        PostingKind.DEBT_RECOVERY,
    )
    return (n, *shape, amount, usual != flip, minutes, ref)


shaped = st.builds(
    _shaped,
    posting_numbers,
    st.sampled_from(SHAPES),
    amounts,
    rarely(st.just(False), st.just(True), 10),
    st.sampled_from([0, 15, 480]),
    st.sampled_from(["", "r"]),
)
misshapen = st.tuples(
    posting_numbers,
    st.sampled_from(list(PostingKind)),
    st.sampled_from(ACCOUNT_NAMES),
    st.sampled_from([*ACCOUNT_NAMES, "nobody"]),
    amounts,
    st.booleans(),
    st.just(0),
    st.just(""),
)
specs = rarely(shaped, misshapen, 10)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("new"), st.lists(specs, min_size=1, max_size=3)),
        st.tuples(st.just("new"), st.lists(specs, min_size=1, max_size=1)),
        st.tuples(st.just("carve"), posting_numbers, st.sampled_from(CARVE_OUTS), valid_amounts, st.integers(1, 700)),
        st.tuples(st.just("retry"), st.integers(0, 100)),
        st.tuples(st.just("retry_posted"), st.integers(0, 100)),
        st.tuples(st.just("conflict"), st.integers(0, 100), st.sampled_from(["amount_fen", "reference", "at"])),
        st.tuples(st.just("subset"), st.integers(0, 100)),
        st.tuples(st.just("regroup"), st.integers(0, 100), shaped),
        st.tuples(st.just("reverse"), st.integers(0, 100), st.integers(0, 3)),
        st.tuples(st.just("reverse_again"), st.integers(0, 100), st.integers(0, 3)),
        st.tuples(st.just("edge"), posting_numbers, st.sampled_from(EDGES), st.sampled_from([-1, 0, 1])),
    ),
    min_size=8,
    max_size=30,
)


def _names(chart: Chart) -> dict[str, str]:
    return {
        "pa": chart.prepaid("a"),
        "ea": chart.emergency("a"),
        "da": chart.debt("a"),
        "pb": chart.prepaid("b"),
        "eb": chart.emergency("b"),
        "db": chart.debt("b"),
        "rev": chart.revenue,
        "ref": chart.refunds,
        "wx": chart.wechat,
        "ali": chart.alipay,
        "nobody": f"{chart.prefix}nobody",
    }


def _materialise(chart: Chart, spec: Spec) -> Posting:
    n, kind, debit, credit, amount, overdraw, minutes, ref = spec
    names = _names(chart)
    reverses = f"{chart.prefix}p0" if kind is PostingKind.REVERSAL else None
    return Posting(
        f"{chart.prefix}p{n}",
        names[debit],
        names[credit],
        amount,
        kind,
        AT + timedelta(minutes=minutes),
        ref,
        reverses,
        overdraw,
    )


def _changed(posting: Posting, field: str) -> Posting:
    if field == "amount_fen":
        return replace(posting, amount_fen=posting.amount_fen + 1)
    if field == "reference":
        return replace(posting, reference=posting.reference + "x")
    return replace(posting, at=posting.at + timedelta(seconds=1))


def _edge_batch(chart: Chart, ledger: Ledger, n: int, edge: str, delta: int) -> list[Posting]:
    names = _names(chart)
    p = f"{chart.prefix}p{n}"

    def room(name: str) -> int:
        account = ledger.account(names[name])
        assert account is not None
        return ledger.balance_fen(account.account_id) - (account.floor_fen or 0) + delta

    match edge:
        case "pa_adjustment":
            return [Posting(p, names["pa"], names["rev"], room("pa"), PostingKind.ADJUSTMENT, AT)]
        case "pb_refund":
            return [Posting(p, names["pb"], names["ref"], room("pb"), PostingKind.REFUND, AT)]
        case "ref_payout":
            return [Posting(p, names["ref"], names["wx"], room("ref"), PostingKind.REFUND, AT)]
    prepaid, receivable, channel = ("pa", "ea", "wx") if edge == "ea_repay" else ("pb", "db", "ali")
    kind = PostingKind.EMERGENCY_CREDIT_REPAY if edge == "ea_repay" else PostingKind.DEBT_RECOVERY
    return [
        Posting(p, names[channel], names[prepaid], 5_000, PostingKind.TOP_UP, AT),
        Posting(f"{p}:c", names[prepaid], names[receivable], room(receivable), kind, AT, p, overdraw=True),
    ]


def _batch_for(
    chart: Chart,
    ledger: Ledger,
    step: tuple[Any, ...],
    sent: list[list[Posting]],
    posted: list[list[Posting]],
) -> list[Posting]:
    """The concrete batch of one abstract step; empty when the step needs history there isn't."""
    names = _names(chart)
    match step:
        case ("edge", n, edge, delta):
            return _edge_batch(chart, ledger, n, edge, delta)
        case ("new", batch_specs):
            return [_materialise(chart, s) for s in batch_specs]
        case ("carve", n, (channel, prepaid, kind, receivable), amount, carved):
            p = f"{chart.prefix}p{n}"
            return [
                Posting(p, names[channel], names[prepaid], amount, PostingKind.TOP_UP, AT),
                Posting(f"{p}:c", names[prepaid], names[receivable], carved, kind, AT, p, overdraw=True),
            ]
        case ("retry", i) if sent:
            return sent[i % len(sent)]
        case ("retry_posted", i) if posted:
            return posted[i % len(posted)]
        case ("conflict", i, field) if sent:
            earlier = sent[i % len(sent)]
            return [*earlier[:-1], _changed(earlier[-1], field)]
        case ("subset", i) if sent:
            return sent[i % len(sent)][-1:]
        case ("regroup", i, spec) if sent:
            return [*sent[i % len(sent)][-1:], _materialise(chart, spec)]
        case ("reverse", i, n) if sent:
            pool = [p for b in posted for p in b] or [p for b in sent for p in b]
            original = pool[i % len(pool)]
            return [replace(reversal(f"{chart.prefix}r{n}", original), at=original.at)]
        case ("reverse_again", i, n):
            targets = [ledger.posting(p.reverses) for b in posted for p in b if p.reverses is not None]
            if targets:
                original = targets[i % len(targets)]
                assert original is not None
                return [replace(reversal(f"{chart.prefix}r{n}", original), at=original.at)]
    return []


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=steps, credit_limit_fen=st.sampled_from([0, 500]))
def test_the_store_agrees_with_the_pure_ledger(
    shared: Conn, steps: list[tuple[Any, ...]], credit_limit_fen: int
) -> None:
    chart = Chart(f"h{uuid.uuid4().hex[:8]}:", customers=("a", "b"), credit_limit_fen=credit_limit_fen)
    ledger = Ledger()
    chart.open(shared, ledger)
    sent: list[list[Posting]] = []
    posted: list[list[Posting]] = []
    for step in steps:
        batch = _batch_for(chart, ledger, step, sent, posted)
        if not batch:
            continue
        sent.append(batch)
        expected = ledger.post_all(batch)
        event(type(expected).__name__ + (f" {expected.reason}" if isinstance(expected, Rejected) else ""))
        outcome = store.post_batch(shared, batch)
        assert type(outcome) is type(expected), (outcome, expected)
        assert outcome == expected
        if isinstance(expected, Posted):
            posted.append(batch)
        assert chart.balances(shared) == {a.account_id: ledger.balance_fen(a.account_id) for a in chart.accounts}
    pure.check_invariants(ledger)
    for a in chart.accounts:
        assert [(e.posting, e.side, e.delta_fen, e.balance_after_fen) for e in store.history(shared, a.account_id)] == [
            (e.posting, e.side, e.delta_fen, e.balance_after_fen) for e in ledger.history(a.account_id)[-100:]
        ]
    assert store.check_invariants(shared) == ()


# --------------------------------------------------------------------------- concurrency


def _run_threads(url: str, n: int, work: Callable[[int, Conn], list[Any]]) -> list[list[Any]]:
    """Run `work(thread index, own connection)` on n threads started together; return each result."""
    barrier = threading.Barrier(n)

    def run(i: int) -> list[Any]:
        with psycopg.connect(url, autocommit=True) as conn:
            barrier.wait()
            return work(i, conn)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def _replay_stored(conn: Conn, chart: Chart) -> Ledger:
    """The pure ledger fed the stored batches in the order they were stored."""
    ledger = Ledger()
    chart.open(conn, ledger)
    rows = conn.execute(
        "SELECT batch_id, posting_id FROM ledger_postings WHERE posting_id LIKE %s ORDER BY seq",
        (chart.prefix + "%",),
    ).fetchall()
    batches: dict[int, list[Posting]] = {}
    for batch_id, posting_id in rows:
        stored = store.posting(conn, posting_id)
        assert stored is not None
        batches.setdefault(batch_id, []).append(stored)
    for batch in batches.values():
        assert isinstance(ledger.post_all(batch), Posted)
    return ledger


def test_concurrent_writers_store_each_posting_once_with_exact_balances(
    shared_url: str, shared: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=store.__name__)
    customers = [f"c{i}" for i in range(6)]
    chart = _chart(shared, customers=customers)
    p = chart.prefix
    batches: list[list[Posting]] = []
    for i, c in enumerate(customers):
        for k in range(4):
            # each batch touches the hot house accounts and a customer shared with other batches
            batches.append([top_up(chart, f"{p}t{c}.{k}", 1_000 + k, c), usage(chart, f"{p}u{c}.{k}", 300 + i, c)])
            batches.append([usage(chart, f"{p}v{c}.{k}.{j}", 7 + j, c) for j in range(3)])
    # overlapping: the first posting of a batch alone; whichever lands first decides which of the two is stored
    overlapping = [b[:1] for b in batches[::5]]
    threads = 4

    def work(i: int, conn: Conn) -> list[tuple[str, PostOutcome]]:
        # first, all at once: the same ids, in a different order per thread, on accounts only this thread touches,
        # so nothing but the primary key serialises them
        contested = [
            Posting(
                f"{p}contested{k}",
                chart.debt(customers[i]),
                chart.prepaid(customers[i]),
                100,
                PostingKind.ADJUSTMENT,
                AT,
            )
            for k in range(3)
        ]
        contested = contested[i % 3 :] + contested[: i % 3]
        # then every thread posts the same batches in its own order
        own = [("batch", b) for b in batches] + [("overlap", b) for b in overlapping]
        random.Random(i).shuffle(own)
        own.insert(0, ("contested", contested))
        return [(label, store.post_batch(conn, b)) for label, b in own]

    started = time.monotonic()
    results = _run_threads(shared_url, threads, work)
    elapsed = time.monotonic() - started
    outcomes = [o for per_thread in results for o in per_thread]
    kinds = {(label, type(o).__name__) for label, o in outcomes}
    assert kinds <= {
        ("batch", "Posted"),
        ("batch", "AlreadyPosted"),
        ("batch", "Rejected"),
        ("overlap", "Posted"),
        ("overlap", "AlreadyPosted"),
        ("contested", "Posted"),
        ("contested", "Conflict"),
    }, kinds
    for label, o in outcomes:
        if isinstance(o, Rejected):
            assert (label, o.reason) == ("batch", LedgerReason.PARTIALLY_POSTED)
    stored_ids = {
        r[0] for r in shared.execute("SELECT posting_id FROM ledger_postings WHERE posting_id LIKE %s", (p + "%",))
    }
    posted = [o for _, o in outcomes if isinstance(o, Posted)]
    posted_ids = [q.posting_id for o in posted for q in o.postings]
    # exactly once: every stored posting was reported Posted by exactly one writer
    assert sorted(posted_ids) == sorted(stored_ids)
    for batch in batches:
        ids = {q.posting_id for q in batch}
        assert ids <= stored_ids or (ids & stored_ids == {batch[0].posting_id})
    assert sum(1 for _, o in outcomes if isinstance(o, Conflict)) == threads - 1
    assert len({q for q in stored_ids if "contested" in q}) == 3
    # one global insertion order: writers clashing on ids wait for each other, never deadlock
    assert not [r for r in caplog.records if "(40P01)" in r.getMessage()]
    reference = _replay_stored(shared, chart)
    assert chart.balances(shared) == {a.account_id: reference.balance_fen(a.account_id) for a in chart.accounts}
    assert store.check_invariants(shared) == ()
    assert elapsed < 20, elapsed


def test_concurrent_spending_of_one_balance_respects_the_floor(shared_url: str, shared: Conn) -> None:
    chart = _chart(shared, credit_limit_fen=0)
    store.post_batch(shared, [top_up(chart, f"{chart.prefix}t", 1_000)])
    threads = 8

    def work(i: int, conn: Conn) -> list[PostOutcome]:
        return [store.post_batch(conn, [adjustment(chart, f"{chart.prefix}spend{i}", 300)])]

    outcomes = [o for per_thread in _run_threads(shared_url, threads, work) for o in per_thread]
    assert sum(isinstance(o, Posted) for o in outcomes) == 3
    assert {_reason(o) for o in outcomes if not isinstance(o, Posted)} == {LedgerReason.BELOW_FLOOR}
    assert store.balance_fen(shared, chart.prepaid("a")) == 100
    assert store.check_invariants(shared) == ()


def test_a_same_id_race_on_disjoint_accounts_retries_into_a_conflict(
    database_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    chart = _chart(db, customers=("a", "b"))
    caplog.set_level(logging.INFO, logger=store.__name__)
    mine = top_up(chart, "pay-1", 100, "a")
    theirs = top_up(chart, "pay-1", 100, "b", debit_account_id=chart.alipay)
    with psycopg.connect(database_url, autocommit=True) as other, ThreadPoolExecutor(1) as pool:
        with db.transaction():
            assert isinstance(store.post_batch(db, [mine]), Posted)
            # the other writer locks accounts we don't hold, finds no pay-1 yet, and waits on our index entry
            future = pool.submit(store.post_batch, other, [theirs])
            wait_for(lambda: _waiting_for_a_lock(db), 5, "the other writer to wait on pay-1")
        outcome = future.result(timeout=10)
    assert outcome == Conflict("pay-1", ("debit_account_id", "credit_account_id"))
    assert any("(23505)" in r.getMessage() for r in caplog.records)
    assert store.balance_fen(db, chart.prepaid("b")) == 0
    assert store.check_invariants(db) == ()


def test_a_serialization_failure_is_retried_in_a_fresh_transaction(
    database_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    chart = _chart(db)
    caplog.set_level(logging.INFO, logger=store.__name__)
    with psycopg.connect(database_url, autocommit=True) as other, ThreadPoolExecutor(1) as pool:
        other.isolation_level = IsolationLevel.REPEATABLE_READ
        with db.transaction():
            store.post_batch(db, [top_up(chart, "t1", 100)])
            # its snapshot predates our commit: locking the updated row fails with 40001 the first time
            future = pool.submit(store.post_batch, other, [top_up(chart, "t2", 50)])
            wait_for(lambda: _waiting_for_a_lock(db), 5, "the other writer to wait on the account lock")
        assert isinstance(future.result(timeout=10), Posted)
        assert any("(40001)" in r.getMessage() for r in caplog.records)
        # with no retries left the error reaches the caller
        with db.transaction():
            store.post_batch(db, [top_up(chart, "t3", 1)])
            future = pool.submit(store.post_batch, other, [top_up(chart, "t4", 1)], max_attempts=1)
            wait_for(lambda: _waiting_for_a_lock(db), 5, "the other writer to wait on the account lock")
        with pytest.raises(errors.SerializationFailure):
            future.result(timeout=10)
    assert store.balance_fen(db, chart.prepaid("a")) == 151
    assert store.check_invariants(db) == ()


def test_a_deadlock_with_another_writer_is_retried(
    database_url: str, db: Conn, admin_db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    chart = _chart(db)
    caplog.set_level(logging.INFO, logger=store.__name__)
    first, second = sorted([chart.prepaid("a"), chart.revenue])
    # the writer looks for a cycle after 0.5 s of waiting, once the cycle exists and before the other (1 s) does;
    # a superuser's setting, given to the sessions that open from now on
    admin_db.execute(f"ALTER DATABASE \"{db.info.dbname}\" SET deadlock_timeout = '500ms'")
    with psycopg.connect(database_url, autocommit=True) as other, ThreadPoolExecutor(1) as pool:
        assert other.execute("SHOW deadlock_timeout").fetchone() == ("500ms",)
        with db.transaction():
            # some other transaction takes the same rows in the opposite order
            db.execute("SELECT 1 FROM ledger_accounts WHERE account_id = %s FOR UPDATE", (second,))
            future = pool.submit(store.post_batch, other, [usage(chart, "u1", 10)])
            wait_for(lambda: _waiting_for_a_lock(db), 5, "the writer to wait on the second account")
            db.execute("SELECT 1 FROM ledger_accounts WHERE account_id = %s FOR UPDATE", (first,))
        assert isinstance(future.result(timeout=10), Posted)
    assert any("(40P01)" in r.getMessage() for r in caplog.records)
    assert store.balance_fen(db, chart.prepaid("a")) == -10
    assert store.check_invariants(db) == ()
