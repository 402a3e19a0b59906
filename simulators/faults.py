"""Faults on demand: which meters misbehave and how, and a message stream that drops, repeats and delays."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar

from simulators.clock import INTERVAL_S

# DL/T 645 shows energy as XXXXXX.XX kWh: the highest register value is 999999.99 kWh.
DLT645_ROLLOVER_LIMIT_WH = 999_999_990

T = TypeVar("T")


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within 0..1, got {value}")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """What to break. Fractions pick meters; rates are per MQTT message.

    A rolled-over register counts modulo `rollover_limit_wh + 1`: after the limit it shows 0.
    """

    offline_fraction: float = 0.0
    offline_ids: frozenset[str] = frozenset()
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    reorder_window: int = 2
    drift_fraction: float = 0.0
    drift_s_per_day: float = 60.0
    rollover_fraction: float = 0.0
    rollover_limit_wh: int = DLT645_ROLLOVER_LIMIT_WH
    rollover_margin_wh: int = 3_000

    def __post_init__(self) -> None:
        for name in ("offline_fraction", "drop_rate", "duplicate_rate", "reorder_rate", "drift_fraction"):
            _check_fraction(name, getattr(self, name))
        _check_fraction("rollover_fraction", self.rollover_fraction)
        if self.reorder_window < 1:
            raise ValueError(f"reorder_window must be at least 1 interval, got {self.reorder_window}")
        if self.drift_s_per_day < 0:
            raise ValueError(f"drift_s_per_day must not be negative, got {self.drift_s_per_day}")
        if self.rollover_limit_wh < 1:
            raise ValueError(f"rollover_limit_wh must be positive, got {self.rollover_limit_wh}")
        if not 1 <= self.rollover_margin_wh <= self.rollover_limit_wh:
            raise ValueError(f"rollover_margin_wh must be within 1..rollover_limit_wh, got {self.rollover_margin_wh}")


@dataclass(frozen=True, slots=True)
class MeterFaults:
    """The faults of one meter: offline, a drifting clock, a register that starts near its limit."""

    offline: bool = False
    clock_error_s: float = 0.0
    drift_s_per_day: float = 0.0
    start_register_wh: int | None = None

    @property
    def drifting(self) -> bool:
        """Whether this meter's clock is off."""
        return self.clock_error_s != 0.0 or self.drift_s_per_day != 0.0

    def clock_error_at(self, elapsed_days: float) -> int:
        """Whole seconds the meter's clock is off after `elapsed_days`; never exactly on a 15-minute mark."""
        if not self.drifting:
            return 0
        error = round(self.clock_error_s + self.drift_s_per_day * elapsed_days)
        # a drifting clock that lands back on the grid would hide the fault
        return error + 1 if error % INTERVAL_S == 0 else error


NO_FAULTS = MeterFaults()


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Per-meter faults drawn from a FaultConfig for one fleet; meters not listed have none."""

    config: FaultConfig
    meters: Mapping[str, MeterFaults]

    def for_meter(self, meter_id: str) -> MeterFaults:
        """Faults of `meter_id` (NO_FAULTS for a healthy meter)."""
        return self.meters.get(meter_id, NO_FAULTS)

    @property
    def offline_ids(self) -> frozenset[str]:
        """Meters that publish nothing."""
        return frozenset(k for k, v in self.meters.items() if v.offline)


def plan_faults(config: FaultConfig, meter_ids: Sequence[str], seed: int) -> FaultPlan:
    """Decide, deterministically from `seed`, which of `meter_ids` are offline, drift or roll over."""
    unknown = config.offline_ids - set(meter_ids)
    if unknown:
        raise ValueError(f"offline ids not in the fleet: {', '.join(sorted(unknown))}")
    rng = random.Random(f"faults:{seed}")  # noqa: S311 - reproducible simulation, not security

    def pick(fraction: float) -> set[str]:
        return set(rng.sample(list(meter_ids), round(fraction * len(meter_ids))))

    offline = pick(config.offline_fraction) | config.offline_ids
    drifting = pick(config.drift_fraction)
    rolling = pick(config.rollover_fraction)
    plan: dict[str, MeterFaults] = {}
    for meter_id in meter_ids:
        if meter_id not in offline | drifting | rolling:
            continue
        error_s = rate = 0.0
        if meter_id in drifting:
            sign = rng.choice((-1.0, 1.0))
            error_s = sign * rng.uniform(5.0, 120.0)
            rate = sign * config.drift_s_per_day * rng.uniform(0.5, 1.5)
        start_wh = None
        if meter_id in rolling:
            start_wh = config.rollover_limit_wh - rng.randrange(config.rollover_margin_wh)
        plan[meter_id] = MeterFaults(meter_id in offline, error_s, rate, start_wh)
    return FaultPlan(config, MappingProxyType(plan))


@dataclass(frozen=True)
class Delivery(Generic[T]):
    """What one interval's messages became: sent in this order, and what faults did to them."""

    sent: list[T]
    dropped: list[T] = field(default_factory=list)
    duplicated: list[T] = field(default_factory=list)
    delayed: list[T] = field(default_factory=list)


class MessageFaults(Generic[T]):
    """Drops, duplicates and delays messages interval by interval, from a seeded random stream.

    A delayed message is held back 1..reorder_window intervals and sent after that interval's
    own messages, so a meter's older reading arrives after its newer ones.
    """

    def __init__(self, config: FaultConfig, seed: int) -> None:
        self._config = config
        self._rng = random.Random(f"messages:{seed}")  # noqa: S311 - reproducible simulation, not security
        self._step = 0
        self._held: list[tuple[int, list[T]]] = []

    @property
    def held(self) -> int:
        """Messages currently held back."""
        return len(self._held)

    def step(self, messages: Iterable[T]) -> Delivery[T]:
        """Apply the faults to one interval's messages; also releases held messages that are due."""
        self._step += 1
        delivery: Delivery[T] = Delivery([])
        for message in messages:
            # three draws for every message, so changing one rate does not reshuffle the other faults
            drop, duplicate, delay = self._rng.random(), self._rng.random(), self._rng.random()
            if drop < self._config.drop_rate:
                delivery.dropped.append(message)
                continue
            copies = [message]
            if duplicate < self._config.duplicate_rate:
                copies.append(message)
                delivery.duplicated.append(message)
            if delay < self._config.reorder_rate:
                self._held.append((self._step + self._rng.randint(1, self._config.reorder_window), copies))
                delivery.delayed.append(message)
            else:
                delivery.sent.extend(copies)
        due = [copies for when, copies in self._held if when <= self._step]
        self._held = [(when, copies) for when, copies in self._held if when > self._step]
        for copies in due:
            delivery.sent.extend(copies)
        return delivery

    def flush(self) -> list[T]:
        """Release every held message (the run is ending)."""
        released = [m for _, copies in self._held for m in copies]
        self._held = []
        return released
