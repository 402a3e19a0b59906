"""Payments: idempotent top-ups and their split, reversals, emergency credit, refunds; a stateful reference model."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from prepay_engine.ledger import (
    REFUNDS_PAYABLE_ACCOUNT_ID,
    REVENUE_ACCOUNT_ID,
    AlreadyPosted,
    Conflict,
    Ledger,
    LedgerReason,
    Posted,
    Posting,
    PostingKind,
    Rejected,
    cash_in_transit_account_id,
    check_invariants,
    customer_accounts,
    debt_account_id,
    emergency_credit_account_id,
    house_accounts,
    prepaid_account_id,
    usage_posting,
)
from prepay_engine.payments import (
    AlreadyApplied,
    AlreadyReversed,
    AlreadyToppedUp,
    Applied,
    CustomerBalances,
    PaymentReason,
    PaymentTerms,
    Reversed,
    Split,
    ToppedUp,
    TopUp,
    TopUpReversal,
    convert_arrears_to_debt,
    customer_balances,
    lend_emergency_credit,
    pay_out_refund,
    plan_reversal,
    plan_top_up,
    refund,
    reverse_top_up,
    split_of,
    split_top_up,
    top_up,
)

CST = timezone(timedelta(hours=8))
AT = datetime(2026, 3, 1, 8, 0, tzinfo=CST)
CUSTOMER = "c-1"
PREPAID = prepaid_account_id(CUSTOMER)
EMERGENCY = emergency_credit_account_id(CUSTOMER)
DEBT = debt_account_id(CUSTOMER)
WECHAT = cash_in_transit_account_id("wechat")
ALIPAY = cash_in_transit_account_id("alipay")
TERMS = PaymentTerms(emergency_credit_fen=3_000, debt_recovery_bps=1_000)


def _ledger() -> Ledger:
    ledger = Ledger(max_posting_fen=1_000_000)
    accounts = (*house_accounts(["wechat", "alipay", "counter"]), *customer_accounts(CUSTOMER, credit_limit_fen=0))
    assert ledger.open_accounts(accounts) is None
    return ledger


def _snapshot(ledger: Ledger) -> tuple[tuple[Posting, ...], dict[str, int]]:
    return ledger.postings(), {a.account_id: ledger.balance_fen(a.account_id) for a in ledger.accounts()}


def _pay(txn: str, amount_fen: int, channel: str = "wechat", at: datetime = AT, customer: str = CUSTOMER) -> TopUp:
    return TopUp(channel, txn, customer, amount_fen, at)


def _use(ledger: Ledger, posting_id: str, amount_fen: int) -> None:
    assert isinstance(ledger.post(usage_posting(CUSTOMER, posting_id, amount_fen, AT)), Posted)


def _with_emergency_credit_and_debt(ledger: Ledger, debt_fen: int) -> None:
    """Leave the customer at zero balance owing 3000 fen emergency credit and debt_fen of debt."""
    assert isinstance(lend_emergency_credit(ledger, CUSTOMER, "L1", TERMS, AT), Applied)
    _use(ledger, "usage:m1:1", 3_000 + debt_fen)
    assert isinstance(convert_arrears_to_debt(ledger, CUSTOMER, "A1", debt_fen, AT), Applied)
    assert customer_balances(ledger, CUSTOMER) == CustomerBalances(0, 3_000, debt_fen)


def _rejected(outcome: object) -> object:
    assert isinstance(outcome, Rejected), outcome
    return outcome.reason


# --------------------------------------------------------------------------- the split


def test_a_top_up_repays_emergency_credit_then_recovers_debt_then_credits_the_rest() -> None:
    ledger = _ledger()
    _with_emergency_credit_and_debt(ledger, debt_fen=5_000)
    outcome = top_up(ledger, _pay("4200001", 10_000), TERMS)
    assert isinstance(outcome, ToppedUp)
    assert outcome.split == Split(emergency_credit_repaid_fen=3_000, debt_recovered_fen=700, credited_fen=6_300)
    assert outcome.balances == CustomerBalances(prepaid_fen=6_300, emergency_credit_fen=0, debt_fen=4_300)
    assert outcome.postings == (
        Posting("topup:wechat:4200001", WECHAT, PREPAID, 10_000, PostingKind.TOP_UP, AT, "4200001"),
        Posting(
            "topup:wechat:4200001:emergency_credit_repay",
            PREPAID,
            EMERGENCY,
            3_000,
            PostingKind.EMERGENCY_CREDIT_REPAY,
            AT,
            "topup:wechat:4200001",
            overdraw=True,
        ),
        Posting(
            "topup:wechat:4200001:debt_recovery",
            PREPAID,
            DEBT,
            700,
            PostingKind.DEBT_RECOVERY,
            AT,
            "topup:wechat:4200001",
            overdraw=True,
        ),
    )
    assert ledger.balance_fen(WECHAT) == 10_000
    assert ledger.balance_fen(REVENUE_ACCOUNT_ID) == 8_000
    check_invariants(ledger)


def test_a_top_up_smaller_than_the_emergency_credit_only_repays_part_of_it() -> None:
    ledger = _ledger()
    _with_emergency_credit_and_debt(ledger, debt_fen=5_000)
    first = top_up(ledger, _pay("t1", 1_200), TERMS)
    assert isinstance(first, ToppedUp)
    assert first.split == Split(1_200, 0, 0)
    assert [p.kind for p in first.postings] == [PostingKind.TOP_UP, PostingKind.EMERGENCY_CREDIT_REPAY]
    assert first.balances == CustomerBalances(0, 1_800, 5_000)
    second = top_up(ledger, _pay("t2", 2_000), TERMS)
    assert isinstance(second, ToppedUp)
    # 200 left after the repayment: 10 % of it is 20
    assert second.split == Split(1_800, 20, 180)
    assert second.balances == CustomerBalances(180, 0, 4_980)
    check_invariants(ledger)


def test_debt_recovery_rounds_down_and_stops_at_the_debt() -> None:
    ledger = _ledger()
    _use(ledger, "u1", 50)
    assert isinstance(convert_arrears_to_debt(ledger, CUSTOMER, "A1", 50, AT), Applied)
    first = top_up(ledger, _pay("t1", 309), PaymentTerms(debt_recovery_bps=1_000))
    assert isinstance(first, ToppedUp)
    assert first.split == Split(0, 30, 279)
    second = top_up(ledger, _pay("t2", 10_000), PaymentTerms(debt_recovery_bps=1_000))
    assert isinstance(second, ToppedUp)
    assert second.split == Split(0, 20, 9_980)
    assert [p.kind for p in second.postings] == [PostingKind.TOP_UP, PostingKind.DEBT_RECOVERY]
    third = top_up(ledger, _pay("t3", 10_000), PaymentTerms(debt_recovery_bps=1_000))
    assert isinstance(third, ToppedUp)
    assert third.split == Split(0, 0, 10_000)
    assert third.postings == (third.postings[0],)
    assert customer_balances(ledger, CUSTOMER) == CustomerBalances(20_259, 0, 0)


def test_a_top_up_into_a_deeply_negative_balance_still_repays_and_recovers() -> None:
    ledger = _ledger()
    _with_emergency_credit_and_debt(ledger, debt_fen=5_000)
    _use(ledger, "u2", 40_000)
    outcome = top_up(ledger, _pay("t1", 10_000), TERMS)
    assert isinstance(outcome, ToppedUp)
    assert outcome.split == Split(3_000, 700, 6_300)
    assert outcome.balances == CustomerBalances(-33_700, 0, 4_300)
    check_invariants(ledger)


@given(
    amount_fen=st.integers(1, 10**9),
    emergency_credit_fen=st.integers(0, 10**9),
    debt_fen=st.integers(0, 10**9),
    bps=st.integers(0, 10_000),
)
def test_a_split_adds_up_and_respects_its_order(
    amount_fen: int, emergency_credit_fen: int, debt_fen: int, bps: int
) -> None:
    split = split_top_up(amount_fen, emergency_credit_fen, debt_fen, bps)
    assert split.total_fen == amount_fen
    assert split.emergency_credit_repaid_fen == min(amount_fen, emergency_credit_fen)
    rest = amount_fen - split.emergency_credit_repaid_fen
    assert 0 <= split.debt_recovered_fen <= min(debt_fen, rest)
    # floor: what is recovered is at most the share, and less than one fen short of it unless capped by the debt
    assert split.debt_recovered_fen * 10_000 <= rest * bps
    assert split.debt_recovered_fen == debt_fen or (split.debt_recovered_fen + 1) * 10_000 > rest * bps
    assert split.credited_fen >= 0


def test_payment_terms_are_validated() -> None:
    with pytest.raises(ValueError, match="debt_recovery_bps"):
        PaymentTerms(debt_recovery_bps=10_001)
    with pytest.raises(ValueError, match="emergency_credit_fen"):
        PaymentTerms(emergency_credit_fen=-1)


# --------------------------------------------------------------------------- idempotency


def test_a_duplicate_callback_is_credited_once_and_returns_the_first_result() -> None:
    ledger = _ledger()
    _with_emergency_credit_and_debt(ledger, debt_fen=5_000)
    first = top_up(ledger, _pay("4200001", 10_000), TERMS)
    assert isinstance(first, ToppedUp)
    _use(ledger, "u2", 1_000)
    before = _snapshot(ledger)
    # the emergency credit is repaid by now: recomputing the split would credit 9000 more; it must not
    again = top_up(ledger, _pay("4200001", 10_000, at=AT.astimezone(UTC)), TERMS)
    assert again == AlreadyToppedUp(first)
    assert _snapshot(ledger) == before
    assert ledger.balance_fen(WECHAT) == 10_000
    assert ledger.balance_fen(PREPAID) == 5_300


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"amount_fen": 10_001}, ("amount_fen",)),
        ({"customer": "c-2"}, ("customer_id",)),
        ({"at": AT + timedelta(seconds=1)}, ("paid_at",)),
        ({"amount_fen": 1, "at": AT + timedelta(days=1)}, ("amount_fen", "paid_at")),
    ],
)
def test_the_same_channel_transaction_with_different_fields_is_a_conflict(
    changes: dict[str, object], fields: tuple[str, ...]
) -> None:
    ledger = _ledger()
    ledger.open_accounts(customer_accounts("c-2", credit_limit_fen=0))
    assert isinstance(top_up(ledger, _pay("4200001", 10_000), TERMS), ToppedUp)
    before = _snapshot(ledger)
    request = {"txn": "4200001", "amount_fen": 10_000} | changes
    assert top_up(ledger, _pay(**request), TERMS) == Conflict("topup:wechat:4200001", fields)  # type: ignore[arg-type]
    assert _snapshot(ledger) == before


def test_the_same_transaction_id_on_two_channels_is_two_top_ups() -> None:
    ledger = _ledger()
    assert isinstance(top_up(ledger, _pay("0001", 500, "wechat"), TERMS), ToppedUp)
    assert isinstance(top_up(ledger, _pay("0001", 700, "alipay"), TERMS), ToppedUp)
    assert (ledger.balance_fen(WECHAT), ledger.balance_fen(ALIPAY), ledger.balance_fen(PREPAID)) == (500, 700, 1_200)


def test_several_prepurchases_in_a_month_are_several_top_ups() -> None:
    ledger = _ledger()
    for day, amount_fen in enumerate((5_000, 2_000, 10_000), start=1):
        paid_at = datetime(2026, 3, day * 9, 20, 0, tzinfo=CST)
        assert isinstance(top_up(ledger, _pay(f"t{day}", amount_fen, "counter", paid_at), TERMS), ToppedUp)
        _use(ledger, f"usage:m1:{day}", 1_500)
    assert customer_balances(ledger, CUSTOMER) == CustomerBalances(12_500, 0, 0)
    assert [e.delta_fen for e in ledger.history(PREPAID)] == [5_000, -1_500, 2_000, -1_500, 10_000, -1_500]


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (TopUp("WeChat", "1", CUSTOMER, 1, AT), PaymentReason.INVALID_CHANNEL),
        (TopUp("wechat", "a:b", CUSTOMER, 1, AT), PaymentReason.INVALID_CLIENT_ID),
        (TopUp("wechat", "", CUSTOMER, 1, AT), PaymentReason.INVALID_CLIENT_ID),
        (TopUp("wechat", "1", "c:1", 1, AT), PaymentReason.INVALID_CUSTOMER),
        (TopUp("wechat", "1", "nobody", 1, AT), PaymentReason.UNKNOWN_CUSTOMER),
        (TopUp("wechat", "1", CUSTOMER, 0, AT), LedgerReason.INVALID_AMOUNT),
        (TopUp("wechat", "1", CUSTOMER, 1_000_001, AT), LedgerReason.AMOUNT_TOO_LARGE),
        (TopUp("bank", "1", CUSTOMER, 1, AT), LedgerReason.UNKNOWN_ACCOUNT),
        (TopUp("wechat", "1", CUSTOMER, 1, datetime(2026, 3, 1)), LedgerReason.NAIVE_TIME),  # noqa: DTZ001
    ],
)
def test_invalid_top_ups_are_rejected(request_: TopUp, reason: object) -> None:
    ledger = _ledger()
    assert _rejected(top_up(ledger, request_, TERMS)) is reason
    assert ledger.postings() == ()


# --------------------------------------------------------------------------- reversals


def _reversal(txn: str, amount_fen: int, at: datetime = AT + timedelta(days=2)) -> TopUpReversal:
    return TopUpReversal("wechat", txn, amount_fen, at, "refund-" + txn)


def test_a_reversal_after_partial_use_drives_the_balance_negative() -> None:
    ledger = _ledger()
    top_up(ledger, _pay("t1", 10_000), TERMS)
    _use(ledger, "u1", 4_000)
    outcome = reverse_top_up(ledger, _reversal("t1", 10_000))
    assert isinstance(outcome, Reversed)
    assert outcome.split == Split(0, 0, 10_000)
    assert outcome.balances == CustomerBalances(-4_000, 0, 0)
    assert outcome.postings == (
        Posting(
            "reversal:topup:wechat:t1",
            PREPAID,
            WECHAT,
            10_000,
            PostingKind.REVERSAL,
            AT + timedelta(days=2),
            "refund-t1",
            reverses="topup:wechat:t1",
            overdraw=True,
        ),
    )
    assert ledger.balance_fen(WECHAT) == 0
    check_invariants(ledger)


def test_a_reversal_undoes_the_carve_outs_so_they_are_owed_again() -> None:
    ledger = _ledger()
    _with_emergency_credit_and_debt(ledger, debt_fen=5_000)
    top_up(ledger, _pay("t1", 10_000), TERMS)
    _use(ledger, "u2", 2_000)
    outcome = reverse_top_up(ledger, _reversal("t1", 10_000))
    assert isinstance(outcome, Reversed)
    assert outcome.split == Split(3_000, 700, 6_300)
    assert [p.posting_id for p in outcome.postings] == [
        "reversal:topup:wechat:t1:debt_recovery",
        "reversal:topup:wechat:t1:emergency_credit_repay",
        "reversal:topup:wechat:t1",
    ]
    assert outcome.balances == CustomerBalances(-2_000, 3_000, 5_000)
    # the emergency credit is owed again, so no second loan
    assert _rejected(lend_emergency_credit(ledger, CUSTOMER, "L2", TERMS, AT)) is (
        PaymentReason.EMERGENCY_CREDIT_OUTSTANDING
    )
    check_invariants(ledger)


def test_a_duplicate_reversal_is_a_no_op_and_a_different_one_conflicts() -> None:
    ledger = _ledger()
    top_up(ledger, _pay("t1", 10_000), TERMS)
    first = reverse_top_up(ledger, _reversal("t1", 10_000))
    assert isinstance(first, Reversed)
    top_up(ledger, _pay("t2", 500), TERMS)
    before = _snapshot(ledger)
    assert reverse_top_up(ledger, _reversal("t1", 10_000)) == AlreadyReversed(first)
    later = _reversal("t1", 10_000, AT + timedelta(days=3))
    assert reverse_top_up(ledger, later) == Conflict("reversal:topup:wechat:t1", ("reversed_at",))
    assert _snapshot(ledger) == before
    assert ledger.balance_fen(PREPAID) == 500


def test_partial_and_unknown_reversals_are_rejected() -> None:
    ledger = _ledger()
    top_up(ledger, _pay("t1", 10_000), TERMS)
    before = _snapshot(ledger)
    assert _rejected(reverse_top_up(ledger, _reversal("t1", 4_000))) is PaymentReason.REVERSAL_AMOUNT_MISMATCH
    assert _rejected(reverse_top_up(ledger, _reversal("t9", 10_000))) is PaymentReason.UNKNOWN_TOP_UP
    assert _snapshot(ledger) == before


# --------------------------------------------------------------------------- planners


def test_plan_top_up_plans_from_balances_alone_what_top_up_posts() -> None:
    ledger = _ledger()
    _with_emergency_credit_and_debt(ledger, debt_fen=5_000)
    before = _snapshot(ledger)
    request = _pay("t1", 10_000)
    planned = plan_top_up(request, customer_balances(ledger, CUSTOMER), TERMS)
    assert isinstance(planned, tuple)
    assert _snapshot(ledger) == before
    assert split_of(planned) == Split(3_000, 700, 6_300)
    outcome = top_up(ledger, request, TERMS)
    assert isinstance(outcome, ToppedUp)
    assert outcome.postings == planned
    # owing nothing, nothing is carved out, however negative the balance
    assert plan_top_up(request, CustomerBalances(-50_000, 0, 0), TERMS) == planned[:1]
    assert split_of(planned[:1]) == Split(0, 0, 10_000)


@pytest.mark.parametrize(
    ("request_", "balances", "reason"),
    [
        (TopUp("WeChat", "1", CUSTOMER, 0, AT), None, PaymentReason.INVALID_CHANNEL),
        (TopUp("wechat", "a:b", CUSTOMER, 0, AT), None, PaymentReason.INVALID_CLIENT_ID),
        (TopUp("wechat", "1", "c:1", 0, AT), None, PaymentReason.INVALID_CUSTOMER),
        (TopUp("wechat", "1", CUSTOMER, 0, AT), None, PaymentReason.UNKNOWN_CUSTOMER),
        (TopUp("wechat", "1", CUSTOMER, 0, AT), CustomerBalances(0, 0, 0), LedgerReason.INVALID_AMOUNT),
        (TopUp("wechat", "1", CUSTOMER, True, AT), CustomerBalances(0, 0, 0), LedgerReason.INVALID_AMOUNT),
    ],
)
def test_plan_top_up_validates_in_the_order_top_up_does(
    request_: TopUp, balances: CustomerBalances | None, reason: object
) -> None:
    assert _rejected(plan_top_up(request_, balances, TERMS)) is reason


def test_plan_reversal_mirrors_the_top_up_carve_outs_first() -> None:
    ledger = _ledger()
    _with_emergency_credit_and_debt(ledger, debt_fen=5_000)
    first = top_up(ledger, _pay("t1", 10_000), TERMS)
    assert isinstance(first, ToppedUp)
    before = _snapshot(ledger)
    planned = plan_reversal(first.postings, _reversal("t1", 10_000))
    assert isinstance(planned, tuple)
    assert _snapshot(ledger) == before
    assert [(p.debit_account_id, p.credit_account_id, p.amount_fen, p.reverses) for p in planned] == [
        (q.credit_account_id, q.debit_account_id, q.amount_fen, q.posting_id) for q in reversed(first.postings)
    ]
    outcome = reverse_top_up(ledger, _reversal("t1", 10_000))
    assert isinstance(outcome, Reversed)
    assert outcome.postings == planned
    assert _rejected(plan_reversal((), _reversal("t1", 10_000))) is PaymentReason.UNKNOWN_TOP_UP
    assert _rejected(plan_reversal(first.postings, _reversal("t1", 9_999))) is PaymentReason.REVERSAL_AMOUNT_MISMATCH
    invalid = TopUpReversal("WeChat", "t1", 10_000, AT)
    assert _rejected(plan_reversal(first.postings, invalid)) is PaymentReason.INVALID_CHANNEL


# --------------------------------------------------------------------------- emergency credit


def test_emergency_credit_is_lent_once_until_repaid() -> None:
    ledger = _ledger()
    lent = lend_emergency_credit(ledger, CUSTOMER, "L1", TERMS, AT)
    assert isinstance(lent, Applied)
    assert lent.balances == CustomerBalances(3_000, 3_000, 0)
    assert lent.postings == (
        Posting("emergency_credit:c-1:L1", EMERGENCY, PREPAID, 3_000, PostingKind.EMERGENCY_CREDIT_LEND, AT, "L1"),
    )
    assert lend_emergency_credit(ledger, CUSTOMER, "L1", TERMS, AT) == AlreadyApplied(lent)
    assert lend_emergency_credit(ledger, CUSTOMER, "L1", TERMS, AT + timedelta(hours=1)) == Conflict(
        "emergency_credit:c-1:L1", ("at",)
    )
    assert _rejected(lend_emergency_credit(ledger, CUSTOMER, "L2", TERMS, AT)) is (
        PaymentReason.EMERGENCY_CREDIT_OUTSTANDING
    )
    top_up(ledger, _pay("t1", 2_999), TERMS)
    assert _rejected(lend_emergency_credit(ledger, CUSTOMER, "L2", TERMS, AT)) is (
        PaymentReason.EMERGENCY_CREDIT_OUTSTANDING
    )
    top_up(ledger, _pay("t2", 1), TERMS)
    assert isinstance(lend_emergency_credit(ledger, CUSTOMER, "L2", TERMS, AT), Applied)
    assert customer_balances(ledger, CUSTOMER) == CustomerBalances(6_000, 3_000, 0)
    check_invariants(ledger)


def test_no_emergency_credit_without_terms_for_it() -> None:
    ledger = _ledger()
    assert _rejected(lend_emergency_credit(ledger, CUSTOMER, "L1", PaymentTerms(), AT)) is (
        PaymentReason.EMERGENCY_CREDIT_DISABLED
    )


# --------------------------------------------------------------------------- refunds and arrears


def test_a_refund_pays_out_the_positive_balance_through_refunds_payable() -> None:
    ledger = _ledger()
    top_up(ledger, _pay("t1", 10_000), TERMS)
    _use(ledger, "u1", 2_500)
    granted = refund(ledger, CUSTOMER, "R1", 7_500, AT)
    assert isinstance(granted, Applied)
    assert granted.balances == CustomerBalances(0, 0, 0)
    assert ledger.balance_fen(REFUNDS_PAYABLE_ACCOUNT_ID) == 7_500
    assert refund(ledger, CUSTOMER, "R1", 7_500, AT) == AlreadyApplied(granted)
    paid = pay_out_refund(ledger, CUSTOMER, "R1", "wechat", AT + timedelta(days=1), "bank-ref-1")
    assert isinstance(paid, Applied)
    assert paid.postings == (
        Posting(
            "refund_payout:c-1:R1",
            REFUNDS_PAYABLE_ACCOUNT_ID,
            WECHAT,
            7_500,
            PostingKind.REFUND,
            AT + timedelta(days=1),
            "bank-ref-1",
        ),
    )
    assert pay_out_refund(ledger, CUSTOMER, "R1", "wechat", AT + timedelta(days=1), "bank-ref-1") == AlreadyApplied(
        paid
    )
    assert pay_out_refund(ledger, CUSTOMER, "R1", "alipay", AT + timedelta(days=1), "bank-ref-1") == Conflict(
        "refund_payout:c-1:R1", ("credit_account_id",)
    )
    assert (ledger.balance_fen(REFUNDS_PAYABLE_ACCOUNT_ID), ledger.balance_fen(WECHAT)) == (0, 2_500)
    check_invariants(ledger)


def test_refunds_beyond_the_balance_or_while_owing_are_rejected() -> None:
    ledger = _ledger()
    top_up(ledger, _pay("t1", 1_000), TERMS)
    assert _rejected(refund(ledger, CUSTOMER, "R1", 1_001, AT)) is PaymentReason.INSUFFICIENT_BALANCE
    lend_emergency_credit(ledger, CUSTOMER, "L1", TERMS, AT)
    assert _rejected(refund(ledger, CUSTOMER, "R1", 500, AT)) is PaymentReason.DEBT_OUTSTANDING
    assert _rejected(pay_out_refund(ledger, CUSTOMER, "R1", "wechat", AT)) is PaymentReason.UNKNOWN_REFUND
    assert ledger.balance_fen(REFUNDS_PAYABLE_ACCOUNT_ID) == 0


def test_only_arrears_can_be_converted_into_debt() -> None:
    ledger = _ledger()
    _use(ledger, "u1", 800)
    assert _rejected(convert_arrears_to_debt(ledger, CUSTOMER, "A1", 801, AT)) is PaymentReason.EXCEEDS_ARREARS
    converted = convert_arrears_to_debt(ledger, CUSTOMER, "A1", 800, AT)
    assert isinstance(converted, Applied)
    assert converted.balances == CustomerBalances(0, 0, 800)
    assert _rejected(convert_arrears_to_debt(ledger, CUSTOMER, "A2", 1, AT)) is PaymentReason.EXCEEDS_ARREARS


# --------------------------------------------------------------------------- stateful: ledger + payments vs a model

CUSTOMERS = {
    "c0": (0, PaymentTerms(emergency_credit_fen=0, debt_recovery_bps=0)),
    "c1": (1_000, PaymentTerms(emergency_credit_fen=3_000, debt_recovery_bps=1_000)),
    "c2": (5_000, PaymentTerms(emergency_credit_fen=2_000, debt_recovery_bps=3_333)),
}
CHANNELS = ("wechat", "alipay", "counter")
MAX_POSTING_FEN = 50_000
BASE = datetime(2026, 3, 1, tzinfo=CST)
# the first two are the same instant written in two zones
TIMES = (BASE, BASE.astimezone(UTC), BASE + timedelta(hours=1))
AMOUNTS = (1, 999, 3_000, 10_000, 49_999, MAX_POSTING_FEN + 1)


@dataclass
class ModelTopUp:
    customer: str
    amount_fen: int
    paid_at: datetime
    split: Split
    reversal: tuple[datetime, str] | None = None


class PaymentsMachine(RuleBasedStateMachine):
    """Random payments, duplicates and conflicts against a dict of balances computed the simple way."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger(max_posting_fen=MAX_POSTING_FEN)
        assert self.ledger.open_accounts(house_accounts(CHANNELS)) is None
        for customer, (limit_fen, _) in CUSTOMERS.items():
            assert self.ledger.open_accounts(customer_accounts(customer, credit_limit_fen=limit_fen)) is None
        self.balances = {a.account_id: 0 for a in self.ledger.accounts()}
        # assets grow with debits; the prepaid balances, revenue and refunds payable with credits
        self.debit_normal = {cash_in_transit_account_id(c) for c in CHANNELS} | {
            f(c) for c in CUSTOMERS for f in (emergency_credit_account_id, debt_account_id)
        }
        self.top_ups: dict[tuple[str, str], ModelTopUp] = {}
        self.usages: dict[str, tuple[str, int]] = {}
        self.lends: dict[str, datetime] = {}
        self.refunds: dict[tuple[str, str], tuple[int, datetime]] = {}
        self.payouts: dict[tuple[str, str], tuple[str, datetime]] = {}
        self.conversions: dict[tuple[str, str], int] = {}

    def _move(self, debit: str, credit: str, amount_fen: int) -> None:
        self.balances[debit] += amount_fen if debit in self.debit_normal else -amount_fen
        self.balances[credit] += -amount_fen if credit in self.debit_normal else amount_fen

    def _customer_balances(self, customer: str) -> CustomerBalances:
        return CustomerBalances(
            self.balances[prepaid_account_id(customer)],
            self.balances[emergency_credit_account_id(customer)],
            self.balances[debt_account_id(customer)],
        )

    def _snapshot(self) -> tuple[int, dict[str, int]]:
        return len(self.ledger.postings()), {a: self.ledger.balance_fen(a) for a in self.balances}

    # ------------------------------------------------------------------ top-ups

    @rule(
        customer=st.sampled_from(sorted(CUSTOMERS)),
        channel=st.sampled_from(CHANNELS),
        txn=st.integers(0, 8).map(str),
        amount_fen=st.sampled_from(AMOUNTS),
        paid_at=st.sampled_from(TIMES),
    )
    def pay(self, customer: str, channel: str, txn: str, amount_fen: int, paid_at: datetime) -> None:
        self._pay(customer, channel, txn, amount_fen, paid_at)

    @precondition(lambda self: bool(self.top_ups))
    @rule(data=st.data())
    def deliver_a_top_up_again(self, data: st.DataObject) -> None:
        channel, txn = data.draw(st.sampled_from(sorted(self.top_ups)))
        known = self.top_ups[(channel, txn)]
        self._pay(known.customer, channel, txn, known.amount_fen, known.paid_at)

    def _pay(self, customer: str, channel: str, txn: str, amount_fen: int, paid_at: datetime) -> None:
        before = self._snapshot()
        outcome = top_up(self.ledger, TopUp(channel, txn, customer, amount_fen, paid_at), CUSTOMERS[customer][1])
        event(f"top_up: {type(outcome).__name__}")
        known = self.top_ups.get((channel, txn))
        if known is not None:
            differing = tuple(
                name
                for name, same in (
                    ("customer_id", known.customer == customer),
                    ("amount_fen", known.amount_fen == amount_fen),
                    ("paid_at", known.paid_at == paid_at),
                )
                if not same
            )
            if differing:
                assert outcome == Conflict(f"topup:{channel}:{txn}", differing)
            else:
                assert isinstance(outcome, AlreadyToppedUp)
                assert outcome.original.split == known.split
            assert self._snapshot() == before
            return
        if amount_fen > MAX_POSTING_FEN:
            assert _rejected(outcome) is LedgerReason.AMOUNT_TOO_LARGE
            assert self._snapshot() == before
            return
        prepaid = prepaid_account_id(customer)
        repaid = min(amount_fen, self.balances[emergency_credit_account_id(customer)])
        rest = amount_fen - repaid
        recovered = min(
            self.balances[debt_account_id(customer)], rest * CUSTOMERS[customer][1].debt_recovery_bps // 10_000
        )
        self._move(cash_in_transit_account_id(channel), prepaid, amount_fen)
        self._move(prepaid, emergency_credit_account_id(customer), repaid)
        self._move(prepaid, debt_account_id(customer), recovered)
        split = Split(repaid, recovered, rest - recovered)
        assert isinstance(outcome, ToppedUp), outcome
        assert outcome.split == split
        assert outcome.balances == self._customer_balances(customer)
        self.top_ups[(channel, txn)] = ModelTopUp(customer, amount_fen, paid_at, split)

    @rule(
        channel=st.sampled_from(CHANNELS),
        txn=st.integers(0, 8).map(str),
        at=st.sampled_from(TIMES),
        short_fen=st.sampled_from((0, 0, 0, 1)),
    )
    def reverse(self, channel: str, txn: str, at: datetime, short_fen: int) -> None:
        self._reverse(channel, txn, at, short_fen)

    @precondition(lambda self: bool(self.top_ups))
    @rule(data=st.data(), at=st.sampled_from(TIMES))
    def reverse_a_known_top_up(self, data: st.DataObject, at: datetime) -> None:
        channel, txn = data.draw(st.sampled_from(sorted(self.top_ups)))
        self._reverse(channel, txn, at, 0)

    def _reverse(self, channel: str, txn: str, at: datetime, short_fen: int) -> None:
        before = self._snapshot()
        known = self.top_ups.get((channel, txn))
        amount_fen = (known.amount_fen if known else 1_000) - short_fen
        outcome = reverse_top_up(self.ledger, TopUpReversal(channel, txn, amount_fen, at, f"rev-{txn}"))
        event(f"reverse_top_up: {type(outcome).__name__}")
        if known is None:
            assert _rejected(outcome) is PaymentReason.UNKNOWN_TOP_UP
        elif short_fen:
            assert _rejected(outcome) is PaymentReason.REVERSAL_AMOUNT_MISMATCH
        elif known.reversal is not None:
            if known.reversal == (at, f"rev-{txn}"):
                assert isinstance(outcome, AlreadyReversed)
                assert outcome.original.split == known.split
            else:
                assert outcome == Conflict(f"reversal:topup:{channel}:{txn}", ("reversed_at",))
        else:
            prepaid = prepaid_account_id(known.customer)
            self._move(emergency_credit_account_id(known.customer), prepaid, known.split.emergency_credit_repaid_fen)
            self._move(debt_account_id(known.customer), prepaid, known.split.debt_recovered_fen)
            self._move(prepaid, cash_in_transit_account_id(channel), known.amount_fen)
            known.reversal = (at, f"rev-{txn}")
            assert isinstance(outcome, Reversed), outcome
            assert outcome.split == known.split
            assert outcome.balances == self._customer_balances(known.customer)
            return
        assert self._snapshot() == before

    # ------------------------------------------------------------------ usage

    @rule(
        customer=st.sampled_from(sorted(CUSTOMERS)),
        meter=st.sampled_from(("M1", "M2")),
        interval=st.integers(0, 10),
        amount_fen=st.sampled_from((1, 250, 4_000, MAX_POSTING_FEN + 1)),
    )
    def use(self, customer: str, meter: str, interval: int, amount_fen: int) -> None:
        before = self._snapshot()
        posting_id = f"usage:{meter}:{interval}"
        at = BASE + timedelta(minutes=15 * interval)
        outcome = self.ledger.post(usage_posting(customer, posting_id, amount_fen, at))
        event(f"usage: {type(outcome).__name__}")
        known = self.usages.get(posting_id)
        # the ledger validates a posting before it looks its id up
        if amount_fen > MAX_POSTING_FEN:
            assert _rejected(outcome) is LedgerReason.AMOUNT_TOO_LARGE
            assert self._snapshot() == before
        elif known is not None:
            differing = tuple(
                name
                for name, same in (("debit_account_id", known[0] == customer), ("amount_fen", known[1] == amount_fen))
                if not same
            )
            if differing:
                assert outcome == Conflict(posting_id, differing)
            else:
                assert isinstance(outcome, AlreadyPosted)
            assert self._snapshot() == before
        else:
            assert isinstance(outcome, Posted), outcome
            self._move(prepaid_account_id(customer), REVENUE_ACCOUNT_ID, amount_fen)
            self.usages[posting_id] = (customer, amount_fen)

    # ------------------------------------------------------------------ emergency credit, arrears, refunds

    @rule(customer=st.sampled_from(sorted(CUSTOMERS)), lend_no=st.integers(0, 3), at=st.sampled_from(TIMES))
    def lend(self, customer: str, lend_no: int, at: datetime) -> None:
        before = self._snapshot()
        terms = CUSTOMERS[customer][1]
        posting_id = f"emergency_credit:{customer}:L{lend_no}"
        outcome = lend_emergency_credit(self.ledger, customer, f"L{lend_no}", terms, at)
        event(f"lend: {type(outcome).__name__}")
        known = self.lends.get(posting_id)
        if known is not None:
            if known == at:
                assert isinstance(outcome, AlreadyApplied)
            else:
                assert outcome == Conflict(posting_id, ("at",))
        elif terms.emergency_credit_fen == 0:
            assert _rejected(outcome) is PaymentReason.EMERGENCY_CREDIT_DISABLED
        elif self.balances[emergency_credit_account_id(customer)] > 0:
            assert _rejected(outcome) is PaymentReason.EMERGENCY_CREDIT_OUTSTANDING
        else:
            self._move(emergency_credit_account_id(customer), prepaid_account_id(customer), terms.emergency_credit_fen)
            self.lends[posting_id] = at
            assert isinstance(outcome, Applied), outcome
            assert outcome.balances == self._customer_balances(customer)
            return
        assert self._snapshot() == before

    @rule(customer=st.sampled_from(sorted(CUSTOMERS)), no=st.integers(0, 3), extra_fen=st.sampled_from((0, 1)))
    def convert_arrears(self, customer: str, no: int, extra_fen: int) -> None:
        self._convert_arrears(customer, no, max(1, -self.balances[prepaid_account_id(customer)]) + extra_fen)

    @precondition(lambda self: bool(self.conversions))
    @rule(data=st.data())
    def convert_the_same_arrears_again(self, data: st.DataObject) -> None:
        customer, conversion_id = data.draw(st.sampled_from(sorted(self.conversions)))
        self._convert_arrears(customer, int(conversion_id[1:]), self.conversions[(customer, conversion_id)])

    def _convert_arrears(self, customer: str, no: int, amount_fen: int) -> None:
        before = self._snapshot()
        arrears = max(0, -self.balances[prepaid_account_id(customer)])
        outcome = convert_arrears_to_debt(self.ledger, customer, f"A{no}", amount_fen, BASE)
        event(f"arrears: {type(outcome).__name__}")
        known = self.conversions.get((customer, f"A{no}"))
        if known is not None:
            if known == amount_fen:
                assert isinstance(outcome, AlreadyApplied)
            else:
                assert outcome == Conflict(f"arrears_to_debt:{customer}:A{no}", ("amount_fen",))
        elif amount_fen > arrears:
            assert _rejected(outcome) is PaymentReason.EXCEEDS_ARREARS
        elif amount_fen > MAX_POSTING_FEN:
            assert _rejected(outcome) is LedgerReason.AMOUNT_TOO_LARGE
        else:
            self._move(debt_account_id(customer), prepaid_account_id(customer), amount_fen)
            self.conversions[(customer, f"A{no}")] = amount_fen
            assert isinstance(outcome, Applied), outcome
            return
        assert self._snapshot() == before

    @rule(customer=st.sampled_from(sorted(CUSTOMERS)), no=st.integers(0, 2), extra_fen=st.sampled_from((0, 1)))
    def grant_refund(self, customer: str, no: int, extra_fen: int) -> None:
        self._refund(customer, no, max(1, self.balances[prepaid_account_id(customer)]) + extra_fen)

    @precondition(lambda self: bool(self.refunds))
    @rule(data=st.data(), extra_fen=st.sampled_from((0, 0, 1)))
    def request_a_refund_again(self, data: st.DataObject, extra_fen: int) -> None:
        customer, refund_id = data.draw(st.sampled_from(sorted(self.refunds)))
        self._refund(customer, int(refund_id[1:]), self.refunds[(customer, refund_id)][0] + extra_fen)

    def _refund(self, customer: str, no: int, amount_fen: int) -> None:
        before = self._snapshot()
        owed = self._customer_balances(customer)
        outcome = refund(self.ledger, customer, f"R{no}", amount_fen, BASE)
        event(f"refund: {type(outcome).__name__}")
        known = self.refunds.get((customer, f"R{no}"))
        if known is not None:
            if known[0] == amount_fen:
                assert isinstance(outcome, AlreadyApplied)
            else:
                assert outcome == Conflict(f"refund:{customer}:R{no}", ("amount_fen",))
        elif owed.emergency_credit_fen or owed.debt_fen:
            assert _rejected(outcome) is PaymentReason.DEBT_OUTSTANDING
        elif amount_fen > owed.prepaid_fen:
            assert _rejected(outcome) is PaymentReason.INSUFFICIENT_BALANCE
        elif amount_fen > MAX_POSTING_FEN:
            assert _rejected(outcome) is LedgerReason.AMOUNT_TOO_LARGE
        else:
            self._move(prepaid_account_id(customer), REFUNDS_PAYABLE_ACCOUNT_ID, amount_fen)
            self.refunds[(customer, f"R{no}")] = (amount_fen, BASE)
            assert isinstance(outcome, Applied), outcome
            return
        assert self._snapshot() == before

    @rule(
        customer=st.sampled_from(sorted(CUSTOMERS)),
        no=st.integers(0, 2),
        channel=st.sampled_from(CHANNELS),
        at=st.sampled_from(TIMES),
    )
    def pay_out(self, customer: str, no: int, channel: str, at: datetime) -> None:
        self._pay_out(customer, no, channel, at)

    @precondition(lambda self: bool(self.refunds))
    @rule(data=st.data(), channel=st.sampled_from(CHANNELS), at=st.sampled_from(TIMES))
    def pay_out_a_known_refund(self, data: st.DataObject, channel: str, at: datetime) -> None:
        customer, refund_id = data.draw(st.sampled_from(sorted(self.refunds)))
        self._pay_out(customer, int(refund_id[1:]), channel, at)

    @precondition(lambda self: bool(self.payouts))
    @rule(data=st.data())
    def confirm_a_payout_again(self, data: st.DataObject) -> None:
        customer, refund_id = data.draw(st.sampled_from(sorted(self.payouts)))
        self._pay_out(customer, int(refund_id[1:]), *self.payouts[(customer, refund_id)])

    def _pay_out(self, customer: str, no: int, channel: str, at: datetime) -> None:
        before = self._snapshot()
        outcome = pay_out_refund(self.ledger, customer, f"R{no}", channel, at)
        event(f"pay_out: {type(outcome).__name__}")
        granted = self.refunds.get((customer, f"R{no}"))
        known = self.payouts.get((customer, f"R{no}"))
        if granted is None:
            assert _rejected(outcome) is PaymentReason.UNKNOWN_REFUND
        elif known is not None:
            differing = tuple(
                name for name, same in (("credit_account_id", known[0] == channel), ("at", known[1] == at)) if not same
            )
            if differing:
                assert outcome == Conflict(f"refund_payout:{customer}:R{no}", differing)
            else:
                assert isinstance(outcome, AlreadyApplied)
        else:
            self._move(REFUNDS_PAYABLE_ACCOUNT_ID, cash_in_transit_account_id(channel), granted[0])
            self.payouts[(customer, f"R{no}")] = (channel, at)
            assert isinstance(outcome, Applied), outcome
            return
        assert self._snapshot() == before

    # ------------------------------------------------------------------ invariants

    @invariant()
    def ledger_is_balanced(self) -> None:
        check_invariants(self.ledger)

    @invariant()
    def ledger_matches_the_model(self) -> None:
        assert {a: self.ledger.balance_fen(a) for a in self.balances} == self.balances

    @invariant()
    def receivables_never_go_negative(self) -> None:
        for customer in CUSTOMERS:
            owed = customer_balances(self.ledger, customer)
            assert owed.emergency_credit_fen >= 0
            assert owed.debt_fen >= 0


PaymentsMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestPaymentsMachine = PaymentsMachine.TestCase
