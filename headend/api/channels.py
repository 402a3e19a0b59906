"""Payment callbacks of the channels (WeChat, Alipay, banks…): signed with HMAC, credited once per transaction."""

from __future__ import annotations

from datetime import UTC

from fastapi import APIRouter, Response, status

from headend.api.auth import RawBody, SignedChannel
from headend.api.db import Conn, State
from headend.api.errors import problem_descriptions
from headend.api.payment_views import receive_payment
from headend.api.schemas import ChannelPaymentIn, PaymentOut, json_body, parse_body
from prepay_engine.payments import TopUp

router = APIRouter(prefix="/v1/channels", tags=["channel callbacks"])


@router.post(
    "/{channel}/payments",
    summary="Receive a channel's payment callback",
    description=(
        "Credits the payment to the account once per (channel, `channel_txn_id`). The request must be signed "
        "with the channel's secret (`X-Headend-Timestamp`, `X-Headend-Signature`; see docs/api.md). The first "
        "delivery answers 201; a duplicate answers 200 with exactly the first body and changes nothing; the same "
        "transaction id with another account, amount or time is a 409. Nothing is posted on any refusal."
    ),
    status_code=status.HTTP_201_CREATED,
    response_model=PaymentOut,
    response_description="The payment was credited by this delivery.",
    responses={
        200: {"model": PaymentOut, "description": "A duplicate delivery: the first delivery's result, unchanged."},
        **problem_descriptions(
            {
                401: "Missing or wrong signature, a timestamp more than 300 s off, an unknown or disabled channel.",
                404: "No such prepaid account.",
                409: "The transaction id was received before with another account, amount or paid_at.",
                413: "The body is larger than 16 KiB.",
                422: "The body is not valid (strict JSON types, no extra fields, paid_at with an offset) or the "
                "payment was refused; nothing was posted.",
                503: "The database is unavailable or busy; retry later (a retry is safe).",
            }
        ),
    },
    openapi_extra=json_body(ChannelPaymentIn),
)
def channel_payment(channel: SignedChannel, body: RawBody, conn: Conn, state: State, response: Response) -> PaymentOut:
    """Credit a signed channel callback once; a duplicate gets the first result."""
    parsed = parse_body(ChannelPaymentIn, body)
    paid_at = parsed.paid_at.astimezone(UTC)
    request = TopUp(channel, parsed.channel_txn_id, parsed.account_id, parsed.amount_fen, paid_at)
    created, payment = receive_payment(
        conn,
        state.catalog(),
        request,
        now=state.clock(),
        received_by=f"channel:{channel}",
        max_age=state.payment_max_age,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return payment
