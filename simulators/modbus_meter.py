"""One simulated Modbus meter: energy under a load shape, the values and words its register map serves, relay writes.

Pure: no I/O, no clock reads; every method takes `now` (timezone-aware). Energy accumulates at the power of the load
shape (the interval's energy at a constant rate over its 15 minutes) while the relay is closed, so it never
decreases and stops growing while the relay is open. The relay is relay_sim's model, so its faults (stuck) apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Final
from zoneinfo import ZoneInfo

from protocols.readings import RelayState, is_valid_id
from protocols.register_map import (
    QUANTITIES,
    RELAY_STATE,
    DataType,
    RegisterMap,
    RelayWrite,
    Value,
    decode_register,
    encode_register,
    encode_values,
    relay_target,
)
from protocols.relay_codec import CommandResult, RelayAction, RelayCommandMessage
from simulators.clock import INTERVAL, INTERVAL_S, floor_to_grid
from simulators.load_shapes import SHANGHAI, MeterKind, interval_energy_wh, meter_scale, unit_random
from simulators.relay_sim import RelayFault, RelaySim

NOMINAL_VOLTAGE_V: Final = 220.0  # GB/T 12325: single-phase supply in China, ±7 % / -10 %
NOMINAL_FREQUENCY_HZ: Final = 50.0
# meters keep being read while the simulator runs; their relay commands expire long after that
_COMMAND_TTL: Final = timedelta(days=3650)
_MICROSECONDS: Final = 1_000_000


class RelayRefusedError(Exception):
    """The meter took a relay write but refused to act on it (a relay_sim fault); the server answers an exception."""


@dataclass(frozen=True, slots=True)
class ModbusMeterSpec:
    """Who a simulated Modbus meter is: its id, unit id, model (register map name), customer kind and start register."""

    meter_id: str
    unit_id: int
    model: str
    kind: MeterKind
    start_register_wh: int

    def __post_init__(self) -> None:
        if not is_valid_id(self.meter_id):
            raise ValueError(f"meter id {self.meter_id!r} does not match [A-Za-z0-9_-]{{1,32}}")
        if isinstance(self.unit_id, bool) or not 1 <= self.unit_id <= 247:
            raise ValueError(f"a Modbus unit id is 1..247, got {self.unit_id!r}")
        if self.start_register_wh < 0:
            raise ValueError(f"start_register_wh must not be negative, got {self.start_register_wh}")


def is_three_phase(register_map: RegisterMap) -> bool:
    """Whether the model measures three phases (it has registers of a second phase)."""
    return bool({"voltage_l2", "current_l2", "power_l2"} & register_map.names)


def _seconds(delta: timedelta) -> Fraction:
    return Fraction(delta // timedelta(microseconds=1), _MICROSECONDS)


class ModbusMeterSim:
    """The state of one simulated Modbus meter: cumulative energy, relay, and what its registers show at an instant."""

    def __init__(
        self,
        spec: ModbusMeterSpec,
        register_map: RegisterMap,
        *,
        seed: int,
        started_at: datetime,
        relay: RelayState = RelayState.CLOSED,
        relay_delay_s: tuple[float, float] = (0.0, 0.0),
        zone: ZoneInfo = SHANGHAI,
    ) -> None:
        if started_at.utcoffset() is None:
            raise ValueError("started_at must be timezone-aware")
        if register_map.model != spec.model:
            raise ValueError(f"meter {spec.meter_id} is a {spec.model}, not a {register_map.model}")
        self.spec = spec
        self.register_map = register_map
        self._seed = seed
        self._zone = zone
        self._scale = meter_scale(spec.meter_id, spec.kind, seed)
        self._relay = RelaySim(spec.meter_id, seed=seed, relay=relay, delay_s=relay_delay_s)
        self._at = started_at
        self._energy_wh = Fraction(spec.start_register_wh)  # exact; the registers show whole units of it
        self._commands = 0
        # constant per meter: the power factor of the load, and how a three-phase load is spread over the phases
        self._power_factor = 0.90 + 0.09 * unit_random(seed, "power-factor", spec.meter_id)
        shares = [0.8 + 0.4 * unit_random(seed, "phase-share", spec.meter_id, phase) for phase in (1, 2, 3)]
        self._phase_shares = tuple(share / sum(shares) for share in shares)

    # --- time ----------------------------------------------------------------------------

    def _interval_wh(self, interval_end: datetime) -> int:
        return interval_energy_wh(
            self.spec.meter_id, self.spec.kind, interval_end, self._seed, scale=self._scale, zone=self._zone
        )

    def _accumulate(self, until: datetime) -> None:
        """Add the energy from the last instant to `until` at the relay position in between (no relay step due)."""
        relay_closed = self._relay.relay is RelayState.CLOSED
        while self._at < until:
            interval_end = floor_to_grid(self._at) + INTERVAL
            step_end = min(until, interval_end)
            if relay_closed:
                # the interval's energy at a constant rate: Wh per second is interval_wh / 900
                self._energy_wh += self._interval_wh(interval_end) * _seconds(step_end - self._at) / INTERVAL_S
            self._at = step_end

    def advance(self, now: datetime) -> None:
        """Meter the energy up to `now`, the relay moving at each of its steps on the way; an earlier now: nothing."""
        if now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        due = self._relay.next_due()
        while due is not None and due <= now:
            self._accumulate(due)
            self._relay.pop_due(due)
            due = self._relay.next_due()
        self._accumulate(now)

    # --- what the meter shows ------------------------------------------------------------

    def energy_wh(self, now: datetime) -> int:
        """The energy the meter has counted by `now`, in whole Wh (the truth its registers show)."""
        self.advance(now)
        return math.floor(self._energy_wh)

    def relay(self, now: datetime) -> RelayState:
        """The relay position at `now`."""
        self.advance(now)
        return self._relay.relay

    def power_w(self, now: datetime) -> int:
        """Active power at `now`: the rate of the current 15-minute interval, 0 while the relay is open."""
        self.advance(now)
        if self._relay.relay is RelayState.OPEN:
            return 0
        return self._interval_wh(floor_to_grid(now) + INTERVAL) * (3600 // INTERVAL_S)

    def values(self, now: datetime) -> dict[str, Value]:
        """What every register of the meter's map shows at `now`, in our units, exactly as a poller decodes it."""
        return {
            name: decode_register(self.register_map, name, encode_register(self.register_map, name, value))
            for name, value in self._measured(now).items()
        }

    def _measured(self, now: datetime) -> dict[str, Value]:
        """The value of every register of the meter's map at `now` before it is put into words."""
        energy_wh = self.energy_wh(now)
        power_w = self.power_w(now)
        minute = math.floor(now.timestamp()) // 60
        meter_id = self.spec.meter_id
        voltages = [
            round(NOMINAL_VOLTAGE_V * (0.96 + 0.08 * unit_random(self._seed, "voltage", meter_id, phase, minute)), 1)
            for phase in (1, 2, 3)
        ]
        frequency = round(NOMINAL_FREQUENCY_HZ + 0.1 * (unit_random(self._seed, "frequency", minute) - 0.5), 2)
        if is_three_phase(self.register_map):
            phase_powers = [round(power_w * share) for share in self._phase_shares[:2]]
            phase_powers.append(power_w - sum(phase_powers))
        else:
            phase_powers = [power_w, 0, 0]
        currents = [round(p / (v * self._power_factor), 3) for p, v in zip(phase_powers, voltages, strict=True)]
        candidates: dict[str, Value] = {
            "energy_import": energy_wh,
            "energy_export": 0,
            "energy_total": energy_wh,
            "power": power_w,
            "power_l1": phase_powers[0],
            "power_l2": phase_powers[1],
            "power_l3": phase_powers[2],
            "voltage": voltages[0],
            "voltage_l2": voltages[1],
            "voltage_l3": voltages[2],
            "current": currents[0],
            "current_l2": currents[1],
            "current_l3": currents[2],
            "frequency": frequency,
            RELAY_STATE: self._relay.relay,
        }
        names = self.register_map.names
        return {name: self._counted(name, value) for name, value in candidates.items() if name in names}

    def _counted(self, name: str, value: Value) -> Value:
        """An energy as an integer counter register shows it: whole counts, never more than the meter has measured."""
        register = self.register_map.register(name)
        if name == RELAY_STATE or QUANTITIES[name].unit != "Wh" or register.data_type is DataType.FLOAT32:
            return value
        assert isinstance(value, int)
        counted = math.floor(Fraction(value) / register.scale) * register.scale
        return int(counted) if counted.denominator == 1 else float(counted)

    def words(self, now: datetime) -> dict[int, dict[int, int]]:
        """The register image at `now`: function code → address → word, as the meter serves it."""
        return encode_values(self.register_map, self._measured(now))

    # --- relay ---------------------------------------------------------------------------

    def set_stuck(self, stuck: bool) -> None:
        """Make the relay stuck (writes acknowledged, the relay does not move) or healthy again."""
        self._relay.set_fault(RelayFault.STUCK if stuck else RelayFault.NONE)

    def write_relay(self, write: RelayWrite, now: datetime) -> RelayState:
        """Take a write to the relay control at `now`; return the position it asks for.

        RelayControlError when it is not the map's relay control or its value means neither position;
        RelayRefusedError when the relay model refuses the command.
        """
        target = relay_target(self.register_map, write)
        self.advance(now)
        self._commands += 1
        action = RelayAction.RECONNECT if target is RelayState.CLOSED else RelayAction.DISCONNECT
        command = RelayCommandMessage(
            f"modbus-{self.spec.unit_id}-{self._commands}", action, self.spec.meter_id, now, now + _COMMAND_TTL
        )
        answers = self._relay.receive(command, now)
        self.advance(now)
        if any(answer.event.result is not CommandResult.EXECUTED for answer in answers):
            raise RelayRefusedError(f"meter {self.spec.meter_id} refused to {action.value}")
        return target
