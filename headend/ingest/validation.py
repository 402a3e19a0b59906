"""Pure validation rules for readings: time, registers, quality flags."""

from __future__ import annotations

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
        return f"ts {reading.ts.isoformat()} is more than {int(tolerance.total_seconds())} s in the future"
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
