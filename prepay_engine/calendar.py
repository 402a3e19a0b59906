"""Mainland China public holidays and make-up working days (调休), behind a tiny interface.

Source: the `chinese-calendar` package (module `chinese_calendar`), chosen over `holidays.China`:

* Both know the 2026 schedule of the State Council notice published in November 2025, including the
  make-up working days (2026-01-04, 02-14, 02-28, 05-09, 09-20, 10-10).
* `chinese-calendar` is transcribed from each year's State Council notice and nothing else. Past its last
  transcribed year it raises instead of guessing, so "this day is not known" is detectable. `holidays.China`
  computes any year from 1950 to 2100 by rule: for a year whose notice it has not transcribed yet it silently
  returns estimated days off and no make-up working days. A rule-based guess is the silent failure we must not
  have when the answer decides whether someone's power is cut.
* `chinese-calendar` lists every rest day of a holiday break, weekend days inside the break included
  (2026-02-15..23 is one nine-day Spring Festival break). `holidays.China` lists only the statutory and
  substituted days and leaves 2026-02-21/22 as plain weekend days, which is wrong for "no disconnect on
  public holidays".
* Maintenance: `chinese-calendar` publishes a release each year once the notice is out (1.11.0, November 2025,
  added 2026). `holidays` releases monthly. The cost of our choice: a new year is known only after the package
  has been upgraded. Until then the engine treats those days as unknown, and the policy does not disconnect
  (see below). Upgrade the package every November or December.

Semantics (one set, used by the whole engine):

* public holiday: any rest day of an officially announced holiday break, weekend days inside the break and
  weekdays given off in lieu (调休放假) included.
* make-up working day: a Saturday or Sunday that the notice makes a working day (调休上班).
* weekend: a Saturday or Sunday that is not a make-up working day. A weekend day inside a holiday break is
  both a weekend day and a public holiday.
* working day: a make-up working day, or a Monday to Friday that is not a public holiday.

A day outside the package's known range is never treated as a working day. `classify` returns `UnknownDay`,
a type the caller must handle, and the boolean helpers raise `CalendarRangeError`. The policy turns either one
into "no disconnect", because when we are unsure we do not cut power.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

# chinese-calendar ships no type information (no py.typed); the wrapper keeps it out of the rest of the engine.
import chinese_calendar  # type: ignore[import-untyped]

__all__ = [
    "CalendarRangeError",
    "ChinaMainlandCalendar",
    "DayInfo",
    "DeclaredYear",
    "DeclaredYearsCalendar",
    "UnknownDay",
    "WorkdayCalendar",
    "classify_day",
    "is_public_holiday",
    "is_working_day",
]

_SATURDAY = 5


@dataclass(frozen=True, slots=True)
class DayInfo:
    """What the calendar knows about one local day."""

    day: dt.date
    public_holiday: bool
    makeup_working_day: bool
    holiday_name: str | None
    source: str

    def __post_init__(self) -> None:
        assert not (self.public_holiday and self.makeup_working_day), "a day cannot be both off and a make-up day"
        assert not self.makeup_working_day or self.day.weekday() >= _SATURDAY, "make-up days are weekend days"

    @property
    def weekend(self) -> bool:
        """Saturday or Sunday that is not a make-up working day."""
        return self.day.weekday() >= _SATURDAY and not self.makeup_working_day

    @property
    def working_day(self) -> bool:
        """A make-up working day, or Monday to Friday that is not a public holiday."""
        if self.makeup_working_day:
            return True
        return self.day.weekday() < _SATURDAY and not self.public_holiday


@dataclass(frozen=True, slots=True)
class UnknownDay:
    """A day outside the years the calendar source knows; nothing may be assumed about it."""

    day: dt.date
    first_known_year: int
    last_known_year: int
    source: str

    @property
    def explanation(self) -> str:
        """Human text for audit trails."""
        return (
            f"{self.day.isoformat()} is outside the known holiday calendar "
            f"({self.first_known_year}-{self.last_known_year}, {self.source})"
        )


class CalendarRangeError(LookupError):
    """Raised by the boolean helpers for a day outside the calendar's known range."""

    def __init__(self, unknown: UnknownDay) -> None:
        super().__init__(unknown.explanation)
        self.unknown = unknown


class WorkdayCalendar(Protocol):
    """What the policy needs from a holiday calendar."""

    def classify(self, day: dt.date) -> DayInfo | UnknownDay:
        """Classify one local calendar day, or say it is unknown."""
        ...


def _require_date(day: dt.date) -> None:
    # A datetime is a date subclass; accepting one would silently take its date in whatever zone it carries.
    if isinstance(day, dt.datetime) or not isinstance(day, dt.date):
        raise TypeError(f"expected a local datetime.date, got {type(day).__name__}")


class ChinaMainlandCalendar:
    """Mainland China holiday calendar backed by `chinese-calendar`; immutable after construction."""

    __slots__ = ("_first_year", "_holidays", "_last_year", "_source", "_workdays")

    def __init__(self) -> None:
        holidays: dict[dt.date, str] = {d: str(name) for d, name in chinese_calendar.holidays.items()}
        workdays: dict[dt.date, str] = {d: str(name) for d, name in chinese_calendar.workdays.items()}
        assert holidays, "chinese-calendar has no holiday data"
        assert holidays.keys().isdisjoint(workdays.keys()), "a day is both a holiday and a make-up working day"
        self._holidays = holidays
        # Only weekend entries are make-up days; the package lists no weekday "workdays", but be explicit.
        self._workdays = {d: name for d, name in workdays.items() if d.weekday() >= _SATURDAY}
        # The package itself bounds its range by the years of its holiday table; follow the same rule.
        self._first_year = min(d.year for d in holidays)
        self._last_year = max(d.year for d in holidays)
        self._source = f"chinese-calendar {chinese_calendar.__version__}"

    @property
    def known_years(self) -> tuple[int, int]:
        """First and last year (inclusive) whose official schedule is known."""
        return self._first_year, self._last_year

    def classify(self, day: dt.date) -> DayInfo | UnknownDay:
        """Classify one local calendar day, or say it is unknown."""
        _require_date(day)
        if not self._first_year <= day.year <= self._last_year:
            return UnknownDay(day, self._first_year, self._last_year, self._source)
        if day in self._holidays:
            return DayInfo(day, True, False, self._holidays[day], self._source)
        if day in self._workdays:
            return DayInfo(day, False, True, self._workdays[day], self._source)
        return DayInfo(day, False, False, None, self._source)

    def is_public_holiday(self, day: dt.date) -> bool:
        """True for a rest day of an official holiday break; raises CalendarRangeError if unknown."""
        return _known(self.classify(day)).public_holiday

    def is_working_day(self, day: dt.date) -> bool:
        """True for an official working day (make-up days included); raises CalendarRangeError if unknown."""
        return _known(self.classify(day)).working_day


@dataclass(frozen=True, slots=True)
class DeclaredYear:
    """A whole year's official schedule entered by an operator, e.g. a State Council notice the package lacks yet."""

    year: int
    source: str
    holidays: Mapping[dt.date, str]
    makeup_working_days: Mapping[dt.date, str]

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise ValueError("a declared year needs its source (the notice's title and number)")
        if not self.holidays:
            raise ValueError(f"{self.year}: a year without public holidays is surely a mistake")
        for kind, days in (("holiday", self.holidays), ("make-up working day", self.makeup_working_days)):
            for day in days:
                _require_date(day)
                if day.year != self.year:
                    raise ValueError(f"{kind} {day.isoformat()} is not in {self.year}")
        both = sorted(set(self.holidays) & set(self.makeup_working_days))
        if both:
            raise ValueError(f"{both[0].isoformat()} is both a holiday and a make-up working day")
        weekdays = sorted(d for d in self.makeup_working_days if d.weekday() < _SATURDAY)
        if weekdays:
            raise ValueError(f"make-up working day {weekdays[0].isoformat()} is not a Saturday or Sunday")


class DeclaredYearsCalendar:
    """A calendar whose declared years come from operators and every other year from `base`.

    A declared year replaces the base's answer for that whole year: it is entered deliberately, from the
    notice itself, so it wins over a package that may lag behind or carry a mistake.
    """

    __slots__ = ("_base", "_years")

    def __init__(self, base: WorkdayCalendar, years: Iterable[DeclaredYear]) -> None:
        self._base = base
        self._years: dict[int, DeclaredYear] = {}
        for declared in years:
            if declared.year in self._years:
                raise ValueError(f"{declared.year} is declared twice")
            self._years[declared.year] = declared

    @property
    def declared_years(self) -> tuple[int, ...]:
        """The years entered by operators, ascending."""
        return tuple(sorted(self._years))

    def classify(self, day: dt.date) -> DayInfo | UnknownDay:
        """The declared year's answer if `day` is in one, else the base calendar's."""
        _require_date(day)
        declared = self._years.get(day.year)
        if declared is None:
            return self._base.classify(day)
        if day in declared.holidays:
            return DayInfo(day, True, False, declared.holidays[day], declared.source)
        if day in declared.makeup_working_days:
            return DayInfo(day, False, True, declared.makeup_working_days[day], declared.source)
        return DayInfo(day, False, False, None, declared.source)


def _known(info: DayInfo | UnknownDay) -> DayInfo:
    if isinstance(info, UnknownDay):
        raise CalendarRangeError(info)
    return info


_DEFAULT = ChinaMainlandCalendar()


def classify_day(day: dt.date) -> DayInfo | UnknownDay:
    """Classify a local day with the default mainland China calendar."""
    return _DEFAULT.classify(day)


def is_public_holiday(day: dt.date) -> bool:
    """True for a mainland China public holiday rest day; raises CalendarRangeError if unknown."""
    return _DEFAULT.is_public_holiday(day)


def is_working_day(day: dt.date) -> bool:
    """True for a mainland China working day; raises CalendarRangeError if unknown."""
    return _DEFAULT.is_working_day(day)
