"""When polled meters are read: load points every interval from local midnight, and the stamp a reading gets."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo


def load_point_at_or_before(now: datetime, interval: timedelta, zone: ZoneInfo) -> datetime:
    """The latest load point at or before `now`: local midnight plus a whole number of intervals."""
    assert now.utcoffset() is not None
    assert timedelta(0) < interval <= timedelta(days=1)
    local = now.astimezone(zone)
    midnight = datetime.combine(local.date(), time(0), zone)
    # counted in elapsed time: a day with a DST change still has its points an interval apart
    elapsed = now - midnight
    return midnight + interval * (elapsed // interval)


def next_load_point(now: datetime, interval: timedelta, zone: ZoneInfo) -> datetime:
    """The first load point after `now` (the next local midnight at the latest)."""
    point = load_point_at_or_before(now, interval, zone) + interval
    local = now.astimezone(zone)
    next_midnight = datetime.combine(local.date() + timedelta(days=1), time(0), zone)
    return min(point, next_midnight)


def reading_stamp(read_at: datetime, load_point: datetime | None, snap: timedelta) -> datetime:
    """The time a reading is stamped: its load point when read within `snap` of it, else when it was read.

    A concentrator freezes its meters' registers at each load point; a poll of a meter without such a record reads
    its registers as they are when asked, a little later. Within `snap` the reading stands for the load point; later it
    is stamped when it was read (to the second), which the collection report counts in the slot it falls in.
    """
    assert read_at.utcoffset() is not None
    if load_point is not None and load_point <= read_at <= load_point + snap:
        return load_point
    return read_at.replace(microsecond=0)
