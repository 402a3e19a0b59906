"""Usage charging from register readings: exactly once per interval, gaps, late readings, rollover, replacement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prepay_engine.money import FenAccumulator, round_yuan_to_fen
from prepay_engine.tariffs import SHANGHAI, TariffNotInForceError, example_jiangsu_residential
from prepay_engine.usage import (
    INTERVAL,
    AnomalyKind,
    IntervalCharge,
    MeterRegister,
    MeterReplacement,
    RegisterReading,
    UsageEvent,
    UsageResult,
    UsageState,
    charge_id_for,
    charge_usage,
    floor_to_interval,
    open_usage,
)

D = Decimal
JIANGSU = example_jiangsu_residential()
METER = MeterRegister("m-1")
FAR = datetime(2100, 1, 1, tzinfo=UTC)


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI)


def reading(ts: datetime, register_wh: int, meter_id: str = "m-1") -> RegisterReading:
    return RegisterReading(meter_id, ts, register_wh)


def charge(state: UsageState, *events: UsageEvent, complete_until: datetime = FAR) -> UsageResult:
    return charge_usage(state, events, JIANGSU, complete_until=complete_until)


def energies(result: UsageResult) -> list[int]:
    return [c.energy_wh for c in result.charges]


# --------------------------------------------------------------------------- basics


def test_consecutive_readings_charge_each_interval() -> None:
    state = open_usage(METER, local(2026, 3, 5, 10, 0), 50_000)
    result = charge(state, reading(local(2026, 3, 5, 10, 15), 50_400), reading(local(2026, 3, 5, 10, 30), 50_700))
    assert [(c.charge_id, c.energy_wh, c.amount_yuan, c.amount_fen) for c in result.charges] == [
        ("usage:m-1:20260305T0200Z", 400, D("0.2233200"), 22),  # 400 Wh peak x 0.5583
        ("usage:m-1:20260305T0215Z", 300, D("0.1674900"), 17),  # running total 0.39081 -> 39 fen
    ]
    assert result.charges[0].interval_start == local(2026, 3, 5, 10, 0)
    assert result.charges[0].interval_end == local(2026, 3, 5, 10, 15)
    assert result.anomalies == ()
    assert result.state.cycle_usage_wh == 700
    assert result.state.accumulator.charged_fen == 39


def test_charge_id_is_the_same_whatever_the_zone() -> None:
    assert charge_id_for("m-1", local(2026, 1, 1, 0, 0)) == "usage:m-1:20251231T1600Z"
    assert charge_id_for("m-1", datetime(2025, 12, 31, 16, 0, tzinfo=UTC)) == "usage:m-1:20251231T1600Z"


def test_a_gap_is_spread_uniformly_and_each_period_gets_its_share() -> None:
    # readings at 20:00 and 22:00 only: 8,003 Wh over eight intervals, four peak and four valley
    state = open_usage(METER, local(2026, 3, 5, 20, 0), 1_000)
    result = charge(state, reading(local(2026, 3, 5, 22, 0), 9_003))
    assert energies(result) == [1_000, 1_001, 1_000, 1_001, 1_000, 1_000, 1_001, 1_000]
    assert [c.segments[0].period for c in result.charges] == ["peak"] * 4 + ["valley"] * 4
    assert [c.interval_start for c in result.charges] == [local(2026, 3, 5, 20, 0) + k * INTERVAL for k in range(8)]
    # 4,002 Wh at 0.5583 and 4,001 Wh at 0.3583, exact; charged once rounded
    exact = D(4_002) * D("0.5583") / 1000 + D(4_001) * D("0.3583") / 1000
    assert sum((c.amount_yuan for c in result.charges), D(0)) == exact == D("3.6678749")
    assert sum(c.amount_fen for c in result.charges) == round_yuan_to_fen(exact) == 367


def test_off_grid_readings_split_their_intervals_by_time() -> None:
    state = open_usage(METER, local(2026, 3, 5, 10, 7), 0)
    first = charge(state, reading(local(2026, 3, 5, 10, 22), 1_500))
    # 10:07–10:15 is 8 of 15 minutes: 800 Wh close the 10:00 interval, 700 Wh are carried
    assert energies(first) == [800]
    assert first.state.carried_wh == 700
    second = charge(first.state, reading(local(2026, 3, 5, 10, 37), 3_000))
    # 700 carried + 8/15 of 1,500
    assert energies(second) == [1_500]
    assert second.state.carried_wh == 700
    assert second.state.consumed_wh == 3_000


def test_readings_after_complete_until_wait() -> None:
    state = open_usage(METER, local(2026, 3, 5, 10, 0), 0)
    held = charge(state, reading(local(2026, 3, 5, 10, 30), 600), complete_until=local(2026, 3, 5, 10, 29))
    assert held.charges == ()
    assert len(held.state.pending_readings) == 1
    released = charge(held.state, complete_until=local(2026, 3, 5, 10, 30))
    assert energies(released) == [300, 300]
    assert released.state.pending_readings == ()


def test_a_reading_filling_the_gap_before_it_is_consumed_changes_the_split() -> None:
    state = open_usage(METER, local(2026, 3, 5, 20, 0), 0)
    held = charge(state, reading(local(2026, 3, 5, 21, 0), 4_000), complete_until=local(2026, 3, 5, 20, 30))
    result = charge(held.state, reading(local(2026, 3, 5, 20, 30), 3_000), complete_until=FAR)
    assert energies(result) == [1_500, 1_500, 500, 500]


# --------------------------------------------------------------------------- late and duplicate readings


def test_a_late_reading_inside_a_charged_gap_is_ignored_and_reported() -> None:
    state = open_usage(METER, local(2026, 3, 5, 20, 0), 0)
    charged = charge(state, reading(local(2026, 3, 5, 21, 0), 4_000))
    assert energies(charged) == [1_000] * 4
    late = charge(charged.state, reading(local(2026, 3, 5, 20, 30), 3_000))
    assert late.charges == ()
    assert [(a.kind, a.ts) for a in late.anomalies] == [(AnomalyKind.LATE, local(2026, 3, 5, 20, 30))]
    assert late.state == charged.state


def test_duplicates_change_nothing() -> None:
    state = open_usage(METER, local(2026, 3, 5, 10, 0), 0)
    r = reading(local(2026, 3, 5, 10, 15), 250)
    once = charge(state, r)
    twice = charge(state, r, r)
    assert twice.charges == once.charges
    assert twice.duplicates == 1
    again = charge(once.state, r)  # the consumed anchor reading, delivered again
    assert again.charges == ()
    assert again.anomalies == ()
    assert again.duplicates == 1
    assert again.state == once.state
    assert charge(state, reading(local(2026, 3, 5, 10, 0), 0)).duplicates == 1  # the opening reading


def test_a_conflicting_duplicate_keeps_the_first_value() -> None:
    state = open_usage(METER, local(2026, 3, 5, 10, 0), 0)
    result = charge(state, reading(local(2026, 3, 5, 10, 15), 250), reading(local(2026, 3, 5, 10, 15), 999))
    assert energies(result) == [250]
    assert [a.kind for a in result.anomalies] == [AnomalyKind.CONFLICTING_DUPLICATE]


# --------------------------------------------------------------------------- registers


def test_rollover_counts_the_wrap_step() -> None:
    # 999,999,000 -> 400 on a 999,999,990 Wh register with 10 Wh resolution: 990 + 10 + 400 = 1,400 Wh
    state = open_usage(METER, local(2026, 3, 5, 10, 0), 999_999_000)
    result = charge(state, reading(local(2026, 3, 5, 10, 15), 400))
    assert energies(result) == [1_400]
    assert result.anomalies == ()


def test_rollover_with_a_multiplier() -> None:
    meter = MeterRegister("ct-1", multiplier=30, register_max_wh=99_999_999, register_step_wh=1)
    state = open_usage(meter, local(2026, 3, 5, 10, 0), 99_999_900)
    result = charge(state, reading(local(2026, 3, 5, 10, 15), 50, "ct-1"))
    assert energies(result) == [(99_999_999 - 99_999_900 + 50 + 1) * 30]


def test_a_register_decrease_is_reported_not_charged_and_skipped() -> None:
    state = open_usage(METER, local(2026, 3, 5, 10, 0), 50_000)
    result = charge(
        state,
        reading(local(2026, 3, 5, 10, 15), 10),  # a glitch, far from the top of the register
        reading(local(2026, 3, 5, 10, 30), 50_600),
    )
    assert [(a.kind, a.ts) for a in result.anomalies] == [(AnomalyKind.REGISTER_DECREASE, local(2026, 3, 5, 10, 15))]
    assert energies(result) == [300, 300]  # the next good reading charges the whole span


def test_a_register_above_the_maximum_is_reported() -> None:
    state = open_usage(METER, local(2026, 3, 5, 10, 0), 0)
    result = charge(state, reading(local(2026, 3, 5, 10, 15), 999_999_999))
    assert [a.kind for a in result.anomalies] == [AnomalyKind.REGISTER_OUT_OF_RANGE]
    assert result.charges == ()


# --------------------------------------------------------------------------- meter replacement


def test_replacement_keeps_consumption_continuous() -> None:
    state = open_usage(METER, local(2026, 3, 5, 10, 0), 50_000)
    swap = MeterReplacement(local(2026, 3, 5, 10, 7), "m-1", 50_700, MeterRegister("m-2"), 12)
    result = charge(
        state,
        reading(local(2026, 3, 5, 10, 15), 812, "m-2"),
        swap,
        reading(local(2026, 3, 5, 10, 30), 2_312, "m-2"),
    )
    # 10:00 interval: 700 Wh on the old meter + 800 Wh on the new one, under the meter in service at 10:00
    assert [(c.charge_id, c.energy_wh) for c in result.charges] == [
        ("usage:m-1:20260305T0200Z", 1_500),
        ("usage:m-2:20260305T0215Z", 1_500),
    ]
    assert result.state.meter.meter_id == "m-2"
    assert result.state.consumed_wh == 3_000
    assert result.state.replacements == (swap,)


def test_replacement_on_the_grid_and_readings_of_the_old_meter_afterwards() -> None:
    state = open_usage(METER, local(2026, 3, 5, 10, 0), 50_000)
    swap = MeterReplacement(local(2026, 3, 5, 10, 15), "m-1", 50_500, MeterRegister("m-2", multiplier=2), 0)
    result = charge(
        state,
        swap,
        reading(local(2026, 3, 5, 10, 15), 50_500),  # the old meter's final reading, also sent by the meter
        reading(local(2026, 3, 5, 10, 30), 50_600),  # the old meter, no longer in service
        reading(local(2026, 3, 5, 10, 30), 150, "m-2"),
    )
    assert [(c.charge_id, c.energy_wh) for c in result.charges] == [
        ("usage:m-1:20260305T0200Z", 500),
        ("usage:m-2:20260305T0215Z", 300),
    ]
    assert [(a.kind, a.meter_id) for a in result.anomalies] == [(AnomalyKind.UNKNOWN_METER, "m-1")]
    assert charge(result.state, swap).duplicates == 1


def test_readings_of_an_unannounced_meter_are_reported() -> None:
    state = open_usage(METER, local(2026, 3, 5, 10, 0), 0)
    result = charge(state, reading(local(2026, 3, 5, 10, 15), 100, "m-9"))
    assert [a.kind for a in result.anomalies] == [AnomalyKind.UNKNOWN_METER]


def test_replacement_of_a_meter_not_in_service_is_reported() -> None:
    state = open_usage(METER, local(2026, 3, 5, 10, 0), 0)
    wrong = MeterReplacement(local(2026, 3, 5, 10, 7), "m-7", 100, MeterRegister("m-2"), 0)
    result = charge(state, wrong, reading(local(2026, 3, 5, 10, 15), 100))
    assert [a.kind for a in result.anomalies] == [AnomalyKind.REPLACEMENT_MISMATCH]
    assert energies(result) == [100]


# --------------------------------------------------------------------------- tiers and tariff


def test_the_year_resets_between_2345_and_0000_local() -> None:
    state = open_usage(METER, local(2025, 12, 31, 23, 30), 0, cycle_usage_wh=4_900_000)
    result = charge(state, reading(local(2026, 1, 1, 0, 15), 1_200))
    assert [(c.segments[0].tier_index, c.energy_wh) for c in result.charges] == [(2, 400), (2, 400), (0, 400)]
    assert result.state.cycle_usage_wh == 400


def test_an_interval_before_the_tariff_is_a_configuration_error() -> None:
    state = open_usage(METER, local(2012, 6, 30, 23, 30), 0)
    with pytest.raises(TariffNotInForceError):
        charge(state, reading(local(2012, 7, 1, 0, 15), 100))


# --------------------------------------------------------------------------- properties

OPEN_AT = local(2025, 12, 31, 19, 0)
REGISTER_START = 999_990_000  # wraps after about 10 kWh
MODULUS = METER.register_max_wh + METER.register_step_wh


@st.composite
def reading_series(draw: st.DrawFn) -> list[RegisterReading]:
    """Readings after OPEN_AT: regular, off-grid and gappy, through 21:00, midnight of the new year and a rollover."""
    count = draw(st.integers(1, 30))
    steps = draw(st.lists(st.sampled_from([15, 15, 15, 30, 45, 7, 8, 120, 240]), min_size=count, max_size=count))
    # the register counts in 10 Wh steps, so it never shows a value between 999,999,990 and the wrap
    usage = draw(st.lists(st.integers(0, 300).map(lambda n: n * 10), min_size=count, max_size=count))
    readings = []
    ts, cumulative = OPEN_AT, 0
    for minutes, wh in zip(steps, usage, strict=True):
        ts += timedelta(minutes=minutes)
        cumulative += wh
        readings.append(reading(ts, (REGISTER_START + cumulative) % MODULUS))
    return readings


def opened() -> UsageState:
    return open_usage(METER, OPEN_AT, REGISTER_START, cycle_usage_wh=2_758_000)


def in_order(readings: list[RegisterReading]) -> UsageResult:
    return charge_usage(opened(), readings, JIANGSU, complete_until=FAR)


@settings(max_examples=150, deadline=None)
@given(reading_series(), st.data())
def test_any_arrival_order_gives_the_same_charges(readings: list[RegisterReading], data: st.DataObject) -> None:
    reference = in_order(readings)
    deliveries = data.draw(st.permutations(readings + data.draw(st.lists(st.sampled_from(readings), max_size=10))))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(deliveries)), max_size=8)))
    batches = [deliveries[a:b] for a, b in zip([0, *cuts], [*cuts, len(deliveries)], strict=True)]
    state = opened()
    charges: list[IntervalCharge] = []
    delivered: set[RegisterReading] = set()
    for batch in batches:
        delivered.update(batch)
        outstanding = [r.ts for r in readings if r not in delivered]
        # the caller's promise: everything up to just before the earliest reading still in flight
        complete_until = min(outstanding) - timedelta(microseconds=1) if outstanding else FAR
        result = charge_usage(state, batch, JIANGSU, complete_until=complete_until)
        assert not [a for a in result.anomalies if a.kind is not AnomalyKind.LATE]
        charges.extend(result.charges)
        state = result.state
    charges.extend(charge_usage(state, [], JIANGSU, complete_until=FAR).charges)
    assert charges == list(reference.charges)


@settings(max_examples=200, deadline=None)
@given(reading_series(), st.data())
def test_eager_on_grid_charging_gives_the_same_charges_in_any_arrival_order(
    readings: list[RegisterReading], data: st.DataObject
) -> None:
    # readings that close the next interval of an on-grid anchor are charged before the promise covers them;
    # a reading arriving later inside such an interval is late, yet every charge is the same
    reference = in_order(readings)
    deliveries = data.draw(st.permutations(readings))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(deliveries)), max_size=8)))
    batches = [deliveries[a:b] for a, b in zip([0, *cuts], [*cuts, len(deliveries)], strict=True)]
    state = opened()
    charges: list[IntervalCharge] = []
    delivered: set[RegisterReading] = set()
    for batch in batches:
        delivered.update(batch)
        outstanding = [r.ts for r in readings if r not in delivered]
        complete_until = min(outstanding) - timedelta(microseconds=1) if outstanding else FAR
        result = charge_usage(state, batch, JIANGSU, complete_until=complete_until, eager_on_grid=True)
        assert not [a for a in result.anomalies if a.kind is not AnomalyKind.LATE]
        charges.extend(result.charges)
        state = result.state
    charges.extend(charge_usage(state, [], JIANGSU, complete_until=FAR, eager_on_grid=True).charges)
    assert charges == list(reference.charges)


def test_eager_on_grid_charges_consecutive_grid_readings_beyond_the_promise_and_waits_at_a_gap() -> None:
    grid = [reading(OPEN_AT + timedelta(minutes=15 * k), REGISTER_START + 100 * k) for k in (1, 2, 3, 5)]
    result = charge_usage(opened(), grid, JIANGSU, complete_until=OPEN_AT, eager_on_grid=True)
    assert len(result.charges) == 3  # up to the gap before the fifth interval's reading
    assert [r.ts for r in result.state.pending_readings] == [OPEN_AT + timedelta(minutes=75)]
    assert charge_usage(opened(), grid, JIANGSU, complete_until=OPEN_AT).charges == ()


@settings(max_examples=150, deadline=None)
@given(reading_series(), st.data())
def test_eager_charging_in_any_order_charges_every_interval_exactly_once(
    readings: list[RegisterReading], data: st.DataObject
) -> None:
    # no completeness promise at all: late readings are dropped, yet no interval is charged twice or skipped
    reference = in_order(readings)
    state = opened()
    charges: list[IntervalCharge] = []
    for r in data.draw(st.permutations(readings)):
        result = charge_usage(state, [r], JIANGSU, complete_until=FAR)
        charges.extend(result.charges)
        state = result.state
    ids = [c.charge_id for c in charges]
    assert len(ids) == len(set(ids))
    assert set(ids) == {c.charge_id for c in reference.charges}
    # all the energy is there; only the split of the still-open last interval may differ
    assert sum(c.energy_wh for c in charges) + state.carried_wh == (
        sum(c.energy_wh for c in reference.charges) + reference.state.carried_wh
    )
    assert state.accumulator.charged_fen == sum(c.amount_fen for c in charges)


@settings(max_examples=150, deadline=None)
@given(reading_series())
def test_charges_cover_the_grid_and_conserve_energy(readings: list[RegisterReading]) -> None:
    result = in_order(readings)
    last = readings[-1].ts
    expected_starts = []
    start = floor_to_interval(OPEN_AT)
    while start + INTERVAL <= last:
        expected_starts.append(start)
        start += INTERVAL
    assert [c.interval_start for c in result.charges] == expected_starts
    total_wh = (readings[-1].register_wh - REGISTER_START) % MODULUS
    assert sum(c.energy_wh for c in result.charges) + result.state.carried_wh == total_wh
    assert all(c.amount_fen >= 0 and c.energy_wh >= 0 for c in result.charges)
    exact = sum((c.amount_yuan for c in result.charges), D(0))
    assert sum(c.amount_fen for c in result.charges) == round_yuan_to_fen(exact)
    assert result.state.accumulator == FenAccumulator(exact, round_yuan_to_fen(exact))
    assert result.anomalies == ()


NEW_METER = MeterRegister("m-2", multiplier=2)


@st.composite
def series_with_replacement(draw: st.DrawFn) -> tuple[MeterReplacement, list[RegisterReading]]:
    """A reading series in which the meter is replaced between two readings, the new one counting from 5,000 Wh."""
    old = draw(reading_series())
    k = draw(st.integers(0, len(old) - 1))
    previous_ts = OPEN_AT if k == 0 else old[k - 1].ts
    previous_wh = REGISTER_START if k == 0 else old[k - 1].register_wh
    offset_us = draw(st.integers(1, (old[k].ts - previous_ts) // timedelta(microseconds=1) - 1))
    at = previous_ts + timedelta(microseconds=offset_us)
    old_final_wh = (previous_wh + 10 * draw(st.integers(0, 100))) % MODULUS
    swap = MeterReplacement(at, "m-1", old_final_wh, NEW_METER, 5_000)
    base = old[k - 1].register_wh if k else REGISTER_START
    new = [reading(r.ts, 5_000 + (r.register_wh - base) % MODULUS, "m-2") for r in old[k:]]
    return swap, old[:k] + new


@settings(max_examples=150, deadline=None)
@given(series_with_replacement(), st.data())
def test_replacement_in_any_arrival_order_keeps_consumption_continuous(
    series: tuple[MeterReplacement, list[RegisterReading]], data: st.DataObject
) -> None:
    swap, readings = series
    reference = charge_usage(opened(), [swap, *readings], JIANGSU, complete_until=FAR)
    assert reference.anomalies == ()
    expected_wh = (swap.old_final_register_wh - REGISTER_START) % MODULUS + (readings[-1].register_wh - 5_000) * 2
    assert sum(c.energy_wh for c in reference.charges) + reference.state.carried_wh == expected_wh
    assert reference.state.meter == NEW_METER
    # every interval once, under the meter in service at its start
    assert len({c.interval_start for c in reference.charges}) == len(reference.charges)
    assert all((c.meter_id == "m-1") == (c.interval_start < swap.at) for c in reference.charges)

    state = opened()
    charges: list[IntervalCharge] = []
    pending: list[UsageEvent] = [swap, *data.draw(st.permutations(readings))]  # the replacement comes first
    while pending:
        size = data.draw(st.integers(1, len(pending)))
        batch, pending = pending[:size], pending[size:]
        outstanding = [e.ts for e in pending if isinstance(e, RegisterReading)]
        complete_until = min(outstanding) - timedelta(microseconds=1) if outstanding else FAR
        result = charge_usage(state, batch, JIANGSU, complete_until=complete_until)
        assert result.anomalies == ()
        charges.extend(result.charges)
        state = result.state
    assert charges == list(reference.charges)


def test_a_naive_reading_time_is_refused_and_a_negative_register_reported() -> None:
    state = open_usage(METER, local(2026, 3, 5, 10, 0), 50_000)
    naive = datetime(2026, 3, 5, 10, 15)  # noqa: DTZ001 -- on purpose
    with pytest.raises(ValueError, match="timezone-aware"):
        charge(state, RegisterReading("m-1", naive, 50_400))
    result = charge(state, reading(local(2026, 3, 5, 10, 15), -10), reading(local(2026, 3, 5, 10, 30), 50_400))
    assert [(a.kind, a.ts) for a in result.anomalies] == [
        (AnomalyKind.REGISTER_OUT_OF_RANGE, local(2026, 3, 5, 10, 15).astimezone(UTC))
    ]
    assert energies(result) == [200, 200]  # the next plausible reading charges the whole span
