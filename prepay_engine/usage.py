"""Usage charging from consecutive register readings: each (meter, 15-minute interval) charged exactly once.

The account's consumption is a curve through its readings: between two consecutive readings the
energy (register difference × multiplier) is assumed uniform in time. Intervals are the fixed
15-minute grid (aligned on UTC, which is also the Asia/Shanghai grid); an interval is charged as
soon as a consumed reading lies at or after its end, priced by `tariffs.price_interval`, rounded
to fen by the account's `FenAccumulator`.

Documented rules:
- **Gaps.** Energy between two readings is apportioned over the time between them, in whole Wh, by
  `tariffs.apportion_wh` (cumulative ROUND_HALF_UP rounding): the 15-minute intervals of a gap get
  uniform shares, each within 1 Wh of the exact share and with the leftover Wh spread evenly, so
  each time-of-use period gets its fair share; nothing is dumped into the interval of the
  catch-up reading. Off-grid readings split their interval the same way; the part of an interval
  not yet closed by a reading is carried (`carried_wh`) until a later reading closes it.
- **Arrival order and completeness.** Readings are buffered and consumed in time order, but only
  up to `complete_until`: the caller's promise that every reading (and replacement) at or before
  that instant has been delivered (a runner passes now minus the allowed lateness; a daily
  settlement the end of the day). Within that promise the charges do not depend on arrival
  order, batching or duplicates.
- **Late readings.** A reading at or before the last consumed reading breaks that promise. It is
  ignored and reported (`AnomalyKind.LATE`): an interval, once charged, is never charged again, so
  a reading that falls inside an already-apportioned gap does not re-split it. The total charged
  over the gap is still exact; only its spread over the gap's intervals was an estimate.
- **Rollover.** A register that falls from the top tenth of its range to the bottom tenth (the
  same rule as the head-end's validation) has wrapped: usage = register_max − previous + new +
  register_step, where `register_step_wh` is the register's resolution (999,999,990 Wh with a
  10 Wh step wraps to 0 at 1,000,000,000).
- **Meter replacement** is an explicit event (`MeterReplacement`): the old meter's final register
  closes its last span, the new meter's start register opens the next, and the account's
  consumption curve continues through the swap. An interval is charged under the meter in service
  at its start. The replacement must be delivered before or with the new meter's readings;
  readings of a meter not in service are reported (`UNKNOWN_METER`) and ignored.
- **Register decrease** that is neither a rollover nor a replacement: the reading is not charged,
  reported (`REGISTER_DECREASE`) and skipped; the next plausible reading charges the whole span.
- A tariff not in force for an interval is a configuration error: `TariffNotInForceError` is raised
  and the caller's state is unchanged.
- **Tariff changes.** An account moved to another tariff from an instant on the grid (`TariffChange`) has
  every interval that starts before the instant priced with the old tariff and every one from it with the
  new: the charges' energies are those without the change, only their prices differ. The tier-cycle
  counter crosses the change as it crosses a version change (`tariffs.cycle_usage_across`). A change
  cannot lie before `charged_until`: a charged interval is never priced again.
"""

from __future__ import annotations

import functools
import itertools
from bisect import insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple, TypeAlias

from prepay_engine.money import (
    FenAccumulator,
    accumulate,
    pico_yuan_to_yuan,
    round_pico_yuan_to_fen,
    to_pico_yuan,
)
from prepay_engine.tariffs import (
    PricedSegment,
    Tariff,
    apportion_wh,
    cycle_usage_across,
    price_in_one_band,
    price_span,
)

INTERVAL = timedelta(minutes=15)
DEFAULT_REGISTER_MAX_WH = 999_999_990
DEFAULT_REGISTER_STEP_WH = 10
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def floor_to_interval(instant: datetime) -> datetime:
    """Start (UTC) of the 15-minute interval containing the aware `instant`."""
    assert instant.utcoffset() is not None
    utc = instant.astimezone(UTC)
    return utc - (utc - _EPOCH) % INTERVAL


@functools.lru_cache(maxsize=8192)
def _on_grid(instant: datetime) -> bool:
    return floor_to_interval(instant) == instant


def charge_id_for(meter_id: str, interval_start: datetime) -> str:
    """Idempotency key of the usage charge of `meter_id` for the interval starting at `interval_start`."""
    return f"usage:{meter_id}:{interval_stamp(interval_start)}"


@functools.lru_cache(maxsize=8192)
def interval_stamp(interval_start: datetime) -> str:
    """An interval boundary as ids write it, e.g. 20261120T0415Z (UTC)."""
    # every account charges the same grid: formatting each instant once saves most of the id's cost
    return f"{interval_start.astimezone(UTC):%Y%m%dT%H%MZ}"


@dataclass(frozen=True, slots=True)
class MeterRegister:
    """A meter as the charging sees it: energy = register difference × `multiplier` (CT/PT ratio)."""

    meter_id: str
    multiplier: int = 1
    register_max_wh: int = DEFAULT_REGISTER_MAX_WH
    register_step_wh: int = DEFAULT_REGISTER_STEP_WH

    def __post_init__(self) -> None:
        assert self.meter_id
        assert self.multiplier >= 1, self.multiplier
        assert self.register_max_wh > 0
        assert self.register_step_wh > 0

    def advance_wh(self, previous_wh: int, current_wh: int) -> int | None:
        """Register advance from `previous_wh` to `current_wh` (rollover-aware); None for an implausible decrease."""
        if current_wh >= previous_wh:
            return current_wh - previous_wh
        # integer form of: previous >= 90 % of max and current <= 10 % of max
        if previous_wh * 10 >= self.register_max_wh * 9 and current_wh * 10 <= self.register_max_wh:
            return self.register_max_wh - previous_wh + current_wh + self.register_step_wh
        return None


class RegisterReading(NamedTuple):
    """One import-energy register value of one meter at an aware instant.

    A named tuple for the reason `IntervalCharge` is one: a runner builds one per stored reading. `charge_usage`
    checks what a constructor would: a naive time is refused (ValueError), a negative register reported.
    """

    meter_id: str
    ts: datetime
    register_wh: int


@dataclass(frozen=True, slots=True)
class MeterReplacement:
    """At `at`, the old meter (final register value) was replaced by `new_meter` (start register value)."""

    at: datetime
    old_meter_id: str
    old_final_register_wh: int
    new_meter: MeterRegister
    new_start_register_wh: int

    def __post_init__(self) -> None:
        assert self.at.utcoffset() is not None, "replacement time must be timezone-aware"
        assert self.old_final_register_wh >= 0
        assert self.new_start_register_wh >= 0
        assert self.old_meter_id != self.new_meter.meter_id


UsageEvent: TypeAlias = RegisterReading | MeterReplacement


@dataclass(frozen=True, slots=True)
class TariffChange:
    """From `at` (aware, on the 15-minute grid) the account's intervals are priced with `tariff`."""

    at: datetime
    tariff: Tariff

    def __post_init__(self) -> None:
        assert self.at.utcoffset() is not None, "a tariff change's instant must be timezone-aware"
        assert _on_grid(self.at.astimezone(UTC)), f"a tariff change must lie on the 15-minute grid: {self.at}"


class AnomalyKind(StrEnum):
    """Why an input was not charged."""

    LATE = "late"  # at or before the last consumed reading: ignored, charged intervals are never recharged
    CONFLICTING_DUPLICATE = "conflicting_duplicate"  # same meter and time as a reading already held, other value
    REGISTER_DECREASE = "register_decrease"  # register went down without rollover or replacement
    REGISTER_OUT_OF_RANGE = "register_out_of_range"  # above the meter's register maximum
    UNKNOWN_METER = "unknown_meter"  # not the meter in service on the account at that time
    REPLACEMENT_MISMATCH = "replacement_mismatch"  # replaces a meter that is not the one in service


@dataclass(frozen=True, slots=True)
class UsageAnomaly:
    """An input that was reported instead of charged."""

    kind: AnomalyKind
    meter_id: str
    ts: datetime
    detail: str


class IntervalCharge(NamedTuple):
    """The usage charge of one meter for one 15-minute interval.

    A named tuple, not a frozen dataclass: one is built per meter and interval (millions an hour), and a frozen
    dataclass costs five times as much to build. Its invariants are asserted where it is built (`_Run`):
    energy ≥ 0, fen ≥ 0, a 15-minute interval, and the segments' energy summing to the interval's.
    """

    charge_id: str
    meter_id: str
    interval_start: datetime
    interval_end: datetime
    energy_wh: int
    segments: tuple[PricedSegment, ...]
    amount_yuan: Decimal  # exact
    amount_fen: int  # with the account's rounding residue carried


@dataclass(frozen=True, slots=True)
class UsageState:
    """Charging state of one account.

    Invariants: `charged_until` is on the grid with charged_until <= anchor_ts < charged_until + 15 min;
    every interval ending at or before `charged_until` is charged; `carried_wh` is the energy between
    `charged_until` and the anchor reading; `consumed_wh` is all energy since the account was opened,
    charged or carried.
    """

    meter: MeterRegister
    anchor_ts: datetime
    anchor_register_wh: int
    charged_until: datetime
    open_interval_meter_id: str
    carried_wh: int
    consumed_wh: int
    cycle_usage_wh: int
    accumulator: FenAccumulator
    pending_readings: tuple[RegisterReading, ...] = ()
    pending_replacements: tuple[MeterReplacement, ...] = ()
    replacements: tuple[MeterReplacement, ...] = ()

    def __post_init__(self) -> None:
        assert self.anchor_ts.tzinfo is UTC
        assert self.charged_until.tzinfo is UTC
        # floor_to_interval(anchor_ts) == charged_until, without the arithmetic for each state (one per account
        # a batch, twice): the grid instant is checked once, then only compared
        assert _on_grid(self.charged_until), self.charged_until
        assert self.charged_until <= self.anchor_ts < self.charged_until + INTERVAL, self.anchor_ts
        assert 0 <= self.carried_wh <= self.consumed_wh
        assert self.cycle_usage_wh >= 0
        # equal times remain possible: another meter's reading at the instant of a replacement
        if self.pending_readings:
            assert all(r.ts >= self.anchor_ts for r in self.pending_readings)
        if self.pending_replacements:
            assert all(p.at >= self.anchor_ts for p in self.pending_replacements)


def open_usage(
    meter: MeterRegister,
    at: datetime,
    register_wh: int,
    *,
    cycle_usage_wh: int = 0,
    accumulator: FenAccumulator | None = None,
) -> UsageState:
    """State of an account whose charging starts at reading (`at`, `register_wh`) of `meter`.

    `cycle_usage_wh` is the tier-cycle energy already used before the interval containing `at`.
    """
    anchor_ts = at.astimezone(UTC)
    return UsageState(
        meter=meter,
        anchor_ts=anchor_ts,
        anchor_register_wh=register_wh,
        charged_until=floor_to_interval(anchor_ts),
        open_interval_meter_id=meter.meter_id,
        carried_wh=0,
        consumed_wh=0,
        cycle_usage_wh=cycle_usage_wh,
        accumulator=FenAccumulator() if accumulator is None else accumulator,
    )


@dataclass(frozen=True, slots=True)
class UsageResult:
    """New state, the charges to post (in time order), what was reported instead, and exact duplicates seen."""

    state: UsageState
    charges: tuple[IntervalCharge, ...]
    anomalies: tuple[UsageAnomaly, ...]
    duplicates: int
    tariff_changes_applied: int = 0  # the first this many of the `tariff_changes` given are in force now


class _Run:
    """Mutable working copy of a `UsageState` for one `charge_usage` call; never escapes it."""

    def __init__(self, state: UsageState, tariff: Tariff) -> None:
        self.tariff = tariff
        self.meter = state.meter
        self.anchor_ts = state.anchor_ts
        self.anchor_register_wh = state.anchor_register_wh
        self.charged_until = state.charged_until
        self.open_interval_meter_id = state.open_interval_meter_id
        self.carried_wh = state.carried_wh
        self.consumed_wh = state.consumed_wh
        self.cycle_usage_wh = state.cycle_usage_wh
        # the running total in pico-yuan while every amount is a whole number of them (integer rounding is a
        # fraction of Decimal's cost), else in `exact_total_yuan` (then None)
        self.total_pico_yuan = to_pico_yuan(state.accumulator.exact_total_yuan)
        self.exact_total_yuan = state.accumulator.exact_total_yuan
        self.charged_fen = state.accumulator.charged_fen
        self.pending_readings = list(state.pending_readings)
        self.pending_by_key = {(r.meter_id, r.ts): r for r in self.pending_readings}
        self.pending_replacements = list(state.pending_replacements)
        self.replacements = state.replacements
        self.charges: list[IntervalCharge] = []
        self.anomalies: list[UsageAnomaly] = []
        self.duplicates = 0

    def state(self) -> UsageState:
        return UsageState(
            meter=self.meter,
            anchor_ts=self.anchor_ts,
            anchor_register_wh=self.anchor_register_wh,
            charged_until=self.charged_until,
            open_interval_meter_id=self.open_interval_meter_id,
            carried_wh=self.carried_wh,
            consumed_wh=self.consumed_wh,
            cycle_usage_wh=self.cycle_usage_wh,
            accumulator=FenAccumulator(self.total_yuan(), self.charged_fen),
            pending_readings=tuple(self.pending_readings),
            pending_replacements=tuple(self.pending_replacements),
            replacements=self.replacements,
        )

    def total_yuan(self) -> Decimal:
        """The exact running total of the account's charges."""
        return self.exact_total_yuan if self.total_pico_yuan is None else pico_yuan_to_yuan(self.total_pico_yuan)

    def add_to_total(self, amount_yuan: Decimal, amount_pico_yuan: int | None) -> int:
        """Add a charge's exact amount to the running total; the fen charged for it (the rounding residue carried)."""
        assert amount_yuan >= 0, amount_yuan
        charged_before_fen = self.charged_fen
        if self.total_pico_yuan is not None and amount_pico_yuan is not None:
            self.total_pico_yuan += amount_pico_yuan
            self.charged_fen = round_pico_yuan_to_fen(self.total_pico_yuan)
        else:
            self.exact_total_yuan, self.charged_fen = accumulate(self.total_yuan(), amount_yuan)
            self.total_pico_yuan = None
        assert self.charged_fen >= charged_before_fen
        return self.charged_fen - charged_before_fen

    def report(self, kind: AnomalyKind, meter_id: str, ts: datetime, detail: str) -> None:
        self.anomalies.append(UsageAnomaly(kind, meter_id, ts, detail))

    def receive_replacement(self, event: MeterReplacement) -> None:
        if event in self.replacements or event in self.pending_replacements:
            self.duplicates += 1
            return
        at = event.at.astimezone(UTC)
        if at <= self.anchor_ts:
            self.report(
                AnomalyKind.LATE,
                event.old_meter_id,
                at,
                f"replacement at or before the last consumed reading ({self.anchor_ts.isoformat()}); not applied",
            )
            return
        if any(p.at == at for p in self.pending_replacements):
            self.report(AnomalyKind.CONFLICTING_DUPLICATE, event.old_meter_id, at, "another replacement at that time")
            return
        insort(self.pending_replacements, replace(event, at=at), key=lambda p: p.at)

    def receive_reading(self, reading: RegisterReading) -> None:
        if reading.ts.utcoffset() is None:
            raise ValueError(f"reading of meter {reading.meter_id} at {reading.ts!r}: the time must be timezone-aware")
        ts = reading.ts.astimezone(UTC)
        if ts <= self.anchor_ts:
            if (
                ts == self.anchor_ts
                and reading.meter_id == self.meter.meter_id
                and reading.register_wh == self.anchor_register_wh
            ):
                self.duplicates += 1
            else:
                self.report(
                    AnomalyKind.LATE,
                    reading.meter_id,
                    ts,
                    f"at or before the last consumed reading ({self.anchor_ts.isoformat()}); ignored, "
                    "charged intervals are never charged again",
                )
            return
        meters = {p.new_meter.meter_id: p.new_meter for p in self.pending_replacements}
        meters[self.meter.meter_id] = self.meter
        meter = meters.get(reading.meter_id)
        if meter is None:
            self.report(AnomalyKind.UNKNOWN_METER, reading.meter_id, ts, "meter not in service on this account")
            return
        if not 0 <= reading.register_wh <= meter.register_max_wh:
            self.report(
                AnomalyKind.REGISTER_OUT_OF_RANGE,
                reading.meter_id,
                ts,
                f"register {reading.register_wh} Wh outside the meter's range 0..{meter.register_max_wh} Wh",
            )
            return
        held = self.pending_by_key.get((reading.meter_id, ts))
        if held is not None:
            if held.register_wh == reading.register_wh:
                self.duplicates += 1
            else:
                self.report(
                    AnomalyKind.CONFLICTING_DUPLICATE,
                    reading.meter_id,
                    ts,
                    f"register {reading.register_wh} Wh, but {held.register_wh} Wh was received first and is kept",
                )
            return
        utc_reading = reading if reading.ts is ts else RegisterReading(reading.meter_id, ts, reading.register_wh)
        self.pending_by_key[(reading.meter_id, ts)] = utc_reading
        insort(self.pending_readings, utc_reading, key=lambda r: (r.ts, r.meter_id))

    def next_event(self) -> RegisterReading | MeterReplacement | None:
        """The earliest pending event; at equal times the current meter's reading, then a replacement of it."""
        candidates: list[tuple[datetime, int, int, RegisterReading | MeterReplacement]] = []
        current_id = self.meter.meter_id
        for position, reading in enumerate(self.pending_readings):
            if reading.ts != self.pending_readings[0].ts:
                break
            candidates.append((reading.ts, 0 if reading.meter_id == current_id else 2, position, reading))
        if self.pending_replacements:
            first = self.pending_replacements[0]
            candidates.append((first.at, 1 if first.old_meter_id == current_id else 2, 0, first))
        if not candidates:
            return None
        return min(candidates, key=lambda c: c[:3])[3]

    def consume(self, complete_until: datetime, *, eager_on_grid: bool = False) -> None:
        while (event := self.next_event()) is not None:
            if isinstance(event, RegisterReading):
                if event.ts > complete_until and not (eager_on_grid and self.closes_next_interval(event)):
                    return
                self.pending_readings.remove(event)
                del self.pending_by_key[(event.meter_id, event.ts)]
                self.consume_reading(event)
            else:
                if event.at > complete_until:
                    return
                self.pending_replacements.pop(0)
                self.consume_replacement(event)

    def consume_in_order(
        self, readings: list[RegisterReading], complete_until: datetime, *, eager_on_grid: bool = False
    ) -> None:
        """`consume` for readings of the meter in service in strictly increasing time, none pending before."""
        assert not self.pending_readings
        assert not self.pending_replacements
        for index, reading in enumerate(readings):
            if reading.ts > complete_until and not (eager_on_grid and self.closes_next_interval(reading)):
                self.pending_readings = readings[index:]
                return
            end = self.charged_until + INTERVAL
            if end <= reading.ts < end + INTERVAL and reading.register_wh >= self.anchor_register_wh:
                self.close_one_interval(end, reading.ts, reading.register_wh)
            else:
                self.consume_reading(reading)

    def close_one_interval(self, end: datetime, to_ts: datetime, register_wh: int) -> None:
        """`consume_reading` of the commonest reading: the current meter's, no wrap, closing the open interval
        (ending at `end`) and no other.

        `advance` and `charge_interval` fused for that case (a runner's loop spends its time here); the general
        path gives the same (tests/unit/prepay/test_usage_shortcuts.py).
        """
        start = self.charged_until
        energy_wh = (register_wh - self.anchor_register_wh) * self.meter.multiplier
        if to_ts == end:
            closed_wh = energy_wh
        else:
            # `apportion_wh` over the closed and the open part, inlined as in `advance`
            before_us = (end - self.anchor_ts) // _ONE_US
            whole_us = (to_ts - self.anchor_ts) // _ONE_US
            closed_wh = (2 * energy_wh * before_us + whole_us) // (2 * whole_us)
        interval_wh = self.carried_wh + closed_wh
        one_band = price_in_one_band(self.tariff, start, end, interval_wh, self.cycle_usage_wh)
        if one_band is None:
            segments, amount_yuan, cycle_usage_after_wh = price_span(
                self.tariff, start, end, interval_wh, self.cycle_usage_wh
            )
            amount_pico_yuan = to_pico_yuan(amount_yuan)
        else:
            (segments, amount_yuan, amount_pico_yuan), cycle_usage_after_wh = one_band
        self.record_charge(end, interval_wh, segments, amount_yuan, amount_pico_yuan, cycle_usage_after_wh)
        self.consumed_wh += energy_wh
        self.carried_wh = energy_wh - closed_wh
        self.anchor_ts = to_ts
        self.anchor_register_wh = register_wh

    def closes_next_interval(self, reading: RegisterReading) -> bool:
        """Whether the reading is the current meter's, exactly one interval after an on-grid anchor."""
        # Nothing that arrives later can change how such an interval is charged: an earlier reading inside it
        # only splits energy within the interval (its total and its price are the same).
        return (
            reading.meter_id == self.meter.meter_id
            and self.anchor_ts == self.charged_until
            and reading.ts == self.anchor_ts + INTERVAL
            and not any(p.at <= reading.ts for p in self.pending_replacements)
        )

    def consume_reading(self, reading: RegisterReading) -> None:
        if reading.meter_id != self.meter.meter_id:
            self.report(
                AnomalyKind.UNKNOWN_METER,
                reading.meter_id,
                reading.ts,
                f"meter not in service at that time (meter {self.meter.meter_id} is)",
            )
            return
        advance_wh = self.meter.advance_wh(self.anchor_register_wh, reading.register_wh)
        if advance_wh is None:
            self.report(
                AnomalyKind.REGISTER_DECREASE,
                reading.meter_id,
                reading.ts,
                f"register fell from {self.anchor_register_wh} Wh to {reading.register_wh} Wh "
                "without rollover or replacement; not charged",
            )
            return
        self.advance(reading.ts, advance_wh * self.meter.multiplier)
        self.anchor_register_wh = reading.register_wh

    def consume_replacement(self, event: MeterReplacement) -> None:
        if event.old_meter_id != self.meter.meter_id:
            self.report(
                AnomalyKind.REPLACEMENT_MISMATCH,
                event.old_meter_id,
                event.at,
                f"replaces meter {event.old_meter_id}, but meter {self.meter.meter_id} is in service; not applied",
            )
            return
        advance_wh = self.meter.advance_wh(self.anchor_register_wh, event.old_final_register_wh)
        if advance_wh is None:
            self.report(
                AnomalyKind.REGISTER_DECREASE,
                event.old_meter_id,
                event.at,
                f"final register {event.old_final_register_wh} Wh is below the last reading "
                f"{self.anchor_register_wh} Wh; the old meter's last span is not charged",
            )
            advance_wh = 0
        self.advance(event.at, advance_wh * self.meter.multiplier)
        self.meter = event.new_meter
        self.anchor_register_wh = event.new_start_register_wh
        self.replacements = (*self.replacements, event)
        if self.charged_until == self.anchor_ts:
            # the next interval starts at the replacement instant: it belongs to the new meter
            self.open_interval_meter_id = event.new_meter.meter_id

    def advance(self, to_ts: datetime, energy_wh: int) -> None:
        """Move the anchor to `to_ts`, spreading `energy_wh` uniformly since the anchor; charge closed intervals."""
        assert to_ts >= self.anchor_ts
        assert energy_wh >= 0
        end = self.charged_until + INTERVAL
        if to_ts == end:
            # the common case: a reading on the grid closes exactly one interval
            self.charge_interval(end, self.carried_wh + energy_wh)
        elif to_ts < end:
            self.carried_wh += energy_wh
        elif to_ts < end + INTERVAL:
            # one interval closed, the rest carried: `apportion_wh` over the two parts, inlined
            before_us = (end - self.anchor_ts) // _ONE_US
            whole_us = (to_ts - self.anchor_ts) // _ONE_US
            closed_wh = (2 * energy_wh * before_us + whole_us) // (2 * whole_us)
            self.charge_interval(end, self.carried_wh + closed_wh)
            self.carried_wh = energy_wh - closed_wh
        else:
            ends: list[datetime] = []
            while end <= to_ts:
                ends.append(end)
                end += INTERVAL
            # each closed interval's share of the span, then the share of the still-open interval
            points = [self.anchor_ts, *ends, to_ts]
            parts = apportion_wh(energy_wh, [(b - a) // _ONE_US for a, b in itertools.pairwise(points)])
            for end, part_wh in zip(ends, parts, strict=False):
                self.charge_interval(end, self.carried_wh + part_wh)
            self.carried_wh += parts[-1]
        self.consumed_wh += energy_wh
        self.anchor_ts = to_ts

    def charge_interval(self, end: datetime, interval_wh: int) -> None:
        """Charge the interval from `charged_until` to `end` with `interval_wh`; nothing is carried past it."""
        segments, amount_yuan, cycle_usage_after_wh = price_span(
            self.tariff, self.charged_until, end, interval_wh, self.cycle_usage_wh
        )
        self.record_charge(end, interval_wh, segments, amount_yuan, to_pico_yuan(amount_yuan), cycle_usage_after_wh)
        self.carried_wh = 0

    def record_charge(
        self,
        end: datetime,
        interval_wh: int,
        segments: tuple[PricedSegment, ...],
        amount_yuan: Decimal,
        amount_pico_yuan: int | None,
        cycle_usage_after_wh: int,
    ) -> None:
        """Record the priced interval from `charged_until` to `end` (its fen with the rounding residue carried)."""
        start = self.charged_until
        meter_id = self.open_interval_meter_id
        # the IntervalCharge invariants (see there); the pricing guarantees the segments' energy
        assert interval_wh >= 0
        assert end - start == INTERVAL, (start, end)
        self.charges.append(
            IntervalCharge(
                charge_id_for(meter_id, start),
                meter_id,
                start,
                end,
                interval_wh,
                segments,
                amount_yuan,
                self.add_to_total(amount_yuan, amount_pico_yuan),
            )
        )
        self.cycle_usage_wh = cycle_usage_after_wh
        self.charged_until = end
        self.open_interval_meter_id = self.meter.meter_id


class _PlannedRun(_Run):
    """A run whose tariff changes at given instants: each interval is priced with the tariff in force at its start.

    Only accounts with a change ahead take this class; the others keep `_Run` and its fast paths as they are.
    """

    def __init__(self, state: UsageState, tariff: Tariff, changes: tuple[TariffChange, ...]) -> None:
        super().__init__(state, tariff)
        self.changes = changes
        self.applied = 0
        self.switch_if_due()  # a change from `charged_until` prices the very next interval

    def record_charge(
        self,
        end: datetime,
        interval_wh: int,
        segments: tuple[PricedSegment, ...],
        amount_yuan: Decimal,
        amount_pico_yuan: int | None,
        cycle_usage_after_wh: int,
    ) -> None:
        """`_Run.record_charge`, then the tariff of the next interval if a change starts at its end."""
        super().record_charge(end, interval_wh, segments, amount_yuan, amount_pico_yuan, cycle_usage_after_wh)
        self.switch_if_due()

    def switch_if_due(self) -> None:
        """Take the next change when charging has reached its instant."""
        while self.applied < len(self.changes) and self.changes[self.applied].at == self.charged_until:
            change = self.changes[self.applied]
            self.cycle_usage_wh = cycle_usage_across(self.tariff, change.tariff, change.at, self.cycle_usage_wh)
            self.tariff = change.tariff
            self.applied += 1


def _plain_readings(state: UsageState, received: list[UsageEvent]) -> list[RegisterReading] | None:
    """`received` in time order when receiving them one by one could only queue them (nothing to report), else None.

    That is: nothing held from before, only readings of the meter in service, all after the anchor, at distinct
    times (UTC) and within the register's range — the usual batch, which then needs no per-reading bookkeeping.
    """
    if state.pending_readings or state.pending_replacements:
        return None
    meter = state.meter
    meter_id = meter.meter_id
    register_max_wh = meter.register_max_wh
    readings: list[RegisterReading] = []
    for event in received:
        if (
            not isinstance(event, RegisterReading)
            or event.meter_id != meter_id
            or not 0 <= event.register_wh <= register_max_wh
            or event.ts.tzinfo is not UTC
        ):
            return None
        readings.append(event)
    readings.sort(key=_reading_ts)
    if readings and readings[0].ts <= state.anchor_ts:
        return None
    for before, after in itertools.pairwise(readings):
        if before.ts == after.ts:
            return None
    return readings


def _reading_ts(reading: RegisterReading) -> datetime:
    return reading.ts


def charge_usage(
    state: UsageState,
    events: Iterable[UsageEvent],
    tariff: Tariff,
    *,
    complete_until: datetime,
    eager_on_grid: bool = False,
    tariff_changes: Sequence[TariffChange] = (),
) -> UsageResult:
    """Take `events` (any order, duplicates allowed); charge every interval closed by readings up to `complete_until`.

    `complete_until` promises that every reading and replacement at or before it has been delivered. With
    `eager_on_grid`, a reading beyond it is consumed too when it closes the very next interval after an on-grid
    anchor (and so on, reading by reading): no later arrival could change that interval's charge, so the
    engine need not wait for the lateness allowance before charging meters that report on the grid.

    `tariff` prices the intervals from `charged_until`; `tariff_changes` (in increasing order, none before
    `charged_until`) move the account to another tariff from their instants. The result tells how many of them
    charging has reached (`tariff_changes_applied`): the tariff of the last of those is the account's now.
    """
    assert complete_until.utcoffset() is not None, "complete_until must be timezone-aware"
    run: _Run
    if tariff_changes:
        changes = tuple(tariff_changes)
        assert changes[0].at >= state.charged_until, "a tariff change can't reprice charged intervals"
        assert all(a.at < b.at for a, b in itertools.pairwise(changes)), "tariff changes in increasing order"
        run = _PlannedRun(state, tariff, changes)
    else:
        run = _Run(state, tariff)
    received = list(events)
    in_order = _plain_readings(state, received)
    if in_order is not None:
        run.consume_in_order(in_order, complete_until.astimezone(UTC), eager_on_grid=eager_on_grid)
    else:
        # replacements first, so that a new meter's readings in the same batch are recognised
        for event in received:
            if isinstance(event, MeterReplacement):
                run.receive_replacement(event)
        for event in received:
            if isinstance(event, RegisterReading):
                run.receive_reading(event)
        run.consume(complete_until.astimezone(UTC), eager_on_grid=eager_on_grid)
    after = run.state()
    charged_wh = sum(c.energy_wh for c in run.charges)
    assert after.consumed_wh - after.carried_wh == state.consumed_wh - state.carried_wh + charged_wh
    assert after.accumulator.charged_fen == state.accumulator.charged_fen + sum(c.amount_fen for c in run.charges)
    applied = run.applied if isinstance(run, _PlannedRun) else 0
    return UsageResult(after, tuple(run.charges), tuple(run.anomalies), run.duplicates, applied)
