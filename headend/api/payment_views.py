"""Payments as the API shows them, and intake's refusals as problem documents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from headend.api.db import Connection
from headend.api.errors import ProblemError
from headend.api.schemas import PaymentDetail, PaymentOut, PaymentSplit
from headend.engine.catalog import Catalog
from headend.money import payment_store
from headend.money.intake import PaymentRefusedError, Refusal, balances_after, receive
from prepay_engine.payments import TopUp

_STATUS: Final = {
    Refusal.UNKNOWN_ACCOUNT: 404,
    Refusal.CONFLICT: 409,
    Refusal.IN_FUTURE: 422,
    Refusal.TOO_OLD: 422,
    Refusal.REJECTED: 422,
}


def receive_payment(
    conn: Connection, catalog: Catalog, request: TopUp, *, now: datetime, received_by: str, max_age: timedelta
) -> tuple[bool, PaymentOut]:
    """Credit a top-up once: whether this delivery credited it, and the payment as first credited (or a problem)."""
    try:
        received = receive(conn, catalog, request, now=now, received_by=received_by, max_age=max_age)
    except PaymentRefusedError as exc:
        raise ProblemError(_STATUS[exc.refusal], exc.message, code=exc.code) from None
    return received.created, payment_out(conn, received.payment)


def payment_out(conn: Connection, stored: payment_store.Payment) -> PaymentOut:
    """A stored payment as first credited, with the customer's balances right after its postings."""
    balances = balances_after(conn, stored)
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
        balance_after_fen=balances.prepaid_fen,
        emergency_credit_after_fen=balances.emergency_credit_fen,
        debt_after_fen=balances.debt_fen,
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
