"""Operator-declared holiday years: validated, they replace the package's answer for their year only."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from prepay_engine.calendar import ChinaMainlandCalendar, DayInfo, DeclaredYear, DeclaredYearsCalendar, UnknownDay
from prepay_engine.config_codec import (
    ConfigFormatError,
    calendar_year_from_json,
    calendar_year_to_json,
    loads_strict,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "calendars" / "2026.json"
BASE = ChinaMainlandCalendar()
YEAR_2031 = DeclaredYear(
    2031,
    "test notice 2031",
    {dt.date(2031, 1, 1): "元旦", dt.date(2031, 1, 2): "元旦"},
    {dt.date(2031, 1, 4): "元旦"},  # a Saturday made a working day
)


def test_a_declared_year_answers_for_its_days_and_leaves_other_years_to_the_base() -> None:
    calendar = DeclaredYearsCalendar(BASE, [YEAR_2031])
    assert isinstance(BASE.classify(dt.date(2031, 1, 1)), UnknownDay)
    new_year = calendar.classify(dt.date(2031, 1, 1))
    assert isinstance(new_year, DayInfo)
    assert new_year.public_holiday
    assert new_year.source == "test notice 2031"
    makeup = calendar.classify(dt.date(2031, 1, 4))
    assert isinstance(makeup, DayInfo)
    assert makeup.working_day
    plain_sunday = calendar.classify(dt.date(2031, 1, 5))
    assert isinstance(plain_sunday, DayInfo)
    assert plain_sunday.weekend
    assert not plain_sunday.working_day
    assert calendar.classify(dt.date(2026, 10, 1)) == BASE.classify(dt.date(2026, 10, 1))
    assert isinstance(calendar.classify(dt.date(2032, 1, 1)), UnknownDay)
    assert calendar.declared_years == (2031,)


@pytest.mark.parametrize(
    ("holidays", "makeup", "message"),
    [
        ({dt.date(2030, 12, 31): "x"}, {}, "is not in 2031"),
        ({dt.date(2031, 1, 1): "x"}, {dt.date(2031, 1, 1): "x"}, "both a holiday and a make-up working day"),
        ({dt.date(2031, 1, 1): "x"}, {dt.date(2031, 1, 6): "x"}, "is not a Saturday or Sunday"),
        ({}, {}, "without public holidays"),
    ],
)
def test_inconsistent_declarations_are_refused(
    holidays: dict[dt.date, str], makeup: dict[dt.date, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        DeclaredYear(2031, "notice", holidays, makeup)


def test_a_year_is_declared_once() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        DeclaredYearsCalendar(BASE, [YEAR_2031, YEAR_2031])


def test_the_json_form_round_trips_and_the_example_matches_the_package() -> None:
    assert calendar_year_from_json(json.loads(json.dumps(calendar_year_to_json(YEAR_2031)))) == YEAR_2031
    example = calendar_year_from_json(loads_strict(EXAMPLE.read_bytes()))
    declared = DeclaredYearsCalendar(BASE, [example])
    day = dt.date(2026, 1, 1)
    while day.year == 2026:
        ours = declared.classify(day)
        theirs = BASE.classify(day)
        assert isinstance(ours, DayInfo)
        assert isinstance(theirs, DayInfo)
        assert (ours.public_holiday, ours.makeup_working_day) == (theirs.public_holiday, theirs.makeup_working_day)
        day += dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"holidays": {"2031-13-01": "x"}}, "holidays.2031-13-01"),
        ({"holidays": ["2031-01-01"]}, "holidays: expected an object"),
        ({"year": "2031"}, "year: expected an integer"),
        ({"makeup_working_days": {"2031-01-06": "x"}}, "is not a Saturday or Sunday"),
        ({"extra": 1}, "extra: unknown key"),
    ],
)
def test_malformed_json_is_refused_with_its_path(change: dict[str, object], message: str) -> None:
    data = {**calendar_year_to_json(YEAR_2031), **change}
    with pytest.raises(ConfigFormatError, match=message):
        calendar_year_from_json(data)
