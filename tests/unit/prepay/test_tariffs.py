"""Tariffs: configuration validation, and exact pricing across period, band, version and cycle boundaries.

Expectations for the Jiangsu-style example are computed by hand in the comments: peak 08:00–21:00
0.5583, valley 21:00–08:00 0.3583, tier increments 0 / +0.05 / +0.30 on annual bands of 2,760 and
4,800 kWh, cycle reset at local midnight on 1 January (Asia/Shanghai, UTC+8).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prepay_engine.tariffs import (
    SHANGHAI,
    CycleKind,
    DailySchedule,
    FlatPrice,
    Period,
    PricedInterval,
    Tariff,
    TariffConfigError,
    TariffNotInForceError,
    TariffVersion,
    TierBand,
    TierSchedule,
    TimeOfUse,
    TimeRange,
    apportion_wh,
    cycle_start_at,
    example_commercial_tou_with_summer_critical_peak,
    example_jiangsu_residential,
    price_interval,
)

D = Decimal
JIANGSU = example_jiangsu_residential()
BAND_1_WH = 2_760_000
BAND_2_WH = 4_800_000


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI)


def summary(priced: PricedInterval) -> list[tuple[int, str | None, int, int, Decimal, Decimal]]:
    return [
        (s.version_index, s.period, s.tier_index, s.energy_wh, s.unit_price_yuan_per_kwh, s.amount_yuan)
        for s in priced.segments
    ]


def jiangsu_tiers() -> TierSchedule:
    return TierSchedule(
        CycleKind.YEARLY, (TierBand(BAND_1_WH, D("0")), TierBand(BAND_2_WH, D("0.05")), TierBand(None, D("0.30")))
    )


def peak_valley(peak: str, valley: str) -> TimeOfUse:
    return TimeOfUse(
        periods=(Period("peak", D(peak)), Period("valley", D(valley))),
        schedules=(DailySchedule((TimeRange(time(8), time(21), "peak"), TimeRange(time(21), time(8), "valley"))),),
    )


def with_second_version(version: TariffVersion) -> Tariff:
    return Tariff("TEST-V2", "test", (JIANGSU.versions[0], version))


# --------------------------------------------------------------------------- hand-computed Jiangsu cases


def test_interval_across_21_00_is_split_exactly_between_peak_and_valley() -> None:
    # 20:50–21:05: 10 min peak, 5 min valley; 1,000 Wh uniform -> 666.67 / 333.33 -> 667 / 333 Wh
    priced = price_interval(JIANGSU, local(2026, 3, 5, 20, 50), local(2026, 3, 5, 21, 5), 1_000, 0)
    assert summary(priced) == [
        (0, "peak", 0, 667, D("0.5583"), D("0.3723861")),  # 667 x 0.5583 / 1000
        (0, "valley", 0, 333, D("0.3583"), D("0.1193139")),  # 333 x 0.3583 / 1000
    ]
    assert priced.amount_yuan == D("0.4917000")
    assert priced.cycle_usage_after_wh == 1_000


def test_grid_intervals_either_side_of_21_00_are_not_split() -> None:
    before = price_interval(JIANGSU, local(2026, 3, 5, 20, 45), local(2026, 3, 5, 21, 0), 500, 0)
    after = price_interval(JIANGSU, local(2026, 3, 5, 21, 0), local(2026, 3, 5, 21, 15), 500, 500)
    assert summary(before) == [(0, "peak", 0, 500, D("0.5583"), D("0.2791500"))]
    assert summary(after) == [(0, "valley", 0, 500, D("0.3583"), D("0.1791500"))]


def test_interval_crossing_the_2760_kwh_band_splits_at_the_band_edge() -> None:
    # 600 Wh left in the first band, the other 600 Wh at first-band price + 0.05
    priced = price_interval(JIANGSU, local(2026, 9, 1, 10, 0), local(2026, 9, 1, 10, 15), 1_200, 2_759_400)
    assert summary(priced) == [
        (0, "peak", 0, 600, D("0.5583"), D("0.3349800")),
        (0, "peak", 1, 600, D("0.6083"), D("0.3649800")),
    ]
    assert priced.amount_yuan == D("0.6999600")
    assert priced.cycle_usage_after_wh == 2_760_600


def test_the_2760000th_wh_of_the_year_is_still_in_the_first_band() -> None:
    priced = price_interval(JIANGSU, local(2026, 9, 1, 10, 0), local(2026, 9, 1, 10, 15), 1, BAND_1_WH - 1)
    assert [s.tier_index for s in priced.segments] == [0]
    priced = price_interval(JIANGSU, local(2026, 9, 1, 10, 0), local(2026, 9, 1, 10, 15), 1, BAND_1_WH)
    assert [s.tier_index for s in priced.segments] == [1]


def test_interval_crossing_4800_kwh_in_the_valley() -> None:
    priced = price_interval(JIANGSU, local(2026, 11, 2, 22, 0), local(2026, 11, 2, 22, 15), 300, BAND_2_WH - 100)
    assert summary(priced) == [
        (0, "valley", 1, 100, D("0.4083"), D("0.0408300")),
        (0, "valley", 2, 200, D("0.6583"), D("0.1316600")),
    ]
    assert priced.amount_yuan == D("0.1724900")


def test_period_boundary_and_band_edge_in_the_same_interval() -> None:
    # 20:50–21:05 with 1,500 Wh: 1,000 Wh peak finish the first band exactly, 500 Wh valley in the second
    priced = price_interval(JIANGSU, local(2026, 3, 5, 20, 50), local(2026, 3, 5, 21, 5), 1_500, BAND_1_WH - 1_000)
    assert summary(priced) == [
        (0, "peak", 0, 1_000, D("0.5583"), D("0.5583000")),
        (0, "valley", 1, 500, D("0.4083"), D("0.2041500")),
    ]


def test_year_resets_at_local_midnight_on_1_january() -> None:
    # 23:45–00:00 local is still 2025: third band, valley; the cycle then restarts at 00:00 local
    last = price_interval(JIANGSU, local(2025, 12, 31, 23, 45), local(2026, 1, 1, 0, 0), 400, 4_900_000)
    assert summary(last) == [(0, "valley", 2, 400, D("0.6583"), D("0.2633200"))]
    assert last.cycle_usage_after_wh == 0
    first = price_interval(JIANGSU, local(2026, 1, 1, 0, 0), local(2026, 1, 1, 0, 15), 400, last.cycle_usage_after_wh)
    assert summary(first) == [(0, "valley", 0, 400, D("0.3583"), D("0.1433200"))]
    assert first.cycle_usage_after_wh == 400
    # in UTC those are 2025-12-31 15:45–16:00 and 16:00–16:15
    assert last.end == datetime(2025, 12, 31, 16, 0, tzinfo=UTC)


def test_utc_midnight_on_1_january_is_not_a_reset() -> None:
    # 2026-01-01 00:00 UTC is 08:00 local: the 2026 cycle has been running for 8 hours
    priced = price_interval(
        JIANGSU, datetime(2025, 12, 31, 23, 45, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, tzinfo=UTC), 400, 3_000
    )
    assert summary(priced) == [(0, "valley", 0, 400, D("0.3583"), D("0.1433200"))]
    assert priced.cycle_usage_after_wh == 3_400
    after = price_interval(
        JIANGSU, datetime(2026, 1, 1, 0, 0, tzinfo=UTC), datetime(2026, 1, 1, 0, 15, tzinfo=UTC), 400, 3_400
    )
    assert summary(after) == [(0, "peak", 0, 400, D("0.5583"), D("0.2233200"))]


def test_interval_straddling_the_year_reset_splits_at_midnight() -> None:
    # 23:50–00:05: 200 Wh before midnight in the third band, 100 Wh after it in the new year's first band
    priced = price_interval(JIANGSU, local(2025, 12, 31, 23, 50), local(2026, 1, 1, 0, 5), 300, 4_900_000)
    assert summary(priced) == [
        (0, "valley", 2, 200, D("0.6583"), D("0.1316600")),
        (0, "valley", 0, 100, D("0.3583"), D("0.0358300")),
    ]
    assert priced.cycle_usage_after_wh == 100


def test_version_change_mid_day_splits_the_interval_and_keeps_the_annual_counter() -> None:
    tariff = with_second_version(
        TariffVersion(
            effective_from=local(2026, 6, 15, 12, 7),
            source="test: mid-day price change",
            energy_price=peak_valley("0.6000", "0.4000"),
            tiers=jiangsu_tiers(),
        )
    )
    # 12:00–12:15 with 1,500 Wh: 7 min at the old peak price (700 Wh), 8 min at the new one (800 Wh)
    priced = price_interval(tariff, local(2026, 6, 15, 12, 0), local(2026, 6, 15, 12, 15), 1_500, 1_000_000)
    assert summary(priced) == [
        (0, "peak", 0, 700, D("0.5583"), D("0.3908100")),
        (1, "peak", 0, 800, D("0.6000"), D("0.4800000")),
    ]
    assert priced.amount_yuan == D("0.8708100")
    assert priced.cycle_usage_after_wh == 1_001_500  # same cycle definition: no reset


def test_version_with_another_cycle_definition_resets_the_counter_at_its_start() -> None:
    monthly = TierSchedule(CycleKind.MONTHLY, (TierBand(230_000, D("0")), TierBand(None, D("0.05"))))
    tariff = with_second_version(
        TariffVersion(local(2026, 6, 15, 12, 7), "test: monthly tiers", peak_valley("0.5583", "0.3583"), monthly)
    )
    priced = price_interval(tariff, local(2026, 6, 15, 12, 0), local(2026, 6, 15, 12, 15), 1_500, 4_000_000)
    # before 12:07 the annual counter (second band); from 12:07 a fresh monthly counter (first band)
    assert summary(priced) == [
        (0, "peak", 1, 700, D("0.6083"), D("0.4258100")),
        (1, "peak", 0, 800, D("0.5583"), D("0.4466400")),
    ]
    assert priced.cycle_usage_after_wh == 800
    assert cycle_start_at(tariff, local(2026, 6, 20)) == local(2026, 6, 15, 12, 7)
    assert cycle_start_at(tariff, local(2026, 7, 3)) == local(2026, 7, 1)


def test_version_effective_on_a_date_starts_at_local_midnight() -> None:
    tariff = with_second_version(
        TariffVersion(date(2026, 7, 1), "test: new prices", peak_valley("0.6000", "0.4000"), jiangsu_tiers())
    )
    priced = price_interval(tariff, local(2026, 6, 30, 23, 50), local(2026, 7, 1, 0, 5), 300, 0)
    assert summary(priced) == [
        (0, "valley", 0, 200, D("0.3583"), D("0.0716600")),
        (1, "valley", 0, 100, D("0.4000"), D("0.0400000")),
    ]
    assert priced.cycle_usage_after_wh == 300


def test_before_the_first_version_the_tariff_is_not_in_force() -> None:
    with pytest.raises(TariffNotInForceError, match="not in force"):
        price_interval(JIANGSU, local(2012, 6, 30, 23, 45), local(2012, 7, 1, 0, 0), 100, 0)


def test_zero_energy_gives_no_segment_but_still_follows_the_cycle() -> None:
    priced = price_interval(JIANGSU, local(2025, 12, 31, 23, 45), local(2026, 1, 1, 0, 0), 0, 4_000_000)
    assert priced.segments == ()
    assert priced.amount_yuan == 0
    assert priced.cycle_usage_after_wh == 0


# --------------------------------------------------------------------------- other kinds


def test_flat_tariff() -> None:
    tariff = Tariff("FLAT", "flat", (TariffVersion(date(2020, 1, 1), "test", FlatPrice(D("0.5283"))),))
    priced = price_interval(tariff, local(2026, 3, 5, 20, 50), local(2026, 3, 5, 21, 5), 1_000, 0)
    assert summary(priced) == [(0, None, 0, 1_000, D("0.5283"), D("0.5283000"))]
    assert tariff.versions[0].kind == "flat"


def test_tiered_flat_tariff_with_monthly_cycle_starting_on_the_15th() -> None:
    tiers = TierSchedule(CycleKind.MONTHLY, (TierBand(200_000, D("0")), TierBand(None, D("0.10"))), cycle_start_day=15)
    tariff = Tariff("MONTHLY", "monthly", (TariffVersion(date(2020, 1, 1), "test", FlatPrice(D("0.5")), tiers),))
    assert tariff.versions[0].kind == "tiered"
    # the cycle restarts at 00:00 local on the 15th, not on the 1st
    before = price_interval(tariff, local(2026, 4, 14, 23, 45), local(2026, 4, 15, 0, 0), 100, 250_000)
    assert summary(before) == [(0, None, 1, 100, D("0.60"), D("0.0600000"))]
    assert before.cycle_usage_after_wh == 0
    first = price_interval(tariff, local(2026, 5, 1, 0, 0), local(2026, 5, 1, 0, 15), 100, 250_000)
    assert first.cycle_usage_after_wh == 250_100
    assert cycle_start_at(tariff, local(2026, 5, 1)) == local(2026, 4, 15)
    assert cycle_start_at(tariff, local(2026, 4, 14, 23, 59)) == local(2026, 3, 15)


def test_yearly_cycle_with_another_start_month() -> None:
    tiers = TierSchedule(
        CycleKind.YEARLY, (TierBand(100, D("0")), TierBand(None, D("0.10"))), cycle_start_month=7, cycle_start_day=1
    )
    tariff = Tariff("FY", "fiscal year", (TariffVersion(date(2020, 1, 1), "test", FlatPrice(D("0.5")), tiers),))
    assert cycle_start_at(tariff, local(2026, 3, 1)) == local(2025, 7, 1)
    assert cycle_start_at(tariff, local(2026, 7, 1)) == local(2026, 7, 1)
    assert price_interval(tariff, local(2026, 6, 30, 23, 45), local(2026, 7, 1), 10, 500).cycle_usage_after_wh == 0
    assert price_interval(tariff, local(2026, 12, 31, 23, 45), local(2027, 1, 1), 10, 500).cycle_usage_after_wh == 510


def test_commercial_example_has_critical_peak_in_july_and_august_only() -> None:
    tariff = example_commercial_tou_with_summer_critical_peak()
    assert tariff.versions[0].kind == "time_of_use"

    def energy_by_period(day: datetime) -> dict[str | None, int]:
        priced = price_interval(tariff, day, day + timedelta(days=1), 24_000, 0)  # 1,000 Wh per hour
        totals: Counter[str | None] = Counter()
        for segment in priced.segments:
            totals[segment.period] += segment.energy_wh
        return dict(totals)

    assert energy_by_period(local(2026, 7, 15)) == {
        "valley": 8_000,
        "peak": 6_000,
        "critical_peak": 2_000,
        "flat": 8_000,
    }
    assert energy_by_period(local(2026, 6, 15)) == {"valley": 8_000, "peak": 8_000, "flat": 8_000}
    # the critical peak hour is priced 1.2 x peak
    priced = price_interval(tariff, local(2026, 8, 3, 10, 0), local(2026, 8, 3, 10, 15), 250, 0)
    assert summary(priced) == [(0, "critical_peak", 0, 250, D("1.2960"), D("0.3240000"))]


def test_examples_say_they_are_examples_and_cite_a_source() -> None:
    for tariff in (JIANGSU, example_commercial_tou_with_summer_critical_peak()):
        assert tariff.code.startswith("EXAMPLE")
        for version in tariff.versions:
            assert version.source.startswith("EXAMPLE")
    assert JIANGSU.versions[0].kind == "tiered_time_of_use"
    assert "approximate" in JIANGSU.versions[0].source


# --------------------------------------------------------------------------- validation


def schedule(*ranges: tuple[int, int, str]) -> DailySchedule:
    return DailySchedule(tuple(TimeRange(time(a), time(b), p) for a, b, p in ranges))


def test_a_gap_in_the_day_is_rejected_with_its_times() -> None:
    with pytest.raises(TariffConfigError, match=r"gap from 12:00 to 13:00"):
        schedule((8, 12, "peak"), (13, 21, "peak"), (21, 8, "valley"))


def test_a_gap_at_the_end_of_the_day_is_rejected() -> None:
    with pytest.raises(TariffConfigError, match=r"gap from 22:00 to 24:00"):
        schedule((0, 8, "valley"), (8, 22, "peak"))


def test_overlapping_ranges_are_rejected_naming_both() -> None:
    with pytest.raises(
        TariffConfigError, match=r"overlap: peak 08:00–21:00 and valley 20:00–08:00 both cover 20:00–21:00"
    ):
        schedule((8, 21, "peak"), (20, 8, "valley"))


def test_a_wrapping_range_overlapping_the_morning_is_rejected() -> None:
    with pytest.raises(TariffConfigError, match="overlap"):
        schedule((7, 21, "peak"), (21, 8, "valley"))


def test_whole_day_range_is_valid() -> None:
    assert schedule((0, 0, "flat")).period_at(time(13, 37)) == "flat"


def test_time_of_use_validation() -> None:
    one_day = schedule((8, 21, "peak"), (21, 8, "valley"))
    with pytest.raises(TariffConfigError, match="unknown period 'valley'"):
        TimeOfUse((Period("peak", D("1")),), (one_day,))
    with pytest.raises(TariffConfigError, match="never scheduled"):
        TimeOfUse((Period("peak", D("1")), Period("valley", D("1")), Period("critical_peak", D("2"))), (one_day,))
    with pytest.raises(TariffConfigError, match=r"months \[7, 8\] have no"):
        TimeOfUse(
            (Period("peak", D("1")), Period("valley", D("1"))),
            (DailySchedule(one_day.ranges, frozenset(range(1, 13)) - {7, 8}),),
        )
    with pytest.raises(TariffConfigError, match="month 7 has more than one"):
        TimeOfUse(
            (Period("peak", D("1")), Period("valley", D("1"))),
            (one_day, DailySchedule(one_day.ranges, frozenset({7}))),
        )
    with pytest.raises(TariffConfigError, match="defined twice"):
        TimeOfUse((Period("peak", D("1")), Period("peak", D("2")), Period("valley", D("1"))), (one_day,))
    with pytest.raises(TariffConfigError, match=">= 0"):
        TimeOfUse((Period("peak", D("-0.1")), Period("valley", D("1"))), (one_day,))
    with pytest.raises(TariffConfigError, match="finite Decimal"):
        TimeOfUse((Period("peak", 0.5583), Period("valley", D("1"))), (one_day,))  # type: ignore[arg-type]


def test_tier_validation() -> None:
    with pytest.raises(TariffConfigError, match="must increase"):
        TierSchedule(
            CycleKind.YEARLY, (TierBand(4_800_000, D("0")), TierBand(2_760_000, D("0.05")), TierBand(None, D("0.3")))
        )
    with pytest.raises(TariffConfigError, match="last tier band must be unbounded"):
        TierSchedule(CycleKind.YEARLY, (TierBand(2_760_000, D("0")),))
    with pytest.raises(TariffConfigError, match="only the last"):
        TierSchedule(CycleKind.YEARLY, (TierBand(None, D("0")), TierBand(None, D("0.05"))))
    with pytest.raises(TariffConfigError, match=">= 0"):
        TierSchedule(CycleKind.YEARLY, (TierBand(None, D("-0.01")),))
    with pytest.raises(TariffConfigError, match=r"day 1\.\.28"):
        TierSchedule(CycleKind.MONTHLY, (TierBand(None, D("0")),), cycle_start_day=29)
    with pytest.raises(TariffConfigError, match="cannot start on 2-29"):
        TierSchedule(CycleKind.YEARLY, (TierBand(None, D("0")),), cycle_start_month=2, cycle_start_day=29)


def test_version_validation() -> None:
    flat = FlatPrice(D("0.5"))
    with pytest.raises(TariffConfigError, match="source"):
        TariffVersion(date(2026, 1, 1), "  ", flat)
    with pytest.raises(TariffConfigError, match="aware"):
        TariffVersion(datetime(2026, 1, 1), "test", flat)  # noqa: DTZ001
    with pytest.raises(TariffConfigError, match="strictly increasing"):
        Tariff("T", "t", (TariffVersion(date(2026, 1, 2), "a", flat), TariffVersion(date(2026, 1, 1), "b", flat)))
    # a date and the datetime of its local midnight are the same instant
    with pytest.raises(TariffConfigError, match="strictly increasing"):
        Tariff("T", "t", (TariffVersion(date(2026, 1, 1), "a", flat), TariffVersion(local(2026, 1, 1), "b", flat)))
    with pytest.raises(TariffConfigError, match="no version"):
        Tariff("T", "t", ())


# --------------------------------------------------------------------------- apportionment


def test_apportion_spreads_leftover_wh_evenly() -> None:
    assert apportion_wh(3, [1] * 6) == (1, 0, 1, 0, 1, 0)
    assert apportion_wh(8_003, [1] * 8) == (1_000, 1_001, 1_000, 1_001, 1_000, 1_000, 1_001, 1_000)
    assert apportion_wh(1_000, [10, 5]) == (667, 333)
    assert apportion_wh(7, [0, 3, 0]) == (0, 7, 0)


@given(st.integers(0, 10**9), st.lists(st.integers(0, 10**6), min_size=1, max_size=40).filter(lambda w: sum(w) > 0))
def test_apportion_sums_exactly_and_every_run_is_within_one_wh(total_wh: int, weights: list[int]) -> None:
    parts = apportion_wh(total_wh, weights)
    assert sum(parts) == total_wh
    assert all(p >= 0 for p in parts)
    whole = sum(weights)
    for i in range(len(weights)):
        for j in range(i + 1, len(weights) + 1):
            exact = total_wh * sum(weights[i:j]) / whole
            assert abs(sum(parts[i:j]) - exact) < 1 + 1e-6


# --------------------------------------------------------------------------- properties


MULTI_VERSION = Tariff(
    "TEST-MULTI",
    "versions of every kind",
    (
        JIANGSU.versions[0],
        TariffVersion(local(2026, 3, 10, 13, 7), "test", peak_valley("0.6", "0.3"), jiangsu_tiers()),
        TariffVersion(
            date(2026, 4, 1),
            "test",
            FlatPrice(D("0.55")),
            TierSchedule(CycleKind.MONTHLY, (TierBand(50_000, D("0")), TierBand(None, D("0.1"))), cycle_start_day=3),
        ),
        TariffVersion(
            local(2026, 4, 20, 9, 30),
            "test",
            example_commercial_tou_with_summer_critical_peak().versions[0].energy_price,
        ),
        TariffVersion(date(2026, 7, 1), "test", peak_valley("0.58", "0.36"), jiangsu_tiers()),
    ),
)
TARIFFS = st.sampled_from([JIANGSU, MULTI_VERSION, example_commercial_tou_with_summer_critical_peak()])
starts = st.datetimes(
    min_value=datetime(2025, 12, 25),  # noqa: DTZ001
    max_value=datetime(2026, 12, 31),  # noqa: DTZ001
    timezones=st.just(SHANGHAI),
).map(lambda t: t.replace(second=0, microsecond=0))


@settings(max_examples=300, deadline=None)
@given(TARIFFS, starts, st.integers(1, 3 * 24 * 60), st.integers(0, 10**7), st.integers(0, 6_000_000))
def test_segments_add_up_and_are_never_negative(
    tariff: Tariff, start: datetime, minutes: int, energy_wh: int, cycle_usage_wh: int
) -> None:
    priced = price_interval(tariff, start, start + timedelta(minutes=minutes), energy_wh, cycle_usage_wh)
    assert sum(s.energy_wh for s in priced.segments) == energy_wh
    assert all(s.energy_wh > 0 and s.amount_yuan >= 0 and s.unit_price_yuan_per_kwh >= 0 for s in priced.segments)
    assert priced.amount_yuan == sum((s.amount_yuan for s in priced.segments), D(0))
    for segment in priced.segments:
        assert segment.amount_yuan * 1000 == segment.energy_wh * segment.unit_price_yuan_per_kwh
    reset = cycle_start_at(tariff, priced.end) > priced.start
    if not reset:
        assert priced.cycle_usage_after_wh == cycle_usage_wh + energy_wh
    else:
        assert priced.cycle_usage_after_wh <= energy_wh


@settings(max_examples=300, deadline=None)
@given(
    TARIFFS,
    starts,
    st.integers(2, 2 * 24 * 60),
    st.data(),
    st.integers(0, 2_000),
    st.integers(0, 6_000_000),
)
def test_pricing_in_two_pieces_equals_pricing_whole(
    tariff: Tariff, start: datetime, minutes: int, data: st.DataObject, wh_per_minute: int, cycle_usage_wh: int
) -> None:
    # split at a point where the uniform energy is a whole number of Wh, as a reading there would give
    split_minutes = data.draw(st.integers(1, minutes - 1))
    end = start + timedelta(minutes=minutes)
    middle = start + timedelta(minutes=split_minutes)
    whole = price_interval(tariff, start, end, wh_per_minute * minutes, cycle_usage_wh)
    first = price_interval(tariff, start, middle, wh_per_minute * split_minutes, cycle_usage_wh)
    second = price_interval(tariff, middle, end, wh_per_minute * (minutes - split_minutes), first.cycle_usage_after_wh)
    assert first.amount_yuan + second.amount_yuan == whole.amount_yuan
    assert second.cycle_usage_after_wh == whole.cycle_usage_after_wh

    def by_price(*parts: PricedInterval) -> Counter[tuple[int, str | None, int]]:
        totals: Counter[tuple[int, str | None, int]] = Counter()
        for part in parts:
            for s in part.segments:
                totals[(s.version_index, s.period, s.tier_index)] += s.energy_wh
        return totals

    assert by_price(first, second) == by_price(whole)


@settings(max_examples=200, deadline=None)
@given(TARIFFS, starts, st.integers(0, 5_000), st.integers(0, 6_000_000))
def test_the_same_interval_in_any_zone_has_the_same_price(
    tariff: Tariff, start: datetime, energy_wh: int, cycle_usage_wh: int
) -> None:
    end = start + timedelta(minutes=15)
    in_local = price_interval(tariff, start, end, energy_wh, cycle_usage_wh)
    in_utc = price_interval(tariff, start.astimezone(UTC), end.astimezone(UTC), energy_wh, cycle_usage_wh)
    assert in_local == in_utc
