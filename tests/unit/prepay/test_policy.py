"""Disconnect / reconnect / notification policy: exact cases on the 2026 calendar, then properties.

The 2026 dates used (see test_calendar.py for the full schedule): Spring Festival break Feb 15-23 with make-up
working Saturdays Feb 14 and Feb 28; National Day break Oct 1-7 with make-up working days Sun Sep 20 and
Sat Oct 10. Default test policy: warnings at ¥30 and ¥10, disconnect at ¥0, no notice period, friendly nights
18:00-08:00, weekends and public holidays (so disconnects happen on working days, 08:00-18:00, only).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from prepay_engine.calendar import ChinaMainlandCalendar, DayInfo, UnknownDay
from prepay_engine.policy import (
    AccountSnapshot,
    Decision,
    Disconnect,
    DisconnectDeferred,
    FriendlyCreditWindows,
    NoAction,
    PendingCommand,
    PolicyConfig,
    ReasonCode,
    Reconnect,
    SendWarning,
    SendZeroBalanceNotice,
    SentNotice,
    SentWarning,
    SentZeroBalanceNotice,
    SupplyState,
    WindowKind,
    decide,
)

SH = ZoneInfo("Asia/Shanghai")
CAL = ChinaMainlandCalendar()

WORKING_DAYS_ONLY = FriendlyCreditWindows(
    night_start=dt.time(18), night_end=dt.time(8), weekends=True, public_holidays=True, eve_of_public_holidays=False
)
BASE = PolicyConfig(
    name="test",
    warning_thresholds_fen=(3000, 1000),
    disconnect_threshold_fen=0,
    notice_period=dt.timedelta(0),
    friendly=WORKING_DAYS_ONLY,
)


def cfg(**changes: Any) -> PolicyConfig:
    return dataclasses.replace(BASE, **changes)


def friendly(**changes: Any) -> FriendlyCreditWindows:
    return dataclasses.replace(WORKING_DAYS_ONLY, **changes)


def snap(balance_fen: int, **changes: Any) -> AccountSnapshot:
    base = AccountSnapshot(
        account_id="A-1",
        balance_fen=balance_fen,
        emergency_credit_available_fen=0,
        emergency_credit_outstanding_fen=0,
        protected=False,
        keep_supply=False,
        supply=SupplyState.CONNECTED,
        pending_command=None,
    )
    return dataclasses.replace(base, **changes)


def at(year: int, month: int, day: int, hour: int = 10, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=SH)


# Tuesday 2026-03-10 10:00 local: a working day, outside every friendly window.
WORKDAY_10 = at(2026, 3, 10)


def run(
    balance_fen: int,
    now: dt.datetime = WORKDAY_10,
    notices: tuple[SentNotice, ...] = (),
    config: PolicyConfig = BASE,
    calendar: Any = CAL,
    zone: ZoneInfo = SH,
    **snapshot_changes: Any,
) -> Decision:
    return decide(config, snap(balance_fen, **snapshot_changes), notices, now, zone, calendar)


def kinds(decision: Decision) -> list[type]:
    return [type(a) for a in decision.actions]


def codes(action: Any) -> set[ReasonCode]:
    return {r.code for r in action.reasons}


def only_deferral(decision: Decision) -> DisconnectDeferred:
    deferred = decision.of(DisconnectDeferred)
    assert len(deferred) == 1, decision.actions
    assert not decision.of(Disconnect)
    return deferred[0]


class UnknownCalendar:
    """A calendar that knows no day at all."""

    def classify(self, day: dt.date) -> DayInfo | UnknownDay:
        return UnknownDay(day, 2004, 2003, "test: empty calendar")


class CalendarKnownUntil:
    """The real calendar, cut off after `last` (a package whose data ends there)."""

    def __init__(self, last: dt.date) -> None:
        self.last = last

    def classify(self, day: dt.date) -> DayInfo | UnknownDay:
        if day > self.last:
            return UnknownDay(day, 2004, self.last.year, "test: truncated")
        return CAL.classify(day)


class ExplodingCalendar:
    """A calendar that must not be consulted."""

    def classify(self, day: dt.date) -> DayInfo | UnknownDay:
        raise AssertionError(f"calendar consulted for {day}")


# --- warnings and episodes ----------------------------------------------------------------------------------


def test_balance_above_every_warning_is_no_action_and_no_episode() -> None:
    decision = run(3001)
    assert kinds(decision) == [NoAction]
    assert not decision.episode_active
    assert codes(decision.actions[0]) == {ReasonCode.BALANCE_ABOVE_WARNINGS}


def test_balance_at_a_threshold_triggers_its_warning() -> None:
    decision = run(3000)
    (warning,) = decision.of(SendWarning)
    assert warning.threshold_fen == 3000
    assert warning.covers_thresholds_fen == (3000,)
    assert codes(warning) == {ReasonCode.BALANCE_AT_OR_BELOW_WARNING}
    assert "¥30.00" in warning.reasons[0].text
    assert decision.episode_active


def test_no_repeated_warning_within_an_episode_then_the_next_threshold() -> None:
    sent = (SentWarning(3000, WORKDAY_10),)
    later = WORKDAY_10 + dt.timedelta(hours=1)
    repeat = run(2500, now=later, notices=sent)
    assert kinds(repeat) == [NoAction]
    assert codes(repeat.actions[0]) == {ReasonCode.NOTICE_ALREADY_SENT}

    lower = run(900, now=later, notices=sent)
    (warning,) = lower.of(SendWarning)
    assert warning.threshold_fen == 1000
    assert ReasonCode.THRESHOLDS_CROSSED_IN_ONE_STEP not in codes(warning)

    both = (*sent, SentWarning(1000, later))
    assert kinds(run(500, now=later, notices=both)) == [NoAction]


def test_thresholds_crossed_in_one_step_send_one_warning_for_the_lowest() -> None:
    # ¥50 -> ¥5 in one reading: one warning, for ¥10, standing for ¥30 too.
    decision = run(500)
    assert kinds(decision) == [SendWarning]
    (warning,) = decision.of(SendWarning)
    assert warning.threshold_fen == 1000
    assert warning.covers_thresholds_fen == (3000, 1000)
    assert codes(warning) == {ReasonCode.BALANCE_AT_OR_BELOW_WARNING, ReasonCode.THRESHOLDS_CROSSED_IN_ONE_STEP}
    # Afterwards only the ¥10 warning is on record; the skipped ¥30 warning is never sent late, not even after
    # a partial top-up that leaves the balance inside the episode.
    sent = (SentWarning(1000, WORKDAY_10),)
    assert kinds(run(2500, notices=sent)) == [NoAction]
    assert kinds(run(800, notices=sent)) == [NoAction]


def test_a_new_episode_starts_once_the_balance_rises_above_the_highest_threshold() -> None:
    old = (SentWarning(3000, WORKDAY_10), SentWarning(1000, WORKDAY_10), SentZeroBalanceNotice(WORKDAY_10))
    topped_up = run(3001, notices=old)
    assert not topped_up.episode_active
    assert topped_up.evidence.notices_considered == ()
    # The edge forgets the old notices; the next fall warns again.
    again = run(2999, notices=())
    assert again.of(SendWarning)[0].threshold_fen == 3000
    # Even if the edge still passed them, notices of a finished episode are ignored.
    assert kinds(run(3001, notices=old)) == [NoAction]


def test_exhausted_in_one_step_sends_only_the_zero_balance_notice() -> None:
    decision = run(0)
    assert kinds(decision) == [SendZeroBalanceNotice, Disconnect]
    assert not decision.of(SendWarning)
    # With the zero notice on record, no warning follows a small top-up in the same episode.
    after = run(500, notices=(SentZeroBalanceNotice(WORKDAY_10),))
    assert kinds(after) == [NoAction]


def test_one_fen_above_the_threshold_is_in_credit() -> None:
    decision = run(1)
    assert not decision.evidence.credit_exhausted
    assert not decision.of(Disconnect)
    assert not decision.of(SendZeroBalanceNotice)


# --- disconnect: notice period ------------------------------------------------------------------------------


def test_notice_period_defers_the_disconnect_until_the_deadline() -> None:
    config = cfg(notice_period=dt.timedelta(hours=24))
    first = run(-20, config=config)
    assert kinds(first) == [SendZeroBalanceNotice, DisconnectDeferred]
    deferred = only_deferral(first)
    assert deferred.until == at(2026, 3, 11, 10)
    assert codes(deferred) == {ReasonCode.CREDIT_EXHAUSTED, ReasonCode.NOTICE_PERIOD_RUNNING}
    assert first.evidence.notice_deadline == at(2026, 3, 11, 10)

    sent = (SentZeroBalanceNotice(WORKDAY_10),)
    almost = run(-20, now=at(2026, 3, 11, 9, 59), notices=sent, config=config)
    assert kinds(almost) == [DisconnectDeferred]
    assert only_deferral(almost).until == at(2026, 3, 11, 10)

    due = run(-20, now=at(2026, 3, 11, 10), notices=sent, config=config)
    assert kinds(due) == [Disconnect]
    assert codes(due.actions[0]) == {
        ReasonCode.CREDIT_EXHAUSTED,
        ReasonCode.NOTICE_PERIOD_ELAPSED,
        ReasonCode.OUTSIDE_FRIENDLY_WINDOWS,
    }


def test_a_notice_deadline_at_night_moves_to_the_next_morning() -> None:
    config = cfg(notice_period=dt.timedelta(hours=10))
    decision = run(-20, now=at(2026, 3, 10, 16), config=config)  # deadline Tue 02:00 -> Wed 08:00
    deferred = only_deferral(decision)
    assert deferred.until == at(2026, 3, 11, 8)
    assert codes(deferred) == {ReasonCode.CREDIT_EXHAUSTED, ReasonCode.NOTICE_PERIOD_RUNNING}


def test_the_notice_period_runs_from_the_first_zero_notice_of_the_episode() -> None:
    config = cfg(notice_period=dt.timedelta(hours=24))
    sent = (SentZeroBalanceNotice(at(2026, 3, 9, 10)), SentZeroBalanceNotice(at(2026, 3, 10, 9)))
    assert kinds(run(-20, notices=sent, config=config)) == [Disconnect]


# --- disconnect: friendly-credit windows --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "until"),
    [
        (at(2026, 3, 10, 18), at(2026, 3, 11, 8)),
        (at(2026, 3, 10, 23), at(2026, 3, 11, 8)),
        (at(2026, 3, 11, 7, 59), at(2026, 3, 11, 8)),
    ],
    ids=["18:00", "23:00", "07:59"],
)
def test_night_window_defers_until_the_morning(now: dt.datetime, until: dt.datetime) -> None:
    deferred = only_deferral(run(0, now=now))
    assert deferred.until == until
    assert codes(deferred) == {ReasonCode.CREDIT_EXHAUSTED, ReasonCode.FRIENDLY_NIGHT}
    (window,) = deferred.evidence.friendly_windows_now
    assert window.kind is WindowKind.NIGHT
    assert window.ends_at == until


@pytest.mark.parametrize("now", [at(2026, 3, 11, 8), at(2026, 3, 10, 17, 59)], ids=["08:00", "17:59"])
def test_working_day_hours_allow_the_disconnect(now: dt.datetime) -> None:
    assert kinds(run(0, now=now)) == [SendZeroBalanceNotice, Disconnect]


def test_friday_evening_defers_until_monday_morning() -> None:
    deferred = only_deferral(run(0, now=at(2026, 3, 13, 19)))
    assert deferred.until == at(2026, 3, 16, 8)
    saturday = only_deferral(run(0, now=at(2026, 3, 14, 10)))
    assert codes(saturday) == {ReasonCode.CREDIT_EXHAUSTED, ReasonCode.FRIENDLY_WEEKEND}
    assert saturday.until == at(2026, 3, 16, 8)


def test_a_make_up_saturday_is_a_working_day_not_a_friendly_weekend() -> None:
    # 2026-02-14 is a Saturday made a working day for the Spring Festival break.
    decision = run(0, now=at(2026, 2, 14, 10))
    assert kinds(decision) == [SendZeroBalanceNotice, Disconnect]
    today = decision.evidence.today
    assert isinstance(today, DayInfo)
    assert today.makeup_working_day
    # An ordinary Saturday a week earlier is friendly until Monday 08:00.
    assert only_deferral(run(0, now=at(2026, 2, 7, 10))).until == at(2026, 2, 9, 8)
    # Friday evening before the make-up Saturday: the next opportunity is Saturday morning.
    assert only_deferral(run(0, now=at(2026, 2, 13, 19))).until == at(2026, 2, 14, 8)


def test_spring_festival_2026_defers_until_the_first_working_morning_after_the_break() -> None:
    deferred = only_deferral(run(0, now=at(2026, 2, 16, 10)))
    assert codes(deferred) == {ReasonCode.CREDIT_EXHAUSTED, ReasonCode.FRIENDLY_PUBLIC_HOLIDAY}
    assert deferred.until == at(2026, 2, 24, 8)
    saturday_in_break = only_deferral(run(0, now=at(2026, 2, 21, 10)))
    assert {ReasonCode.FRIENDLY_WEEKEND, ReasonCode.FRIENDLY_PUBLIC_HOLIDAY} <= codes(saturday_in_break)
    assert "Spring Festival" in " ".join(r.text for r in saturday_in_break.reasons)


def test_national_day_2026_and_its_make_up_working_days() -> None:
    assert only_deferral(run(0, now=at(2026, 10, 3, 12))).until == at(2026, 10, 8, 8)
    assert kinds(run(0, now=at(2026, 9, 20, 10))) == [SendZeroBalanceNotice, Disconnect]  # make-up Sunday
    assert kinds(run(0, now=at(2026, 10, 10, 10))) == [SendZeroBalanceNotice, Disconnect]  # make-up Saturday
    # The evening of Sep 30 is night, then seven holiday days: the next opportunity is Oct 8 08:00.
    assert only_deferral(run(0, now=at(2026, 9, 30, 20))).until == at(2026, 10, 8, 8)


def test_eve_of_a_public_holiday_is_friendly_only_when_configured() -> None:
    eve = cfg(friendly=friendly(eve_of_public_holidays=True))
    deferred = only_deferral(run(0, now=at(2026, 9, 30, 10), config=eve))
    assert codes(deferred) == {ReasonCode.CREDIT_EXHAUSTED, ReasonCode.FRIENDLY_EVE_OF_PUBLIC_HOLIDAY}
    assert deferred.until == at(2026, 10, 8, 8)
    assert kinds(run(0, now=at(2026, 9, 30, 10))) == [SendZeroBalanceNotice, Disconnect]


def test_public_holidays_only_leaves_ordinary_weekends_open() -> None:
    config = cfg(friendly=friendly(weekends=False, night_start=None, night_end=None))
    assert kinds(run(0, now=at(2026, 3, 14, 10), config=config)) == [SendZeroBalanceNotice, Disconnect]
    deferred = only_deferral(run(0, now=at(2026, 2, 21, 23), config=config))
    assert codes(deferred) == {ReasonCode.CREDIT_EXHAUSTED, ReasonCode.FRIENDLY_PUBLIC_HOLIDAY}
    assert deferred.until == at(2026, 2, 24, 0)


def test_without_day_windows_the_calendar_is_not_consulted() -> None:
    config = cfg(friendly=friendly(weekends=False, public_holidays=False))
    decision = run(0, now=at(2026, 2, 16, 10), config=config, calendar=ExplodingCalendar())
    assert kinds(decision) == [SendZeroBalanceNotice, Disconnect]
    night = run(0, now=at(2026, 2, 16, 20), config=config, calendar=ExplodingCalendar())
    assert only_deferral(night).until == at(2026, 2, 17, 8)


# --- disconnect: forbidden ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"protected": True}, {ReasonCode.PROTECTED_CUSTOMER}),
        ({"keep_supply": True}, {ReasonCode.KEEP_SUPPLY}),
        ({"protected": True, "keep_supply": True}, {ReasonCode.PROTECTED_CUSTOMER, ReasonCode.KEEP_SUPPLY}),
    ],
    ids=["protected", "keep_supply", "both"],
)
def test_protected_and_keep_supply_forbid_the_disconnect(flags: dict[str, Any], expected: set[ReasonCode]) -> None:
    decision = run(-5000, **flags)
    assert kinds(decision) == [SendZeroBalanceNotice, DisconnectDeferred]
    deferred = only_deferral(decision)
    assert deferred.until is None
    assert codes(deferred) == {ReasonCode.CREDIT_EXHAUSTED} | expected


def test_an_unknown_calendar_day_forbids_the_disconnect() -> None:
    decision = run(0, now=at(2099, 3, 10, 10))
    deferred = only_deferral(decision)
    assert deferred.until is None
    assert ReasonCode.CALENDAR_UNKNOWN in codes(deferred)
    assert isinstance(decision.evidence.today, UnknownDay)
    # With night windows only, the calendar is irrelevant and the disconnect goes ahead.
    night_only = cfg(friendly=friendly(weekends=False, public_holidays=False))
    assert kinds(run(0, now=at(2099, 3, 10, 10), config=night_only)) == [SendZeroBalanceNotice, Disconnect]


def test_a_next_opportunity_beyond_the_calendar_is_not_guessed() -> None:
    truncated = CalendarKnownUntil(dt.date(2026, 3, 10))
    deferred = only_deferral(run(0, now=at(2026, 3, 10, 20), calendar=truncated))
    assert deferred.until is None
    assert codes(deferred) == {ReasonCode.CREDIT_EXHAUSTED, ReasonCode.FRIENDLY_NIGHT, ReasonCode.CALENDAR_UNKNOWN}
    assert kinds(run(0, now=at(2026, 3, 10, 10), calendar=truncated)) == [SendZeroBalanceNotice, Disconnect]


def test_eve_rule_needs_tomorrow_to_be_known() -> None:
    eve = cfg(friendly=friendly(eve_of_public_holidays=True))
    deferred = only_deferral(
        run(0, now=at(2026, 3, 10, 10), config=eve, calendar=CalendarKnownUntil(WORKDAY_10.date()))
    )
    assert deferred.until is None
    assert ReasonCode.CALENDAR_UNKNOWN in codes(deferred)


class EveryDayAHoliday:
    """A calendar in which no day is ever a working day."""

    def classify(self, day: dt.date) -> DayInfo | UnknownDay:
        return DayInfo(day, True, False, "test holiday", "test")


def test_a_walk_that_finds_no_opening_gives_no_opportunity() -> None:
    deferred = only_deferral(run(0, calendar=EveryDayAHoliday()))
    assert deferred.until is None
    assert ReasonCode.NEXT_OPPORTUNITY_UNKNOWN in codes(deferred)


# --- relay state: idempotence and reconnect -----------------------------------------------------------------


def test_no_disconnect_for_an_account_already_disconnected_or_with_one_pending() -> None:
    sent = (SentZeroBalanceNotice(WORKDAY_10),)
    off = run(-100, notices=sent, supply=SupplyState.DISCONNECTED)
    assert kinds(off) == [NoAction]
    assert ReasonCode.ALREADY_DISCONNECTED in codes(off.actions[0])
    pending = run(-100, notices=sent, pending_command=PendingCommand.DISCONNECT)
    assert kinds(pending) == [NoAction]
    assert ReasonCode.DISCONNECT_PENDING in codes(pending.actions[0])


def test_reconnect_after_a_payment_even_at_night_on_a_holiday() -> None:
    decision = run(5000, now=at(2026, 2, 16, 23), supply=SupplyState.DISCONNECTED)
    assert kinds(decision) == [Reconnect]
    assert codes(decision.actions[0]) == {ReasonCode.CREDIT_AVAILABLE, ReasonCode.SUPPLY_DISCONNECTED}
    assert not decision.episode_active


def test_a_small_payment_reconnects_without_repeating_notices() -> None:
    sent = (SentZeroBalanceNotice(WORKDAY_10),)
    decision = run(500, notices=sent, supply=SupplyState.DISCONNECTED)
    assert kinds(decision) == [Reconnect]


def test_a_small_payment_in_a_fresh_episode_reconnects_and_warns() -> None:
    decision = run(500, supply=SupplyState.DISCONNECTED)
    assert kinds(decision) == [SendWarning, Reconnect]


def test_reconnect_supersedes_a_pending_disconnect() -> None:
    decision = run(100, notices=(SentZeroBalanceNotice(WORKDAY_10),), pending_command=PendingCommand.DISCONNECT)
    assert kinds(decision) == [Reconnect]
    assert ReasonCode.SUPERSEDES_PENDING_DISCONNECT in codes(decision.actions[0])


def test_reconnect_allowed_or_pending_needs_no_new_command() -> None:
    armed = run(5000, supply=SupplyState.RECONNECT_ALLOWED)
    assert kinds(armed) == [NoAction]
    assert ReasonCode.AWAITING_CUSTOMER_RECONNECT in codes(armed.actions[0])
    pending = run(5000, supply=SupplyState.DISCONNECTED, pending_command=PendingCommand.RECONNECT)
    assert kinds(pending) == [NoAction]
    assert ReasonCode.RECONNECT_PENDING in codes(pending.actions[0])


def test_a_reversed_payment_disconnects_over_a_pending_reconnect() -> None:
    sent = (SentZeroBalanceNotice(WORKDAY_10),)
    decision = run(-100, notices=sent, supply=SupplyState.DISCONNECTED, pending_command=PendingCommand.RECONNECT)
    assert kinds(decision) == [Disconnect]
    assert ReasonCode.SUPERSEDES_PENDING_RECONNECT in codes(decision.actions[0])


def test_an_armed_meter_is_disarmed_when_the_credit_runs_out_again() -> None:
    sent = (SentZeroBalanceNotice(WORKDAY_10),)
    assert kinds(run(-100, notices=sent, supply=SupplyState.RECONNECT_ALLOWED)) == [Disconnect]


# --- emergency credit and credit limit ----------------------------------------------------------------------


def test_available_emergency_credit_keeps_the_supply_on() -> None:
    decision = run(0, emergency_credit_available_fen=500)
    assert decision.evidence.credit_fen == 500
    assert kinds(decision) == [SendWarning]
    exhausted = run(-500, emergency_credit_available_fen=500, emergency_credit_outstanding_fen=500)
    assert kinds(exhausted) == [SendZeroBalanceNotice, Disconnect]


def test_a_negative_credit_limit_moves_the_disconnect_threshold() -> None:
    config = cfg(disconnect_threshold_fen=-1000)
    assert kinds(run(-999, config=config)) == [SendWarning]
    assert kinds(run(-1000, config=config)) == [SendZeroBalanceNotice, Disconnect]


# --- evidence, zones, validation ----------------------------------------------------------------------------


def test_every_action_carries_the_inputs_that_justified_it() -> None:
    decision = run(-20, notices=(SentWarning(1000, WORKDAY_10),), protected=True)
    for action in decision.actions:
        ev = action.evidence
        assert ev.snapshot.balance_fen == -20
        assert ev.snapshot.protected
        assert ev.config.warning_thresholds_fen == (3000, 1000)
        assert ev.config.disconnect_threshold_fen == 0
        assert ev.local_now == WORKDAY_10
        assert ev.notices_considered == (SentWarning(1000, WORKDAY_10),)
        assert ev.warning_thresholds_crossed_fen == (3000, 1000)
    deferred = only_deferral(decision)
    exhausted = next(r for r in deferred.reasons if r.code is ReasonCode.CREDIT_EXHAUSTED)
    assert "-¥0.20" in exhausted.text
    assert "¥0.00" in exhausted.text


def test_the_same_instant_in_another_zone_gives_the_same_decision() -> None:
    config = cfg(notice_period=dt.timedelta(hours=3))
    local = run(-20, config=config)
    utc = run(-20, now=WORKDAY_10.astimezone(dt.UTC), config=config)
    assert local == utc


def test_the_local_zone_decides_what_night_is() -> None:
    instant = at(2026, 3, 10, 10)  # 02:00 UTC
    assert kinds(run(0, now=instant)) == [SendZeroBalanceNotice, Disconnect]
    in_utc = run(0, now=instant, zone=ZoneInfo("UTC"))
    assert only_deferral(in_utc).until == dt.datetime(2026, 3, 10, 8, tzinfo=dt.UTC)


def test_the_notice_period_is_elapsed_time_across_a_dst_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    night_only = cfg(notice_period=dt.timedelta(hours=24), friendly=friendly(weekends=False, public_holidays=False))
    sent_at = dt.datetime(2026, 3, 28, 12, tzinfo=berlin)  # the clocks go forward on 2026-03-29
    decision = run(0, now=sent_at, config=night_only, zone=berlin, calendar=ExplodingCalendar())
    deadline = decision.evidence.notice_deadline
    assert deadline is not None
    # Subtract in UTC: Python subtracts datetimes sharing a tzinfo by wall clock.
    assert deadline.astimezone(dt.UTC) - sent_at.astimezone(dt.UTC) == dt.timedelta(hours=24)
    assert deadline == dt.datetime(2026, 3, 29, 13, tzinfo=berlin)


@pytest.mark.parametrize(
    "changes",
    [
        {"warning_thresholds_fen": (1000, 3000)},
        {"warning_thresholds_fen": (3000, 3000)},
        {"warning_thresholds_fen": (3000, 0)},
        {"disconnect_threshold_fen": 100},
        {"notice_period": dt.timedelta(seconds=-1)},
        {"name": ""},
    ],
    ids=["ascending", "duplicate", "warning-at-threshold", "positive-threshold", "negative-period", "no-name"],
)
def test_invalid_configuration_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        cfg(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"night_start": dt.time(18), "night_end": None},
        {"night_start": dt.time(8), "night_end": dt.time(8)},
        {"night_start": dt.time(18, tzinfo=dt.UTC)},
    ],
    ids=["half-window", "empty-window", "aware-time"],
)
def test_invalid_windows_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        friendly(**changes)


def test_money_must_be_integer_fen_and_times_aware() -> None:
    with pytest.raises(TypeError):
        snap(10.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative"):
        snap(0, emergency_credit_available_fen=-1)
    with pytest.raises(TypeError):
        cfg(warning_thresholds_fen=(3000, True))
    with pytest.raises(ValueError, match="timezone-aware"):
        run(0, now=dt.datetime(2026, 3, 10, 10))  # noqa: DTZ001
    with pytest.raises(ValueError, match="timezone-aware"):
        run(0, notices=(SentZeroBalanceNotice(dt.datetime(2026, 3, 10, 10)),))  # noqa: DTZ001


# --- properties ---------------------------------------------------------------------------------------------

FEN = st.integers(min_value=-20_000, max_value=20_000)
TIMES = st.integers(min_value=0, max_value=24 * 60 - 1).map(lambda m: dt.time(m // 60, m % 60))


def _minutes(t: dt.time) -> int:
    return t.hour * 60 + t.minute


@st.composite
def night_windows(draw: st.DrawFn) -> tuple[dt.time, dt.time]:
    start = draw(TIMES)
    length = draw(st.integers(min_value=1, max_value=24 * 60 - 1))
    end = (_minutes(start) + length) % (24 * 60)
    return start, dt.time(end // 60, end % 60)


@st.composite
def times_in_night(draw: st.DrawFn, start: dt.time, end: dt.time) -> dt.time:
    length = (_minutes(end) - _minutes(start)) % (24 * 60)
    clock = (_minutes(start) + draw(st.integers(min_value=0, max_value=length - 1))) % (24 * 60)
    return dt.time(clock // 60, clock % 60)


# Hypothesis takes naive bounds and attaches the zone itself; the range runs past the calendar's last known day.
INSTANTS = st.datetimes(
    min_value=dt.datetime(2025, 1, 1),  # noqa: DTZ001
    max_value=dt.datetime(2027, 3, 31),  # noqa: DTZ001
    timezones=st.just(SH),
).map(lambda d: d.replace(second=0, microsecond=0))


@st.composite
def windows_st(draw: st.DrawFn) -> FriendlyCreditWindows:
    night = draw(st.one_of(st.none(), night_windows()))
    return FriendlyCreditWindows(
        night_start=night[0] if night else None,
        night_end=night[1] if night else None,
        weekends=draw(st.booleans()),
        public_holidays=draw(st.booleans()),
        eve_of_public_holidays=draw(st.booleans()),
    )


@st.composite
def configs(draw: st.DrawFn) -> PolicyConfig:
    threshold = draw(st.integers(min_value=-5000, max_value=0))
    warnings = draw(st.lists(st.integers(min_value=threshold + 1, max_value=10_000), max_size=3, unique=True))
    return PolicyConfig(
        name="prop",
        warning_thresholds_fen=tuple(sorted(warnings, reverse=True)),
        disconnect_threshold_fen=threshold,
        notice_period=dt.timedelta(minutes=draw(st.integers(min_value=0, max_value=3 * 24 * 60))),
        friendly=draw(windows_st()),
    )


@st.composite
def snapshots(draw: st.DrawFn, balance: st.SearchStrategy[int] = FEN) -> AccountSnapshot:
    return AccountSnapshot(
        account_id="P-1",
        balance_fen=draw(balance),
        emergency_credit_available_fen=draw(st.integers(min_value=0, max_value=2000)),
        emergency_credit_outstanding_fen=draw(st.integers(min_value=0, max_value=2000)),
        protected=draw(st.booleans()),
        keep_supply=draw(st.booleans()),
        supply=draw(st.sampled_from(SupplyState)),
        pending_command=draw(st.sampled_from([None, *PendingCommand])),
    )


@st.composite
def notices_st(draw: st.DrawFn, now: dt.datetime) -> tuple[SentNotice, ...]:
    ago = st.integers(min_value=0, max_value=5 * 24 * 60).map(lambda m: now - dt.timedelta(minutes=m))
    warn = st.builds(SentWarning, st.integers(min_value=-5000, max_value=10_000), ago)
    zero = st.builds(SentZeroBalanceNotice, ago)
    return tuple(draw(st.lists(st.one_of(warn, zero), max_size=3)))


def in_night(clock: dt.time, start: dt.time, end: dt.time) -> bool:
    return start <= clock < end if start < end else (clock >= start or clock < end)


HOLIDAYS_2026 = [
    d for d in (dt.date(2026, 1, 1) + dt.timedelta(days=i) for i in range(365)) if CAL.is_public_holiday(d)
]


@settings(max_examples=300, deadline=None)
@given(
    st.data(),
    configs(),
    snapshots(),
    INSTANTS,
    st.sampled_from(["protected", "keep_supply", "night", "holiday", "notice", "unknown"]),
)
def test_no_disconnect_whenever_a_rule_forbids_it(
    data: st.DataObject, config: PolicyConfig, snapshot: AccountSnapshot, now: dt.datetime, rule: str
) -> None:
    notices = data.draw(notices_st(now))
    # The case that matters: credit exhausted and a relay that could still be opened.
    shortfall = data.draw(st.integers(min_value=0, max_value=5000))
    snapshot = dataclasses.replace(
        snapshot,
        balance_fen=config.disconnect_threshold_fen - snapshot.emergency_credit_available_fen - shortfall,
        supply=data.draw(st.sampled_from([SupplyState.CONNECTED, SupplyState.RECONNECT_ALLOWED])),
        pending_command=data.draw(st.sampled_from([None, PendingCommand.RECONNECT])),
    )
    calendar: Any = CAL
    if rule == "protected":
        snapshot = dataclasses.replace(snapshot, protected=True)
    elif rule == "keep_supply":
        snapshot = dataclasses.replace(snapshot, keep_supply=True)
    elif rule == "night":
        start, end = data.draw(night_windows())
        config = dataclasses.replace(
            config, friendly=dataclasses.replace(config.friendly, night_start=start, night_end=end)
        )
        clock = data.draw(times_in_night(start, end))
        assert in_night(clock, start, end)
        now = dt.datetime.combine(now.date(), clock, tzinfo=SH)
    elif rule == "holiday":
        config = dataclasses.replace(config, friendly=dataclasses.replace(config.friendly, public_holidays=True))
        day = data.draw(st.sampled_from(HOLIDAYS_2026))
        now = dt.datetime.combine(day, now.timetz())
    elif rule == "notice":
        period = data.draw(st.integers(min_value=1, max_value=3 * 24 * 60))
        config = dataclasses.replace(config, notice_period=dt.timedelta(minutes=period))
        sent_ago = dt.timedelta(minutes=data.draw(st.integers(min_value=0, max_value=period - 1)))
        notices = (SentZeroBalanceNotice(now - sent_ago),)
    else:
        config = dataclasses.replace(config, friendly=dataclasses.replace(config.friendly, weekends=True))
        calendar = UnknownCalendar()
    decision = decide(config, snapshot, notices, now, SH, calendar)
    assert not decision.of(Disconnect), (rule, decision.actions)
    assert len(decision.of(DisconnectDeferred)) == 1, (rule, decision.actions)


@settings(max_examples=300, deadline=None)
@given(configs(), snapshots(), INSTANTS, st.data())
def test_a_paid_up_account_is_never_left_disconnected(
    config: PolicyConfig, snapshot: AccountSnapshot, now: dt.datetime, data: st.DataObject
) -> None:
    floor = config.disconnect_threshold_fen - snapshot.emergency_credit_available_fen + 1
    snapshot = dataclasses.replace(
        snapshot, balance_fen=data.draw(st.integers(min_value=floor, max_value=floor + 10_000))
    )
    decision = decide(config, snapshot, data.draw(notices_st(now)), now, SH, CAL)
    assert not decision.of(Disconnect)
    needs_reconnect = snapshot.pending_command is PendingCommand.DISCONNECT or (
        snapshot.supply is SupplyState.DISCONNECTED and snapshot.pending_command is not PendingCommand.RECONNECT
    )
    assert len(decision.of(Reconnect)) == (1 if needs_reconnect else 0)


@settings(max_examples=300, deadline=None)
@given(configs(), snapshots(), INSTANTS, st.data())
def test_decisions_are_deterministic_and_respect_the_relay_state(
    config: PolicyConfig, snapshot: AccountSnapshot, now: dt.datetime, data: st.DataObject
) -> None:
    notices = data.draw(notices_st(now))
    first = decide(config, snapshot, notices, now, SH, CAL)
    assert decide(config, snapshot, notices, now, SH, CAL) == first
    assert decide(config, snapshot, notices, now.astimezone(dt.UTC), SH, CAL) == first
    if first.of(Disconnect):
        assert snapshot.credit_fen <= config.disconnect_threshold_fen
        assert snapshot.pending_command is not PendingCommand.DISCONNECT
        assert snapshot.supply is not SupplyState.DISCONNECTED or snapshot.pending_command is PendingCommand.RECONNECT
        assert not snapshot.protected
        assert not snapshot.keep_supply


@settings(max_examples=300, deadline=None)
@given(configs(), snapshots(), INSTANTS, st.integers(min_value=0, max_value=5000))
def test_a_deferral_names_an_instant_when_the_disconnect_is_allowed(
    config: PolicyConfig, snapshot: AccountSnapshot, now: dt.datetime, shortfall: int
) -> None:
    snapshot = dataclasses.replace(
        snapshot,
        balance_fen=config.disconnect_threshold_fen - snapshot.emergency_credit_available_fen - shortfall,
        protected=False,
        keep_supply=False,
        supply=SupplyState.CONNECTED,
        pending_command=None,
    )
    decision = decide(config, snapshot, (), now, SH, CAL)
    assert len(decision.of(Disconnect)) + len(decision.of(DisconnectDeferred)) == 1
    notices: tuple[SentNotice, ...] = tuple(SentZeroBalanceNotice(now) for _ in decision.of(SendZeroBalanceNotice))
    event("disconnect now" if decision.of(Disconnect) else "deferred")
    for deferred in decision.of(DisconnectDeferred):
        event(f"until known: {deferred.until is not None}")
        if deferred.until is None:
            assert ReasonCode.CALENDAR_UNKNOWN in codes(deferred)
            continue
        assert deferred.until > now
        later = decide(config, snapshot, notices, deferred.until, SH, CAL)
        assert later.of(Disconnect), later.actions
        # And not earlier: one minute before, the disconnect was still forbidden.
        earlier = decide(config, snapshot, notices, deferred.until - dt.timedelta(minutes=1), SH, CAL)
        assert not earlier.of(Disconnect)


@settings(max_examples=200, deadline=None)
@given(configs(), st.lists(st.integers(min_value=-3000, max_value=12_000), min_size=1, max_size=25), INSTANTS)
def test_each_notice_is_sent_at_most_once_per_episode_and_none_is_missed(
    config: PolicyConfig, balances: list[int], start: dt.datetime
) -> None:
    ceiling = max(config.warning_thresholds_fen, default=config.disconnect_threshold_fen)
    episode: list[SentNotice] = []  # what the edge stores for the current episode
    base = AccountSnapshot("S-1", 0, 0, 0, False, False, SupplyState.CONNECTED, None)
    for step, balance in enumerate(balances):
        now = start + dt.timedelta(hours=step)
        decision = decide(config, dataclasses.replace(base, balance_fen=balance), tuple(episode), now, SH, CAL)
        assert decision.episode_active == (balance <= ceiling)
        if not decision.episode_active:
            episode.clear()  # the edge's side of the contract
        for warning in decision.of(SendWarning):
            assert not any(isinstance(n, SentZeroBalanceNotice) for n in episode)
            assert all(isinstance(n, SentWarning) and n.threshold_fen > warning.threshold_fen for n in episode)
            episode.append(SentWarning(warning.threshold_fen, now))
        for _ in decision.of(SendZeroBalanceNotice):
            assert not any(isinstance(n, SentZeroBalanceNotice) for n in episode)
            episode.append(SentZeroBalanceNotice(now))
        # Nothing missed: every crossed level is covered by a notice of this episode.
        for threshold in config.warning_thresholds_fen:
            if balance <= threshold:
                covered = any(isinstance(n, SentZeroBalanceNotice) or n.threshold_fen <= threshold for n in episode)
                assert covered, (threshold, episode)
        if balance <= config.disconnect_threshold_fen:
            assert any(isinstance(n, SentZeroBalanceNotice) for n in episode)


@settings(max_examples=300, deadline=None)
@given(configs(), snapshots(), INSTANTS, st.data())
def test_a_disconnect_is_never_decided_twice(
    config: PolicyConfig, snapshot: AccountSnapshot, now: dt.datetime, data: st.DataObject
) -> None:
    shortfall = data.draw(st.integers(min_value=0, max_value=5000))
    already = data.draw(
        st.sampled_from(
            [
                (SupplyState.DISCONNECTED, None),
                (SupplyState.CONNECTED, PendingCommand.DISCONNECT),
                (SupplyState.DISCONNECTED, PendingCommand.DISCONNECT),
                (SupplyState.RECONNECT_ALLOWED, PendingCommand.DISCONNECT),
            ]
        )
    )
    snapshot = dataclasses.replace(
        snapshot,
        balance_fen=config.disconnect_threshold_fen - snapshot.emergency_credit_available_fen - shortfall,
        supply=already[0],
        pending_command=already[1],
    )
    decision = decide(config, snapshot, data.draw(notices_st(now)), now, SH, CAL)
    assert not decision.of(Disconnect)
    assert not decision.of(DisconnectDeferred)
    # a flag that forbids disconnects undoes a pending or executed cut instead
    flagged = snapshot.protected or snapshot.keep_supply
    undone = already[1] is PendingCommand.DISCONNECT or already[0] is SupplyState.DISCONNECTED
    assert bool(decision.of(Reconnect)) == (flagged and undone)


def test_keep_supply_set_while_a_disconnect_is_pending_supersedes_it_with_a_reconnect() -> None:
    config = PolicyConfig(
        name="t",
        warning_thresholds_fen=(1000,),
        disconnect_threshold_fen=0,
        notice_period=dt.timedelta(0),
        friendly=FriendlyCreditWindows(None, None, weekends=False, public_holidays=False, eve_of_public_holidays=False),
    )
    now = dt.datetime(2026, 11, 20, 10, 0, tzinfo=SH)
    base = AccountSnapshot("K-1", -500, 0, 0, False, True, SupplyState.CONNECTED, PendingCommand.DISCONNECT)
    [reconnect] = decide(config, base, (), now, SH, CAL).of(Reconnect)
    assert [r.code for r in reconnect.reasons] == [ReasonCode.KEEP_SUPPLY, ReasonCode.SUPERSEDES_PENDING_DISCONNECT]
    cut = dataclasses.replace(
        base, keep_supply=False, protected=True, supply=SupplyState.DISCONNECTED, pending_command=None
    )
    [restore] = decide(config, cut, (), now, SH, CAL).of(Reconnect)
    assert [r.code for r in restore.reasons] == [ReasonCode.PROTECTED_CUSTOMER, ReasonCode.SUPPLY_DISCONNECTED]
    unflagged = dataclasses.replace(cut, protected=False)
    assert not decide(config, unflagged, (), now, SH, CAL).of(Reconnect)
