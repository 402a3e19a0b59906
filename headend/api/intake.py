"""Payment intake: credit a top-up once per (channel, transaction id) and answer every delivery like the first.

A delivery whose transaction is stored already is answered from the stored payment, without touching the
account: the same fields get the first result again, other fields a conflict. A new one goes through the
engine (`headend.engine.accounts.pay`, one transaction with the policy decision it triggers); a duplicate that
raced it there is answered from what the winner stored. Every refusal leaves the database as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from headend import ledger_store, payment_store
from headend.api.db import Connection
from headend.api.errors import ProblemError
from headend.api.schemas import PaymentDetail, PaymentOut, PaymentSplit
from headend.engine.accounts import AccountError, pay
from headend.engine.catalog import Catalog
from prepay_engine.ledger import Conflict, Rejected, debt_account_id, emergency_credit_account_id, prepaid_account_id
from prepay_engine.payments import AlreadyToppedUp, ToppedUp, TopUp, top_up_batch_ids

# a channel's clock may run a little ahead of ours; a payment stamped later than this is refused
PAID_AT_TOLERANCE: Final = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Received:
    """A delivery's answer: whether this delivery credited the payment, and the payment as first credited."""

    created: bool
    payment: PaymentOut


def receive(conn: Connection, catalog: Catalog, request: TopUp, *, now: datetime, received_by: str) -> Received:
    """Credit a top-up once; a duplicate gets the first result, a conflicting or refused one a problem (404/409/422)."""
    stored = payment_store.payment(conn, request.channel, request.channel_txn_id)
    if stored is not None:
        _check_same(stored, request)
        return Received(False, payment_out(conn, stored))
    if request.paid_at > now + PAID_AT_TOLERANCE:
        raise ProblemError(422, f"paid_at {request.paid_at.isoformat()} is in the future", code="paid_at_in_future")
    try:
        result = pay(conn, catalog, request, now=now, received_by=received_by)
    except AccountError as exc:
        raise ProblemError(404, str(exc), code="unknown_account") from None
    outcome = result.outcome
    if isinstance(outcome, Conflict):
        raise ProblemError(409, outcome.reason, code="payment_conflict")
    if isinstance(outcome, Rejected):
        raise ProblemError(422, f"{outcome.reason}: {outcome.detail}", code=str(outcome.reason))
    assert isinstance(outcome, ToppedUp | AlreadyToppedUp), outcome
    stored = payment_store.payment(conn, request.channel, request.channel_txn_id)
    assert stored is not None, "a credited top-up has its payment row"
    return Received(isinstance(outcome, ToppedUp), payment_out(conn, stored))


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
        raise ProblemError(
            409,
            f"transaction {request.channel}:{request.channel_txn_id} was received before with a different "
            f"{', '.join(differing)}; nothing changed",
            code="payment_conflict",
        )


def payment_out(conn: Connection, stored: payment_store.Payment) -> PaymentOut:
    """A stored payment as first credited, with the customer's balances right after its postings."""
    postings = ledger_store.postings(conn, top_up_batch_ids(stored.posting_id))
    ids = (
        prepaid_account_id(stored.account_id),
        emergency_credit_account_id(stored.account_id),
        debt_account_id(stored.account_id),
    )
    balances = ledger_store.balances_fen(conn, ids, after_posting_id=postings[-1].posting_id)
    return PaymentOut(
        channel=stored.channel,
        channel_txn_id=stored.channel_txn_id,
        account_id=stored.account_id,
        amount_fen=stored.amount_fen,
        split=PaymentSplit(
            credited_fen=stored.split.credited_fen,
            emergency_credit_repaid_fen=stored.split.emergency_credit_repaid_fen,
            debt_recovered_fen=stored.split.debt_recovered_fen,
        ),
        balance_after_fen=balances[ids[0]],
        emergency_credit_after_fen=balances[ids[1]],
        debt_after_fen=balances[ids[2]],
        paid_at=stored.paid_at.astimezone(UTC),
        received_at=stored.received_at.astimezone(UTC),
    )


def payment_detail(conn: Connection, stored: payment_store.Payment) -> PaymentDetail:
    """A stored payment with who received it and its reversal."""
    return PaymentDetail(
        **payment_out(conn, stored).model_dump(),
        received_by=stored.received_by,
        reversed_at=stored.reversed_at,
        reversal_reference=stored.reversal_reference,
    )
