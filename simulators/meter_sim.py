"""The state of one simulated meter (register, relay, sequence) and the readings it produces."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from protocols.readings import MeterReading, RelayState
from simulators.clock import INTERVAL
from simulators.faults import DLT645_ROLLOVER_LIMIT_WH, NO_FAULTS, MeterFaults
from simulators.fleet import SimMeter
from simulators.load_shapes import SHANGHAI, interval_energy_wh, meter_scale, unit_random

NOMINAL_VOLTAGE_V = 220.0


class MeterSim:
    """One meter's mutable state; `read` advances it to an instant on the grid and reports it."""

    def __init__(
        self,
        meter: SimMeter,
        seed: int,
        faults: MeterFaults = NO_FAULTS,
        *,
        rollover_limit_wh: int = DLT645_ROLLOVER_LIMIT_WH,
        zone: ZoneInfo = SHANGHAI,
    ) -> None:
        self.meter = meter
        self.faults = faults
        self.relay = RelayState.CLOSED
        self.seq = 0
        self.consumed_wh = 0
        self._seed = seed
        self._zone = zone
        self._modulus = rollover_limit_wh + 1
        start_wh = meter.start_register_wh if faults.start_register_wh is None else faults.start_register_wh
        self.register_wh = start_wh % self._modulus
        self._scale = meter_scale(meter.meter_id, meter.kind, seed)
        self._first: datetime | None = None
        self._last: datetime | None = None
        self._last_energy_wh = 0

    def set_relay(self, state: RelayState) -> None:
        """Open or close the load relay; an open relay meters nothing."""
        self.relay = state

    def advance(self, instant: datetime) -> int:
        """Meter the energy of every interval up to `instant`; return the Wh added."""
        if self._last is None:
            # the start register already holds everything consumed before the first reading
            self._first = self._last = instant
            return 0
        if instant <= self._last:
            raise ValueError(f"{instant.isoformat()} is not after {self._last.isoformat()}")
        energy_wh = 0
        end = self._last + INTERVAL
        while end <= instant:
            if self.relay is RelayState.CLOSED:
                energy_wh += interval_energy_wh(
                    self.meter.meter_id, self.meter.kind, end, self._seed, scale=self._scale, zone=self._zone
                )
            end += INTERVAL
        self._last = instant
        self._last_energy_wh = energy_wh
        self.consumed_wh += energy_wh
        self.register_wh = (self.register_wh + energy_wh) % self._modulus
        return energy_wh

    def read(self, instant: datetime, *, detailed: bool = True) -> MeterReading:
        """Advance to `instant` (a grid instant) and report the register, stamped by the meter's own clock.

        `detailed` adds power, voltage, relay and sequence number, as a direct meter sends them;
        concentrators forward the register only.
        """
        self.advance(instant)
        assert self._first is not None
        elapsed_days = (instant - self._first) / timedelta(days=1)
        ts = instant.astimezone(self._zone) + timedelta(seconds=self.faults.clock_error_at(elapsed_days))
        self.seq += 1
        if not detailed:
            return MeterReading(self.meter.meter_id, ts, self.register_wh)
        closed = self.relay is RelayState.CLOSED
        voltage_v = NOMINAL_VOLTAGE_V * (0.95 + 0.1 * unit_random(self._seed, "voltage", self.meter.meter_id, self.seq))
        return MeterReading(
            meter_id=self.meter.meter_id,
            ts=ts,
            energy_import_wh=self.register_wh,
            # average power over the last interval: Wh per quarter hour times four
            power_w=self._last_energy_wh * 4 if closed else 0,
            voltage_v=round(voltage_v, 1),
            relay=self.relay,
            seq=self.seq,
        )
