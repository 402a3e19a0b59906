"""Payments as ledger postings: idempotent top-ups, their split, reversals, emergency credit, refunds.

A top-up credits the whole channel amount to the prepaid balance (so one posting per channel transaction matches
the channel's statement), then carves it up in the same all-or-nothing batch: first the outstanding emergency
credit is repaid, then ``debt_recovery_bps`` of what remains (rounded down, in the customer's favour, and never
more than the debt) goes to the debt account; the rest stays on the balance.

Posting ids are derived from the request, so a retry maps onto the postings its first delivery made:

* top-up: ``topup:<channel>:<channel txn id>``, its carve-outs the same plus ``:emergency_credit_repay`` and
  ``:debt_recovery``;
* reversal: ``reversal:<id of the posting it reverses>``;
* emergency credit: ``emergency_credit:<customer>:<lend id>``;
* refund: ``refund:<customer>:<refund id>``, its payout ``refund_payout:<customer>:<refund id>``;
* arrears converted into debt: ``arrears_to_debt:<customer>:<conversion id>``.

Channel transaction ids and the other client ids are printable ASCII without ``:``, so no two requests can share a
posting id. A request whose first posting exists is answered from the ledger — the original postings and the
balances right after them — without recomputing anything: a duplicate top-up must not be re-split against the
balances its first delivery already changed. The same id with different fields is a `Conflict` naming them.

A reversal undoes a whole top-up (the carve-outs too, so repaid emergency credit and recovered debt are owed
again); it may drive the balance negative. Partial reversals are rejected: reverse, then top up the right amount.

`plan_top_up` and `plan_reversal` turn a request into its postings without touching any store; `top_up` and
`reverse_top_up` here, and `headend.money.payment_store` on PostgreSQL, post what they plan.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from prepay_engine.ledger import (
    CHANNEL_PATTERN,
    CUSTOMER_ID_PATTERN,
    REFUNDS_PAYABLE_ACCOUNT_ID,
    AlreadyPosted,
    Conflict,
    Ledger,
    LedgerReason,
    Posted,
    Posting,
    PostingKind,
    Rejected,
    cash_in_transit_account_id,
    debt_account_id,
    differing_fields,
    emergency_credit_account_id,
    prepaid_account_id,
)

BPS_PER_UNIT: Final = 10_000
# printable ASCII except ':', the separator of derived posting ids
CLIENT_ID_PATTERN: Final = re.compile(r"[\x21-\x39\x3b-\x7e]{1,64}")
EMERGENCY_CREDIT_REPAY_SUFFIX: Final = ":emergency_credit_repay"
DEBT_RECOVERY_SUFFIX: Final = ":debt_recovery"


class PaymentReason(StrEnum):
    """Why a payment operation was rejected before reaching the ledger."""

    INVALID_CHANNEL = "invalid_channel"
    INVALID_CLIENT_ID = "invalid_client_id"
    INVALID_CUSTOMER = "invalid_customer"
    UNKNOWN_CUSTOMER = "unknown_customer"
    UNKNOWN_TOP_UP = "unknown_top_up"
    REVERSAL_AMOUNT_MISMATCH = "reversal_amount_mismatch"
    EMERGENCY_CREDIT_DISABLED = "emergency_credit_disabled"
    EMERGENCY_CREDIT_OUTSTANDING = "emergency_credit_outstanding"
    DEBT_OUTSTANDING = "debt_outstanding"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    UNKNOWN_REFUND = "unknown_refund"
    EXCEEDS_ARREARS = "exceeds_arrears"


@dataclass(frozen=True, slots=True)
class PaymentTerms:
    """A customer's terms: the emergency credit lent on request (0: none) and the share of top-ups taken for debt."""

    emergency_credit_fen: int = 0
    debt_recovery_bps: int = 0

    def __post_init__(self) -> None:
        if self.emergency_credit_fen < 0:
            raise ValueError(f"emergency_credit_fen must be >= 0, got {self.emergency_credit_fen}")
        if not 0 <= self.debt_recovery_bps <= BPS_PER_UNIT:
            raise ValueError(f"debt_recovery_bps must be in 0..{BPS_PER_UNIT}, got {self.debt_recovery_bps}")


@dataclass(frozen=True, slots=True)
class TopUp:
    """A payment confirmed by a channel; (channel, channel_txn_id) identifies it, paid_at is the channel's time."""

    channel: str
    channel_txn_id: str
    customer_id: str
    amount_fen: int
    paid_at: datetime


@dataclass(frozen=True, slots=True)
class TopUpReversal:
    """A channel taking a whole top-up back; reference is the channel's own reversal id."""

    channel: str
    channel_txn_id: str
    amount_fen: int
    reversed_at: datetime
    reference: str = ""


@dataclass(frozen=True, slots=True)
class Split:
    """How a top-up was divided."""

    emergency_credit_repaid_fen: int
    debt_recovered_fen: int
    credited_fen: int

    @property
    def total_fen(self) -> int:
        """The whole top-up."""
        return self.emergency_credit_repaid_fen + self.debt_recovered_fen + self.credited_fen


@dataclass(frozen=True, slots=True)
class CustomerBalances:
    """A customer's prepaid balance and what they owe, each on its account's normal side."""

    prepaid_fen: int
    emergency_credit_fen: int
    debt_fen: int


@dataclass(frozen=True, slots=True)
class ToppedUp:
    """A top-up was posted: its split, its postings and the balances right after them."""

    split: Split
    postings: tuple[Posting, ...]
    balances: CustomerBalances


@dataclass(frozen=True, slots=True)
class AlreadyToppedUp:
    """A duplicate delivery; nothing changed, original is the first delivery's result."""

    original: ToppedUp


@dataclass(frozen=True, slots=True)
class Reversed:
    """A top-up was reversed: the split it undid, the reversal postings and the balances right after them."""

    split: Split
    postings: tuple[Posting, ...]
    balances: CustomerBalances


@dataclass(frozen=True, slots=True)
class AlreadyReversed:
    """A duplicate reversal; nothing changed, original is the first reversal's result."""

    original: Reversed


@dataclass(frozen=True, slots=True)
class Applied:
    """An operation was posted: its postings and the customer's balances right after them."""

    postings: tuple[Posting, ...]
    balances: CustomerBalances


@dataclass(frozen=True, slots=True)
class AlreadyApplied:
    """A duplicate request; nothing changed, original is the first request's result."""

    original: Applied


TopUpOutcome = ToppedUp | AlreadyToppedUp | Conflict | Rejected
ReversalOutcome = Reversed | AlreadyReversed | Conflict | Rejected
Outcome = Applied | AlreadyApplied | Conflict | Rejected


def top_up_posting_id(channel: str, channel_txn_id: str) -> str:
    """Posting id of the top-up of one channel transaction."""
    return f"topup:{channel}:{channel_txn_id}"


def reversal_posting_id(posting_id: str) -> str:
    """Posting id of the reversal of a posting."""
    return f"reversal:{posting_id}"


def split_top_up(amount_fen: int, emergency_credit_fen: int, debt_fen: int, debt_recovery_bps: int) -> Split:
    """Repay emergency credit first, then recover debt_recovery_bps of the rest (floor, capped at the debt)."""
    assert amount_fen > 0
    assert emergency_credit_fen >= 0
    assert debt_fen >= 0
    assert 0 <= debt_recovery_bps <= BPS_PER_UNIT
    repaid = min(amount_fen, emergency_credit_fen)
    rest = amount_fen - repaid
    recovered = min(debt_fen, rest * debt_recovery_bps // BPS_PER_UNIT)
    split = Split(repaid, recovered, rest - recovered)
    assert split.total_fen == amount_fen
    assert split.credited_fen >= 0
    return split


def split_of(postings: tuple[Posting, ...]) -> Split:
    """The split of a top-up from its postings: the credit first, then its carve-outs."""
    by_kind = {p.kind: p.amount_fen for p in postings}
    repaid = by_kind.get(PostingKind.EMERGENCY_CREDIT_REPAY, 0)
    recovered = by_kind.get(PostingKind.DEBT_RECOVERY, 0)
    return Split(repaid, recovered, postings[0].amount_fen - repaid - recovered)


def top_up_batch_ids(primary_id: str) -> tuple[str, str, str]:
    """Ids a top-up's batch may hold, in batch order: the credit, the emergency credit repayment, the debt recovery."""
    return primary_id, primary_id + EMERGENCY_CREDIT_REPAY_SUFFIX, primary_id + DEBT_RECOVERY_SUFFIX


def customer_of(top_up_posting: Posting) -> str:
    """The customer a top-up posting credits."""
    customer_id = top_up_posting.credit_account_id.split(":")[1]
    assert prepaid_account_id(customer_id) == top_up_posting.credit_account_id
    return customer_id


def plan_top_up(
    request: TopUp, balances: CustomerBalances | None, terms: PaymentTerms
) -> tuple[Posting, ...] | Rejected:
    """A valid top-up's postings against the customer's balances (None: no accounts): the credit, then carve-outs."""
    problem = (
        _channel_problem(request.channel)
        or _client_id_problem(request.channel_txn_id)
        or _customer_id_problem(request.customer_id)
        or (_unknown_customer(request.customer_id) if balances is None else None)
        or _amount_problem(request.amount_fen)
    )
    if problem is not None:
        return problem
    assert balances is not None
    split = split_top_up(request.amount_fen, balances.emergency_credit_fen, balances.debt_fen, terms.debt_recovery_bps)
    primary_id, repay_id, recovery_id = top_up_batch_ids(top_up_posting_id(request.channel, request.channel_txn_id))
    prepaid_id = prepaid_account_id(request.customer_id)
    postings = [
        Posting(
            primary_id,
            cash_in_transit_account_id(request.channel),
            prepaid_id,
            request.amount_fen,
            PostingKind.TOP_UP,
            request.paid_at,
            request.channel_txn_id,
        )
    ]
    if split.emergency_credit_repaid_fen:
        postings.append(
            Posting(
                repay_id,
                prepaid_id,
                emergency_credit_account_id(request.customer_id),
                split.emergency_credit_repaid_fen,
                PostingKind.EMERGENCY_CREDIT_REPAY,
                request.paid_at,
                primary_id,
                overdraw=True,
            )
        )
    if split.debt_recovered_fen:
        postings.append(
            Posting(
                recovery_id,
                prepaid_id,
                debt_account_id(request.customer_id),
                split.debt_recovered_fen,
                PostingKind.DEBT_RECOVERY,
                request.paid_at,
                primary_id,
                overdraw=True,
            )
        )
    return tuple(postings)


def plan_reversal(originals: tuple[Posting, ...], request: TopUpReversal) -> tuple[Posting, ...] | Rejected:
    """A valid reversal's postings, given the top-up's postings as stored (empty: no such top-up)."""
    problem = _channel_problem(request.channel) or _client_id_problem(request.channel_txn_id)
    if problem is not None:
        return problem
    if not originals:
        return Rejected(PaymentReason.UNKNOWN_TOP_UP, f"no top-up {request.channel}:{request.channel_txn_id}")
    original = originals[0]
    assert original.posting_id == top_up_posting_id(request.channel, request.channel_txn_id)
    if request.amount_fen != original.amount_fen:
        return Rejected(
            PaymentReason.REVERSAL_AMOUNT_MISMATCH,
            f"reversal of {request.amount_fen} fen, top-up was {original.amount_fen} fen; only whole top-ups reverse",
        )
    # carve-outs first, so the batch undoes the top-up in the opposite order of its making
    return tuple(
        Posting(
            reversal_posting_id(p.posting_id),
            p.credit_account_id,
            p.debit_account_id,
            p.amount_fen,
            PostingKind.REVERSAL,
            request.reversed_at,
            request.reference,
            reverses=p.posting_id,
            overdraw=True,
        )
        for p in reversed(originals)
    )


def top_up_conflict(stored: Posting, requested: Posting) -> Conflict:
    """A top-up's stored credit against a different one for the same channel transaction, fields named as in TopUp."""
    return _conflict(stored, requested, {"credit_account_id": "customer_id", "at": "paid_at"})


def reversal_conflict(stored: Posting, requested: Posting) -> Conflict:
    """A stored reversal against a different one of the same top-up, fields named as in TopUpReversal."""
    return _conflict(stored, requested, {"at": "reversed_at"})


def customer_balances(ledger: Ledger, customer_id: str, *, after_posting_id: str | None = None) -> CustomerBalances:
    """A customer's balances now, or right after a posting; KeyError for an unknown customer."""
    return CustomerBalances(
        ledger.balance_fen(prepaid_account_id(customer_id), after_posting_id=after_posting_id),
        ledger.balance_fen(emergency_credit_account_id(customer_id), after_posting_id=after_posting_id),
        ledger.balance_fen(debt_account_id(customer_id), after_posting_id=after_posting_id),
    )


def top_up(ledger: Ledger, request: TopUp, terms: PaymentTerms) -> TopUpOutcome:
    """Credit a top-up once per (channel, txn id), split into emergency credit repayment, debt recovery and balance."""
    planned = plan_top_up(request, _open_balances(ledger, request.customer_id), terms)
    if isinstance(planned, Rejected):
        return planned
    primary = planned[0]
    existing = ledger.posting(primary.posting_id)
    if existing is not None:
        if existing != primary:
            return top_up_conflict(existing, primary)
        return AlreadyToppedUp(_topped_up(ledger, existing))
    outcome = ledger.post_all(planned)
    if not isinstance(outcome, Posted):
        assert not isinstance(outcome, AlreadyPosted), "the top-up posting did not exist"
        return outcome
    result = _topped_up(ledger, primary)
    assert result.split == split_of(planned)
    return result


def reverse_top_up(ledger: Ledger, request: TopUpReversal) -> ReversalOutcome:
    """Reverse a whole top-up, carve-outs included, once; the balance may go negative."""
    original = ledger.posting(top_up_posting_id(request.channel, request.channel_txn_id))
    planned = plan_reversal(() if original is None else _top_up_postings(ledger, original), request)
    if isinstance(planned, Rejected):
        return planned
    assert original is not None
    primary = planned[-1]
    existing = ledger.posting(primary.posting_id)
    if existing is not None:
        if existing != primary:
            return reversal_conflict(existing, primary)
        return AlreadyReversed(_reversed(ledger, original))
    outcome = ledger.post_all(planned)
    if not isinstance(outcome, Posted):
        assert not isinstance(outcome, AlreadyPosted), "the reversal posting did not exist"
        return outcome
    return _reversed(ledger, original)


def lend_emergency_credit(ledger: Ledger, customer_id: str, lend_id: str, terms: PaymentTerms, at: datetime) -> Outcome:
    """Lend the configured emergency credit, once until it is repaid."""
    problem = _client_id_problem(lend_id) or _customer_problem(ledger, customer_id)
    if problem is not None:
        return problem
    receivable_id = emergency_credit_account_id(customer_id)
    posting = Posting(
        f"emergency_credit:{customer_id}:{lend_id}",
        receivable_id,
        prepaid_account_id(customer_id),
        terms.emergency_credit_fen,
        PostingKind.EMERGENCY_CREDIT_LEND,
        at,
        lend_id,
    )

    def precheck() -> Rejected | None:
        if terms.emergency_credit_fen == 0:
            return Rejected(PaymentReason.EMERGENCY_CREDIT_DISABLED, f"{customer_id} has no emergency credit")
        outstanding = ledger.balance_fen(receivable_id)
        if outstanding:
            return Rejected(
                PaymentReason.EMERGENCY_CREDIT_OUTSTANDING, f"{customer_id} still owes {outstanding} fen of it"
            )
        return None

    return _post_single(ledger, customer_id, posting, precheck)


def refund(ledger: Ledger, customer_id: str, refund_id: str, amount_fen: int, at: datetime) -> Outcome:
    """Move part or all of a positive balance to refunds payable; refused while emergency credit or debt is owed."""
    problem = _client_id_problem(refund_id) or _customer_problem(ledger, customer_id) or _amount_problem(amount_fen)
    if problem is not None:
        return problem
    posting = Posting(
        f"refund:{customer_id}:{refund_id}",
        prepaid_account_id(customer_id),
        REFUNDS_PAYABLE_ACCOUNT_ID,
        amount_fen,
        PostingKind.REFUND,
        at,
        refund_id,
    )

    def precheck() -> Rejected | None:
        owed = customer_balances(ledger, customer_id)
        if owed.emergency_credit_fen or owed.debt_fen:
            return Rejected(
                PaymentReason.DEBT_OUTSTANDING,
                f"{customer_id} owes {owed.emergency_credit_fen} fen emergency credit and {owed.debt_fen} fen debt",
            )
        if amount_fen > owed.prepaid_fen:
            return Rejected(
                PaymentReason.INSUFFICIENT_BALANCE, f"refund of {amount_fen} fen > balance {owed.prepaid_fen} fen"
            )
        return None

    return _post_single(ledger, customer_id, posting, precheck)


def pay_out_refund(
    ledger: Ledger, customer_id: str, refund_id: str, channel: str, at: datetime, reference: str = ""
) -> Outcome:
    """Record that a granted refund was paid out through a channel."""
    problem = _client_id_problem(refund_id) or _channel_problem(channel) or _customer_problem(ledger, customer_id)
    if problem is not None:
        return problem
    granted = ledger.posting(f"refund:{customer_id}:{refund_id}")
    if granted is None:
        return Rejected(PaymentReason.UNKNOWN_REFUND, f"no refund {refund_id} for {customer_id}")
    posting = Posting(
        f"refund_payout:{customer_id}:{refund_id}",
        REFUNDS_PAYABLE_ACCOUNT_ID,
        cash_in_transit_account_id(channel),
        granted.amount_fen,
        PostingKind.REFUND,
        at,
        reference,
    )
    return _post_single(ledger, customer_id, posting, lambda: None)


def convert_arrears_to_debt(
    ledger: Ledger, customer_id: str, conversion_id: str, amount_fen: int, at: datetime
) -> Outcome:
    """Move up to the negative part of a balance into debt, to be recovered from later top-ups."""
    problem = _client_id_problem(conversion_id) or _customer_problem(ledger, customer_id) or _amount_problem(amount_fen)
    if problem is not None:
        return problem
    prepaid_id = prepaid_account_id(customer_id)
    posting = Posting(
        f"arrears_to_debt:{customer_id}:{conversion_id}",
        debt_account_id(customer_id),
        prepaid_id,
        amount_fen,
        PostingKind.ADJUSTMENT,
        at,
        conversion_id,
    )

    def precheck() -> Rejected | None:
        arrears = max(0, -ledger.balance_fen(prepaid_id))
        if amount_fen > arrears:
            return Rejected(PaymentReason.EXCEEDS_ARREARS, f"{amount_fen} fen > arrears of {arrears} fen")
        return None

    return _post_single(ledger, customer_id, posting, precheck)


def _post_single(
    ledger: Ledger, customer_id: str, posting: Posting, precheck: Callable[[], Rejected | None]
) -> Outcome:
    existing = ledger.posting(posting.posting_id)
    if existing is not None:
        if existing != posting:
            return _conflict(existing, posting, {})
        return AlreadyApplied(_applied(ledger, customer_id, existing))
    problem = precheck()
    if problem is not None:
        return problem
    outcome = ledger.post(posting)
    if not isinstance(outcome, Posted):
        assert not isinstance(outcome, AlreadyPosted), "the posting did not exist"
        return outcome
    return _applied(ledger, customer_id, posting)


def _applied(ledger: Ledger, customer_id: str, posting: Posting) -> Applied:
    return Applied((posting,), customer_balances(ledger, customer_id, after_posting_id=posting.posting_id))


def _top_up_postings(ledger: Ledger, primary: Posting) -> tuple[Posting, ...]:
    carve_outs = (ledger.posting(i) for i in top_up_batch_ids(primary.posting_id)[1:])
    return (primary, *(p for p in carve_outs if p is not None))


def _open_balances(ledger: Ledger, customer_id: str) -> CustomerBalances | None:
    return customer_balances(ledger, customer_id) if _accounts_open(ledger, customer_id) else None


def _accounts_open(ledger: Ledger, customer_id: str) -> bool:
    ids = (prepaid_account_id(customer_id), emergency_credit_account_id(customer_id), debt_account_id(customer_id))
    return all(ledger.account(i) is not None for i in ids)


def _topped_up(ledger: Ledger, primary: Posting) -> ToppedUp:
    postings = _top_up_postings(ledger, primary)
    balances = customer_balances(ledger, customer_of(primary), after_posting_id=postings[-1].posting_id)
    return ToppedUp(split_of(postings), postings, balances)


def _reversed(ledger: Ledger, primary: Posting) -> Reversed:
    originals = _top_up_postings(ledger, primary)
    reversals = []
    for p in reversed(originals):
        reversal = ledger.reversal_of(p.posting_id)
        assert reversal is not None, p.posting_id
        reversals.append(reversal)
    balances = customer_balances(ledger, customer_of(primary), after_posting_id=reversals[-1].posting_id)
    return Reversed(split_of(originals), tuple(reversals), balances)


def _conflict(stored: Posting, requested: Posting, names: Mapping[str, str]) -> Conflict:
    return Conflict(requested.posting_id, tuple(names.get(f, f) for f in differing_fields(stored, requested)))


def _channel_problem(channel: str) -> Rejected | None:
    if CHANNEL_PATTERN.fullmatch(channel):
        return None
    return Rejected(PaymentReason.INVALID_CHANNEL, f"channel {channel!r} does not match {CHANNEL_PATTERN.pattern}")


def _client_id_problem(client_id: str) -> Rejected | None:
    if CLIENT_ID_PATTERN.fullmatch(client_id):
        return None
    return Rejected(PaymentReason.INVALID_CLIENT_ID, f"{client_id!r} is not 1..64 printable ASCII without ':'")


def _customer_problem(ledger: Ledger, customer_id: str) -> Rejected | None:
    problem = _customer_id_problem(customer_id)
    if problem is None and not _accounts_open(ledger, customer_id):
        return _unknown_customer(customer_id)
    return problem


def _customer_id_problem(customer_id: str) -> Rejected | None:
    if CUSTOMER_ID_PATTERN.fullmatch(customer_id):
        return None
    return Rejected(PaymentReason.INVALID_CUSTOMER, f"customer {customer_id!r} is not a valid id")


def _unknown_customer(customer_id: str) -> Rejected:
    return Rejected(PaymentReason.UNKNOWN_CUSTOMER, f"customer {customer_id} has no accounts open")


def _amount_problem(amount_fen: int) -> Rejected | None:
    # bool is an int subclass; True is never an amount
    if type(amount_fen) is int and amount_fen > 0:
        return None
    return Rejected(LedgerReason.INVALID_AMOUNT, f"amount_fen must be a positive integer, got {amount_fen!r}")
