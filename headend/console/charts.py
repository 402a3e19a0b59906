"""The collection-success chart, pure: days and rates in, the geometry of a server-rendered SVG out (no script).

The template draws what this computes: one polyline per run of days that had meters expected (a day without any is a
gap, not 100 %), a dot per day (below the target marked), the target line, and the axes' ticks. The y axis spans from
90 % (lower when a day was lower, in steps of 10 %) to 100 %, so that the distance from the target shows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Final

WIDTH: Final = 640
HEIGHT: Final = 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 48.0, 12.0, 12.0, 28.0
_X_TICK_EVERY_DAYS: Final = 7


@dataclass(frozen=True, slots=True)
class ChartPoint:
    """A day's dot."""

    x: float
    y: float
    day: date
    rate: float
    below_target: bool

    @property
    def label(self) -> str:
        """What the dot's tooltip says."""
        return f"{self.day.isoformat()}: {self.rate:.1%}"


@dataclass(frozen=True, slots=True)
class Tick:
    """A labelled position on an axis."""

    position: float
    label: str


@dataclass(frozen=True, slots=True)
class RateChart:
    """Everything the template needs to draw the chart, in the SVG's own units."""

    width: int
    height: int
    plot_left: float
    plot_right: float
    plot_top: float
    plot_bottom: float
    lines: list[str]  # `points` attributes of polylines: "x,y x,y …"
    points: list[ChartPoint]
    target_y: float
    target_label: str
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    description: str  # the chart in words, for screen readers


def _floor_tenth(value: float) -> float:
    return math.floor(round(value * 10, 9)) / 10


def rate_chart(days: Sequence[tuple[date, float | None]], target: float) -> RateChart:
    """The chart of daily rates (None: nothing expected that day) against `target`, days in order."""
    rates = [rate for _, rate in days if rate is not None]
    low = min(0.9, _floor_tenth(min([*rates, target])))
    high = 1.0
    left, right, top, bottom = _LEFT, WIDTH - _RIGHT, _TOP, HEIGHT - _BOTTOM

    def x_of(index: int) -> float:
        if len(days) < 2:
            return round((left + right) / 2, 1)
        return round(left + index * (right - left) / (len(days) - 1), 1)

    def y_of(rate: float) -> float:
        clamped = min(max(rate, low), high)
        return round(top + (high - clamped) / (high - low) * (bottom - top), 1)

    points: list[ChartPoint] = []
    lines: list[str] = []
    run: list[str] = []
    for index, (day, rate) in enumerate(days):
        if rate is None:
            if run:
                lines.append(" ".join(run))
            run = []
            continue
        point = ChartPoint(x_of(index), y_of(rate), day, rate, rate < target)
        points.append(point)
        run.append(f"{point.x},{point.y}")
    if run:
        lines.append(" ".join(run))

    span = high - low
    step = 0.02 if span <= 0.1 + 1e-9 else 0.1 if span <= 0.5 + 1e-9 else 0.2
    steps = round(span / step)
    y_ticks = [Tick(y_of(low + i * step), f"{(low + i * step) * 100:.0f}%") for i in range(steps + 1)]
    x_ticks = [
        Tick(x_of(index), days[index][0].strftime("%m-%d")) for index in range(len(days) - 1, -1, -_X_TICK_EVERY_DAYS)
    ][::-1]
    below = sum(1 for p in points if p.below_target)
    description = (
        f"Daily collection success from {days[0][0].isoformat()} to {days[-1][0].isoformat()}: "
        f"{len(points)} days with meters expected, {below} below the {target:.0%} target"
        if days
        else "No days to show"
    )
    return RateChart(
        WIDTH,
        HEIGHT,
        left,
        right,
        top,
        bottom,
        lines,
        points,
        y_of(target),
        f"{target:.0%} target",
        y_ticks,
        x_ticks,
        description,
    )
