"""Daily load shapes as data, and the deterministic energy of one meter over one interval."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from statistics import NormalDist
from types import MappingProxyType
from zoneinfo import ZoneInfo

from simulators.clock import INTERVAL, INTERVALS_PER_DAY

SHANGHAI = ZoneInfo("Asia/Shanghai")
_STANDARD_NORMAL = NormalDist()


class MeterKind(StrEnum):
    """What kind of customer a meter serves; selects its load shape."""

    RESIDENTIAL = "residential"
    COMMERCIAL = "commercial"


@dataclass(frozen=True, slots=True)
class LoadShape:
    """Relative hourly demand (index 0 is 00:00-01:00 local time) and the mean daily energy."""

    kind: MeterKind
    mean_daily_wh: int
    weekday: tuple[float, ...]
    weekend: tuple[float, ...]
    noise: float
    scale_sigma: float
    _weekly_mean: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        assert len(self.weekday) == 24
        assert len(self.weekend) == 24
        assert all(v > 0 for v in self.weekday + self.weekend)
        assert self.mean_daily_wh > 0
        assert 0 <= self.noise < 1
        assert self.scale_sigma >= 0
        object.__setattr__(self, "_weekly_mean", (5 * sum(self.weekday) + 2 * sum(self.weekend)) / (7 * 24))

    def factor(self, local: datetime) -> float:
        """Demand at `local` (local wall time) relative to the weekly mean, interpolated between hours."""
        hours = self.weekend if local.weekday() >= 5 else self.weekday
        # hourly values sit at the middle of their hour; interpolate linearly between neighbours
        position = local.hour + local.minute / 60 + local.second / 3600 - 0.5
        low = math.floor(position)
        frac = position - low
        value = hours[low % 24] * (1 - frac) + hours[(low + 1) % 24] * frac
        return value / self._weekly_mean


# hourly tables read best twelve values a row
# fmt: off
# Chinese households average about 2,700 kWh a year: ~7.5 kWh a day, with a breakfast peak,
# a lunch bump and the main peak after 18:00 (cooking, lighting, air conditioning, TV).
RESIDENTIAL = LoadShape(
    kind=MeterKind.RESIDENTIAL,
    mean_daily_wh=7_500,
    weekday=(
        0.45, 0.38, 0.34, 0.32, 0.32, 0.38, 0.70, 1.10, 1.00, 0.80, 0.75, 0.95,
        1.05, 0.85, 0.75, 0.75, 0.85, 1.20, 1.70, 1.95, 1.90, 1.65, 1.20, 0.75,
    ),
    weekend=(
        0.50, 0.42, 0.36, 0.33, 0.32, 0.34, 0.50, 0.80, 1.10, 1.15, 1.10, 1.20,
        1.25, 1.10, 1.00, 0.95, 1.00, 1.30, 1.75, 2.00, 1.95, 1.70, 1.30, 0.85,
    ),
    noise=0.25,
    scale_sigma=0.45,
)

# Shops and offices: standby load at night, a plateau during opening hours on weekdays,
# and little more than standby at weekends.
COMMERCIAL = LoadShape(
    kind=MeterKind.COMMERCIAL,
    mean_daily_wh=60_000,
    weekday=(
        0.30, 0.28, 0.28, 0.28, 0.28, 0.30, 0.45, 0.90, 1.60, 1.95, 2.05, 2.05,
        1.90, 2.00, 2.05, 2.05, 2.00, 1.85, 1.40, 0.90, 0.60, 0.45, 0.38, 0.33,
    ),
    weekend=(
        0.28, 0.27, 0.27, 0.27, 0.27, 0.28, 0.30, 0.35, 0.45, 0.50, 0.55, 0.55,
        0.55, 0.55, 0.55, 0.50, 0.45, 0.40, 0.35, 0.33, 0.30, 0.30, 0.29, 0.28,
    ),
    noise=0.12,
    scale_sigma=0.6,
)

# fmt: on

SHAPES: Mapping[MeterKind, LoadShape] = MappingProxyType(
    {MeterKind.RESIDENTIAL: RESIDENTIAL, MeterKind.COMMERCIAL: COMMERCIAL}
)


def unit_random(seed: int, *parts: object) -> float:
    """A uniform number in (0, 1), a pure function of the seed and the parts (stable across runs)."""
    key = "|".join([str(seed), *(str(p) for p in parts)]).encode()
    number = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
    return (number + 0.5) / 2**64


def meter_scale(meter_id: str, kind: MeterKind, seed: int) -> float:
    """How much more (or less) than the average customer of its kind this meter consumes."""
    z = _STANDARD_NORMAL.inv_cdf(unit_random(seed, "scale", meter_id))
    # a log-normal spread, bounded so no simulated customer is absurd
    return min(4.0, max(0.2, math.exp(SHAPES[kind].scale_sigma * z)))


def interval_energy_wh(
    meter_id: str,
    kind: MeterKind,
    interval_end: datetime,
    seed: int,
    *,
    scale: float | None = None,
    zone: ZoneInfo = SHANGHAI,
) -> int:
    """Energy in Wh one meter consumes over the 15-minute interval ending at `interval_end`; never negative."""
    assert interval_end.utcoffset() is not None, "interval_end must be timezone-aware"
    shape = SHAPES[kind]
    if scale is None:
        scale = meter_scale(meter_id, kind, seed)
    middle = (interval_end - INTERVAL / 2).astimezone(zone)
    z = _STANDARD_NORMAL.inv_cdf(unit_random(seed, "energy", meter_id, interval_end.timestamp()))
    noise = max(0.0, 1.0 + shape.noise * z)
    mean_wh = shape.mean_daily_wh / INTERVALS_PER_DAY * shape.factor(middle) * scale
    return max(0, round(mean_wh * noise))
