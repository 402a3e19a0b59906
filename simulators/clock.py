"""Simulated time: the 15-minute reading grid, run faster than real time or as fast as possible."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

INTERVAL = timedelta(minutes=15)
INTERVAL_S = 900
INTERVALS_PER_DAY = 96


def floor_to_grid(instant: datetime) -> datetime:
    """The 15-minute mark at or before `instant`, in the same time zone."""
    assert instant.utcoffset() is not None, "instant must be timezone-aware"
    # every real UTC offset is a multiple of 15 minutes, so the UTC grid is the local grid
    epoch_s = math.floor(instant.timestamp())
    return datetime.fromtimestamp(epoch_s - epoch_s % INTERVAL_S, tz=instant.tzinfo)


def is_on_grid(instant: datetime) -> bool:
    """Whether `instant` lies exactly on a 15-minute mark."""
    return floor_to_grid(instant) == instant


def parse_speed(text: str) -> float | None:
    """Parse a speed factor: a positive number (60 = one simulated hour a real minute) or 'max' (None)."""
    if text.strip().lower() in ("max", "inf", "asap"):
        return None
    try:
        speed = float(text)
    except ValueError:
        raise ValueError(f"speed {text!r} is neither a positive number nor 'max'") from None
    if not math.isfinite(speed) or speed <= 0:
        raise ValueError(f"speed {text!r} must be a positive number or 'max'")
    return speed


@dataclass(frozen=True, slots=True)
class SimClock:
    """Simulated clock: the first reading instant `start` and how fast simulated time runs.

    `speed` is simulated seconds per real second; None runs as fast as possible.
    """

    start: datetime
    speed: float | None = None

    def __post_init__(self) -> None:
        if self.start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        if not is_on_grid(self.start):
            raise ValueError(f"start {self.start.isoformat()} is not on the 15-minute grid")
        if self.speed is not None and not (math.isfinite(self.speed) and self.speed > 0):
            raise ValueError(f"speed {self.speed} must be positive")

    @property
    def real_seconds_per_interval(self) -> float:
        """Real seconds between two consecutive interval ends (0 when as fast as possible)."""
        return 0.0 if self.speed is None else INTERVAL_S / self.speed

    def interval_ends(self, count: int) -> list[datetime]:
        """The first `count` reading instants, without waiting."""
        return [self.start + k * INTERVAL for k in range(count)]

    def ticks(
        self,
        count: int,
        stop: threading.Event | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> Iterator[datetime]:
        """Yield the first `count` reading instants as simulated time reaches them; end early once `stop` is set."""
        stop = stop or threading.Event()
        origin = monotonic()
        step = self.real_seconds_per_interval
        for k, instant in enumerate(self.interval_ends(count)):
            # deadlines from the origin, so the time spent by the caller does not add up as drift
            delay = origin + k * step - monotonic()
            if stop.is_set() or (delay > 0 and stop.wait(delay)):
                return
            yield instant
