"""Payment intake: credit a top-up once per (channel, transaction id) and answer every delivery like the first.

A delivery whose transaction is stored already is answered from the stored payment, without touching the
account: the same fields get the first result again, other fields a conflict. A new one goes through the
engine (`headend.engine.accounts.pay`, one transaction with the policy decision it triggers); a duplicate that
raced it there is answered from what the winner stored. Every refusal leaves the database as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import psycopg

from headend.engine.accounts import AccountError, pay
from headend.engine.catalog import Catalog
from headend.money import ledger_store, payment_store
from prepay_engine.ledger import Conflict, Rejected, debt_account_id, emergency_credit_account_id, prepaid_account_id
from prepay_engine.payments import AlreadyToppedUp, CustomerBalances, ToppedUp, TopUp, top_up_batch_ids

Connection = psycopg.Connection[Any]

# a channel's clock may run a little ahead of ours; a payment stamped later than this is refused
PAID_AT_TOLERANCE: Final = timedelta(minutes=5)
DEFAULT_MAX_AGE: Final = timedelta(days=30)


class Refusal(StrEnum):
    """Why a delivery was not credited."""

    UNKNOWN_ACCOUNT = "unknown_account"
    CONFLICT = "payment_conflict"
    IN_FUTURE = "paid_at_in_future"
    TOO_OLD = "paid_at_too_old"
    REJECTED = "rejected"


class PaymentRefusedError(Exception):
    """A delivery that was not credited: the refusal, a machine-readable code and a message for the caller."""

    def __init__(self, refusal: Refusal, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.code = code or str(refusal)
        self.message = message


@dataclass(frozen=True, slots=True)
class Received:
    """A delivery's answer: whether this delivery credited the payment, and the payment as first credited."""

    created: bool
    payment: payment_store.Payment


def receive(
    conn: Connection,
    catalog: Catalog,
    request: TopUp,
    *,
    now: datetime,
    received_by: str,
    max_age: timedelta = DEFAULT_MAX_AGE,
) -> Received:
    """Credit a top-up once; a duplicate gets the first result, a conflicting or refused one PaymentRefusedError.

    A new payment dated more than `max_age` before `now` is refused: a callback that late is a replay or a
    channel's error, and belongs to reconciliation with the channel's statement, not to automatic credit.
    """
    stored = payment_store.payment(conn, request.channel, request.channel_txn_id)
    if stored is not None:
        _check_same(stored, request)
        return Received(False, stored)
    if request.paid_at > now + PAID_AT_TOLERANCE:
        raise PaymentRefusedError(Refusal.IN_FUTURE, f"paid_at {request.paid_at.isoformat()} is in the future")
    if request.paid_at < now - max_age:
        raise PaymentRefusedError(
            Refusal.TOO_OLD,
            f"paid_at {request.paid_at.isoformat()} is more than {max_age.days} days ago; "
            "a payment that old is settled by reconciliation, not credited by a callback",
        )
    try:
        result = pay(conn, catalog, request, now=now, received_by=received_by)
    except AccountError as exc:
        raise PaymentRefusedError(Refusal.UNKNOWN_ACCOUNT, str(exc)) from None
    outcome = result.outcome
    if isinstance(outcome, Conflict):
        raise PaymentRefusedError(Refusal.CONFLICT, outcome.reason)
    if isinstance(outcome, Rejected):
        raise PaymentRefusedError(Refusal.REJECTED, f"{outcome.reason}: {outcome.detail}", code=str(outcome.reason))
    assert isinstance(outcome, ToppedUp | AlreadyToppedUp), outcome
    stored = payment_store.payment(conn, request.channel, request.channel_txn_id)
    assert stored is not None, "a credited top-up has its payment row"
    return Received(isinstance(outcome, ToppedUp), stored)


def _check_same(stored: payment_store.Payment, request: TopUp) -> None:
    differing = [
        name
        for name, first, again in (
            ("account_id", stored.account_id, request.customer_id),
            ("amount_fen", stored.amount_fen, request.amount_fen),
            ("paid_at", stored.paid_at, request.paid_at),
        )
        if first != again
    ]
    if differing:
        raise PaymentRefusedError(
            Refusal.CONFLICT,
            f"transaction {request.channel}:{request.channel_txn_id} was received before with a different "
            f"{', '.join(differing)}; nothing changed",
        )


def balances_after(conn: Connection, stored: payment_store.Payment) -> CustomerBalances:
    """The customer's balances right after a stored payment's postings."""
    postings = ledger_store.postings(conn, top_up_batch_ids(stored.posting_id))
    ids = (
        prepaid_account_id(stored.account_id),
        emergency_credit_account_id(stored.account_id),
        debt_account_id(stored.account_id),
    )
    balances = ledger_store.balances_fen(conn, ids, after_posting_id=postings[-1].posting_id)
    return CustomerBalances(balances[ids[0]], balances[ids[1]], balances[ids[2]])
