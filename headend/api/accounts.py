"""Prepaid accounts: read one with its balances, page through its ledger, take a payment at the counter."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status

from headend.api.auth import RawBody, require_roles
from headend.api.credentials import COUNTER_CHANNEL, Principal, Role
from headend.api.db import Conn, State
from headend.api.errors import ProblemError, problem_descriptions, problem_responses
from headend.api.payment_views import receive_payment
from headend.api.reads import account_view, ledger_page
from headend.api.schemas import (
    AccountOut,
    CounterPaymentIn,
    LedgerBook,
    LedgerPage,
    PaymentOut,
    json_body,
    parse_body,
)
from headend.money import payment_store
from prepay_engine.payments import TopUp

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])

AccountPath = Annotated[str, Path(description="Prepaid account id.", examples=["A0001"])]


@router.get(
    "/{account_id}",
    summary="Read an account",
    description="Balances (prepaid, emergency credit outstanding, debt), supply state, flags, the pending relay "
    "command, and the tariff, policy and meter the account is charged under. Roles: operator, field_staff, admin.",
    response_model=AccountOut,
    response_description="The account now.",
    responses=problem_responses(401, 403, 404, 503),
)
def read_account(
    account_id: AccountPath,
    conn: Conn,
    principal: Annotated[Principal, Depends(require_roles(Role.OPERATOR, Role.FIELD_STAFF))],
) -> AccountOut:
    """The account and its balances now."""
    view = account_view(conn, account_id)
    if view is None:
        raise ProblemError(404, f"no prepaid account {account_id!r}", code="unknown_account")
    return view


@router.get(
    "/{account_id}/ledger",
    summary="Page through an account's ledger",
    description="Postings of one of the customer's ledger accounts, newest first, with the signed effect and the "
    "running balance after each. Keyset pagination: pass `next_before_seq` of a page as `before_seq` to get the "
    "next (older) one. Roles: operator, admin.",
    response_model=LedgerPage,
    response_description="A page of postings, newest first.",
    responses=problem_responses(401, 403, 404, 422, 503),
)
def read_ledger(
    account_id: AccountPath,
    conn: Conn,
    principal: Annotated[Principal, Depends(require_roles(Role.OPERATOR))],
    limit: Annotated[int, Query(ge=1, le=500, description="Entries per page.")] = 50,
    before_seq: Annotated[
        int | None, Query(ge=1, description="Only postings before this sequence number (from `next_before_seq`).")
    ] = None,
    book: Annotated[LedgerBook, Query(description="Which of the customer's ledger accounts.")] = LedgerBook.PREPAID,
) -> LedgerPage:
    """A page of the account's postings, newest first."""
    page = ledger_page(conn, account_id, book, limit=limit, before_seq=before_seq)
    if page is None:
        raise ProblemError(404, f"no prepaid account {account_id!r}", code="unknown_account")
    return page


@router.post(
    "/{account_id}/payments",
    summary="Take a payment at the counter",
    description=(
        f"Credits a payment on channel `{COUNTER_CHANNEL}` once per `channel_txn_id` (the receipt number), "
        "received by the calling principal. Same semantics as a channel callback: 201 the first time, 200 with "
        "the first body for a duplicate, 409 for the same id with another account, amount or time. Roles: "
        "operator, admin."
    ),
    status_code=status.HTTP_201_CREATED,
    response_model=PaymentOut,
    response_description="The payment was credited by this request.",
    responses={
        200: {"model": PaymentOut, "description": "A duplicate: the first result, unchanged."},
        **problem_responses(401, 403),
        **problem_descriptions(
            {
                404: "No such prepaid account.",
                409: "The receipt number was used before with another account, amount or paid_at.",
                413: "The body is larger than 16 KiB.",
                422: "The body is not valid (strict JSON types, no extra fields, paid_at with an offset) or the "
                "payment was refused; nothing was posted.",
                503: "The database is unavailable or busy; retry later (a retry is safe).",
            }
        ),
    },
    openapi_extra=json_body(CounterPaymentIn),
)
def counter_payment(
    account_id: AccountPath,
    principal: Annotated[Principal, Depends(require_roles(Role.OPERATOR))],
    body: RawBody,
    conn: Conn,
    state: State,
    response: Response,
) -> PaymentOut:
    """Credit a counter payment once; a duplicate gets the first result."""
    parsed = parse_body(CounterPaymentIn, body)
    now = state.clock()
    paid_at = parsed.paid_at
    if paid_at is None:
        # a retry without paid_at is the same payment, not a conflicting one stamped now
        stored = payment_store.payment(conn, COUNTER_CHANNEL, parsed.channel_txn_id)
        paid_at = now if stored is None else stored.paid_at
    request = TopUp(COUNTER_CHANNEL, parsed.channel_txn_id, account_id, parsed.amount_fen, paid_at)
    created, payment = receive_payment(
        conn, state.catalog(), request, now=now, received_by=principal.name, max_age=state.payment_max_age
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return payment
