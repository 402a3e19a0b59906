"""Which 15-minute load points of a range a meter has no reading for: what a re-read asks for and counts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from headend.poll.schedule import load_point_at_or_before

# the collection report's slot (96 a day from local midnight): a reading counts for the slot its stamp falls in
SLOT = timedelta(minutes=15)


def slots_in(from_at: datetime, to_at: datetime, zone: ZoneInfo) -> list[datetime]:
    """The load points whose slot overlaps [from_at, to_at): from the slot holding `from_at` on."""
    assert from_at.utcoffset() is not None
    assert to_at.utcoffset() is not None
    slot = load_point_at_or_before(from_at, SLOT, zone)
    slots = []
    while slot < to_at:
        slots.append(slot)
        slot += SLOT
    return slots


def slot_of(ts: datetime, zone: ZoneInfo) -> datetime:
    """The load point of the slot `ts` falls in."""
    return load_point_at_or_before(ts, SLOT, zone)


def missing_slots(
    conn: psycopg.Connection[Any],
    meter_ids: Iterable[str],
    from_at: datetime,
    to_at: datetime,
    zone: ZoneInfo,
) -> dict[str, list[datetime]]:
    """For each meter, the load points of [from_at, to_at) with no stored reading (every meter is a key)."""
    ids = list(dict.fromkeys(meter_ids))
    wanted = slots_in(from_at, to_at, zone)
    if not wanted:
        return {meter_id: [] for meter_id in ids}
    read: dict[str, set[datetime]] = defaultdict(set)
    rows = conn.execute(
        "SELECT meter_id, ts FROM readings WHERE meter_id = ANY(%s) AND ts >= %s AND ts < %s",
        (ids, wanted[0], wanted[-1] + SLOT),
    )
    for meter_id, ts in rows:
        read[meter_id].add(slot_of(ts, zone))
    return {meter_id: [slot for slot in wanted if slot not in read[meter_id]] for meter_id in ids}
