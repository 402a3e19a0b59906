"""Typed readings as they travel on the wire, independent of any transport."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

METER_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_READINGS_PER_BATCH = 1024


class RelayState(StrEnum):
    """Position of the meter's load relay."""

    CLOSED = "closed"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One register reading of one meter at one instant (timezone-aware)."""

    meter_id: str
    ts: datetime
    energy_import_wh: int
    energy_export_wh: int | None = None
    power_w: int | None = None
    voltage_v: float | None = None
    relay: RelayState | None = None
    seq: int | None = None

    def __post_init__(self) -> None:
        assert METER_ID_PATTERN.fullmatch(self.meter_id), self.meter_id
        assert self.ts.utcoffset() is not None, "reading time must be timezone-aware"
        assert self.energy_import_wh >= 0


@dataclass(frozen=True, slots=True)
class ItemError:
    """One entry of a concentrator batch that could not be decoded."""

    index: int
    reason: str
    raw: object


@dataclass(frozen=True, slots=True)
class ConcentratorBatch:
    """Readings forwarded by a data concentrator (DCU) in one message.

    `rejected` holds the entries that failed decoding, so that one bad entry does not
    cost the good ones.
    """

    dcu_id: str
    sent_at: datetime
    readings: tuple[MeterReading, ...]
    rejected: tuple[ItemError, ...] = ()


def is_valid_id(value: str) -> bool:
    """Whether `value` is a valid meter or concentrator id."""
    return METER_ID_PATTERN.fullmatch(value) is not None
