"""Pure validation rules for readings: the time window, registers, quality flags."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntFlag

from protocols.readings import MeterReading

ROLLOVER_HIGH_FRACTION = 0.9
ROLLOVER_LOW_FRACTION = 0.1
INTERVAL = timedelta(minutes=15)


class QualityFlag(IntFlag):
    """Stored with a reading; zero means nothing unusual."""

    ROLLOVER = 1  # register wrapped past its maximum back towards zero
    REGISTER_DECREASE = 2  # register went down without a plausible rollover: meter reset or replaced
    OFF_GRID = 4  # time not on the 15-minute grid (clock drift or a spontaneous reading)


def future_reason(reading: MeterReading, now: datetime, tolerance: timedelta) -> str | None:
    """Why `reading` is too far in the future, or None if its time is acceptable."""
    assert now.utcoffset() is not None
    if reading.ts > now + tolerance:
        return _future(reading.ts, tolerance)
    return None


def _future(ts: datetime, tolerance: timedelta) -> str:
    return f"ts {ts.isoformat()} is more than {int(tolerance.total_seconds())} s in the future"


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """The times a reading may carry, as of one instant: from `max_age` before it to `future_tolerance` after it.

    Checked before anything else is done with a time: a time outside it may lie at the edge of what datetime can
    represent (year 1 at +14:00 cannot be converted to UTC), and would ask for a partition of its own.
    """

    oldest: datetime
    latest: datetime
    max_age: timedelta
    future_tolerance: timedelta

    @classmethod
    def around(cls, now: datetime, max_age: timedelta, future_tolerance: timedelta) -> TimeWindow:
        """The window as of `now` (timezone-aware)."""
        assert now.utcoffset() is not None
        return cls(now - max_age, now + future_tolerance, max_age, future_tolerance)

    def refusal(self, ts: datetime) -> str | None:
        """Why a reading stamped `ts` is refused (too old, or in the future), or None if `ts` is in the window."""
        # comparing aware datetimes subtracts their offsets into a timedelta: no overflow, whatever the year
        if ts < self.oldest:
            return f"ts {ts.isoformat()} is more than {self.max_age / timedelta(days=1):g} days old"
        if ts > self.latest:
            return _future(ts, self.future_tolerance)
        return None


def register_flags(previous_wh: int | None, current_wh: int, register_max_wh: int) -> QualityFlag:
    """Flags for a register value following `previous_wh` (the reading just before it in time)."""
    assert register_max_wh > 0
    if previous_wh is None or current_wh >= previous_wh:
        return QualityFlag(0)
    if (
        previous_wh >= register_max_wh * ROLLOVER_HIGH_FRACTION
        and current_wh <= register_max_wh * ROLLOVER_LOW_FRACTION
    ):
        return QualityFlag.ROLLOVER
    return QualityFlag.REGISTER_DECREASE


def grid_flags(ts: datetime) -> QualityFlag:
    """OFF_GRID unless the instant `ts` falls exactly on a 15-minute boundary (judged in UTC, not its offset)."""
    instant = ts.astimezone(UTC)
    if instant.second or instant.microsecond or instant.minute % 15:
        return QualityFlag.OFF_GRID
    return QualityFlag(0)
