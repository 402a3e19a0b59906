"""One simulated DL/T 645-2007 meter: registers, rates, daily freezes, clock, relay and faults, and its answers.

Pure: no I/O and no clock reads; every method takes the true time `now` (aware). The meter's registers move
in whole Wh at each 15-minute mark from the load shapes (and, for meters with a rooftop PV system, export
to the grid in the middle of the day), on the rate its own clock says; the wire shows them to 0.01 kWh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from statistics import NormalDist

from protocols.dlt645 import identifiers as di
from protocols.dlt645.errors import ErrorFlags, Function
from protocols.dlt645.frame import Address
from protocols.dlt645.identifiers import (
    ActivePower,
    Current,
    DataIdentifier,
    Energy,
    EnergyBlock,
    FrozenTime,
    MeterDate,
    MeterTime,
    StatusWord3,
    Value,
    Voltage,
    encode_value,
)
from protocols.dlt645.messages import (
    MAX_READ_DATA_BYTES,
    BroadcastTime,
    ErrorResponse,
    Message,
    ReadAddress,
    ReadAddressResponse,
    ReadData,
    ReadDataResponse,
    ReadFollowUp,
    ReadFollowUpResponse,
    RelayCommand,
    RelayControl,
    RelayControlResponse,
    Response,
)
from protocols.readings import RelayState
from simulators.clock import INTERVAL, floor_to_grid
from simulators.load_shapes import SHANGHAI, SHAPES, MeterKind, interval_energy_wh, meter_scale, unit_random

_STANDARD_NORMAL = NormalDist()
RATES = 4  # 尖 sharp, 峰 peak, 平 flat, 谷 valley: rates 1..4 as Chinese meters number them
# the rate of each local hour (the meter's own clock): an illustrative 尖峰平谷 day, not one province's tariff
# fmt: off
RATE_OF_HOUR = (
    4, 4, 4, 4, 4, 4, 4, 4, 3, 2, 2, 1,
    1, 3, 3, 3, 3, 2, 1, 1, 2, 2, 3, 4,
)
# fmt: on
# how a meter's register at the start of its history is split over the rates
START_RATE_SHARES = (0.10, 0.30, 0.35, 0.25)
FROZEN_DAYS = di.MAX_FROZEN_DAYS
REGISTER_MODULUS_WH = 1_000_000_000  # XXXXXX.XX kWh: after 999999.99 kWh the register shows 0 again
NOMINAL_VOLTAGE_MV = 220_000
COMMERCIAL_SHARE = 0.15
PV_SHARE = 0.15  # meters with a rooftop PV system, which also register reverse energy
PV_PEAK_W = (800, 2_500)
START_REGISTER_MAX_WH = {MeterKind.RESIDENTIAL: 40_000_000, MeterKind.COMMERCIAL: 400_000_000}
READ_ANSWER_DATA = MAX_READ_DATA_BYTES - 4  # data bytes after the DI in one 0x91 / 0xB1 frame
FOLLOW_UP_ANSWER_DATA = MAX_READ_DATA_BYTES - 5  # and in one 0x92 / 0xB2 frame, which ends with SEQ


class Dlt645Fault(StrEnum):
    """How a simulated meter misbehaves; one at a time, switchable at run time."""

    NONE = "none"
    NO_ANSWER = "no_answer"  # hears nothing, answers nothing (broadcast time included)
    ABNORMAL = "abnormal"  # answers reads and relay commands with an abnormal answer (error bit 0, other)
    CORRUPT = "corrupt"  # answers, with a wrong checksum byte
    STUCK_RELAY = "stuck_relay"  # accepts relay commands, but the relay does not move (nor on the button)
    CLOCK_DRIFT = "clock_drift"  # its clock is off by a given error, drifting by a given rate


@dataclass(frozen=True, slots=True)
class Registers:
    """Energy registers in whole Wh: forward and reverse active, total and per rate (rates 1..4)."""

    forward_wh: tuple[int, ...]
    reverse_wh: tuple[int, ...]

    @property
    def forward_total_wh(self) -> int:
        """Forward active energy, total: the sum of the rates."""
        return sum(self.forward_wh)

    @property
    def reverse_total_wh(self) -> int:
        """Reverse active energy, total."""
        return sum(self.reverse_wh)

    def forward_block(self) -> EnergyBlock:
        """Forward active energy as the wire shows it: total then rates, each to 0.01 kWh (truncated)."""
        return _block(self.forward_wh)

    def reverse_block(self) -> EnergyBlock:
        """Reverse active energy as the wire shows it."""
        return _block(self.reverse_wh)


def shown_wh(wh: int) -> int:
    """A register of whole Wh as the meter shows it, XXXXXX.XX kWh: truncated to 10 Wh, within six digits."""
    return wh % REGISTER_MODULUS_WH // di.WH_PER_ENERGY_STEP * di.WH_PER_ENERGY_STEP


def _block(rates_wh: tuple[int, ...]) -> EnergyBlock:
    return EnergyBlock(shown_wh(sum(rates_wh)), tuple(shown_wh(wh) for wh in rates_wh))


@dataclass(frozen=True, slots=True)
class Freeze:
    """One daily freeze: the meter's wall-clock time of it and the registers then."""

    at: datetime  # naive, the meter's clock
    registers: Registers


@dataclass(frozen=True, slots=True)
class Instant:
    """What the meter measures at one moment: phase A voltage, current and active power (negative exporting)."""

    voltage_mv: int
    current_ma: int
    power_mw: int


def local_midnight(instant: datetime) -> datetime:
    """The local midnight (Asia/Shanghai) at or before `instant`, aware."""
    local = instant.astimezone(SHANGHAI)
    return datetime.combine(local.date(), time(0), tzinfo=SHANGHAI)


class Dlt645Meter:
    """A single-phase DL/T 645-2007 meter with a load relay, as the gateway's bus sees it."""

    def __init__(
        self,
        address: str,
        meter_id: str,
        *,
        seed: int,
        created: datetime,
        password: str,
        password_level: int,
        max_answer_bytes: int = READ_ANSWER_DATA,
    ) -> None:
        assert created.utcoffset() is not None, "created must be aware"
        assert 1 <= max_answer_bytes <= READ_ANSWER_DATA, max_answer_bytes
        self.address = Address(address)
        assert not self.address.is_wildcard, address
        assert not self.address.is_broadcast, address
        self.meter_id = meter_id
        self.seed = seed
        self.password = password.upper()
        self.password_level = password_level
        self.max_answer_bytes = max_answer_bytes
        commercial = unit_random(seed, "kind", meter_id) < COMMERCIAL_SHARE
        self.kind = MeterKind.COMMERCIAL if commercial else MeterKind.RESIDENTIAL
        self.scale = meter_scale(meter_id, self.kind, seed)
        self.pv_peak_w = 0
        if unit_random(seed, "pv", meter_id) < PV_SHARE:
            low, high = PV_PEAK_W
            self.pv_peak_w = round(low + (high - low) * unit_random(seed, "pv-peak", meter_id))
        # the wake-up bytes this meter puts before its answers: some send four, some none
        self.wakeup = int(unit_random(seed, "wakeup", meter_id) * 5)
        start_wh = int(START_REGISTER_MAX_WH[self.kind] * unit_random(seed, "start", meter_id))
        forward = [int(start_wh * share) for share in START_RATE_SHARES]
        forward[-1] += start_wh - sum(forward)
        reverse_start = int(start_wh * 0.05) if self.pv_peak_w else 0
        reverse = [int(reverse_start * share) for share in START_RATE_SHARES]
        reverse[-1] += reverse_start - sum(reverse)
        self._forward = forward
        self._reverse = reverse
        # the meter has run for FROZEN_DAYS days before the day it joined the simulation: a full history of
        # freezes, metered day by day from the hourly load shape; from that day on, every 15 minutes
        self._live_from = local_midnight(created)
        self._metered_until = self._live_from - timedelta(days=FROZEN_DAYS)
        self._freezes: list[Freeze] = []  # newest last
        self._last_freeze_day: date | None = None
        # the clock: off by `_clock_error_s` at `_clock_set_at`, drifting by `_drift_s_per_day` since
        self._clock_error_s = 0.0
        self._drift_s_per_day = 0.0
        self._clock_set_at = self._metered_until
        self._freeze(self._metered_until)
        # relay
        self.relay = RelayState.CLOSED
        self.command_open = False  # bit 6: the last relay command asked for open
        self.armed = False  # allow-close given while open: the button closes the relay
        self.alarm = False
        self.keep_supply = False
        self.operator_code: str | None = None
        self.fault = Dlt645Fault.NONE
        self._pending: tuple[DataIdentifier, tuple[bytes, ...]] | None = None  # follow-up frames of the last read
        self.requests = 0  # requests addressed to this meter (and heard)

    # --- clock ---------------------------------------------------------------------------

    def clock_error_s(self, now: datetime) -> float:
        """Seconds the meter's clock is ahead of true time at `now` (negative: behind)."""
        days = (now - self._clock_set_at) / timedelta(days=1)
        return self._clock_error_s + self._drift_s_per_day * days

    def wall_clock(self, now: datetime) -> datetime:
        """The meter's own wall-clock time at true time `now`: naive, whole seconds, in Asia/Shanghai."""
        shifted = now.astimezone(SHANGHAI) + timedelta(seconds=self.clock_error_s(now))
        return shifted.replace(tzinfo=None, microsecond=0)

    def set_clock(self, wall: datetime, now: datetime) -> None:
        """Set the meter's clock to the wall-clock time `wall` at true time `now` (broadcast time); drift goes on."""
        self.advance(now)
        true_wall = now.astimezone(SHANGHAI).replace(tzinfo=None)
        self._clock_error_s = (wall - true_wall).total_seconds()
        self._clock_set_at = now

    def set_clock_error(self, now: datetime, error_s: float, drift_s_per_day: float) -> None:
        """From `now` on, the meter's clock is `error_s` off and drifts by `drift_s_per_day`."""
        self.advance(now)
        self._clock_error_s = error_s
        self._drift_s_per_day = drift_s_per_day
        self._clock_set_at = now

    # --- energy --------------------------------------------------------------------------

    def _weather(self, day: date) -> float:
        """How much of its peak the PV system gives on `day`: 0.3 (overcast) to 1 (clear)."""
        return 0.3 + 0.7 * unit_random(self.seed, "weather", self.meter_id, day.isoformat())

    def _pv_quarter_wh(self, hour: float, weather: float) -> float:
        """PV energy over a quarter hour around the local `hour`: a half sine from 06:00 to 18:00."""
        if not self.pv_peak_w or not 6 <= hour <= 18:
            return 0.0
        return self.pv_peak_w * math.sin(math.pi * (hour - 6) / 12) * weather / 4

    def _pv_wh(self, interval_end: datetime) -> int:
        if not self.pv_peak_w:
            return 0
        middle = (interval_end - INTERVAL / 2).astimezone(SHANGHAI)
        return round(self._pv_quarter_wh(middle.hour + middle.minute / 60, self._weather(middle.date())))

    def _net_wh(self, interval_end: datetime) -> int:
        """Energy drawn from the grid over the interval ending at `interval_end` (negative: exported)."""
        used = interval_energy_wh(self.meter_id, self.kind, interval_end, self.seed, scale=self.scale)
        return used - self._pv_wh(interval_end)

    def _history_day(self, start: datetime) -> None:
        """Meter the local day from midnight `start` hour by hour: the shape's mean, the day's noise, the sun."""
        shape = SHAPES[self.kind]
        local = start.astimezone(SHANGHAI)
        z = _STANDARD_NORMAL.inv_cdf(unit_random(self.seed, "day", self.meter_id, local.date().isoformat()))
        day_wh = shape.mean_daily_wh * self.scale * max(0.2, 1.0 + shape.noise * z)
        weather = self._weather(local.date())
        for hour in range(24):
            used = day_wh / 24 * shape.factor(local.replace(hour=hour, minute=30))
            net = round(used - 4 * self._pv_quarter_wh(hour + 0.5, weather))
            rate = RATE_OF_HOUR[hour] - 1
            if net >= 0:
                self._forward[rate] += net
            else:
                self._reverse[rate] -= net

    def advance(self, now: datetime) -> None:
        """Meter every 15-minute interval that ended by `now`, freezing at each of the meter's local midnights."""
        target = floor_to_grid(now)
        while self._metered_until < min(target, self._live_from):
            # the relay is closed and the clock right before the simulation: whole days at a time
            self._history_day(self._metered_until)
            self._metered_until += timedelta(days=1)
            self._freeze(self._metered_until)
        while self._metered_until < target:
            end = self._metered_until + INTERVAL
            if self.relay is RelayState.CLOSED:
                net = self._net_wh(end)
                rate = RATE_OF_HOUR[self.wall_clock(end - INTERVAL / 2).hour] - 1
                if net >= 0:
                    self._forward[rate] += net
                else:
                    self._reverse[rate] -= net
            self._metered_until = end
            self._freeze(end)

    def _freeze(self, instant: datetime) -> None:
        day = self.wall_clock(instant).date()
        if self._last_freeze_day is not None and day <= self._last_freeze_day:
            return
        self._last_freeze_day = day
        self._freezes.append(Freeze(datetime.combine(day, time(0)), self._registers()))
        del self._freezes[:-FROZEN_DAYS]

    def _registers(self) -> Registers:
        return Registers(tuple(self._forward), tuple(self._reverse))

    def registers(self, now: datetime) -> Registers:
        """The energy registers at `now`, in whole Wh."""
        self.advance(now)
        return self._registers()

    def freezes(self, now: datetime) -> tuple[Freeze, ...]:
        """The daily freezes held at `now`, newest first (the n-th is what 05 06 0x n answers)."""
        self.advance(now)
        return tuple(reversed(self._freezes))

    def instant(self, now: datetime) -> Instant:
        """Voltage, current and power at `now`: the average power of the interval in progress."""
        self.advance(now)
        minute = now.astimezone(SHANGHAI).replace(second=0, microsecond=0).isoformat()
        voltage_mv = round(NOMINAL_VOLTAGE_MV * (0.95 + 0.1 * unit_random(self.seed, "voltage", self.meter_id, minute)))
        voltage_mv -= voltage_mv % di.MV_PER_VOLTAGE_STEP
        if self.relay is RelayState.OPEN:
            return Instant(voltage_mv, 0, 0)
        # Wh over a quarter hour, times four, is the average power in W
        power_mw = self._net_wh(floor_to_grid(now) + INTERVAL) * 4 * 1000
        current_ma = round(power_mw * 1000 / voltage_mv)
        return Instant(voltage_mv, current_ma, power_mw)

    # --- relay ---------------------------------------------------------------------------

    @property
    def status_word_3(self) -> StatusWord3:
        """Running status word 3: relay position, last command, pre-trip alarm, keep supply."""
        bits = 0
        bits |= StatusWord3.RELAY_OPEN if self.relay is RelayState.OPEN else 0
        bits |= StatusWord3.RELAY_COMMAND_OPEN if self.command_open else 0
        bits |= StatusWord3.PRE_TRIP_ALARM if self.alarm else 0
        bits |= StatusWord3.KEEP_SUPPLY if self.keep_supply else 0
        return StatusWord3(bits)

    def _move_relay(self, state: RelayState, now: datetime) -> None:
        if self.fault is Dlt645Fault.STUCK_RELAY:
            return
        self.advance(now)  # what was metered before the move stays metered on the old position
        self.relay = state

    def press_button(self, now: datetime) -> RelayState:
        """The customer presses the button: an armed (allow-close) relay closes; otherwise nothing moves."""
        if self.armed:
            self._move_relay(RelayState.CLOSED, now)
            self.armed = self.fault is Dlt645Fault.STUCK_RELAY and self.relay is RelayState.OPEN
        return self.relay

    def _relay_control(self, request: RelayControl, now: datetime) -> Response:
        refused = ErrorResponse(self.address, Function.RELAY_CONTROL, ErrorFlags.PASSWORD_ERROR_OR_UNAUTHORISED)
        if request.password_level != self.password_level or request.password.upper() != self.password:
            return refused
        if request.valid_until < self.wall_clock(now):
            # the command's time has passed on the meter's clock
            return ErrorResponse(self.address, Function.RELAY_CONTROL, ErrorFlags.OTHER)
        command = request.command
        if command is RelayCommand.TRIP and self.keep_supply:
            # keep supply (保电) holds the supply on: no trip until it is released
            return ErrorResponse(self.address, Function.RELAY_CONTROL, ErrorFlags.OTHER)
        self.operator_code = request.operator_code
        match command:
            case RelayCommand.TRIP:
                self.command_open, self.armed = True, False
                self._move_relay(RelayState.OPEN, now)
            case RelayCommand.ALLOW_CLOSE:
                # 合闸允许: the relay stays where it is; an open one waits for the customer's button
                self.command_open = False
                self.armed = self.relay is RelayState.OPEN
            case RelayCommand.CLOSE:
                self.command_open, self.armed = False, False
                self._move_relay(RelayState.CLOSED, now)
            case RelayCommand.ALARM:
                self.alarm = True
            case RelayCommand.ALARM_RELEASED:
                self.alarm = False
            case RelayCommand.KEEP_SUPPLY:
                self.keep_supply = True
            case RelayCommand.KEEP_SUPPLY_RELEASED:
                self.keep_supply = False
        return RelayControlResponse(self.address)

    # --- answers -------------------------------------------------------------------------

    def value(self, identifier: DataIdentifier, now: datetime) -> Value | ErrorFlags:
        """What the meter answers for `identifier` at `now`: its value, or the error bits of its refusal."""
        di3, di2, di1, di0 = identifier.parts
        if (di3, di2, di0) in ((0x00, 0x01, 0x00), (0x00, 0x02, 0x00)):
            registers = self.registers(now)
            rates_wh = registers.forward_wh if di2 == 0x01 else registers.reverse_wh
            if di1 == 0x00:
                return Energy(shown_wh(sum(rates_wh)))
            if di1 == 0xFF:
                return _block(rates_wh)
            if 1 <= di1 <= RATES:
                return Energy(shown_wh(rates_wh[di1 - 1]))
            return ErrorFlags.TARIFFS_EXCEEDED if di1 <= di.MAX_RATES else ErrorFlags.NO_DATA_REQUESTED
        if (di3, di0) == (0x02, 0x00) and di2 in (0x01, 0x02, 0x03):
            return self._measured(di2, di1, now)
        if (di3, di2) == (0x05, 0x06) and di1 in (0x00, 0x01, 0x02):
            return self._frozen(di1, di0, now)
        if identifier == di.METER_DATE:
            wall = self.wall_clock(now)
            return MeterDate(wall.date(), wall.isoweekday() % 7)
        if identifier == di.METER_TIME:
            return MeterTime(self.wall_clock(now).time())
        if identifier == di.STATUS_WORD_3:
            self.advance(now)
            return self.status_word_3
        return ErrorFlags.NO_DATA_REQUESTED

    def _measured(self, di2: int, di1: int, now: datetime) -> Value | ErrorFlags:
        measured = self.instant(now)
        # single phase: phase A (1) only, and the total of active power (0)
        if di2 == 0x01 and di1 == 1:
            return Voltage(measured.voltage_mv)
        if di2 == 0x02 and di1 == 1:
            return Current(measured.current_ma)
        if di2 == 0x03 and di1 in (0, 1):
            return ActivePower(measured.power_mw)
        return ErrorFlags.NO_DATA_REQUESTED

    def _frozen(self, di1: int, di0: int, now: datetime) -> Value | ErrorFlags:
        freezes = self.freezes(now)
        if not 1 <= di0 <= len(freezes):
            return ErrorFlags.NO_DATA_REQUESTED
        freeze = freezes[di0 - 1]
        if di1 == 0x00:
            return FrozenTime(freeze.at)
        return freeze.registers.forward_block() if di1 == 0x01 else freeze.registers.reverse_block()

    def _read(self, request: ReadData, now: datetime) -> Response:
        self._pending = None
        value = self.value(request.identifier, now)
        if isinstance(value, ErrorFlags):
            return ErrorResponse(self.address, Function.READ_DATA, value)
        data = encode_value(request.identifier, value)
        first, rest = data[: self.max_answer_bytes], data[self.max_answer_bytes :]
        if not rest:
            return ReadDataResponse(self.address, request.identifier, data)
        step = min(self.max_answer_bytes, FOLLOW_UP_ANSWER_DATA)
        self._pending = (request.identifier, tuple(rest[i : i + step] for i in range(0, len(rest), step)))
        return ReadDataResponse(self.address, request.identifier, first, follow_up=True)

    def _follow_up(self, request: ReadFollowUp) -> Response:
        if self._pending is None or self._pending[0] != request.identifier:
            return ErrorResponse(self.address, Function.READ_FOLLOW_UP, ErrorFlags.NO_DATA_REQUESTED)
        frames = self._pending[1]
        if not 1 <= request.seq <= len(frames):
            return ErrorResponse(self.address, Function.READ_FOLLOW_UP, ErrorFlags.NO_DATA_REQUESTED)
        more = request.seq < len(frames)
        return ReadFollowUpResponse(self.address, request.identifier, frames[request.seq - 1], request.seq, more)

    def handle(self, request: Message, now: datetime) -> Response | None:
        """The meter's answer to a request addressed to it (or None: no answer), faults included but corruption."""
        if self.fault is Dlt645Fault.NO_ANSWER:
            return None
        self.requests += 1
        if self.fault is Dlt645Fault.ABNORMAL:
            match request:
                case ReadData():
                    return ErrorResponse(self.address, Function.READ_DATA, ErrorFlags.OTHER)
                case ReadFollowUp():
                    return ErrorResponse(self.address, Function.READ_FOLLOW_UP, ErrorFlags.OTHER)
                case RelayControl():
                    return ErrorResponse(self.address, Function.RELAY_CONTROL, ErrorFlags.OTHER)
        match request:
            case ReadData():
                return self._read(request, now)
            case ReadFollowUp():
                return self._follow_up(request)
            case ReadAddress():
                return ReadAddressResponse(self.address)
            case BroadcastTime(time=wall):
                self.set_clock(wall, now)
                return None
            case RelayControl():
                return self._relay_control(request, now)
        return None  # an answer on the bus is not a request: meters keep quiet

    def refuse(self, function: Function) -> Response | None:
        """The answer to a request for this meter that it cannot read (a data field that does not fit)."""
        if self.fault is Dlt645Fault.NO_ANSWER:
            return None
        if function in (Function.READ_DATA, Function.READ_FOLLOW_UP, Function.RELAY_CONTROL):
            return ErrorResponse(self.address, function, ErrorFlags.OTHER)
        return None
