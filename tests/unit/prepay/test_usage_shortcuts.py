"""The charging shortcuts give exactly what the general path gives: a plain batch, one tier band, one interval."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prepay_engine import tariffs, usage
from prepay_engine.money import FenAccumulator, round_yuan_to_fen
from prepay_engine.tariffs import (
    SHANGHAI,
    example_commercial_tou_with_summer_critical_peak,
    example_jiangsu_residential,
    price_span,
)
from prepay_engine.usage import MeterRegister, RegisterReading, UsageResult, charge_usage, open_usage

JIANGSU = example_jiangsu_residential()
COMMERCIAL = example_commercial_tou_with_summer_critical_peak()
METER = MeterRegister("m-1")
MODULUS = METER.register_max_wh + METER.register_step_wh
OPEN_AT = datetime(2025, 12, 31, 19, 0, tzinfo=SHANGHAI).astimezone(UTC)
BAND_1_WH = 2_760_000
BAND_2_WH = 4_800_000


@contextmanager
def general_path_only() -> Iterator[None]:
    """Within: no plain-batch shortcut in `charge_usage`, no one-band shortcut in `price_span`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(usage, "_plain_readings", lambda state, received: None)
        patch.setattr(tariffs, "_price_in_one_band", lambda skeleton, energy_wh, cycle_usage_wh: None)
        yield


@st.composite
def readings_in_utc(draw: st.DrawFn) -> tuple[int, list[RegisterReading]]:
    """The opening register and readings in UTC (as the runner feeds them): on and off the grid, with gaps,
    perhaps a rollover, through the year's end."""
    count = draw(st.integers(1, 25))
    readings = []
    opening_wh = draw(st.sampled_from([1_000_000, MODULUS - 20_000]))
    ts, register_wh = OPEN_AT, opening_wh
    for _ in range(count):
        ts += timedelta(minutes=draw(st.sampled_from([15, 15, 15, 30, 7, 8, 22, 120])))
        register_wh = (register_wh + 10 * draw(st.integers(0, 400))) % MODULUS
        readings.append(RegisterReading("m-1", ts, register_wh))
    return opening_wh, readings


def with_trouble(data: st.DataObject, readings: list[RegisterReading]) -> list[RegisterReading]:
    """The readings, shuffled, perhaps with a duplicate, a conflicting value, a late one or another meter's."""
    extra: list[RegisterReading] = []
    first = readings[0]
    trouble = data.draw(st.sampled_from(["none", "none", "duplicate", "conflict", "late", "other meter", "local"]))
    if trouble == "duplicate":
        extra.append(first)
    elif trouble == "conflict":
        extra.append(RegisterReading("m-1", first.ts, first.register_wh + 10))
    elif trouble == "late":
        extra.append(RegisterReading("m-1", OPEN_AT - timedelta(minutes=5), 0))
    elif trouble == "other meter":
        extra.append(RegisterReading("m-9", first.ts, 5))
    elif trouble == "local":
        extra.append(RegisterReading("m-1", first.ts.astimezone(SHANGHAI), first.register_wh))
    return data.draw(st.permutations(readings + extra))


def charge_both(
    opening_wh: int,
    events: list[RegisterReading],
    cycle_usage_wh: int,
    complete_until: datetime,
    *,
    eager: bool,
    accumulator: FenAccumulator | None = None,
) -> tuple[UsageResult, UsageResult]:
    state = open_usage(METER, OPEN_AT, opening_wh, cycle_usage_wh=cycle_usage_wh, accumulator=accumulator)
    fast = charge_usage(state, events, JIANGSU, complete_until=complete_until, eager_on_grid=eager)
    with general_path_only():
        general = charge_usage(state, events, JIANGSU, complete_until=complete_until, eager_on_grid=eager)
    return fast, general


@settings(max_examples=300, deadline=None)
@given(
    readings_in_utc(),
    st.sampled_from([0, BAND_1_WH - 3_000, BAND_2_WH - 500, BAND_2_WH + 1]),
    st.integers(0, 30),
    st.booleans(),
    # the running total so far: none, whole pico-yuan, or finer (the charges then add up in Decimal)
    st.sampled_from(["0", "12.3456789", "0.0049999", "7.0000000000004"]),
    st.data(),
)
def test_the_shortcuts_charge_exactly_as_the_general_path(
    series: tuple[int, list[RegisterReading]],
    cycle_usage_wh: int,
    promised_readings: int,
    eager: bool,
    total_so_far: str,
    data: st.DataObject,
) -> None:
    opening_wh, readings = series
    events = with_trouble(data, readings)
    # the promise covers some of the readings; eager charging may go beyond it
    complete_until = readings[min(promised_readings, len(readings) - 1)].ts - timedelta(microseconds=1)
    exact_yuan = Decimal(total_so_far)
    accumulator = FenAccumulator(exact_yuan, round_yuan_to_fen(exact_yuan))
    fast, general = charge_both(
        opening_wh, events, cycle_usage_wh, complete_until, eager=eager, accumulator=accumulator
    )
    assert fast == general


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 200_000),
    st.integers(0, 6_000_000),
    st.integers(0, 4 * 96 * 40),
    st.sampled_from([timedelta(minutes=15), timedelta(minutes=7), timedelta(hours=2)]),
    st.sampled_from(["jiangsu", "commercial"]),
)
def test_pricing_in_one_band_equals_the_general_split(
    energy_wh: int,
    cycle_usage_wh: int,
    quarter: int,
    length: timedelta,
    which: str,
) -> None:
    tariff = JIANGSU if which == "jiangsu" else COMMERCIAL
    # through a year end (cycle reset), summer critical peak months and every hour of the day
    start = datetime(2025, 12, 1, tzinfo=UTC) + quarter * timedelta(minutes=15) * 2
    fast = price_span(tariff, start, start + length, energy_wh, cycle_usage_wh)
    with general_path_only():
        general = price_span(tariff, start, start + length, energy_wh, cycle_usage_wh)
    assert fast == general
    assert sum(s.energy_wh for s in fast[0]) == energy_wh
    assert fast[1] == sum((s.amount_yuan for s in fast[0]), Decimal(0))


def test_a_batch_across_a_tier_edge_splits_the_interval_that_crosses_it() -> None:
    readings = [RegisterReading("m-1", OPEN_AT + k * timedelta(minutes=15), 1_000_000 + 1_000 * k) for k in (1, 2, 3)]
    fast, general = charge_both(1_000_000, readings, BAND_1_WH - 1_500, OPEN_AT + timedelta(hours=1), eager=False)
    assert fast == general
    assert [[(s.tier_index, s.energy_wh) for s in c.segments] for c in fast.charges] == [
        [(0, 1_000)],
        [(0, 500), (1, 500)],
        [(1, 1_000)],
    ]


def test_the_shortcuts_are_taken_for_the_usual_batch_and_not_for_a_troubled_one() -> None:
    # otherwise the equalities above would compare the general path with itself
    state = open_usage(METER, OPEN_AT, 1_000_000)
    usual = [RegisterReading("m-1", OPEN_AT + k * timedelta(minutes=15), 1_000_000 + 100 * k) for k in (2, 1, 3)]
    assert [r.ts for r in usage._plain_readings(state, list(usual)) or []] == sorted(r.ts for r in usual)
    for trouble in (
        RegisterReading("m-1", usual[0].ts, 1_000_000),  # same time, another value
        RegisterReading("m-9", usual[0].ts + timedelta(minutes=1), 5),  # another meter
        RegisterReading("m-1", OPEN_AT, 1_000_000),  # at the anchor
        RegisterReading("m-1", (OPEN_AT + timedelta(hours=2)).astimezone(SHANGHAI), 1_001_000),  # not in UTC
    ):
        assert usage._plain_readings(state, [*usual, trouble]) is None
    skeleton = tariffs._skeleton(JIANGSU, OPEN_AT, OPEN_AT + timedelta(minutes=15))
    assert tariffs._price_in_one_band(skeleton, 1_000, 0) is not None
    assert tariffs._price_in_one_band(skeleton, 1_000, BAND_1_WH - 500) is None  # crosses into the second band


def test_the_one_interval_step_is_taken_on_and_just_after_the_grid() -> None:
    # meters report on the grid or some minutes after it: each such reading closes one interval, the fused step
    taken: list[datetime] = []
    step = usage._Run.close_one_interval

    def counted(run: usage._Run, end: datetime, to_ts: datetime, register_wh: int) -> None:
        taken.append(to_ts)
        step(run, end, to_ts, register_wh)

    offsets = [15, 30, 45, 67, 82, 104, 150, 157, 170]
    readings = [
        RegisterReading("m-1", OPEN_AT + timedelta(minutes=m), 1_000_000 + 130 * k) for k, m in enumerate(offsets, 1)
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(usage._Run, "close_one_interval", counted)
        fast, general = charge_both(1_000_000, readings, 0, OPEN_AT + timedelta(hours=3), eager=False)
    assert fast == general
    # +150 closes three intervals at once (after a gap) and +157 none: the general step; the others one each
    general_steps = {OPEN_AT + timedelta(minutes=150), OPEN_AT + timedelta(minutes=157)}
    assert taken == [r.ts for r in readings if r.ts not in general_steps]
    assert [c.interval_end for c in fast.charges] == [OPEN_AT + timedelta(minutes=15 * k) for k in range(1, 12)]
