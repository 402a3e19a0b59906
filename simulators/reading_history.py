"""The readings a simulated meter or concentrator holds: the last N of each meter, to send again on a re-read."""

from __future__ import annotations

import threading
from array import array
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from protocols.readings import MeterReading, RelayState
from simulators.clock import INTERVALS_PER_DAY
from simulators.load_shapes import SHANGHAI

# a week of load points, as a concentrator keeps them (the head-end re-reads the last days)
DEFAULT_HISTORY_INTERVALS = 7 * INTERVALS_PER_DAY
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# optional fields of a reading, each a column of its own, allocated once a meter has a value for it; bit i of
# `present` says whether a reading has the i-th of them
_INT_FIELDS = ("energy_export_wh", "power_w", "seq")
_RELAY_BIT, _VOLTAGE_BIT = len(_INT_FIELDS), len(_INT_FIELDS) + 1


class _Ring:
    """The last `capacity` readings of one meter, column by column: 17 bytes a reading, more for optional fields."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self.next = 0  # where the next reading goes: the oldest one once the ring is full
        self.ts_us = array("q", bytes(8 * capacity))
        self.energy_wh = array("q", bytes(8 * capacity))
        self.present = array("B", bytes(capacity))
        self.ints: dict[str, array[int]] = {}
        self.relay_open: array[int] | None = None
        self.voltage_v: array[float] | None = None

    def add(self, reading: MeterReading) -> None:
        i = self.next
        self.ts_us[i] = (reading.ts - _EPOCH) // _MICROSECOND
        self.energy_wh[i] = reading.energy_import_wh
        bits = 0
        for bit, name in enumerate(_INT_FIELDS):
            value = getattr(reading, name)
            if value is not None:
                bits |= 1 << bit
                if name not in self.ints:
                    self.ints[name] = array("q", bytes(8 * self.capacity))
                self.ints[name][i] = value
        if reading.relay is not None:
            bits |= 1 << _RELAY_BIT
            if self.relay_open is None:
                self.relay_open = array("b", bytes(self.capacity))
            self.relay_open[i] = reading.relay is RelayState.OPEN
        if reading.voltage_v is not None:
            bits |= 1 << _VOLTAGE_BIT
            if self.voltage_v is None:
                self.voltage_v = array("d", bytes(8 * self.capacity))
            self.voltage_v[i] = reading.voltage_v
        self.present[i] = bits
        self.next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def reading(self, meter_id: str, i: int, zone: ZoneInfo) -> MeterReading:
        bits = self.present[i]
        ints = {name: self.ints[name][i] if bits >> bit & 1 else None for bit, name in enumerate(_INT_FIELDS)}
        relay = None
        if bits >> _RELAY_BIT & 1 and self.relay_open is not None:
            relay = RelayState.OPEN if self.relay_open[i] else RelayState.CLOSED
        voltage_v = self.voltage_v[i] if bits >> _VOLTAGE_BIT & 1 and self.voltage_v is not None else None
        return MeterReading(
            meter_id,
            (_EPOCH + self.ts_us[i] * _MICROSECOND).astimezone(zone),
            self.energy_wh[i],
            energy_export_wh=ints["energy_export_wh"],
            power_w=ints["power_w"],
            voltage_v=voltage_v,
            relay=relay,
            seq=ints["seq"],
        )

    def between(self, meter_id: str, from_us: int, to_us: int, zone: ZoneInfo) -> list[MeterReading]:
        start = (self.next - self.size) % self.capacity
        slots = ((start + k) % self.capacity for k in range(self.size))
        return [self.reading(meter_id, i, zone) for i in slots if from_us <= self.ts_us[i] < to_us]


class ReadingHistory:
    """The last `capacity` readings of each meter, kept compactly; safe to use from several threads.

    Readings come back as they were recorded, their stamps in `zone` (the same instants).
    """

    def __init__(self, capacity: int = DEFAULT_HISTORY_INTERVALS, *, zone: ZoneInfo = SHANGHAI) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must not be negative, got {capacity}")
        self.capacity = capacity
        self.zone = zone
        self._rings: dict[str, _Ring] = {}
        self._lock = threading.Lock()

    def record(self, readings: Iterable[MeterReading]) -> None:
        """Keep these readings, forgetting each meter's oldest beyond `capacity`."""
        if self.capacity == 0:
            return
        with self._lock:
            for reading in readings:
                ring = self._rings.get(reading.meter_id)
                if ring is None:
                    ring = self._rings[reading.meter_id] = _Ring(self.capacity)
                ring.add(reading)

    def between(self, meter_id: str, from_at: datetime, to_at: datetime) -> list[MeterReading]:
        """The readings of `meter_id` stamped in [from_at, to_at), oldest recorded first."""
        from_us, to_us = (from_at - _EPOCH) // _MICROSECOND, (to_at - _EPOCH) // _MICROSECOND
        with self._lock:
            ring = self._rings.get(meter_id)
            return [] if ring is None else ring.between(meter_id, from_us, to_us, self.zone)

    def held(self, meter_id: str) -> int:
        """How many readings of `meter_id` are kept."""
        with self._lock:
            ring = self._rings.get(meter_id)
            return 0 if ring is None else ring.size
