"""An account moved to another tariff: each interval priced with the tariff in force at its start, once."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prepay_engine.money import FenAccumulator, round_yuan_to_fen
from prepay_engine.tariffs import (
    CycleKind,
    FlatPrice,
    Tariff,
    TariffNotInForceError,
    TariffVersion,
    TierBand,
    TierSchedule,
    cycle_usage_across,
    example_commercial_tou_with_summer_critical_peak,
    example_jiangsu_residential,
)
from prepay_engine.usage import (
    INTERVAL,
    IntervalCharge,
    RegisterReading,
    TariffChange,
    UsageResult,
    UsageState,
    charge_usage,
    floor_to_interval,
)
from tests.unit.prepay.test_usage import (
    FAR,
    MODULUS,
    OPEN_AT,
    REGISTER_START,
    local,
    opened,
    reading,
    reading_series,
)

D = Decimal
JIANGSU = example_jiangsu_residential()
COMMERCIAL = example_commercial_tou_with_summer_critical_peak()


def flat(code: str, price: str, tiers: TierSchedule | None = None, zone: str = "Asia/Shanghai") -> Tariff:
    version = TariffVersion(date(2000, 1, 1), "test", FlatPrice(D(price)), tiers)
    return Tariff(code, code, (version,), ZoneInfo(zone))


FLAT_1 = flat("FLAT-1", "1.0000")
FLAT_2 = flat("FLAT-2", "2.0000")
# Jiangsu's bands and cycle at other prices: the counter carries across a move to it
JIANGSU_DEARER = Tariff(
    "JS-DEARER",
    "Jiangsu at other prices",
    (
        replace(
            JIANGSU.versions[0],
            energy_price=FlatPrice(D("0.6000")),
            tiers=TierSchedule(
                CycleKind.YEARLY,
                (TierBand(2_760_000, D("0.00")), TierBand(4_800_000, D("0.10")), TierBand(None, D("0.40"))),
            ),
        ),
    ),
)
MONTHLY = flat(
    "MONTHLY",
    "0.5000",
    TierSchedule(CycleKind.MONTHLY, (TierBand(200_000, D("0.00")), TierBand(None, D("0.10")))),
)


def priced(result: UsageResult) -> list[tuple[datetime, int, Decimal]]:
    return [(c.interval_start, c.energy_wh, c.amount_yuan) for c in result.charges]


def test_intervals_before_the_change_are_priced_with_the_old_tariff_and_from_it_with_the_new() -> None:
    start = local(2026, 3, 5, 10, 0)
    state = opened_at(start)
    readings = [reading(start + k * INTERVAL, 1_000 + 400 * k) for k in range(1, 9)]
    change = TariffChange(start + timedelta(hours=1), FLAT_2)
    result = charge_usage(state, readings, FLAT_1, complete_until=FAR, tariff_changes=[change])
    assert [(c.amount_yuan, c.amount_fen) for c in result.charges] == [(D("0.4000000"), 40)] * 4 + [
        (D("0.8000000"), 80)
    ] * 4
    assert result.tariff_changes_applied == 1
    # the energies are those without the change
    alone = charge_usage(state, readings, FLAT_1, complete_until=FAR)
    assert [c.energy_wh for c in result.charges] == [c.energy_wh for c in alone.charges]


def test_a_gap_across_the_change_is_split_as_without_it_and_each_part_priced_by_its_interval() -> None:
    start = local(2026, 3, 5, 10, 0)
    state = opened_at(start)
    # 00:50 → 01:20 spans the change at 01:00: 11:45–12:00 old, 12:00–12:15 new, 12:15–12:20 carried
    readings = [reading(start + timedelta(minutes=50), 2_000), reading(start + timedelta(minutes=80), 2_600)]
    change = TariffChange(start + timedelta(hours=1), FLAT_2)
    result = charge_usage(state, readings, FLAT_1, complete_until=FAR, tariff_changes=[change])
    alone = charge_usage(state, readings, FLAT_1, complete_until=FAR)
    assert [c.energy_wh for c in result.charges] == [c.energy_wh for c in alone.charges]
    for c in result.charges:
        price = D("1.0000") if c.interval_start < change.at else D("2.0000")
        assert c.amount_yuan == c.energy_wh * price / 1000
    assert result.charges[-1].interval_start == change.at
    assert result.state.carried_wh == alone.state.carried_wh > 0


def test_a_change_from_charged_until_prices_the_open_interval_and_its_carried_energy() -> None:
    start = local(2026, 3, 5, 10, 0)
    # charged to 10:00, a reading at 10:05 carried: the interval 10:00–10:15 is not charged yet
    carried = charge_usage(opened_at(start), [reading(start + timedelta(minutes=5), 1_100)], FLAT_1, complete_until=FAR)
    assert (carried.state.charged_until, carried.state.carried_wh) == (start.astimezone(UTC), 100)
    result = charge_usage(
        carried.state,
        [reading(start + INTERVAL, 1_300)],
        FLAT_1,
        complete_until=FAR,
        tariff_changes=[TariffChange(start, FLAT_2)],
    )
    assert priced(result) == [(start.astimezone(UTC), 300, D("0.6000000"))]
    assert result.tariff_changes_applied == 1


def test_a_change_charging_has_not_reached_is_not_applied_and_none_may_lie_before_charged_until() -> None:
    start = local(2026, 3, 5, 10, 0)
    state = opened_at(start)
    later = TariffChange(start + timedelta(hours=2), FLAT_2)
    result = charge_usage(state, [reading(start + INTERVAL, 1_400)], FLAT_1, complete_until=FAR, tariff_changes=[later])
    assert result.tariff_changes_applied == 0
    assert priced(result) == [(start.astimezone(UTC), 400, D("0.4000000"))]
    with pytest.raises(AssertionError, match="reprice charged intervals"):
        charge_usage(result.state, [], FLAT_1, complete_until=FAR, tariff_changes=[TariffChange(start, FLAT_2)])
    with pytest.raises(AssertionError, match="15-minute grid"):
        TariffChange(start + timedelta(minutes=5), FLAT_2)


def test_a_new_tariff_not_in_force_at_the_change_is_a_configuration_error() -> None:
    start = local(2011, 3, 5, 10, 0)
    state = opened_at(start)
    with pytest.raises(TariffNotInForceError):
        charge_usage(
            state,
            [reading(start + 2 * INTERVAL, 1_800)],
            FLAT_1,
            complete_until=FAR,
            tariff_changes=[TariffChange(start + INTERVAL, JIANGSU)],  # Jiangsu's first version is from 2012-07-01
        )


def test_the_tier_cycle_carries_across_a_change_as_across_a_version_change() -> None:
    at = local(2026, 5, 1).astimezone(UTC)
    assert cycle_usage_across(JIANGSU, JIANGSU_DEARER, at, 2_900_000) == 2_900_000  # same yearly cycle: kept
    assert cycle_usage_across(JIANGSU, MONTHLY, at, 2_900_000) == 0  # another cycle: from zero
    assert cycle_usage_across(JIANGSU, FLAT_1, at, 2_900_000) == 0  # tiers dropped
    assert cycle_usage_across(FLAT_1, FLAT_2, at, 12_345) == 12_345  # neither tiered: the counter runs on
    elsewhere = Tariff("JS-URUMQI", "Jiangsu's bands in another zone", JIANGSU_DEARER.versions, ZoneInfo("Asia/Urumqi"))
    assert cycle_usage_across(JIANGSU, elsewhere, at, 2_900_000) == 0  # its cycles start at other instants
    with pytest.raises(TariffNotInForceError):
        cycle_usage_across(FLAT_1, JIANGSU, local(2011, 1, 1), 0)


def test_the_bands_continue_on_the_new_tariff_when_the_cycle_is_the_same() -> None:
    start = local(2026, 5, 1, 10, 0)
    state = replace(opened_at(start), cycle_usage_wh=2_759_800)
    readings = [reading(start + k * INTERVAL, 1_000 + 400 * k) for k in range(1, 3)]
    change = TariffChange(start + INTERVAL, JIANGSU_DEARER)
    result = charge_usage(state, readings, JIANGSU, complete_until=FAR, tariff_changes=[change])
    # the first interval crosses the first band's edge at 2,760,000 Wh; the second is all in the second band
    assert [s.tier_index for s in result.charges[1].segments] == [1]
    assert result.charges[1].amount_yuan == D("400") * D("0.7000") / 1000
    assert result.state.cycle_usage_wh == 2_760_600


def opened_at(start: datetime) -> UsageState:
    return replace(
        opened(), anchor_ts=start.astimezone(UTC), charged_until=start.astimezone(UTC), anchor_register_wh=1_000
    )


# --------------------------------------------------------------------------- properties

TARIFFS = (JIANGSU, JIANGSU_DEARER, MONTHLY, COMMERCIAL, FLAT_1, FLAT_2)


@st.composite
def changes_on_readings(draw: st.DrawFn) -> tuple[list[RegisterReading], list[TariffChange]]:
    """A reading series (see `reading_series`) with up to three changes, each at an on-grid reading of the series."""
    readings = draw(reading_series())
    on_grid = [r for r in readings if floor_to_interval(r.ts) == r.ts.astimezone(UTC)]
    instants = sorted(set(draw(st.lists(st.sampled_from(on_grid), max_size=3)) if on_grid else []), key=_ts)
    return readings, [TariffChange(r.ts, draw(st.sampled_from(TARIFFS))) for r in instants]


def _ts(r: RegisterReading) -> datetime:
    return r.ts


@settings(max_examples=200, deadline=None)
@given(changes_on_readings())
def test_charging_across_changes_equals_charging_each_span_with_its_tariff(
    case: tuple[list[RegisterReading], list[TariffChange]],
) -> None:
    readings, changes = case
    across = charge_usage(opened(), readings, JIANGSU, complete_until=FAR, tariff_changes=changes)
    assert across.tariff_changes_applied == len(changes)

    # span by span: readings up to each change's instant with the tariff in force, the counter carried across
    state, tariff = opened(), JIANGSU
    charges: list[IntervalCharge] = []
    for change in changes:
        within = [r for r in readings if state.anchor_ts < r.ts <= change.at]
        span = charge_usage(state, within, tariff, complete_until=change.at)
        assert span.anomalies == ()
        assert span.state.charged_until == change.at.astimezone(UTC)
        charges.extend(span.charges)
        moved = cycle_usage_across(tariff, change.tariff, change.at, span.state.cycle_usage_wh)
        state, tariff = replace(span.state, cycle_usage_wh=moved), change.tariff
    last = charge_usage(state, [r for r in readings if r.ts > state.anchor_ts], tariff, complete_until=FAR)
    charges.extend(last.charges)
    assert list(across.charges) == charges
    assert across.state == last.state


@settings(max_examples=200, deadline=None)
@given(reading_series(), st.data())
def test_each_interval_is_priced_by_the_tariff_in_force_at_its_start(
    readings: list[RegisterReading], data: st.DataObject
) -> None:
    # flat prices, any readings (gaps and off-grid times across the changes too): the amount of each interval
    # is its energy at the price in force at its start, and its energy is that of a run without any change
    first, last = floor_to_interval(OPEN_AT), floor_to_interval(readings[-1].ts) + INTERVAL
    slots = (last - first) // INTERVAL
    offsets = sorted(set(data.draw(st.lists(st.integers(0, slots), max_size=3))))
    prices = data.draw(st.lists(st.sampled_from(["0.3", "0.5583", "1.0000", "0.123456"]), min_size=4, max_size=4))
    changes = [TariffChange(first + k * INTERVAL, flat(f"F{i}", prices[i + 1])) for i, k in enumerate(offsets)]
    base = flat("F", prices[0])
    across = charge_usage(opened(), readings, base, complete_until=FAR, tariff_changes=changes)
    alone = charge_usage(opened(), readings, base, complete_until=FAR)
    assert [(c.charge_id, c.energy_wh) for c in across.charges] == [(c.charge_id, c.energy_wh) for c in alone.charges]
    for c in across.charges:
        in_force = [ch.tariff for ch in changes if ch.at <= c.interval_start] or [base]
        price = in_force[-1].versions[0].energy_price
        assert isinstance(price, FlatPrice)
        assert c.amount_yuan == c.energy_wh * price.price_yuan_per_kwh / 1000
    assert across.tariff_changes_applied == sum(ch.at <= across.state.charged_until for ch in changes)
    exact = sum((c.amount_yuan for c in across.charges), D(0))
    assert across.state.accumulator == FenAccumulator(exact, round_yuan_to_fen(exact))
    total_wh = (readings[-1].register_wh - REGISTER_START) % MODULUS
    assert sum(c.energy_wh for c in across.charges) + across.state.carried_wh == total_wh


@settings(max_examples=150, deadline=None)
@given(changes_on_readings(), st.data())
def test_batches_that_pass_only_the_changes_not_yet_applied_give_the_same_charges(
    case: tuple[list[RegisterReading], list[TariffChange]], data: st.DataObject
) -> None:
    # as the store charges: batch after batch, each given the tariff in force and the changes still ahead
    readings, changes = case
    reference = charge_usage(opened(), readings, JIANGSU, complete_until=FAR, tariff_changes=changes)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(readings)), max_size=5)))
    state, tariff, ahead = opened(), JIANGSU, list(changes)
    charges: list[IntervalCharge] = []
    for a, b in zip([0, *cuts], [*cuts, len(readings)], strict=True):
        batch = readings[a:b]
        complete_until = readings[b].ts - timedelta(microseconds=1) if b < len(readings) else FAR
        result = charge_usage(state, batch, tariff, complete_until=complete_until, tariff_changes=ahead)
        charges.extend(result.charges)
        if result.tariff_changes_applied:
            tariff = ahead[result.tariff_changes_applied - 1].tariff
            ahead = ahead[result.tariff_changes_applied :]
        state = result.state
    assert charges == list(reference.charges)
    assert state == reference.state
    assert ahead == changes[reference.tariff_changes_applied :]


def test_a_readings_span_without_changes_is_unaffected(monkeypatch: pytest.MonkeyPatch) -> None:
    # no change given: the plain run, not the planned one (its fast paths are the runner's hot path)
    import prepay_engine.usage as usage

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the planned run was used without a change")

    monkeypatch.setattr(usage._PlannedRun, "__init__", refuse)
    start = local(2026, 3, 5, 10, 0)
    result = charge_usage(opened_at(start), [reading(start + INTERVAL, 1_400)], FLAT_1, complete_until=FAR)
    assert result.tariff_changes_applied == 0
