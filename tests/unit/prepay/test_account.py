"""The prepaid account aggregate: exact examples of charging, payments, notices and relay commands together.

Default account: customer A-1 on the EXAMPLE Jiangsu tiered time-of-use tariff (peak 08:00-21:00 at 0.5583,
valley 21:00-08:00 at 0.3583 yuan/kWh, first tier), warnings at ¥30 and ¥10, disconnect at ¥0 after a two-hour
notice period, never at night (22:00-08:00), on weekends or public holidays. Tuesday 2026-03-10 is a working day.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, TypeVar

import pytest

from prepay_engine.account import (
    AccountReason,
    CommandOutcomeRecorded,
    NotificationKind,
    PrepaidAccount,
    ReadingsApplied,
    Refused,
    RelayAction,
    RelayCommand,
    RelayOutcome,
    Step,
    command_request_id,
    open_account,
)
from prepay_engine.calendar import DayInfo, UnknownDay
from prepay_engine.ledger import (
    REVENUE_ACCOUNT_ID,
    Conflict,
    Ledger,
    LedgerReason,
    Posted,
    PostingKind,
    Rejected,
    check_invariants,
    emergency_credit_account_id,
    house_accounts,
    prepaid_account_id,
    usage_posting,
)
from prepay_engine.payments import (
    AlreadyToppedUp,
    PaymentReason,
    PaymentTerms,
    Split,
    ToppedUp,
    TopUp,
    TopUpReversal,
)
from prepay_engine.policy import (
    Disconnect,
    DisconnectDeferred,
    FriendlyCreditWindows,
    PendingCommand,
    PolicyConfig,
    ReasonCode,
    SentWarning,
    SupplyState,
)
from prepay_engine.tariffs import SHANGHAI, example_jiangsu_residential
from prepay_engine.usage import INTERVAL, AnomalyKind, MeterRegister, MeterReplacement, RegisterReading

JIANGSU = example_jiangsu_residential()
POLICY = PolicyConfig(
    name="test: nights 22-08, working days only, 2 h notice",
    warning_thresholds_fen=(3_000, 1_000),
    disconnect_threshold_fen=0,
    notice_period=dt.timedelta(hours=2),
    friendly=FriendlyCreditWindows(
        night_start=dt.time(22), night_end=dt.time(8), weekends=True, public_holidays=True, eve_of_public_holidays=False
    ),
)
NO_NOTICE = dataclasses.replace(POLICY, notice_period=dt.timedelta(0))
S = TypeVar("S", bound=Step)


def local(month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, tzinfo=SHANGHAI)


OPENED = local(3, 10)  # Tuesday 00:00
WORKDAY_10 = local(3, 10, 10)


def new_ledger() -> Ledger:
    ledger = Ledger()
    assert ledger.open_accounts(house_accounts(["wechat", "alipay"])) is None
    return ledger


def new_account(ledger: Ledger, account_id: str = "A-1", **options: Any) -> PrepaidAccount:
    opened = open_account(
        ledger,
        account_id,
        meter=MeterRegister("m-1" if account_id == "A-1" else f"m-{account_id}"),
        opened_at=OPENED,
        opening_register_wh=0,
        tariff=JIANGSU,
        terms=options.pop("terms", PaymentTerms()),
        policy=options.pop("policy", POLICY),
        **options,
    )
    assert isinstance(opened, PrepaidAccount), opened
    return opened


def ok(result: S | Refused) -> S:
    assert not isinstance(result, Refused), result
    return result


def pay(txn: str, amount_fen: int, at: dt.datetime, customer: str = "A-1", channel: str = "wechat") -> TopUp:
    return TopUp(channel, txn, customer, amount_fen, at)


def reading(ts: dt.datetime, register_wh: int, meter_id: str = "m-1") -> RegisterReading:
    return RegisterReading(meter_id, ts, register_wh)


def refused(result: object) -> Conflict | Rejected:
    assert isinstance(result, Refused), result
    return result.problem


def balance(ledger: Ledger, account_id: str = "A-1") -> int:
    return ledger.balance_fen(prepaid_account_id(account_id))


def codes(step: Step) -> set[ReasonCode]:
    return {r.code for action in step.decision.actions for r in action.reasons}


# --------------------------------------------------------------------------- a day on the Jiangsu tariff


def test_a_day_of_readings_drives_twenty_yuan_through_the_warnings_to_a_disconnect_and_a_top_up_reconnects() -> None:
    ledger = new_ledger()
    account = new_account(ledger)

    first = ok(account.apply_top_up(ledger, pay("T1", 2_000, OPENED), OPENED))
    # ¥20 is already below the ¥30 warning: the top-up opens episode 1
    assert [(n.request_id, n.kind, n.balance_fen) for n in first.notifications] == [
        ("notice:A-1:1:warning:3000", NotificationKind.LOW_BALANCE_WARNING, 2_000)
    ]
    account = first.account

    # 500 Wh every 15 minutes from 00:00, charged by a runner right after each reading
    seen: list[tuple[str, dt.datetime, int]] = []
    balances: dict[dt.datetime, int] = {}
    step: ReadingsApplied | None = None
    for k in range(1, 85):
        ts = OPENED + k * INTERVAL
        step = ok(account.apply_readings(ledger, [reading(ts, 500 * k)], ts, ts))
        assert step.commands == ()
        seen += [(n.request_id, n.requested_at, n.balance_fen) for n in step.notifications]
        balances[ts] = balance(ledger)
        account = step.account
    assert step is not None

    # 32 valley intervals: 16 kWh x 0.3583 = 5.7328 yuan -> 573 fen
    assert balances[local(3, 10, 8)] == 2_000 - 573
    # 16 peak intervals more: 5.7328 + 8 kWh x 0.5583 = 10.1992 -> 1020 fen; 15 would leave 1008
    assert balances[local(3, 10, 11, 45)] == 1_008
    # 52 peak intervals: 5.7328 + 26 kWh x 0.5583 = 20.2486 -> 2025 fen; 51 would leave 3 fen
    assert balances[local(3, 10, 20, 45)] == 3
    assert seen == [
        ("notice:A-1:1:warning:1000", local(3, 10, 12), 980),
        ("notice:A-1:1:zero_balance", local(3, 10, 21), -25),
    ]
    # the zero notice starts the two-hour notice period; 23:00 is in the night window: wait for 08:00
    deferred = step.decision.of(DisconnectDeferred)
    assert len(deferred) == 1
    assert codes(step) == {ReasonCode.CREDIT_EXHAUSTED, ReasonCode.NOTICE_PERIOD_RUNNING}
    assert step.wake_at == local(3, 11, 8)

    night = ok(account.decide(ledger, local(3, 10, 23)))
    assert night.commands == ()
    assert codes(night) == {ReasonCode.CREDIT_EXHAUSTED, ReasonCode.FRIENDLY_NIGHT}
    assert night.wake_at == local(3, 11, 8)

    morning = ok(night.account.decide(ledger, local(3, 11, 8)))
    assert [(c.request_id, c.action, c.command.meter_id, c.supersedes) for c in morning.commands] == [
        ("relay:A-1:1:disconnect", RelayAction.DISCONNECT, "m-1", None)
    ]
    assert {r.code for r in morning.commands[0].reasons} == {
        ReasonCode.CREDIT_EXHAUSTED,
        ReasonCode.NOTICE_PERIOD_ELAPSED,
        ReasonCode.OUTSIDE_FRIENDLY_WINDOWS,
    }
    assert morning.commands[0].evidence.snapshot.balance_fen == -25
    assert morning.notifications == ()
    account = morning.account
    assert account.pending == morning.commands[0].command

    opened = ok(
        account.record_command_outcome(
            ledger, morning.commands[0].command, RelayOutcome.CONFIRMED_OPEN, local(3, 11, 8, 2)
        )
    )
    assert (opened.supply_updated, opened.pending_cleared, opened.commands) == (True, True, ())
    assert (opened.account.supply, opened.account.pending) == (SupplyState.DISCONNECTED, None)

    paid = ok(opened.account.apply_top_up(ledger, pay("T2", 5_000, local(3, 11, 9, 30)), local(3, 11, 9, 30)))
    assert balance(ledger) == 4_975
    assert [(c.request_id, c.action, c.supersedes) for c in paid.commands] == [
        ("relay:A-1:2:reconnect", RelayAction.RECONNECT, None)
    ]
    assert paid.notifications == ()
    # ¥49.75 is above ¥30: the episode is over and its notices are forgotten
    assert (paid.account.in_episode, paid.account.notices, paid.account.episode) == (False, (), 1)

    closed = ok(
        paid.account.record_command_outcome(
            ledger, paid.commands[0].command, RelayOutcome.CONFIRMED_CLOSED, local(3, 11, 9, 31)
        )
    )
    assert (closed.account.supply, closed.account.pending, closed.commands) == (SupplyState.CONNECTED, None, ())

    assert ledger.balance_fen(REVENUE_ACCOUNT_ID) == 2_025
    usage = [p for p in ledger.postings() if p.kind is PostingKind.USAGE]
    assert len(usage) == 84
    assert usage[0].posting_id == "usage:m-1:20260309T1600Z"
    assert usage[0].at == local(3, 10, 0, 15)
    assert closed.account.usage.accumulator.charged_fen == 2_025
    check_invariants(ledger)


# --------------------------------------------------------------------------- charging: replays, conflicts, zero fen


def test_a_replay_from_an_older_account_value_posts_nothing_new() -> None:
    ledger = new_ledger()
    account = ok(new_account(ledger).apply_top_up(ledger, pay("T1", 10_000, OPENED), OPENED)).account
    readings = [reading(OPENED + k * INTERVAL, 400 * k) for k in range(1, 9)]
    first = ok(account.apply_readings(ledger, readings, local(3, 10, 2), local(3, 10, 2, 5)))
    assert len(first.posted) == 8
    assert first.replayed == ()
    postings = ledger.postings()

    # the transaction that stored `first.account` was lost; the runner retries from the older value, later
    retry = ok(account.apply_readings(ledger, readings, local(3, 10, 2), local(3, 10, 3)))
    assert retry.posted == ()
    assert retry.replayed == first.posted
    assert retry.usage.charges == first.usage.charges
    assert retry.account == first.account
    assert ledger.postings() == postings

    # delivered again to the current value: the last one is the anchor's duplicate, the others are late
    again = ok(first.account.apply_readings(ledger, readings, local(3, 10, 2), local(3, 10, 3)))
    assert (again.usage.charges, again.usage.duplicates, again.posted) == ((), 1, ())
    assert [a.kind for a in again.usage.anomalies] == [AnomalyKind.LATE] * 7
    assert again.account == first.account
    check_invariants(ledger)


def test_a_usage_posting_that_conflicts_refuses_the_whole_batch() -> None:
    ledger = new_ledger()
    account = new_account(ledger)
    # a posting under the id of the second interval's charge, with another amount
    assert isinstance(ledger.post(usage_posting("A-1", "usage:m-1:20260309T1615Z", 1, local(3, 10, 0, 30))), Posted)
    before = ledger.postings()
    readings = [reading(OPENED + k * INTERVAL, 400 * k) for k in range(1, 5)]
    problem = refused(account.apply_readings(ledger, readings, local(3, 10, 1), local(3, 10, 1)))
    assert problem == Conflict("usage:m-1:20260309T1615Z", ("amount_fen", "reference"))
    assert ledger.postings() == before


def test_a_charge_above_the_ledgers_limit_is_refused_and_nothing_is_posted() -> None:
    ledger = Ledger(max_posting_fen=1_000)
    assert ledger.open_accounts(house_accounts(["wechat"])) is None
    account = new_account(ledger)
    # 10 kWh in a quarter of an hour at night: 3.583 yuan, then 40 kWh: 14.332 yuan, above ¥10
    readings = [reading(OPENED + INTERVAL, 10_000), reading(OPENED + 2 * INTERVAL, 50_000)]
    problem = refused(account.apply_readings(ledger, readings, local(3, 10, 1), local(3, 10, 1)))
    assert isinstance(problem, Rejected)
    assert problem.reason is LedgerReason.AMOUNT_TOO_LARGE
    assert ledger.postings() == ()


def test_intervals_without_energy_are_charged_but_not_posted() -> None:
    ledger = new_ledger()
    account = ok(new_account(ledger).apply_top_up(ledger, pay("T1", 10_000, OPENED), OPENED)).account
    readings = [reading(OPENED + INTERVAL, 0), reading(OPENED + 2 * INTERVAL, 0), reading(OPENED + 3 * INTERVAL, 20)]
    step = ok(account.apply_readings(ledger, readings, local(3, 10, 1), local(3, 10, 1)))
    # 20 Wh at 0.3583 is 0.7166 fen: rounded up to 1 fen on the third interval
    assert [(c.energy_wh, c.amount_fen) for c in step.usage.charges] == [(0, 0), (0, 0), (20, 1)]
    assert [p.posting_id for p in step.posted] == ["usage:m-1:20260309T1630Z"]
    assert balance(ledger) == 9_999


def test_readings_and_a_meter_replacement_keep_one_curve_and_commands_go_to_the_new_meter() -> None:
    ledger = new_ledger()
    account = ok(new_account(ledger, policy=NO_NOTICE).apply_top_up(ledger, pay("T1", 100, OPENED), OPENED)).account
    swap = MeterReplacement(local(3, 10, 9, 5), "m-1", 1_000, MeterRegister("m-2"), 50)
    assert account.meter_ids == ("m-1",)
    announced = ok(account.apply_readings(ledger, [swap], local(3, 10, 9), local(3, 10, 9)))
    assert (announced.account.meter_ids, announced.account.meter_in_service) == (("m-1", "m-2"), "m-2")
    assert announced.account.serves("m-2")
    assert not announced.account.serves("m-3")
    # 1,000 Wh on m-1 until 09:05 and 2,000 Wh on m-2 until 10:00, about ¥1.4 in all: the ¥1 is gone
    step = ok(announced.account.apply_readings(ledger, [reading(WORKDAY_10, 2_050, "m-2")], WORKDAY_10, WORKDAY_10))
    assert sum(c.energy_wh for c in step.usage.charges) == 3_000
    assert {c.meter_id for c in step.usage.charges} == {"m-1", "m-2"}
    assert [(c.action, c.command.meter_id) for c in step.commands] == [(RelayAction.DISCONNECT, "m-2")]
    assert step.account.usage.meter.meter_id == "m-2"


# --------------------------------------------------------------------------- relay commands


def _exhausted_on_a_workday(ledger: Ledger, **options: Any) -> tuple[PrepaidAccount, Step]:
    account = new_account(ledger, policy=options.pop("policy", NO_NOTICE), **options)
    step = ok(account.decide(ledger, WORKDAY_10))
    return step.account, step


def test_a_top_up_supersedes_a_pending_disconnect_and_a_reversal_supersedes_the_reconnect() -> None:
    ledger = new_ledger()
    account, step = _exhausted_on_a_workday(ledger)
    disconnect = step.commands[0].command
    assert [n.request_id for n in step.notifications] == ["notice:A-1:1:zero_balance"]
    assert disconnect == RelayCommand("relay:A-1:1:disconnect", "A-1", "m-1", 1, RelayAction.DISCONNECT)

    paid = ok(account.apply_top_up(ledger, pay("T1", 5_000, local(3, 10, 10, 5)), local(3, 10, 10, 5)))
    reconnect = paid.commands[0]
    assert (reconnect.request_id, reconnect.supersedes) == ("relay:A-1:2:reconnect", disconnect)
    assert ReasonCode.SUPERSEDES_PENDING_DISCONNECT in {r.code for r in reconnect.reasons}
    assert paid.account.snapshot(ledger).pending_command is PendingCommand.RECONNECT

    reversal = TopUpReversal("wechat", "T1", 5_000, local(3, 10, 10, 20), "chargeback-9")
    undone = ok(paid.account.apply_reversal(ledger, reversal, local(3, 10, 10, 20)))
    # the top-up ended episode 1; the reversal opens episode 2 and, with no notice period, cuts at once
    assert [n.request_id for n in undone.notifications] == ["notice:A-1:2:zero_balance"]
    assert [(c.request_id, c.supersedes) for c in undone.commands] == [("relay:A-1:3:disconnect", reconnect.command)]
    assert ReasonCode.SUPERSEDES_PENDING_RECONNECT in {r.code for r in undone.commands[0].reasons}
    # a duplicate reversal changes nothing and asks for nothing
    again = ok(undone.account.apply_reversal(ledger, reversal, local(3, 10, 10, 25)))
    assert (again.commands, again.notifications, again.account) == ((), (), undone.account)
    check_invariants(ledger)


def test_outcomes_move_the_supply_and_a_late_report_of_an_older_command_is_ignored() -> None:
    ledger = new_ledger()
    account, step = _exhausted_on_a_workday(ledger)
    disconnect = step.commands[0].command
    paid = ok(account.apply_top_up(ledger, pay("T1", 5_000, local(3, 10, 10, 5)), local(3, 10, 10, 5)))
    reconnect = paid.commands[0].command

    # the disconnect had already been sent when the reconnect superseded it: the relay did open
    opened = ok(
        paid.account.record_command_outcome(ledger, disconnect, RelayOutcome.CONFIRMED_OPEN, local(3, 10, 10, 6))
    )
    assert (opened.supply_updated, opened.pending_cleared, opened.commands) == (True, False, ())
    assert (opened.account.supply, opened.account.pending) == (SupplyState.DISCONNECTED, reconnect)

    # the reconnect fails: the supply stays off, so the account asks again
    failed = ok(opened.account.record_command_outcome(ledger, reconnect, RelayOutcome.FAILED, local(3, 10, 10, 30)))
    assert (failed.supply_updated, failed.pending_cleared) == (False, True)
    assert [(c.request_id, c.supersedes) for c in failed.commands] == [("relay:A-1:3:reconnect", None)]
    retry = failed.commands[0].command

    closed = ok(
        failed.account.record_command_outcome(ledger, retry, RelayOutcome.CONFIRMED_CLOSED, local(3, 10, 10, 31))
    )
    assert (closed.account.supply, closed.account.pending, closed.account.last_observed_sequence) == (
        SupplyState.CONNECTED,
        None,
        3,
    )
    # a redelivered report of the first disconnect is older than what the relay was last seen doing
    late = ok(closed.account.record_command_outcome(ledger, disconnect, RelayOutcome.CONFIRMED_OPEN, local(3, 10, 11)))
    assert isinstance(late, CommandOutcomeRecorded)
    assert (late.supply_updated, late.pending_cleared, late.account, late.commands) == (
        False,
        False,
        closed.account,
        (),
    )

    stranger = RelayCommand(
        command_request_id("A-1", 9, RelayAction.DISCONNECT), "A-1", "m-1", 9, RelayAction.DISCONNECT
    )
    problem = refused(
        closed.account.record_command_outcome(ledger, stranger, RelayOutcome.CONFIRMED_OPEN, local(3, 10, 11))
    )
    assert isinstance(problem, Rejected)
    assert problem.reason is AccountReason.UNKNOWN_COMMAND


def test_reconnect_allowed_meters_wait_for_the_customer_and_can_be_cut_again() -> None:
    ledger = new_ledger()
    account, step = _exhausted_on_a_workday(ledger)
    opened = ok(
        account.record_command_outcome(ledger, step.commands[0].command, RelayOutcome.CONFIRMED_OPEN, WORKDAY_10)
    )
    paid = ok(opened.account.apply_top_up(ledger, pay("T1", 5_000, local(3, 10, 11)), local(3, 10, 11)))
    armed = ok(
        paid.account.record_command_outcome(
            ledger, paid.commands[0].command, RelayOutcome.CONFIRMED_RECONNECT_ALLOWED, local(3, 10, 11, 1)
        )
    )
    assert (armed.account.supply, armed.commands) == (SupplyState.RECONNECT_ALLOWED, ())
    assert ReasonCode.AWAITING_CUSTOMER_RECONNECT in {r.code for r in armed.decision.notes}
    undone = ok(
        armed.account.apply_reversal(ledger, TopUpReversal("wechat", "T1", 5_000, local(3, 10, 12)), local(3, 10, 12))
    )
    assert [c.action for c in undone.commands] == [RelayAction.DISCONNECT]


# --------------------------------------------------------------------------- rules that forbid a disconnect


@pytest.mark.parametrize("flag", ["protected", "keep_supply"])
def test_protected_and_keep_supply_accounts_get_notices_but_no_disconnect(flag: str) -> None:
    ledger = new_ledger()
    account, step = _exhausted_on_a_workday(ledger, **{flag: True})
    assert [n.kind for n in step.notifications] == [NotificationKind.ZERO_BALANCE]
    assert step.commands == ()
    (deferred,) = step.decision.of(DisconnectDeferred)
    assert deferred.until is None
    assert step.wake_at is None
    lifted = ok(account.set_flags(ledger, protected=False, keep_supply=False, now=local(3, 10, 10, 30)))
    assert [c.request_id for c in lifted.commands] == ["relay:A-1:1:disconnect"]


class _NothingKnownAfter:
    """The real calendar up to a day, unknown after it (a package not yet upgraded for the year)."""

    def __init__(self, last_known: dt.date) -> None:
        self.last_known = last_known

    def classify(self, day: dt.date) -> DayInfo | UnknownDay:
        if day > self.last_known:
            return UnknownDay(day, 2004, 2026, "test: calendar ends early")
        return DayInfo(day, False, False, None, "test")


def test_no_disconnect_on_a_day_the_calendar_does_not_know() -> None:
    ledger = new_ledger()
    _, step = _exhausted_on_a_workday(ledger, calendar=_NothingKnownAfter(dt.date(2026, 3, 9)))
    assert step.commands == ()
    assert ReasonCode.CALENDAR_UNKNOWN in codes(step)
    assert step.wake_at is None


def test_a_notice_period_ending_on_a_friday_night_defers_the_disconnect_to_monday_morning() -> None:
    ledger = new_ledger()
    account = new_account(ledger)
    friday_21 = local(3, 13, 21)
    step = ok(account.decide(ledger, friday_21))
    assert step.commands == ()
    assert step.wake_at == local(3, 16, 8)
    assert ok(step.account.decide(ledger, local(3, 14, 12))).commands == ()  # Saturday noon
    monday = ok(step.account.decide(ledger, local(3, 16, 8)))
    assert [c.action for c in monday.commands] == [RelayAction.DISCONNECT]
    assert isinstance(monday.decision.of(Disconnect)[0], Disconnect)


# --------------------------------------------------------------------------- payments and episodes


def test_notices_are_forgotten_when_the_episode_ends_and_a_new_episode_warns_again() -> None:
    ledger = new_ledger()
    first = ok(new_account(ledger).apply_top_up(ledger, pay("T1", 2_000, WORKDAY_10), WORKDAY_10))
    assert first.account.notices == (SentWarning(3_000, WORKDAY_10),)
    assert (first.account.episode, first.account.in_episode) == (1, True)
    second = ok(first.account.apply_top_up(ledger, pay("T2", 2_000, local(3, 10, 11)), local(3, 10, 11)))
    assert (second.account.notices, second.account.in_episode, second.notifications) == ((), False, ())
    undone = ok(
        second.account.apply_reversal(ledger, TopUpReversal("wechat", "T2", 2_000, local(3, 10, 12)), local(3, 10, 12))
    )
    assert [n.request_id for n in undone.notifications] == ["notice:A-1:2:warning:3000"]
    assert (undone.account.episode, undone.account.in_episode) == (2, True)


def test_a_duplicate_callback_changes_nothing_and_asks_for_nothing() -> None:
    ledger = new_ledger()
    first = ok(new_account(ledger).apply_top_up(ledger, pay("T1", 2_000, WORKDAY_10), WORKDAY_10))
    again = ok(first.account.apply_top_up(ledger, pay("T1", 2_000, WORKDAY_10), local(3, 10, 10, 1)))
    assert isinstance(again.payment, AlreadyToppedUp)
    assert (again.account, again.notifications, again.commands) == (first.account, (), ())
    assert balance(ledger) == 2_000
    conflict = refused(first.account.apply_top_up(ledger, pay("T1", 2_001, WORKDAY_10), local(3, 10, 10, 1)))
    assert conflict == Conflict("topup:wechat:T1", ("amount_fen",))


def test_emergency_credit_counts_as_credit_until_lent_and_is_repaid_first() -> None:
    ledger = new_ledger()
    account = new_account(ledger, terms=PaymentTerms(emergency_credit_fen=1_000))
    # ¥0 balance, ¥10 emergency credit available: not exhausted, but inside the ¥10 warning
    step = ok(account.decide(ledger, WORKDAY_10))
    assert [n.request_id for n in step.notifications] == ["notice:A-1:1:warning:1000"]
    assert step.commands == ()
    lent = ok(step.account.lend_emergency_credit(ledger, "L1", WORKDAY_10, local(3, 10, 10, 1)))
    snapshot = lent.account.snapshot(ledger)
    assert (
        snapshot.balance_fen,
        snapshot.emergency_credit_available_fen,
        snapshot.emergency_credit_outstanding_fen,
    ) == (
        1_000,
        0,
        1_000,
    )
    assert (lent.notifications, lent.commands) == ((), ())
    problem = refused(lent.account.lend_emergency_credit(ledger, "L2", WORKDAY_10, local(3, 10, 10, 2)))
    assert isinstance(problem, Rejected)
    assert problem.reason is PaymentReason.EMERGENCY_CREDIT_OUTSTANDING
    paid = ok(lent.account.apply_top_up(ledger, pay("T1", 5_000, local(3, 10, 11)), local(3, 10, 11)))
    assert isinstance(paid.payment, ToppedUp)
    assert paid.payment.split == Split(1_000, 0, 4_000)
    assert balance(ledger) == 5_000


def test_emergency_credit_is_an_allowance_borrowing_it_explicitly_changes_neither_the_cut_nor_the_debt() -> None:
    # The rule: emergency credit is there to be used without asking (as on a prepayment meter, or a 透支额度):
    # the supply is cut when balance + emergency credit not yet borrowed reaches the threshold. A customer who
    # borrows it explicitly only moves it from the allowance to the receivable, and a top-up repays it first.
    terms = PaymentTerms(emergency_credit_fen=1_000)
    outcomes = []
    for borrows in (False, True):
        ledger = new_ledger()
        account = new_account(ledger, policy=NO_NOTICE, terms=terms)
        account = ok(account.apply_top_up(ledger, pay("T1", 500, OPENED), OPENED)).account
        if borrows:
            account = ok(account.lend_emergency_credit(ledger, "L1", OPENED, OPENED)).account
        cut_at = None
        charged_before_cut_fen = 0
        # 1 kWh a quarter hour from 08:00 (peak, ¥0.5583): ¥5 of balance and ¥10 of emergency credit run out
        for k in range(1, 40):
            ts = local(3, 10, 8) + k * INTERVAL
            charged_before_cut_fen = ledger.balance_fen(REVENUE_ACCOUNT_ID)
            step = ok(account.apply_readings(ledger, [reading(ts, 1_000 * k)], ts, ts))
            account = step.account
            if step.commands:
                assert step.commands[0].action is RelayAction.DISCONNECT
                cut_at = ts
                break
        assert cut_at is not None
        charged_fen = ledger.balance_fen(REVENUE_ACCOUNT_ID)
        assert charged_before_cut_fen < 500 + 1_000 <= charged_fen  # cut exactly when the allowance ran out
        paid = ok(account.apply_top_up(ledger, pay("T2", 5_000, cut_at), cut_at))
        outstanding = ledger.balance_fen(emergency_credit_account_id("A-1"))
        outcomes.append((cut_at, charged_fen, balance(ledger), outstanding, [c.action for c in paid.commands]))
    assert outcomes[0] == outcomes[1]
    _, charged_fen, balance_after_fen, outstanding_fen, actions = outcomes[0]
    assert (balance_after_fen, outstanding_fen, actions) == (500 + 5_000 - charged_fen, 0, [RelayAction.RECONNECT])


def test_requests_for_another_account_are_refused() -> None:
    ledger = new_ledger()
    mine = new_account(ledger)
    theirs = ok(new_account(ledger, "B-2").apply_top_up(ledger, pay("T9", 1_000, WORKDAY_10, "B-2"), WORKDAY_10))
    assert theirs.account.account_id == "B-2"
    wrong_top_up = refused(mine.apply_top_up(ledger, pay("T1", 1_000, WORKDAY_10, "B-2"), WORKDAY_10))
    wrong_reversal = refused(mine.apply_reversal(ledger, TopUpReversal("wechat", "T9", 1_000, WORKDAY_10), WORKDAY_10))
    assert isinstance(wrong_top_up, Rejected)
    assert isinstance(wrong_reversal, Rejected)
    assert wrong_top_up.reason is wrong_reversal.reason is AccountReason.WRONG_ACCOUNT
    assert balance(ledger, "B-2") == 1_000


def test_opening_needs_a_valid_id_and_the_house_accounts() -> None:
    kwargs: dict[str, Any] = {
        "meter": MeterRegister("m-1"),
        "opened_at": OPENED,
        "opening_register_wh": 0,
        "tariff": JIANGSU,
        "terms": PaymentTerms(),
        "policy": POLICY,
    }
    invalid = open_account(new_ledger(), "A 1", **kwargs)
    assert isinstance(invalid, Rejected)
    assert invalid.reason is AccountReason.INVALID_ACCOUNT_ID
    bare = open_account(Ledger(), "A-1", **kwargs)
    assert isinstance(bare, Rejected)
    assert bare.reason is AccountReason.LEDGER_NOT_READY
    ledger = new_ledger()
    assert open_account(ledger, "A-1", **kwargs) == open_account(ledger, "A-1", **kwargs)


def test_a_usage_summary_posts_the_sum_of_consecutive_charges_under_the_span() -> None:
    from prepay_engine.account import usage_summary_posting
    from prepay_engine.tariffs import example_jiangsu_residential
    from prepay_engine.usage import MeterRegister as Register
    from prepay_engine.usage import RegisterReading as Reading
    from prepay_engine.usage import charge_usage as charge
    from prepay_engine.usage import open_usage as start_usage

    begin = dt.datetime(2026, 3, 9, 16, 0, tzinfo=dt.UTC)
    state = start_usage(Register("m-9"), begin, 0)
    readings = [Reading("m-9", begin + dt.timedelta(minutes=15 * k), 300 * k) for k in range(1, 5)]
    charges = charge(
        state, readings, example_jiangsu_residential(), complete_until=begin + dt.timedelta(hours=2)
    ).charges
    summary = usage_summary_posting("acc-9", charges)
    assert summary is not None
    assert summary.posting_id == "usage:acc-9:20260309T1600Z-20260309T1700Z"
    assert summary.amount_fen == sum(c.amount_fen for c in charges)
    assert summary.at == begin + dt.timedelta(hours=1)
    assert summary.reference == "4 intervals, 1200 Wh"
    assert usage_summary_posting("acc-9", ()) is None
    with pytest.raises(AssertionError, match="consecutive"):
        usage_summary_posting("acc-9", (charges[0], charges[2]))
