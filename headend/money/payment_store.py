"""Payments in PostgreSQL: the top-ups and reversals of `prepay_engine.payments` on the ledger store, a row each.

Made for the engine's transaction: the engine has locked the customer's `prepaid_accounts` row, so the balances read
for a top-up's split can't change before its batch posts (were they to, the ledger's floors would reject the batch;
a wrong split is never posted). Each call runs in a savepoint of the caller's transaction, or in a transaction of its
own when there is none, so the postings and the `payments` row commit or roll back together.

Plans and outcomes are the pure module's (`plan_top_up`, `plan_reversal`, `ToppedUp`, ...). A duplicate is answered
from what was stored, never re-planned: the first delivery's postings and the customer's balances as recorded on
them. So is a delivery that finds, once the ledger's row locks let it through, that its duplicate posted first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from psycopg.rows import tuple_row

from headend.money import ledger_store
from prepay_engine.ledger import (
    CUSTOMER_ID_PATTERN,
    AlreadyPosted,
    Conflict,
    Posted,
    Posting,
    Rejected,
    debt_account_id,
    emergency_credit_account_id,
    prepaid_account_id,
)
from prepay_engine.payments import (
    AlreadyReversed,
    AlreadyToppedUp,
    CustomerBalances,
    PaymentTerms,
    ReversalOutcome,
    Reversed,
    Split,
    ToppedUp,
    TopUp,
    TopUpOutcome,
    TopUpReversal,
    customer_of,
    plan_reversal,
    plan_top_up,
    reversal_conflict,
    split_of,
    top_up_batch_ids,
    top_up_conflict,
    top_up_posting_id,
)

Connection = psycopg.Connection[Any]

_PAYMENT_COLUMNS: Final = (
    "channel, channel_txn_id, account_id, amount_fen, paid_at, received_at, received_by, posting_id, "
    "emergency_credit_repaid_fen, debt_recovered_fen, credited_fen, reversed_at, reversal_reference"
)
_INSERT_PAYMENT: Final = """
    INSERT INTO payments (channel, channel_txn_id, account_id, amount_fen, paid_at, posting_id,
        emergency_credit_repaid_fen, debt_recovered_fen, credited_fen, received_by)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
# a customer is known when its engine row exists and its three ledger accounts are open
_CUSTOMER_BALANCES: Final = """
    SELECT l.account_id, l.balance_fen FROM ledger_accounts l
    WHERE l.account_id = ANY(%(ids)s) AND EXISTS (SELECT 1 FROM prepaid_accounts p WHERE p.account_id = %(customer)s)
"""


@dataclass(frozen=True, slots=True)
class Payment:
    """A stored payment: the channel's transaction, its split, who received it, and its reversal if any."""

    channel: str
    channel_txn_id: str
    account_id: str
    amount_fen: int
    paid_at: datetime
    received_at: datetime
    received_by: str
    posting_id: str
    split: Split
    reversed_at: datetime | None
    reversal_reference: str | None


def top_up(conn: Connection, request: TopUp, terms: PaymentTerms, *, received_by: str) -> TopUpOutcome:
    """Credit a top-up once per (channel, txn id) as `prepay_engine.payments.top_up` does, and record its payment."""
    with conn.transaction():
        planned = plan_top_up(request, _customer_balances(conn, request.customer_id), terms)
        if isinstance(planned, Rejected):
            return planned
        answer = _top_up_answer(conn, planned[0])
        if answer is not None:
            return answer
        outcome = ledger_store.post_batch(conn, planned)
        if not isinstance(outcome, Posted):
            # a duplicate delivery may have posted first while we waited on the account locks
            answer = _top_up_answer(conn, planned[0])
            if answer is not None:
                return answer
            assert not isinstance(outcome, AlreadyPosted), "the top-up posting did not exist"
            return outcome
        split = split_of(planned)
        conn.execute(
            _INSERT_PAYMENT,
            (
                request.channel,
                request.channel_txn_id,
                request.customer_id,
                request.amount_fen,
                request.paid_at,
                planned[0].posting_id,
                split.emergency_credit_repaid_fen,
                split.debt_recovered_fen,
                split.credited_fen,
                received_by,
            ),
        )
        return _topped_up(conn, planned)


def reverse_top_up(conn: Connection, request: TopUpReversal) -> ReversalOutcome:
    """Reverse a whole top-up once as `prepay_engine.payments.reverse_top_up` does, and mark its payment reversed."""
    with conn.transaction():
        originals = ledger_store.postings(
            conn, top_up_batch_ids(top_up_posting_id(request.channel, request.channel_txn_id))
        )
        planned = plan_reversal(originals, request)
        if isinstance(planned, Rejected):
            return planned
        answer = _reversal_answer(conn, originals, planned)
        if answer is not None:
            return answer
        outcome = ledger_store.post_batch(conn, planned)
        if not isinstance(outcome, Posted):
            answer = _reversal_answer(conn, originals, planned)
            if answer is not None:
                return answer
            assert not isinstance(outcome, AlreadyPosted), "the reversal posting did not exist"
            return outcome
        conn.execute(
            "UPDATE payments SET reversed_at = %s, reversal_reference = %s WHERE channel = %s AND channel_txn_id = %s",
            (request.reversed_at, request.reference, request.channel, request.channel_txn_id),
        )
        return _reversed(conn, originals, planned)


def payment(conn: Connection, channel: str, channel_txn_id: str) -> Payment | None:
    """The stored payment of one channel transaction, if any."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE channel = %s AND channel_txn_id = %s",
            (channel, channel_txn_id),
        ).fetchone()
    if row is None:
        return None
    return Payment(
        channel=row[0],
        channel_txn_id=row[1],
        account_id=row[2],
        amount_fen=row[3],
        paid_at=row[4].astimezone(UTC),
        received_at=row[5].astimezone(UTC),
        received_by=row[6],
        posting_id=row[7],
        split=Split(row[8], row[9], row[10]),
        reversed_at=None if row[11] is None else row[11].astimezone(UTC),
        reversal_reference=row[12],
    )


def _customer_balances(conn: Connection, customer_id: str) -> CustomerBalances | None:
    if not CUSTOMER_ID_PATTERN.fullmatch(customer_id):
        return None  # plan_top_up rejects the id before it looks at balances
    ids = _account_ids(customer_id)
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(_CUSTOMER_BALANCES, {"ids": list(ids), "customer": customer_id})
        found = {account_id: int(balance) for account_id, balance in cur.fetchall()}
    if len(found) != len(ids):
        return None
    return CustomerBalances(*(found[i] for i in ids))


def _top_up_answer(conn: Connection, primary: Posting) -> AlreadyToppedUp | Conflict | None:
    stored = ledger_store.postings(conn, top_up_batch_ids(primary.posting_id))
    if not stored:
        return None
    assert stored[0].posting_id == primary.posting_id, "a carve-out is stored without its top-up"
    if stored[0] != primary:
        return top_up_conflict(stored[0], primary)
    return AlreadyToppedUp(_topped_up(conn, stored))


def _topped_up(conn: Connection, postings: tuple[Posting, ...]) -> ToppedUp:
    return ToppedUp(split_of(postings), postings, _balances_after(conn, customer_of(postings[0]), postings[-1]))


def _reversal_answer(
    conn: Connection, originals: tuple[Posting, ...], planned: tuple[Posting, ...]
) -> AlreadyReversed | Conflict | None:
    stored = {p.posting_id: p for p in ledger_store.postings(conn, [p.posting_id for p in planned])}
    primary = planned[-1]
    stored_primary = stored.get(primary.posting_id)
    if stored_primary is None:
        return None
    if stored_primary != primary:
        return reversal_conflict(stored_primary, primary)
    # one batch reversed the whole top-up
    return AlreadyReversed(_reversed(conn, originals, tuple(stored[p.posting_id] for p in planned)))


def _reversed(conn: Connection, originals: tuple[Posting, ...], reversals: tuple[Posting, ...]) -> Reversed:
    return Reversed(split_of(originals), reversals, _balances_after(conn, customer_of(originals[0]), reversals[-1]))


def _balances_after(conn: Connection, customer_id: str, posting: Posting) -> CustomerBalances:
    ids = _account_ids(customer_id)
    found = ledger_store.balances_fen(conn, ids, after_posting_id=posting.posting_id)
    return CustomerBalances(*(found[i] for i in ids))


def _account_ids(customer_id: str) -> Sequence[str]:
    return prepaid_account_id(customer_id), emergency_credit_account_id(customer_id), debt_account_id(customer_id)
