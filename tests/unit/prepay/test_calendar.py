"""Mainland China holiday calendar wrapper, checked against the 2026 State Council schedule.

The 2026 schedule, as published in November 2025 and as chinese-calendar 1.11.0 holds it:
  New Year           Jan 1-3 off (Thu-Sat)                 make-up working day Sun Jan 4
  Spring Festival    Feb 15-23 off (Sun-Mon, nine days)    make-up working days Sat Feb 14, Sat Feb 28
  Tomb-sweeping      Apr 4-6 off
  Labour Day         May 1-5 off                           make-up working day Sat May 9
  Dragon Boat        Jun 19-21 off
  Mid-autumn         Sep 25-27 off
  National Day       Oct 1-7 off                           make-up working days Sun Sep 20, Sat Oct 10
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prepay_engine import calendar
from prepay_engine.calendar import CalendarRangeError, ChinaMainlandCalendar, DayInfo, UnknownDay

CAL = ChinaMainlandCalendar()


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def _known(day: dt.date) -> DayInfo:
    info = CAL.classify(day)
    assert isinstance(info, DayInfo)
    return info


SPRING_FESTIVAL_2026 = _days(dt.date(2026, 2, 15), dt.date(2026, 2, 23))
NATIONAL_DAY_2026 = _days(dt.date(2026, 10, 1), dt.date(2026, 10, 7))
MAKEUP_WORKING_DAYS_2026 = [
    dt.date(2026, 1, 4),
    dt.date(2026, 2, 14),
    dt.date(2026, 2, 28),
    dt.date(2026, 5, 9),
    dt.date(2026, 9, 20),
    dt.date(2026, 10, 10),
]


@pytest.mark.parametrize("day", SPRING_FESTIVAL_2026, ids=str)
def test_spring_festival_2026_is_a_nine_day_break(day: dt.date) -> None:
    assert calendar.is_public_holiday(day)
    assert not calendar.is_working_day(day)
    assert _known(day).holiday_name == "Spring Festival"


@pytest.mark.parametrize("day", NATIONAL_DAY_2026, ids=str)
def test_national_day_2026_is_october_1_to_7(day: dt.date) -> None:
    assert calendar.is_public_holiday(day)
    assert not calendar.is_working_day(day)
    assert _known(day).holiday_name == "National Day"


def test_days_around_the_2026_breaks_are_ordinary() -> None:
    # The day before and the day after each break are working days, so the break lengths above are exact.
    for day in (dt.date(2026, 2, 13), dt.date(2026, 2, 24), dt.date(2026, 9, 30), dt.date(2026, 10, 8)):
        assert calendar.is_working_day(day), day
        assert not calendar.is_public_holiday(day), day


@pytest.mark.parametrize("day", MAKEUP_WORKING_DAYS_2026, ids=str)
def test_2026_make_up_working_days_are_weekend_days_that_are_working_days(day: dt.date) -> None:
    assert day.weekday() >= 5
    info = _known(day)
    assert info.makeup_working_day
    assert info.working_day
    assert not info.weekend
    assert not info.public_holiday
    assert calendar.is_working_day(day)


def test_exactly_these_are_the_2026_make_up_working_days() -> None:
    found = [d for d in _days(dt.date(2026, 1, 1), dt.date(2026, 12, 31)) if _known(d).makeup_working_day]
    assert found == MAKEUP_WORKING_DAYS_2026


def test_a_weekend_day_inside_the_break_is_both_weekend_and_holiday() -> None:
    info = _known(dt.date(2026, 2, 21))  # Saturday inside the Spring Festival break
    assert info.weekend
    assert info.public_holiday
    assert not info.working_day


def test_an_ordinary_saturday_is_a_weekend_and_not_a_working_day() -> None:
    info = _known(dt.date(2026, 3, 7))
    assert info.weekend
    assert not info.public_holiday
    assert not calendar.is_working_day(info.day)
    assert not calendar.is_public_holiday(info.day)


def test_weekday_given_off_in_lieu_is_a_public_holiday() -> None:
    # Friday 2026-02-20 is off in exchange for Saturday 2026-02-14.
    assert calendar.is_public_holiday(dt.date(2026, 2, 20))


@pytest.mark.parametrize("day", [dt.date(2003, 12, 31), dt.date(2099, 6, 1)], ids=str)
def test_a_day_outside_the_known_range_is_unknown_never_a_working_day(day: dt.date) -> None:
    info = calendar.classify_day(day)
    assert isinstance(info, UnknownDay)
    assert info.first_known_year == 2004
    assert info.last_known_year >= 2026
    assert str(day.year) in info.explanation
    with pytest.raises(CalendarRangeError) as caught:
        calendar.is_working_day(day)
    assert caught.value.unknown == info
    with pytest.raises(CalendarRangeError):
        calendar.is_public_holiday(day)


def test_the_range_ends_with_the_last_published_year() -> None:
    first, last = CAL.known_years
    assert first == 2004
    assert isinstance(CAL.classify(dt.date(last, 12, 31)), DayInfo)
    assert isinstance(CAL.classify(dt.date(last + 1, 1, 1)), UnknownDay)


def test_a_datetime_is_refused() -> None:
    # A datetime carries a zone; the caller must pick the local date itself.
    with pytest.raises(TypeError):
        CAL.classify(dt.datetime(2026, 2, 16, 12, tzinfo=dt.UTC))


@given(st.dates(min_value=dt.date(2004, 1, 1), max_value=dt.date(2026, 12, 31)))
def test_every_known_day_has_exactly_one_consistent_status(day: dt.date) -> None:
    info = _known(day)
    assert info.working_day == (not info.public_holiday and (day.weekday() < 5 or info.makeup_working_day))
    assert info.weekend == (day.weekday() >= 5 and not info.makeup_working_day)
    assert calendar.is_working_day(day) == info.working_day
    assert calendar.is_public_holiday(day) == info.public_holiday


def test_only_the_wrapper_imports_the_calendar_package() -> None:
    package = Path(calendar.__file__).parent
    importers = sorted(
        p.name
        for p in package.rglob("*.py")
        if re.search(r"^\s*(import|from)\s+chinese_calendar\b", p.read_text(), re.M)
    )
    assert importers == ["calendar.py"]
