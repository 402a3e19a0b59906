"""The double-entry ledger: chart of accounts, idempotent postings, conflicts, limits, reversals, invariants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from prepay_engine.ledger import (
    MAX_BATCH_POSTINGS,
    MAX_BIGINT,
    MAX_REFERENCE_CHARS,
    REFUNDS_PAYABLE_ACCOUNT_ID,
    REVENUE_ACCOUNT_ID,
    Account,
    AccountAlreadyOpen,
    AccountKind,
    AccountOpened,
    AlreadyPosted,
    CheckedBatch,
    Conflict,
    Ledger,
    LedgerReason,
    Posted,
    Posting,
    PostingKind,
    Rejected,
    Side,
    cash_in_transit_account_id,
    check_batch,
    check_invariants,
    customer_accounts,
    debt_account_id,
    emergency_credit_account_id,
    house_accounts,
    prepaid_account_id,
    usage_posting,
)

CST = timezone(timedelta(hours=8))
AT = datetime(2026, 3, 1, 8, 0, tzinfo=CST)
CUSTOMER = "c-1"
PREPAID = prepaid_account_id(CUSTOMER)
EMERGENCY = emergency_credit_account_id(CUSTOMER)
DEBT = debt_account_id(CUSTOMER)
WECHAT = cash_in_transit_account_id("wechat")
CREDIT_LIMIT_FEN = 1_000


def _ledger(max_posting_fen: int = 1_000_000) -> Ledger:
    ledger = Ledger(max_posting_fen=max_posting_fen)
    accounts = (*house_accounts(["wechat", "alipay"]), *customer_accounts(CUSTOMER, credit_limit_fen=CREDIT_LIMIT_FEN))
    assert ledger.open_accounts(accounts) is None
    return ledger


def _top_up(posting_id: str, amount_fen: int, /, **changes: object) -> Posting:
    fields: dict[str, object] = {
        "posting_id": posting_id,
        "debit_account_id": WECHAT,
        "credit_account_id": PREPAID,
        "amount_fen": amount_fen,
        "kind": PostingKind.TOP_UP,
        "at": AT,
        "reference": "420000" + posting_id,
    }
    fields.update(changes)
    return Posting(**fields)  # type: ignore[arg-type]


def _snapshot(ledger: Ledger) -> tuple[tuple[Posting, ...], dict[str, int]]:
    return ledger.postings(), {a.account_id: ledger.balance_fen(a.account_id) for a in ledger.accounts()}


def _reason(outcome: object) -> object:
    assert isinstance(outcome, Rejected), outcome
    return outcome.reason


# --------------------------------------------------------------------------- chart of accounts


def test_chart_of_accounts_ids_normal_sides_and_floors() -> None:
    prepaid, emergency, debt = customer_accounts("c-9", credit_limit_fen=500)
    assert (prepaid.account_id, prepaid.normal_side, prepaid.floor_fen) == ("customer:c-9:prepaid", Side.CREDIT, -500)
    assert (emergency.account_id, emergency.normal_side, emergency.floor_fen) == (
        "customer:c-9:emergency_credit",
        Side.DEBIT,
        0,
    )
    assert (debt.account_id, debt.normal_side, debt.floor_fen) == ("customer:c-9:debt", Side.DEBIT, 0)
    revenue, refunds, cash = house_accounts(["bank"])
    assert (revenue.account_id, revenue.normal_side, revenue.floor_fen) == (REVENUE_ACCOUNT_ID, Side.CREDIT, None)
    assert (refunds.account_id, refunds.normal_side, refunds.floor_fen) == (REFUNDS_PAYABLE_ACCOUNT_ID, Side.CREDIT, 0)
    assert (cash.account_id, cash.normal_side, cash.floor_fen) == ("cash_in_transit:bank", Side.DEBIT, None)


def test_opening_an_account_is_idempotent_and_a_different_definition_conflicts() -> None:
    ledger = Ledger()
    account = Account("customer:x:prepaid", AccountKind.CUSTOMER_PREPAID, -100)
    assert ledger.open_account(account) == AccountOpened(account)
    assert ledger.open_account(account) == AccountAlreadyOpen(account)
    changed = Account("customer:x:prepaid", AccountKind.CUSTOMER_PREPAID, -200)
    assert ledger.open_account(changed) == Conflict("customer:x:prepaid", ("floor_fen",))
    assert ledger.account("customer:x:prepaid") == account


def test_opening_several_accounts_is_all_or_nothing() -> None:
    ledger = Ledger()
    good = Account("revenue:electricity", AccountKind.REVENUE)
    bad = Account("has space", AccountKind.REVENUE)
    assert _reason(ledger.open_accounts([good, bad])) is LedgerReason.INVALID_ID
    assert ledger.accounts() == ()
    twice = [good, Account("revenue:electricity", AccountKind.CASH_IN_TRANSIT)]
    assert ledger.open_accounts(twice) == Conflict("revenue:electricity", ("kind",))
    assert ledger.accounts() == ()


@pytest.mark.parametrize("floor_fen", [1, -(2**63)])
def test_an_account_floor_must_admit_a_zero_opening_balance(floor_fen: int) -> None:
    outcome = Ledger().open_account(Account("a", AccountKind.CUSTOMER_PREPAID, floor_fen))
    assert _reason(outcome) is LedgerReason.INVALID_FLOOR


def test_the_posting_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_posting_fen"):
        Ledger(max_posting_fen=0)


# --------------------------------------------------------------------------- posting, balances, history


def test_a_posting_moves_money_from_debit_to_credit_by_normal_side() -> None:
    ledger = _ledger()
    outcome = ledger.post(_top_up("t1", 10_000))
    assert isinstance(outcome, Posted)
    assert dict(outcome.balances_fen) == {WECHAT: 10_000, PREPAID: 10_000}
    assert ledger.post(usage_posting(CUSTOMER, "usage:m1:0", 2_345, AT + timedelta(minutes=15))) == Posted(
        (usage_posting(CUSTOMER, "usage:m1:0", 2_345, AT + timedelta(minutes=15)),),
        {PREPAID: 7_655, REVENUE_ACCOUNT_ID: 2_345},
    )
    assert ledger.balance_fen(PREPAID) == 7_655
    assert ledger.totals_fen(PREPAID) == (2_345, 10_000)
    assert ledger.balance_fen(WECHAT) == 10_000
    assert ledger.totals_fen(WECHAT) == (10_000, 0)
    assert ledger.balance_fen(REVENUE_ACCOUNT_ID) == 2_345
    check_invariants(ledger)


def test_history_lists_every_posting_of_an_account_with_running_balance() -> None:
    ledger = _ledger()
    ledger.post(_top_up("t1", 500))
    ledger.post(usage_posting(CUSTOMER, "u1", 800, AT))
    ledger.post(_top_up("t2", 1_000, debit_account_id=cash_in_transit_account_id("alipay")))
    history = ledger.history(PREPAID)
    assert [(e.seq, e.posting.posting_id, e.side, e.delta_fen, e.balance_after_fen) for e in history] == [
        (0, "t1", Side.CREDIT, 500, 500),
        (1, "u1", Side.DEBIT, -800, -300),
        (2, "t2", Side.CREDIT, 1_000, 700),
    ]
    assert [e.posting.posting_id for e in ledger.history(REVENUE_ACCOUNT_ID)] == ["u1"]
    assert ledger.balance_fen(PREPAID, after_posting_id="u1") == -300
    # an account untouched by a posting reports its balance as of that posting
    assert ledger.balance_fen(REVENUE_ACCOUNT_ID, after_posting_id="t1") == 0
    assert ledger.balance_fen(REVENUE_ACCOUNT_ID, after_posting_id="t2") == 800
    with pytest.raises(KeyError):
        ledger.balance_fen(PREPAID, after_posting_id="nope")
    with pytest.raises(KeyError):
        ledger.balance_fen("nope")


# --------------------------------------------------------------------------- idempotency


def test_a_retry_with_the_same_fields_is_a_no_op_returning_the_original() -> None:
    ledger = _ledger()
    posting = _top_up("t1", 10_000)
    ledger.post(posting)
    before = _snapshot(ledger)
    retry = _top_up("t1", 10_000)
    # the same instant written in another zone is the same time
    retry_utc = _top_up("t1", 10_000, at=AT.astimezone(UTC))
    assert ledger.post(retry) == AlreadyPosted((posting,))
    assert ledger.post(retry_utc) == AlreadyPosted((posting,))
    assert _snapshot(ledger) == before
    check_invariants(ledger)


def test_the_same_id_with_different_fields_is_a_conflict_naming_them() -> None:
    ledger = _ledger()
    ledger.post(_top_up("t1", 10_000))
    before = _snapshot(ledger)
    assert ledger.post(_top_up("t1", 10_001)) == Conflict("t1", ("amount_fen",))
    outcome = ledger.post(_top_up("t1", 9_000, at=AT + timedelta(seconds=1), reference="other"))
    assert outcome == Conflict("t1", ("amount_fen", "at", "reference"))
    assert isinstance(outcome, Conflict)
    assert outcome.reason == "t1 already exists with a different amount_fen, at, reference"
    other_kind = usage_posting(CUSTOMER, "t1", 10_000, AT)
    assert ledger.post(other_kind) == Conflict(
        "t1", ("debit_account_id", "credit_account_id", "kind", "reference", "overdraw")
    )
    assert _snapshot(ledger) == before


def test_a_batch_is_all_or_nothing() -> None:
    ledger = _ledger()
    # the usage fits, the adjustment below the floor does not: neither is applied
    adjustment = Posting("adj", PREPAID, REVENUE_ACCOUNT_ID, CREDIT_LIMIT_FEN + 1, PostingKind.ADJUSTMENT, AT)
    outcome = ledger.post_all([usage_posting(CUSTOMER, "u1", 10, AT), adjustment])
    assert _reason(outcome) is LedgerReason.BELOW_FLOOR
    assert ledger.postings() == ()
    assert ledger.balance_fen(PREPAID) == 0
    check_invariants(ledger)


def test_a_retried_batch_is_a_no_op_and_a_regrouped_one_is_rejected() -> None:
    ledger = _ledger()
    batch = [_top_up("t1", 100), _top_up("t2", 200)]
    assert isinstance(ledger.post_all(batch), Posted)
    assert ledger.post_all(batch) == AlreadyPosted(tuple(batch))
    assert ledger.post(batch[1]) == AlreadyPosted((batch[1],))
    assert _reason(ledger.post_all([batch[0], _top_up("t3", 300)])) is LedgerReason.PARTIALLY_POSTED
    assert ledger.posting("t3") is None
    assert ledger.balance_fen(PREPAID) == 300


def test_batch_limits() -> None:
    ledger = _ledger()
    assert _reason(ledger.post_all([])) is LedgerReason.EMPTY_BATCH
    too_many = [_top_up(f"t{i}", 1) for i in range(MAX_BATCH_POSTINGS + 1)]
    assert _reason(ledger.post_all(too_many)) is LedgerReason.BATCH_TOO_LARGE
    assert isinstance(ledger.post_all(too_many[:MAX_BATCH_POSTINGS]), Posted)
    assert _reason(ledger.post_all([_top_up("x", 1), _top_up("x", 1)])) is LedgerReason.DUPLICATE_IN_BATCH


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"amount_fen": 0}, LedgerReason.INVALID_AMOUNT),
        ({"amount_fen": -5}, LedgerReason.INVALID_AMOUNT),
        ({"amount_fen": True}, LedgerReason.INVALID_AMOUNT),
        ({"amount_fen": 1_000_001}, LedgerReason.AMOUNT_TOO_LARGE),
        ({"at": datetime(2026, 3, 1, 8, 0)}, LedgerReason.NAIVE_TIME),  # noqa: DTZ001
        ({"posting_id": ""}, LedgerReason.INVALID_ID),
        ({"posting_id": "has space"}, LedgerReason.INVALID_ID),
        ({"posting_id": "x" * 161}, LedgerReason.INVALID_ID),
        ({"reference": "r" * (MAX_REFERENCE_CHARS + 1)}, LedgerReason.INVALID_REFERENCE),
        ({"credit_account_id": WECHAT}, LedgerReason.SAME_ACCOUNT),
        ({"credit_account_id": "customer:nobody:prepaid"}, LedgerReason.UNKNOWN_ACCOUNT),
        ({"debit_account_id": "cash_in_transit:paypal"}, LedgerReason.UNKNOWN_ACCOUNT),
        ({"debit_account_id": REVENUE_ACCOUNT_ID}, LedgerReason.WRONG_ACCOUNTS_FOR_KIND),
        ({"kind": PostingKind.USAGE}, LedgerReason.WRONG_ACCOUNTS_FOR_KIND),
        ({"reverses": "t0"}, LedgerReason.REVERSES_NOT_ALLOWED),
        ({"kind": PostingKind.REVERSAL}, LedgerReason.REVERSES_NOT_ALLOWED),
        ({"overdraw": True}, LedgerReason.OVERDRAW_NOT_ALLOWED),
    ],
)
def test_invalid_postings_are_rejected_with_a_reason(changes: dict[str, object], reason: LedgerReason) -> None:
    ledger = _ledger()
    outcome = ledger.post(_top_up("t1", 100, **changes))
    assert isinstance(outcome, Rejected)
    assert outcome.reason is reason
    assert outcome.detail
    assert ledger.postings() == ()


def test_the_amount_limit_is_inclusive_and_configurable() -> None:
    ledger = _ledger(max_posting_fen=5_000)
    assert isinstance(ledger.post(_top_up("t1", 5_000)), Posted)
    assert _reason(ledger.post(_top_up("t2", 5_001))) is LedgerReason.AMOUNT_TOO_LARGE
    assert ledger.max_posting_fen == 5_000


def test_totals_may_not_overflow_a_bigint() -> None:
    ledger = _ledger(max_posting_fen=MAX_BIGINT)
    assert isinstance(ledger.post(_top_up("t1", MAX_BIGINT - 1)), Posted)
    assert isinstance(ledger.post(_top_up("t2", 1)), Posted)
    assert _reason(ledger.post(_top_up("t3", 1))) is LedgerReason.OVERFLOW
    assert ledger.balance_fen(PREPAID) == MAX_BIGINT
    check_invariants(ledger)


# --------------------------------------------------------------------------- floors and overdraw


def test_a_customer_may_go_down_to_the_credit_limit_and_not_below_without_overdraw() -> None:
    ledger = _ledger()
    at_limit = Posting("adj1", PREPAID, REVENUE_ACCOUNT_ID, CREDIT_LIMIT_FEN, PostingKind.ADJUSTMENT, AT)
    assert isinstance(ledger.post(at_limit), Posted)
    assert ledger.balance_fen(PREPAID) == -CREDIT_LIMIT_FEN
    one_more = Posting("adj2", PREPAID, REVENUE_ACCOUNT_ID, 1, PostingKind.ADJUSTMENT, AT)
    outcome = ledger.post(one_more)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is LedgerReason.BELOW_FLOOR
    assert "-1001" in outcome.detail
    not_flagged = Posting("u1", PREPAID, REVENUE_ACCOUNT_ID, 1, PostingKind.USAGE, AT)
    assert _reason(ledger.post(not_flagged)) is LedgerReason.BELOW_FLOOR


def test_usage_flagged_to_overdraw_always_posts() -> None:
    ledger = _ledger()
    assert isinstance(ledger.post(usage_posting(CUSTOMER, "u1", 50_000, AT)), Posted)
    assert ledger.balance_fen(PREPAID) == -50_000
    check_invariants(ledger)


def test_an_overdrawn_account_can_still_be_credited_but_not_debited_without_overdraw() -> None:
    ledger = _ledger()
    ledger.post(usage_posting(CUSTOMER, "u1", 5_000, AT))
    assert isinstance(ledger.post(_top_up("t1", 100)), Posted)
    adjustment = Posting("adj", PREPAID, REVENUE_ACCOUNT_ID, 1, PostingKind.ADJUSTMENT, AT)
    assert _reason(ledger.post(adjustment)) is LedgerReason.BELOW_FLOOR


def _repay(posting_id: str, amount_fen: int, *, overdraw: bool = True) -> Posting:
    return Posting(
        posting_id, PREPAID, EMERGENCY, amount_fen, PostingKind.EMERGENCY_CREDIT_REPAY, AT, overdraw=overdraw
    )


def _lend(posting_id: str, amount_fen: int) -> Posting:
    return Posting(posting_id, EMERGENCY, PREPAID, amount_fen, PostingKind.EMERGENCY_CREDIT_LEND, AT)


def test_carve_outs_may_overdraw_only_within_an_earlier_top_up_of_the_batch() -> None:
    ledger = _ledger()
    ledger.post(_lend("lend", 3_000))
    ledger.post(usage_posting(CUSTOMER, "u1", 10_000, AT))
    assert ledger.balance_fen(PREPAID) == -7_000
    # alone, even flagged, a repayment can't push the balance further below the floor
    assert _reason(ledger.post(_repay("r0", 3_000))) is LedgerReason.OVERDRAW_NOT_ALLOWED
    assert _reason(ledger.post(_repay("r0", 3_000, overdraw=False))) is LedgerReason.BELOW_FLOOR
    # carve-outs larger than the top-up before them
    too_big = [_top_up("t1", 2_000), _repay("t1:r", 1_500), _debt_recovery("t1:d", 600)]
    assert _reason(ledger.post_all(too_big)) is LedgerReason.OVERDRAW_NOT_ALLOWED
    # the top-up after the carve-out does not count
    assert _reason(ledger.post_all([_repay("t1:r", 1_500), _top_up("t1", 2_000)])) is LedgerReason.OVERDRAW_NOT_ALLOWED
    assert isinstance(ledger.post_all([_top_up("t1", 2_000), _repay("t1:r", 2_000)]), Posted)
    assert ledger.balance_fen(PREPAID) == -7_000
    assert ledger.balance_fen(EMERGENCY) == 1_000
    check_invariants(ledger)


def _debt_recovery(posting_id: str, amount_fen: int) -> Posting:
    return Posting(posting_id, PREPAID, DEBT, amount_fen, PostingKind.DEBT_RECOVERY, AT, overdraw=True)


def test_receivables_have_hard_floors_that_overdraw_does_not_lift() -> None:
    ledger = _ledger()
    ledger.post(_lend("lend", 3_000))
    # overdraw applies to the debited prepaid account, never to the credited receivable
    outcome = ledger.post_all([_top_up("t1", 10_000), _repay("t1:r", 3_001)])
    assert isinstance(outcome, Rejected)
    assert outcome.reason is LedgerReason.BELOW_FLOOR
    assert EMERGENCY in outcome.detail
    assert _reason(ledger.post_all([_top_up("t1", 10_000), _debt_recovery("t1:d", 1)])) is LedgerReason.BELOW_FLOOR
    assert ledger.balance_fen(PREPAID) == 3_000


def test_refunds_payable_cannot_pay_out_more_than_was_granted() -> None:
    ledger = _ledger()
    ledger.post(_top_up("t1", 1_000))
    grant = Posting("refund", PREPAID, REFUNDS_PAYABLE_ACCOUNT_ID, 600, PostingKind.REFUND, AT)
    assert isinstance(ledger.post(grant), Posted)
    payout = Posting("payout", REFUNDS_PAYABLE_ACCOUNT_ID, WECHAT, 601, PostingKind.REFUND, AT)
    assert _reason(ledger.post(payout)) is LedgerReason.BELOW_FLOOR
    payout_ok = Posting("payout", REFUNDS_PAYABLE_ACCOUNT_ID, WECHAT, 600, PostingKind.REFUND, AT)
    assert isinstance(ledger.post(payout_ok), Posted)
    assert (ledger.balance_fen(REFUNDS_PAYABLE_ACCOUNT_ID), ledger.balance_fen(WECHAT)) == (0, 400)
    check_invariants(ledger)


# --------------------------------------------------------------------------- reversals


def _reversal(posting_id: str, original: Posting, /, **changes: object) -> Posting:
    fields: dict[str, object] = {
        "posting_id": posting_id,
        "debit_account_id": original.credit_account_id,
        "credit_account_id": original.debit_account_id,
        "amount_fen": original.amount_fen,
        "kind": PostingKind.REVERSAL,
        "at": AT + timedelta(days=1),
        "reverses": original.posting_id,
        "overdraw": True,
    }
    fields.update(changes)
    return Posting(**fields)  # type: ignore[arg-type]


def test_a_reversal_mirrors_the_original_and_may_overdraw() -> None:
    ledger = _ledger()
    top_up = _top_up("t1", 10_000)
    ledger.post(top_up)
    ledger.post(usage_posting(CUSTOMER, "u1", 4_000, AT))
    reversal = _reversal("rev:t1", top_up)
    assert ledger.post(reversal) == Posted((reversal,), {PREPAID: -4_000, WECHAT: 0})
    assert ledger.reversal_of("t1") == reversal
    assert ledger.reversal_of("u1") is None
    assert ledger.post(reversal) == AlreadyPosted((reversal,))
    assert _reason(ledger.post(_reversal("rev2:t1", top_up))) is LedgerReason.ALREADY_REVERSED
    check_invariants(ledger)


@pytest.mark.parametrize(
    "changes",
    [
        {"amount_fen": 9_999},
        {"debit_account_id": WECHAT, "credit_account_id": PREPAID},
        {"credit_account_id": cash_in_transit_account_id("alipay")},
    ],
)
def test_a_reversal_must_swap_the_accounts_and_keep_the_amount(changes: dict[str, object]) -> None:
    ledger = _ledger()
    top_up = _top_up("t1", 10_000)
    ledger.post(top_up)
    assert _reason(ledger.post(_reversal("rev:t1", top_up, **changes))) is LedgerReason.REVERSAL_MISMATCH
    assert ledger.reversal_of("t1") is None


def test_reversals_of_unknown_postings_of_reversals_and_twice_in_a_batch_are_rejected() -> None:
    ledger = _ledger()
    top_up = _top_up("t1", 10_000)
    assert _reason(ledger.post(_reversal("rev:t1", top_up))) is LedgerReason.UNKNOWN_POSTING
    ledger.post(top_up)
    twice = [_reversal("rev:t1", top_up), _reversal("rev2:t1", top_up)]
    assert _reason(ledger.post_all(twice)) is LedgerReason.ALREADY_REVERSED
    reversal = _reversal("rev:t1", top_up)
    ledger.post(reversal)
    assert _reason(ledger.post(_reversal("rev:rev:t1", reversal))) is LedgerReason.REVERSAL_MISMATCH
    check_invariants(ledger)


# --------------------------------------------------------------------------- the checks without a ledger


def test_check_batch_applies_the_rules_to_given_totals_and_reports_what_the_batch_leaves() -> None:
    ledger = _ledger()
    accounts = {a.account_id: a for a in ledger.accounts()}
    # the emergency credit receivable stands at 400 fen, the prepaid balance at -400
    totals = {WECHAT: (0, 0), PREPAID: (400, 0), EMERGENCY: (400, 0)}
    batch = [_top_up("t1", 1_000), _repay("t1:repay", 400)]
    assert check_batch(batch, accounts, totals, {}, set()) == CheckedBatch(
        totals_fen={WECHAT: (1_000, 0), PREPAID: (800, 1_000), EMERGENCY: (400, 400)},
        balances_fen={WECHAT: 1_000, PREPAID: 200, EMERGENCY: 0},
        balances_after_fen=((1_000, 600), (200, 0)),
    )
    assert _reason(check_batch([_repay("r", 401)], accounts, totals, {}, set())) is LedgerReason.OVERDRAW_NOT_ALLOWED
    target = _top_up("t0", 5)
    reversal = _reversal("rev", target)
    assert _reason(check_batch([reversal], accounts, totals, {"t0": target}, {"t0"})) is LedgerReason.ALREADY_REVERSED
    assert _reason(check_batch([reversal], accounts, totals, {}, set())) is LedgerReason.UNKNOWN_POSTING
    # the totals given are all it knows: a ledger's own balances play no part
    assert ledger.postings() == ()


# --------------------------------------------------------------------------- the invariant helper can fail


def test_check_invariants_detects_one_sided_entries() -> None:
    ledger = _ledger()
    ledger.post(_top_up("t1", 100))
    check_invariants(ledger)
    ledger._credits_fen[PREPAID] += 1  # corrupt on purpose
    with pytest.raises(AssertionError, match="debits != credits"):
        check_invariants(ledger)


def test_check_invariants_detects_a_balance_that_is_not_the_sum_of_its_postings() -> None:
    ledger = _ledger()
    ledger.post(_top_up("t1", 100))
    # balanced on both sides, but not what the postings say
    ledger._credits_fen[PREPAID] += 1
    ledger._debits_fen[WECHAT] += 1
    with pytest.raises(AssertionError, match="!= Σ its postings"):
        check_invariants(ledger)


def test_check_invariants_detects_a_wrong_running_balance() -> None:
    ledger = _ledger()
    ledger.post(_top_up("t1", 100))
    ledger._history[PREPAID].clear()
    with pytest.raises(AssertionError, match="history"):
        check_invariants(ledger)
