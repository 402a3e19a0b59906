"""Stored payments, by channel transaction: for operators, and for a channel its own."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from headend.api.auth import require_roles
from headend.api.credentials import Principal, Role
from headend.api.db import Conn
from headend.api.errors import ProblemError, problem_descriptions, problem_responses
from headend.api.payment_views import payment_detail
from headend.api.schemas import PaymentDetail
from headend.money import payment_store

router = APIRouter(prefix="/v1/payments", tags=["payments"])


@router.get(
    "/{channel}/{channel_txn_id:path}",
    summary="Read a payment",
    description="A payment as credited (split, balances right after it), who received it and its reversal, if "
    "any. Roles: operator, admin, and a channel principal for its own channel. A transaction id holding `/` "
    "may be sent as is or percent-encoded.",
    response_model=PaymentDetail,
    response_description="The payment.",
    responses={
        **problem_responses(401),
        **problem_descriptions(
            {
                403: "The role may not read payments, or a channel principal asked for another channel's.",
                404: "No such payment.",
                503: "The database is unavailable or busy; retry later.",
            }
        ),
    },
)
def read_payment(
    channel: Annotated[str, Path(description="Payment channel.", examples=["wechat"])],
    channel_txn_id: Annotated[str, Path(description="The channel's transaction id.", examples=["WX20261122001"])],
    conn: Conn,
    principal: Annotated[Principal, Depends(require_roles(Role.OPERATOR, Role.CHANNEL))],
) -> PaymentDetail:
    """One stored payment."""
    if principal.role is Role.CHANNEL and principal.name != channel:
        raise ProblemError(403, f"channel {principal.name!r} may read its own payments only")
    stored = payment_store.payment(conn, channel, channel_txn_id)
    if stored is None:
        raise ProblemError(404, f"no payment {channel}:{channel_txn_id}", code="unknown_payment")
    return payment_detail(conn, stored)
