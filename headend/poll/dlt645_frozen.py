"""A DL/T 645-2007 meter's daily frozen data (05 06 xx nn): its registers at a past local midnight, as a reading."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from headend.poll.dlt645_reader import Dlt645Link
from headend.poll.failures import FailureKind, PollError
from headend.poll.targets import PolledMeter
from protocols.dlt645.identifiers import (
    MAX_FROZEN_DAYS,
    EnergyBlock,
    FrozenTime,
    daily_frozen_forward_active,
    daily_frozen_reverse_active,
    daily_frozen_time,
)
from protocols.readings import MeterReading


def freeze_index(day: date, today: date) -> int:
    """Which freeze (1 = the latest) holds the midnight that starts `day`, if the meter froze every midnight."""
    return (today - day).days + 1


async def _frozen_day(link: Dlt645Link, meter: PolledMeter, index: int) -> date:
    value = await link.value(meter, daily_frozen_time(index))
    if not isinstance(value, FrozenTime):
        raise PollError(FailureKind.BAD_VALUE, f"freeze {index} time of {meter.address} is {value!r}")
    return value.at.date()


async def read_freeze(link: Dlt645Link, meter: PolledMeter, day: date, today: date, zone: ZoneInfo) -> MeterReading:
    """The reading stamped at the local midnight that starts `day`, from the freeze the meter made then.

    The n-th freeze is n-1 days ago only if the meter froze every midnight (it misses days it was off): the freeze's
    own time is read first, and a freeze of another day moves the index once by the difference.
    """
    index = freeze_index(day, today)
    if not 1 <= index <= MAX_FROZEN_DAYS:
        raise PollError(FailureKind.METER_ERROR, f"{day} is beyond the {MAX_FROZEN_DAYS} daily freezes a meter holds")
    held = await _frozen_day(link, meter, index)
    if held != day:
        index += (held - day).days
        if not 1 <= index <= MAX_FROZEN_DAYS or await _frozen_day(link, meter, index) != day:
            raise PollError(FailureKind.METER_ERROR, f"meter {meter.address} holds no daily freeze of {day}")
    forward = await link.value(meter, daily_frozen_forward_active(index))
    reverse = await link.optional_value(meter, daily_frozen_reverse_active(index))
    if not isinstance(forward, EnergyBlock):
        raise PollError(FailureKind.BAD_VALUE, f"freeze {index} forward energy of {meter.address} is {forward!r}")
    return MeterReading(
        meter_id=meter.meter_id,
        ts=datetime.combine(day, time(0), zone).astimezone(UTC),
        energy_import_wh=forward.total_wh,
        energy_export_wh=reverse.total_wh if isinstance(reverse, EnergyBlock) else None,
    )
