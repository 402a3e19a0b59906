"""`headend pay`: credit (or reverse) a payment from a channel."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from headend.cli.common import database, fail, instant, load_settings, print_decision, yuan


def pay_command(
    account: Annotated[str, typer.Option(help="Account id.")],
    amount_fen: Annotated[int, typer.Option(min=1, help="Amount paid, in fen.")],
    channel: Annotated[str, typer.Option(help="Payment channel (lower-case, e.g. wechat, alipay, counter).")],
    txn: Annotated[str, typer.Option(help="The channel's transaction id (the idempotency key).")],
    paid_at: Annotated[
        str | None,
        typer.Option(
            help="When the channel took (or, with --reverse, gave back) the money (ISO); default: as first "
            "posted for this transaction, else now."
        ),
    ] = None,
    reverse: Annotated[bool, typer.Option(help="Reverse this (whole) payment instead.")] = False,
) -> None:
    """Post a payment from a channel once per transaction id (or reverse it), then apply the policy."""
    from headend.engine.accounts import AccountError, pay, reverse_payment
    from headend.engine.catalog import Catalog
    from headend.money import payment_store
    from prepay_engine.ledger import Conflict, Rejected
    from prepay_engine.payments import AlreadyReversed, AlreadyToppedUp, Reversed, ToppedUp, TopUp, TopUpReversal

    settings = load_settings()
    with database(settings) as conn:
        # a retry without --paid-at must be the same transaction, not a conflicting one stamped now
        stored = payment_store.payment(conn, channel, txn)
        first_at = None if stored is None else (stored.reversed_at if reverse else stored.paid_at)
        when = first_at if paid_at is None and first_at is not None else instant(paid_at, "--paid-at", settings.zone)
        try:
            if reverse:
                result = reverse_payment(
                    conn, Catalog(), TopUpReversal(channel, txn, amount_fen, when), now=datetime.now(UTC)
                )
            else:
                request = TopUp(channel, txn, account, amount_fen, when)
                result = pay(conn, Catalog(), request, now=datetime.now(UTC), received_by="cli")
        except AccountError as exc:
            raise fail(str(exc)) from None
    outcome = result.outcome
    if isinstance(outcome, Conflict | Rejected):
        raise fail(f"refused: {outcome}")
    first = outcome.original if isinstance(outcome, AlreadyToppedUp | AlreadyReversed) else outcome
    what = {
        ToppedUp: "credited",
        AlreadyToppedUp: "duplicate, already credited",
        Reversed: "reversed",
        AlreadyReversed: "duplicate, already reversed",
    }[type(outcome)]
    typer.echo(
        f"{channel}:{txn} {yuan(amount_fen)} {what}; balance after it {yuan(first.balances.prepaid_fen)} "
        f"(emergency credit repaid {yuan(first.split.emergency_credit_repaid_fen)}, "
        f"debt recovered {yuan(first.split.debt_recovered_fen)})"
    )
    print_decision(result.decided)
