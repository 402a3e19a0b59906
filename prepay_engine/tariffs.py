"""Tariffs as versioned configuration, and the exact pricing of an interval's energy.

A tariff is a code and a list of versions, each with an effective date and a source note. A
version has an energy price, flat or time-of-use (named periods such as peak / flat / valley /
critical peak, on a daily schedule of local-time ranges that may differ by month), and optional
tiers: cumulative energy bands over a yearly or monthly cycle, each adding an increment to the
energy price, as Chinese residential tariffs do (price = period price + tier increment).

Pricing rules (`price_interval`):
- The interval's energy is assumed uniform over the interval. It is split at every time-of-use
  boundary, version change and cycle reset inside the interval, in proportion to the duration of
  each part, in whole Wh by cumulative rounding (`apportion_wh`).
- Each part is then split at tier band edges by the cycle energy consumed before it.
- Local time is the tariff's zone (Asia/Shanghai by default): schedules are evaluated on the
  local wall clock, cycles reset at local midnight of their start day, and a version whose
  `effective_from` is a date takes effect at local midnight of that date.
- Cycle counter: it resets at each cycle start of the version in force. A version change keeps
  the counter (a mid-year price change does not restart the annual bands) unless the new
  version's cycle is defined differently (kind, start month or start day, or tiers added or
  removed): then the counter also resets at the version's effective instant. An account moved to another
  tariff follows the same rule at the instant of the move (`cycle_usage_across`), the zone being part of
  the cycle's identity there.

Configuration errors raise `TariffConfigError` with the reason; nothing is guessed.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import NamedTuple, TypeAlias
from zoneinfo import ZoneInfo

from prepay_engine.money import EXACT, energy_amount_yuan, to_pico_yuan

SHANGHAI = ZoneInfo("Asia/Shanghai")
ALL_MONTHS = frozenset(range(1, 13))
_US_PER_DAY = 86_400_000_000
_ONE_US = timedelta(microseconds=1)
_ZERO = Decimal(0)


class TariffConfigError(ValueError):
    """A tariff configuration that cannot be used, with the reason."""


class TariffNotInForceError(ValueError):
    """No version of the tariff is in force at the requested instant."""


class CycleKind(StrEnum):
    """How often the tier bands start again from zero."""

    YEARLY = "yearly"
    MONTHLY = "monthly"


def _check_price(value: Decimal, what: str) -> None:
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise TariffConfigError(f"{what} must be a finite Decimal >= 0, got {value!r}")


def _require_aware(instant: datetime, what: str) -> None:
    if instant.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {instant!r}")


def _us_of_day(t: time) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond


def _hhmm(us: int) -> str:
    if us == _US_PER_DAY:
        return "24:00"
    minutes, rest_us = divmod(us, 60_000_000)
    text = f"{minutes // 60:02d}:{minutes % 60:02d}"
    return text if rest_us == 0 else f"{text}:{rest_us / 1_000_000:06.3f}"


def apportion_wh(total_wh: int, weights: Sequence[int]) -> tuple[int, ...]:
    """Split `total_wh` over non-negative `weights` by cumulative rounding (ROUND_HALF_UP); the parts sum exactly.

    Part i is round(total × W_(i+1) / W) − round(total × W_i / W), where W_i is the sum of the
    weights before i. Every part, and every run of consecutive parts, is within 1 Wh of its exact
    share, so a long run of equal weights gets its leftover Wh spread evenly (largest remainder
    would give them all to the first parts); and splitting at a point whose exact share is a whole
    number of Wh gives the same parts as not splitting there.
    """
    assert total_wh >= 0
    assert weights, "nothing to apportion over"
    assert all(w >= 0 for w in weights), weights
    whole = sum(weights)
    assert whole > 0, "weights must not all be zero"
    parts: list[int] = []
    cumulative = 0
    rounded_before = 0
    for weight in weights:
        cumulative += weight
        # round-half-up of total_wh * cumulative / whole, in integers
        rounded = (2 * total_wh * cumulative + whole) // (2 * whole)
        parts.append(rounded - rounded_before)
        rounded_before = rounded
    assert rounded_before == total_wh
    return tuple(parts)


# --------------------------------------------------------------------------- tiers


@dataclass(frozen=True, slots=True)
class TierBand:
    """One band: cycle energy up to `upper_wh` (None for the last, unbounded band) costs `increment` more."""

    upper_wh: int | None
    increment_yuan_per_kwh: Decimal


@dataclass(frozen=True, slots=True)
class TierSchedule:
    """Cumulative energy bands over a yearly or monthly cycle starting at local midnight of its start day.

    Band k covers the cycle's Wh numbered (upper of band k-1, upper of band k]: with bands at
    2,760 kWh and 4,800 kWh, the 2,760,000th Wh of the year is still in the first band.
    """

    cycle: CycleKind
    bands: tuple[TierBand, ...]
    cycle_start_month: int = 1  # yearly cycles only
    cycle_start_day: int = 1

    def __post_init__(self) -> None:
        if not self.bands:
            raise TariffConfigError("a tier schedule needs at least one band")
        previous_wh = 0
        for index, band in enumerate(self.bands):
            _check_price(band.increment_yuan_per_kwh, f"tier {index} increment")
            last = index == len(self.bands) - 1
            if last:
                if band.upper_wh is not None:
                    raise TariffConfigError(
                        f"the last tier band must be unbounded (upper_wh None), got {band.upper_wh}"
                    )
            elif band.upper_wh is None:
                raise TariffConfigError(f"only the last tier band may be unbounded; band {index} is")
            elif band.upper_wh <= previous_wh:
                raise TariffConfigError(
                    f"tier bands must increase: band {index} ends at {band.upper_wh} Wh, not above {previous_wh} Wh"
                )
            else:
                previous_wh = band.upper_wh
        if not 1 <= self.cycle_start_month <= 12:
            raise TariffConfigError(f"cycle_start_month must be 1..12, got {self.cycle_start_month}")
        if self.cycle is CycleKind.MONTHLY:
            if self.cycle_start_month != 1:
                raise TariffConfigError("cycle_start_month applies to yearly cycles only")
            if not 1 <= self.cycle_start_day <= 28:
                raise TariffConfigError(f"a monthly cycle must start on day 1..28, got {self.cycle_start_day}")
        else:
            try:
                date(2001, self.cycle_start_month, self.cycle_start_day)  # a year without 29 February
            except ValueError:
                raise TariffConfigError(
                    f"a yearly cycle cannot start on {self.cycle_start_month}-{self.cycle_start_day}"
                ) from None

    @property
    def definition(self) -> tuple[CycleKind, int, int]:
        """What identifies the cycle (not the bands): kind, start month and start day."""
        return (self.cycle, self.cycle_start_month, self.cycle_start_day)

    def split(self, cycle_usage_wh: int, energy_wh: int) -> list[tuple[int, int]]:
        """(tier index, energy_wh) parts of `energy_wh` consumed after `cycle_usage_wh` in the cycle."""
        parts: list[tuple[int, int]] = []
        lower_wh = 0
        start_wh, end_wh = cycle_usage_wh, cycle_usage_wh + energy_wh
        for index, band in enumerate(self.bands):
            upper_wh = end_wh if band.upper_wh is None else band.upper_wh
            overlap_wh = min(end_wh, upper_wh) - max(start_wh, lower_wh)
            if overlap_wh > 0:
                parts.append((index, overlap_wh))
            lower_wh = upper_wh
        return parts

    def _start_in(self, year: int, month: int, zone: ZoneInfo) -> datetime:
        return _local_midnight_utc(year, month, self.cycle_start_day, zone)

    def starts_between(self, after_utc: datetime, until_utc: datetime, zone: ZoneInfo) -> list[datetime]:
        """Cycle starts t (UTC) with after < t <= until."""
        first = after_utc.astimezone(zone)
        last = until_utc.astimezone(zone)
        candidates: list[datetime] = []
        if self.cycle is CycleKind.YEARLY:
            for year in range(first.year - 1, last.year + 2):
                candidates.append(self._start_in(year, self.cycle_start_month, zone))
        else:
            for index in range(first.year * 12 + first.month - 2, last.year * 12 + last.month + 1):
                year, month0 = divmod(index, 12)
                candidates.append(self._start_in(year, month0 + 1, zone))
        return [t for t in candidates if after_utc < t <= until_utc]

    def latest_start(self, instant_utc: datetime, zone: ZoneInfo) -> datetime:
        """The last cycle start at or before `instant_utc`."""
        local = instant_utc.astimezone(zone)
        if self.cycle is CycleKind.YEARLY:
            candidates = [self._start_in(y, self.cycle_start_month, zone) for y in (local.year - 1, local.year)]
        else:
            index = local.year * 12 + local.month - 1
            candidates = [self._start_in(*_year_month(i), zone) for i in (index - 1, index)]
        return max(t for t in candidates if t <= instant_utc)


@lru_cache(maxsize=4096)
def _local_midnight_utc(year: int, month: int, day: int, zone: ZoneInfo) -> datetime:
    return datetime(year, month, day, tzinfo=zone).astimezone(UTC)


def _year_month(index: int) -> tuple[int, int]:
    year, month0 = divmod(index, 12)
    return year, month0 + 1


# --------------------------------------------------------------------------- energy prices


@dataclass(frozen=True, slots=True)
class FlatPrice:
    """One energy price at all hours."""

    price_yuan_per_kwh: Decimal

    def __post_init__(self) -> None:
        _check_price(self.price_yuan_per_kwh, "flat price")


@dataclass(frozen=True, slots=True)
class Period:
    """A named time-of-use period (peak, flat, valley, critical_peak, ...) and its energy price."""

    name: str
    price_yuan_per_kwh: Decimal


@dataclass(frozen=True, slots=True)
class TimeRange:
    """Local wall-clock range [start, end) of one period; an end not after the start wraps past midnight.

    A wrapping range covers [start, 24:00) and [00:00, end) of each day its schedule applies to,
    so valley 21:00–08:00 is written `TimeRange(time(21), time(8), "valley")`.
    """

    start: time
    end: time
    period: str

    def describe(self) -> str:
        """The range as text for error messages, e.g. 'valley 21:00–08:00'."""
        return f"{self.period} {_hhmm(_us_of_day(self.start))}–{_hhmm(_us_of_day(self.end))}"


@dataclass(frozen=True, slots=True)
class DailySchedule:
    """Ranges covering each day of `months` exactly once: no gap, no overlap."""

    ranges: tuple[TimeRange, ...]
    months: frozenset[int] = ALL_MONTHS
    _starts_us: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _start_times: tuple[time, ...] = field(init=False, repr=False, compare=False)
    _periods: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.ranges:
            raise TariffConfigError("a daily schedule needs at least one time range")
        if not self.months or not self.months <= ALL_MONTHS:
            raise TariffConfigError(f"schedule months must be a non-empty subset of 1..12, got {sorted(self.months)}")
        pieces: list[tuple[int, int, TimeRange]] = []
        for time_range in self.ranges:
            for t in (time_range.start, time_range.end):
                if t.tzinfo is not None:
                    raise TariffConfigError(
                        f"{time_range.describe()}: times are local wall-clock times, without tzinfo"
                    )
            start_us, end_us = _us_of_day(time_range.start), _us_of_day(time_range.end)
            if end_us > start_us:
                pieces.append((start_us, end_us, time_range))
            else:
                pieces.append((start_us, _US_PER_DAY, time_range))
                if end_us > 0:
                    pieces.append((0, end_us, time_range))
        pieces.sort(key=lambda piece: (piece[0], piece[1]))
        covered_us = 0
        previous: TimeRange | None = None
        for start_us, end_us, time_range in pieces:
            if start_us > covered_us:
                raise TariffConfigError(
                    f"time-of-use schedule has a gap from {_hhmm(covered_us)} to {_hhmm(start_us)} (no period)"
                )
            if start_us < covered_us:
                assert previous is not None
                raise TariffConfigError(
                    f"time-of-use ranges overlap: {previous.describe()} and {time_range.describe()} "
                    f"both cover {_hhmm(start_us)}–{_hhmm(min(covered_us, end_us))}"
                )
            covered_us = end_us
            previous = time_range
        if covered_us < _US_PER_DAY:
            raise TariffConfigError(f"time-of-use schedule has a gap from {_hhmm(covered_us)} to 24:00 (no period)")
        object.__setattr__(self, "_starts_us", tuple(p[0] for p in pieces))
        object.__setattr__(self, "_start_times", tuple(p[2].start if p[0] else time(0) for p in pieces))
        object.__setattr__(self, "_periods", tuple(p[2].period for p in pieces))

    def period_at(self, local_time: time) -> str:
        """Name of the period in force at `local_time`."""
        return self._periods[bisect_right(self._starts_us, _us_of_day(local_time)) - 1]

    def boundaries(self) -> tuple[time, ...]:
        """Local times at which a period starts (midnight included)."""
        return self._start_times


@dataclass(frozen=True, slots=True)
class TimeOfUse:
    """Named periods with prices, and the daily schedule(s); schedules' months partition the year."""

    periods: tuple[Period, ...]
    schedules: tuple[DailySchedule, ...]
    _by_month: tuple[DailySchedule, ...] = field(init=False, repr=False, compare=False)
    _prices: dict[str, Decimal] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        prices: dict[str, Decimal] = {}
        for period in self.periods:
            if not period.name:
                raise TariffConfigError("a time-of-use period needs a name")
            if period.name in prices:
                raise TariffConfigError(f"time-of-use period {period.name!r} is defined twice")
            _check_price(period.price_yuan_per_kwh, f"price of period {period.name!r}")
            prices[period.name] = period.price_yuan_per_kwh
        if not self.schedules:
            raise TariffConfigError("time-of-use needs at least one daily schedule")
        by_month: dict[int, DailySchedule] = {}
        used: set[str] = set()
        for schedule in self.schedules:
            for month in sorted(schedule.months):
                if month in by_month:
                    raise TariffConfigError(f"month {month} has more than one time-of-use schedule")
                by_month[month] = schedule
            for time_range in schedule.ranges:
                if time_range.period not in prices:
                    raise TariffConfigError(f"{time_range.describe()}: unknown period {time_range.period!r}")
                used.add(time_range.period)
        missing = sorted(ALL_MONTHS - by_month.keys())
        if missing:
            raise TariffConfigError(f"months {missing} have no time-of-use schedule")
        unused = sorted(prices.keys() - used)
        if unused:
            raise TariffConfigError(f"time-of-use periods {unused} are never scheduled")
        object.__setattr__(self, "_by_month", tuple(by_month[m] for m in range(1, 13)))
        object.__setattr__(self, "_prices", prices)

    def schedule_for(self, month: int) -> DailySchedule:
        """The daily schedule of `month` (1..12)."""
        return self._by_month[month - 1]

    def price_of(self, period: str) -> Decimal:
        """Energy price of `period`."""
        return self._prices[period]


EnergyPrice: TypeAlias = FlatPrice | TimeOfUse


# --------------------------------------------------------------------------- versions


@dataclass(frozen=True, slots=True)
class TariffVersion:
    """Prices in force from `effective_from` (a local date, or an aware datetime) until the next version."""

    effective_from: date | datetime
    source: str
    energy_price: EnergyPrice
    tiers: TierSchedule | None = None

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise TariffConfigError("a tariff version needs a source note (document, authority, date)")
        if isinstance(self.effective_from, datetime) and self.effective_from.utcoffset() is None:
            raise TariffConfigError(f"effective_from {self.effective_from!r} must be a date or an aware datetime")

    @property
    def kind(self) -> str:
        """'flat', 'time_of_use', 'tiered' or 'tiered_time_of_use'."""
        base = "time_of_use" if isinstance(self.energy_price, TimeOfUse) else "flat"
        if self.tiers is None:
            return base
        return "tiered" if base == "flat" else "tiered_time_of_use"

    @property
    def cycle_definition(self) -> tuple[CycleKind, int, int] | None:
        """Identity of the tier cycle, None without tiers."""
        return None if self.tiers is None else self.tiers.definition

    def effective_instant(self, zone: ZoneInfo) -> datetime:
        """`effective_from` as a UTC instant (a date means local midnight in `zone`)."""
        if isinstance(self.effective_from, datetime):
            return self.effective_from.astimezone(UTC)
        d = self.effective_from
        return datetime(d.year, d.month, d.day, tzinfo=zone).astimezone(UTC)

    def base_price_at(self, local: datetime) -> tuple[str | None, Decimal]:
        """(period name or None for a flat price, energy price) at local wall-clock time `local`."""
        if isinstance(self.energy_price, FlatPrice):
            return None, self.energy_price.price_yuan_per_kwh
        period = self.energy_price.schedule_for(local.month).period_at(local.time())
        return period, self.energy_price.price_of(period)


@dataclass(frozen=True, slots=True)
class Tariff:
    """A tariff code and its versions, in increasing order of effective instant, in local zone `zone`."""

    code: str
    name: str
    versions: tuple[TariffVersion, ...]
    zone: ZoneInfo = SHANGHAI
    _starts_utc: tuple[datetime, ...] = field(init=False, repr=False, compare=False)
    # memo of `_skeleton` by interval: every account charges the same 15-minute grid, so pricing repeats a lot
    _skeletons: dict[tuple[datetime, datetime], _Skeleton] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.code.strip():
            raise TariffConfigError("a tariff needs a code")
        if not self.versions:
            raise TariffConfigError(f"tariff {self.code!r} has no version")
        starts = tuple(v.effective_instant(self.zone) for v in self.versions)
        for before, after in itertools.pairwise(starts):
            if after <= before:
                raise TariffConfigError(
                    f"tariff {self.code!r}: versions must be in strictly increasing order of effective_from "
                    f"({after.isoformat()} does not follow {before.isoformat()})"
                )
        object.__setattr__(self, "_starts_utc", starts)
        object.__setattr__(self, "_skeletons", {})

    @property
    def starts_utc(self) -> tuple[datetime, ...]:
        """Effective instant of each version, UTC."""
        return self._starts_utc

    def version_index_at(self, instant: datetime) -> int:
        """Index of the version in force at the aware `instant`."""
        _require_aware(instant, "instant")
        index = bisect_right(self._starts_utc, instant) - 1
        if index < 0:
            raise TariffNotInForceError(
                f"tariff {self.code!r} is not in force at {instant.isoformat()} "
                f"(first version from {self._starts_utc[0].isoformat()})"
            )
        return index

    def version_at(self, instant: datetime) -> TariffVersion:
        """The version in force at the aware `instant`."""
        return self.versions[self.version_index_at(instant)]


def cycle_start_at(tariff: Tariff, instant: datetime) -> datetime:
    """Start (UTC) of the tier cycle containing `instant`: the last cycle reset at or before it.

    For a version without tiers, the counter runs from the start of the run of versions without tiers.
    """
    index = tariff.version_index_at(instant)
    definition = tariff.versions[index].cycle_definition
    run = index
    while run > 0 and tariff.versions[run - 1].cycle_definition == definition:
        run -= 1
    run_start = tariff.starts_utc[run]
    tiers = tariff.versions[index].tiers
    if tiers is None:
        return run_start
    return max(run_start, tiers.latest_start(instant.astimezone(UTC), tariff.zone))


def cycle_usage_across(old: Tariff, new: Tariff, at: datetime, cycle_usage_wh: int) -> int:
    """The tier-cycle usage an account takes from `old` into `new` when it moves at the aware instant `at`.

    The rule of a version change within one tariff: the counter is kept when the cycle is defined the same way
    (kind, start month and day, tiers or none — and here the zone too), else it starts again from zero. Raises
    `TariffNotInForceError` when `new` is not in force at `at`.
    """
    _require_aware(at, "at")
    assert cycle_usage_wh >= 0, cycle_usage_wh
    at_utc = at.astimezone(UTC)
    # the version that priced the last interval before the move (the first one, if nothing came before it)
    before = old.version_at(max(at_utc - _ONE_US, old.starts_utc[0]))
    after = new.version_at(at_utc)
    same = before.cycle_definition == after.cycle_definition and old.zone.key == new.zone.key
    return cycle_usage_wh if same else 0


# --------------------------------------------------------------------------- pricing


@dataclass(frozen=True, slots=True)
class PricedSegment:
    """Energy of an interval priced at one unit price: version, period (None if flat) and tier."""

    version_index: int
    period: str | None
    tier_index: int
    energy_wh: int
    unit_price_yuan_per_kwh: Decimal
    amount_yuan: Decimal


@dataclass(frozen=True, slots=True)
class PricedInterval:
    """The exact price of [start, end) and the tier-cycle energy consumed before `end` in the cycle of `end`."""

    start: datetime
    end: datetime
    energy_wh: int
    segments: tuple[PricedSegment, ...]
    amount_yuan: Decimal
    cycle_usage_after_wh: int

    def __post_init__(self) -> None:
        assert sum(s.energy_wh for s in self.segments) == self.energy_wh
        assert all(s.energy_wh > 0 and s.amount_yuan >= 0 for s in self.segments)
        assert self.cycle_usage_after_wh >= 0


def _resets_between(tariff: Tariff, start: datetime, end: datetime) -> set[datetime]:
    """Cycle counter resets t (UTC) with start < t <= end."""
    resets: set[datetime] = set()
    starts = tariff.starts_utc
    for index, version in enumerate(tariff.versions):
        span_from = starts[index]
        span_until = starts[index + 1] if index + 1 < len(starts) else None
        if span_from > end or (span_until is not None and span_until <= start):
            continue
        if index > 0 and start < span_from and version.cycle_definition != tariff.versions[index - 1].cycle_definition:
            resets.add(span_from)
        if version.tiers is not None:
            upper = end if span_until is None else min(end, span_until - _ONE_US)
            for t in version.tiers.starts_between(max(start, span_from - _ONE_US), upper, tariff.zone):
                resets.add(t)
    return resets


def _tou_boundaries(tariff: Tariff, start: datetime, end: datetime) -> set[datetime]:
    """Local period starts t (UTC) with start < t < end, for the versions in force then."""
    cuts: set[datetime] = set()
    starts = tariff.starts_utc
    zone = tariff.zone
    for index, version in enumerate(tariff.versions):
        price = version.energy_price
        if not isinstance(price, TimeOfUse):
            continue
        span_from = max(start, starts[index])
        span_until = min(end, starts[index + 1]) if index + 1 < len(starts) else end
        if span_from >= span_until:
            continue
        day = span_from.astimezone(zone).date()
        last_day = span_until.astimezone(zone).date()
        while day <= last_day:
            for cut in _day_boundaries_utc(price.schedule_for(day.month), zone, day):
                if span_from < cut < span_until:
                    cuts.add(cut)
            day += timedelta(days=1)
    return cuts


@lru_cache(maxsize=8192)
def _day_boundaries_utc(schedule: DailySchedule, zone: ZoneInfo, day: date) -> tuple[datetime, ...]:
    return tuple(datetime.combine(day, t, tzinfo=zone).astimezone(UTC) for t in schedule.boundaries())


class OneBandPrice(NamedTuple):
    """The price of energy that falls in one tier band of one piece: its segment (none for 0 Wh) and amount."""

    segments: tuple[PricedSegment, ...]
    amount_yuan: Decimal
    amount_pico_yuan: int | None  # `money.to_pico_yuan` of the amount


@dataclass(frozen=True, slots=True)
class _Piece:
    """A sub-interval of one version, period and base price; the tier cycle resets at its start if `reset`."""

    start: datetime
    reset: bool
    version_index: int
    period: str | None
    base_price_yuan_per_kwh: Decimal
    tiers: TierSchedule | None
    unit_prices_yuan_per_kwh: tuple[Decimal, ...]  # base price plus each tier's increment (the base alone untiered)
    tier_uppers_wh: tuple[int, ...]  # upper edges of the bounded bands (none untiered)
    # memo of `one_band`: meters report the same few energies, priced the same way over and over
    _one_band: dict[tuple[int, int], OneBandPrice] = field(default_factory=dict, repr=False, compare=False, hash=False)

    def one_band(self, tier_index: int, energy_wh: int) -> OneBandPrice:
        """The price of `energy_wh` (no segment for 0 Wh) when all of it falls in band `tier_index` of this piece."""
        key = (tier_index, energy_wh)
        found = self._one_band.get(key)
        if found is None:
            unit_price = self.unit_prices_yuan_per_kwh[tier_index]
            amount_yuan = _ZERO if energy_wh == 0 else energy_amount_yuan(energy_wh, unit_price)
            segments = (
                ()
                if energy_wh == 0
                else (PricedSegment(self.version_index, self.period, tier_index, energy_wh, unit_price, amount_yuan),)
            )
            found = OneBandPrice(segments, amount_yuan, to_pico_yuan(amount_yuan))
            if len(self._one_band) >= _ONE_BAND_MEMO_LIMIT:
                self._one_band.clear()
            self._one_band[key] = found
        return found


_ONE_BAND_MEMO_LIMIT = 20_000


@dataclass(frozen=True, slots=True)
class _Skeleton:
    """What pricing [start, end) needs that depends on neither the energy nor the cycle usage."""

    pieces: tuple[_Piece, ...]
    weights_us: tuple[int, ...]
    reset_at_end: bool


_SKELETON_MEMO_LIMIT = 100_000


def _skeleton(tariff: Tariff, start_utc: datetime, end_utc: datetime) -> _Skeleton:
    key = (start_utc, end_utc)
    memo = tariff._skeletons
    found = memo.get(key)
    if found is not None:
        return found
    tariff.version_index_at(start_utc)
    resets = _resets_between(tariff, start_utc, end_utc)
    cuts = _tou_boundaries(tariff, start_utc, end_utc)
    cuts.update(t for t in tariff.starts_utc if start_utc < t < end_utc)
    cuts.update(t for t in resets if t < end_utc)
    points = [start_utc, *sorted(cuts), end_utc]
    pieces = []
    for sub_start in points[:-1]:
        version_index = tariff.version_index_at(sub_start)
        version = tariff.versions[version_index]
        period, base_price = version.base_price_at(sub_start.astimezone(tariff.zone))
        tiers = version.tiers
        unit_prices = (
            (base_price,)
            if tiers is None
            else tuple(EXACT.add(base_price, band.increment_yuan_per_kwh) for band in tiers.bands)
        )
        uppers = () if tiers is None else tuple(b.upper_wh for b in tiers.bands if b.upper_wh is not None)
        pieces.append(
            _Piece(sub_start, sub_start in resets, version_index, period, base_price, tiers, unit_prices, uppers)
        )
    skeleton = _Skeleton(
        tuple(pieces), tuple((b - a) // _ONE_US for a, b in itertools.pairwise(points)), end_utc in resets
    )
    if len(memo) >= _SKELETON_MEMO_LIMIT:
        memo.clear()
    memo[key] = skeleton
    return skeleton


def price_interval(
    tariff: Tariff, start: datetime, end: datetime, energy_wh: int, cycle_usage_wh: int
) -> PricedInterval:
    """Price `energy_wh` consumed uniformly over [start, end), `cycle_usage_wh` being already used in start's cycle.

    Raises `TariffNotInForceError` if `start` precedes the tariff's first version.
    """
    _require_aware(start, "start")
    _require_aware(end, "end")
    start_utc, end_utc = start.astimezone(UTC), end.astimezone(UTC)
    segments, amount_yuan, usage_after_wh = price_span(tariff, start_utc, end_utc, energy_wh, cycle_usage_wh)
    return PricedInterval(start_utc, end_utc, energy_wh, segments, amount_yuan, usage_after_wh)


def _price_in_one_band(skeleton: _Skeleton, energy_wh: int, cycle_usage_wh: int) -> tuple[OneBandPrice, int] | None:
    """`price_span` of the common case, one piece (no boundary inside) all in one tier band; None otherwise."""
    piece = skeleton.pieces[0]
    usage_wh = 0 if piece.reset else cycle_usage_wh
    uppers = piece.tier_uppers_wh
    tier_index = bisect_right(uppers, usage_wh) if uppers else 0
    if tier_index < len(uppers) and usage_wh + energy_wh > uppers[tier_index]:
        return None
    return piece.one_band(tier_index, energy_wh), 0 if skeleton.reset_at_end else usage_wh + energy_wh


def price_in_one_band(
    tariff: Tariff, start_utc: datetime, end_utc: datetime, energy_wh: int, cycle_usage_wh: int
) -> tuple[OneBandPrice, int] | None:
    """The price and the cycle usage after, when [start, end) has no boundary inside and all its energy falls in
    one tier band (the common case, memoised); None otherwise (`price_span` then)."""
    skeleton = tariff._skeletons.get((start_utc, end_utc)) or _skeleton(tariff, start_utc, end_utc)
    if len(skeleton.pieces) != 1:
        return None
    return _price_in_one_band(skeleton, energy_wh, cycle_usage_wh)


def price_span(
    tariff: Tariff, start_utc: datetime, end_utc: datetime, energy_wh: int, cycle_usage_wh: int
) -> tuple[tuple[PricedSegment, ...], Decimal, int]:
    """`price_interval` of UTC instants, as (segments, exact amount, cycle usage after) without the wrapper object."""
    assert energy_wh >= 0, energy_wh
    assert cycle_usage_wh >= 0, cycle_usage_wh
    assert start_utc < end_utc, (start_utc, end_utc)
    skeleton = _skeleton(tariff, start_utc, end_utc)
    pieces = skeleton.pieces
    if len(pieces) == 1:
        found = _price_in_one_band(skeleton, energy_wh, cycle_usage_wh)
        if found is not None:
            one, usage_after_wh = found
            return one.segments, one.amount_yuan, usage_after_wh
    parts_wh = (energy_wh,) if len(pieces) == 1 else apportion_wh(energy_wh, skeleton.weights_us)

    segments: list[PricedSegment] = []
    usage_wh = cycle_usage_wh
    for piece, part_wh in zip(pieces, parts_wh, strict=True):
        if piece.reset:
            usage_wh = 0
        tiers = piece.tiers
        tier_parts = [(0, part_wh)] if tiers is None else tiers.split(usage_wh, part_wh)
        for tier_index, tier_wh in tier_parts:
            if tier_wh == 0:
                continue
            unit_price = piece.unit_prices_yuan_per_kwh[tier_index]
            last = segments[-1] if segments else None
            if last is not None and (
                last.version_index,
                last.period,
                last.tier_index,
                last.unit_price_yuan_per_kwh,
            ) == (
                piece.version_index,
                piece.period,
                tier_index,
                unit_price,
            ):
                tier_wh += last.energy_wh
                segments.pop()
            segments.append(
                PricedSegment(
                    piece.version_index,
                    piece.period,
                    tier_index,
                    tier_wh,
                    unit_price,
                    energy_amount_yuan(tier_wh, unit_price),
                )
            )
        usage_wh += part_wh
    if skeleton.reset_at_end:
        usage_wh = 0

    amount_yuan = _ZERO
    for segment in segments:
        amount_yuan = EXACT.add(amount_yuan, segment.amount_yuan)
    assert sum(s.energy_wh for s in segments) == energy_wh, (segments, energy_wh)
    return tuple(segments), amount_yuan, usage_wh


# --------------------------------------------------------------------------- examples (data, not policy)


def example_jiangsu_residential() -> Tariff:
    """EXAMPLE tariff: Jiangsu residential (<1 kV), annual tiers 2,760 / 4,800 kWh with peak/valley time-of-use."""
    return Tariff(
        code="EXAMPLE-JS-RES-TIERED-TOU",
        name="EXAMPLE — Jiangsu residential, annual tiers with peak/valley time-of-use, <1 kV",
        versions=(
            TariffVersion(
                effective_from=date(2012, 7, 1),
                source=(
                    "EXAMPLE, not production configuration. Jiangsu Provincial Price Bureau residential tiered "
                    "tariff as widely published since the tiered reform of 1 July 2012 (<1 kV supply): annual "
                    "bands 0–2,760 kWh / 2,761–4,800 kWh / above 4,800 kWh, calendar-year cycle; time-of-use peak "
                    "08:00–21:00 0.5583 yuan/kWh, valley 21:00–08:00 0.3583 yuan/kWh (non-TOU first tier 0.5283); "
                    "tier increments +0.05 and +0.30 yuan/kWh on top of the period price. Figures from public "
                    "summaries, not checked against the notice itself; the effective date is approximate."
                ),
                energy_price=TimeOfUse(
                    periods=(Period("peak", Decimal("0.5583")), Period("valley", Decimal("0.3583"))),
                    schedules=(
                        DailySchedule(
                            ranges=(TimeRange(time(8), time(21), "peak"), TimeRange(time(21), time(8), "valley"))
                        ),
                    ),
                ),
                tiers=TierSchedule(
                    cycle=CycleKind.YEARLY,
                    bands=(
                        TierBand(2_760_000, Decimal("0.00")),
                        TierBand(4_800_000, Decimal("0.05")),
                        TierBand(None, Decimal("0.30")),
                    ),
                ),
            ),
        ),
    )


def example_commercial_tou_with_summer_critical_peak() -> Tariff:
    """EXAMPLE tariff: general commercial peak/flat/valley time-of-use with critical peak in July and August."""
    base_ranges = (
        TimeRange(time(0), time(8), "valley"),
        TimeRange(time(8), time(11), "peak"),
        TimeRange(time(11), time(17), "flat"),
        TimeRange(time(17), time(22), "peak"),
        TimeRange(time(22), time(0), "flat"),
    )
    summer_ranges = (
        TimeRange(time(0), time(8), "valley"),
        TimeRange(time(8), time(10), "peak"),
        TimeRange(time(10), time(11), "critical_peak"),
        TimeRange(time(11), time(17), "flat"),
        TimeRange(time(17), time(20), "peak"),
        TimeRange(time(20), time(21), "critical_peak"),
        TimeRange(time(21), time(22), "peak"),
        TimeRange(time(22), time(0), "flat"),
    )
    return Tariff(
        code="EXAMPLE-COMMERCIAL-TOU-CPP",
        name="EXAMPLE — general commercial time-of-use with summer critical peak (illustrative prices)",
        versions=(
            TariffVersion(
                effective_from=date(2024, 1, 1),
                source=(
                    "EXAMPLE, illustrative, not a published price list. Period layout modelled on Jiangsu general "
                    "industrial and commercial time-of-use (peak 08:00–11:00 and 17:00–22:00, flat 11:00–17:00 and "
                    "22:00–24:00, valley 00:00–08:00), critical-peak hours in July and August approximate. Prices "
                    "are invented to follow the ratios of NDRC notice 发改价格〔2021〕1093号 (peak:valley at least "
                    "4:1 where the load's peak-valley gap is large; critical peak at least 20 % above peak); real "
                    "commercial prices change monthly with grid agency purchasing."
                ),
                energy_price=TimeOfUse(
                    periods=(
                        Period("critical_peak", Decimal("1.2960")),
                        Period("peak", Decimal("1.0800")),
                        Period("flat", Decimal("0.6000")),
                        Period("valley", Decimal("0.2700")),
                    ),
                    schedules=(
                        DailySchedule(ranges=base_ranges, months=ALL_MONTHS - {7, 8}),
                        DailySchedule(ranges=summer_ranges, months=frozenset({7, 8})),
                    ),
                ),
            ),
        ),
    )
