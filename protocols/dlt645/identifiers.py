"""Data identifiers (DI3 DI2 DI1 DI0) and the value formats of the ones the head-end reads.

The table of identifiers is data: each family names the identifiers it covers and their format.
Values keep the standard's resolution exactly as integers with their unit last in the name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time
from enum import Enum

from protocols.dlt645 import bcd
from protocols.dlt645.errors import BcdError, MessageError, UnknownIdentifierError
from protocols.readings import RelayState

_DI_PATTERN = re.compile(r"[0-9A-Fa-f]{8}")
MAX_RATES = 63  # rates 1..63 (DI1 01..3F)
MAX_FROZEN_DAYS = 62  # daily frozen data of the last 1..62 days (DI0 01..3E)
PHASES = 3

ENERGY_BYTES = 4  # XXXXXX.XX kWh
VOLTAGE_BYTES = 2  # XXX.X V
CURRENT_BYTES = 3  # XXX.XXX A, signed
POWER_BYTES = 3  # XX.XXXX kW, signed
STATUS_WORD_BYTES = 2
FROZEN_TIME_BYTES = 5  # YYMMDDhhmm
DATE_BYTES = 4  # YYMMDDWW
TIME_BYTES = 3  # hhmmss

WH_PER_ENERGY_STEP = 10  # 0.01 kWh
MV_PER_VOLTAGE_STEP = 100  # 0.1 V
MW_PER_POWER_STEP = 100  # 0.0001 kW
MAX_ENERGY_WH = (10 ** (2 * ENERGY_BYTES) - 1) * WH_PER_ENERGY_STEP
MAX_VOLTAGE_MV = (10 ** (2 * VOLTAGE_BYTES) - 1) * MV_PER_VOLTAGE_STEP
MAX_CURRENT_MA = bcd.max_signed(CURRENT_BYTES)
MAX_POWER_MW = bcd.max_signed(POWER_BYTES) * MW_PER_POWER_STEP


@dataclass(frozen=True, slots=True, order=True, repr=False)
class DataIdentifier:
    """A data identifier as printed, DI3 first (`00010000`); sent DI0 first."""

    value: int

    def __post_init__(self) -> None:
        assert 0 <= self.value <= 0xFFFF_FFFF, self.value

    @classmethod
    def parse(cls, text: str) -> DataIdentifier:
        """The identifier printed as eight hex digits, DI3 first, with or without spaces."""
        compact = text.replace(" ", "")
        if not _DI_PATTERN.fullmatch(compact):
            raise ValueError(f"{text!r} is not a data identifier of eight hex digits")
        return cls(int(compact, 16))

    @classmethod
    def of(cls, di3: int, di2: int, di1: int, di0: int) -> DataIdentifier:
        """The identifier of its four bytes, most significant first."""
        return cls(di3 << 24 | di2 << 16 | di1 << 8 | di0)

    @property
    def parts(self) -> tuple[int, int, int, int]:
        """DI3, DI2, DI1, DI0."""
        return (self.value >> 24, self.value >> 16 & 0xFF, self.value >> 8 & 0xFF, self.value & 0xFF)

    def to_wire(self) -> bytes:
        """The four bytes as sent, DI0 first (before the +0x33 of the data field)."""
        return self.value.to_bytes(4, "little")

    @classmethod
    def from_wire(cls, data: bytes) -> DataIdentifier:
        """The identifier of four bytes sent DI0 first."""
        assert len(data) == 4, len(data)
        return cls(int.from_bytes(data, "little"))

    def __str__(self) -> str:
        return f"{self.value:08X}"

    def __repr__(self) -> str:
        return f"DataIdentifier.parse({str(self)!r})"


FORWARD_ACTIVE_TOTAL = DataIdentifier(0x0001_0000)
FORWARD_ACTIVE_BLOCK = DataIdentifier(0x0001_FF00)
REVERSE_ACTIVE_TOTAL = DataIdentifier(0x0002_0000)
REVERSE_ACTIVE_BLOCK = DataIdentifier(0x0002_FF00)
PHASE_A_VOLTAGE = DataIdentifier(0x0201_0100)
PHASE_A_CURRENT = DataIdentifier(0x0202_0100)
TOTAL_ACTIVE_POWER = DataIdentifier(0x0203_0000)
METER_DATE = DataIdentifier(0x0400_0101)
METER_TIME = DataIdentifier(0x0400_0102)
STATUS_WORD_3 = DataIdentifier(0x0400_0503)


def forward_active_rate(rate: int) -> DataIdentifier:
    """Forward active energy of rate (tariff) 1..63: 00 01 rr 00."""
    assert 1 <= rate <= MAX_RATES, rate
    return DataIdentifier.of(0x00, 0x01, rate, 0x00)


def reverse_active_rate(rate: int) -> DataIdentifier:
    """Reverse active energy of rate (tariff) 1..63: 00 02 rr 00."""
    assert 1 <= rate <= MAX_RATES, rate
    return DataIdentifier.of(0x00, 0x02, rate, 0x00)


def phase_voltage(phase: int) -> DataIdentifier:
    """Voltage of phase 1..3 (A, B, C): 02 01 0p 00."""
    assert 1 <= phase <= PHASES, phase
    return DataIdentifier.of(0x02, 0x01, phase, 0x00)


def phase_current(phase: int) -> DataIdentifier:
    """Current of phase 1..3 (A, B, C): 02 02 0p 00."""
    assert 1 <= phase <= PHASES, phase
    return DataIdentifier.of(0x02, 0x02, phase, 0x00)


def active_power(phase: int = 0) -> DataIdentifier:
    """Active power, total (0) or of phase 1..3: 02 03 0p 00."""
    assert 0 <= phase <= PHASES, phase
    return DataIdentifier.of(0x02, 0x03, phase, 0x00)


def daily_frozen_time(days_ago: int) -> DataIdentifier:
    """Time of the n-th latest daily freeze, n 1..62 (n days ago if the meter froze every day): 05 06 00 nn."""
    assert 1 <= days_ago <= MAX_FROZEN_DAYS, days_ago
    return DataIdentifier.of(0x05, 0x06, 0x00, days_ago)


def daily_frozen_forward_active(days_ago: int) -> DataIdentifier:
    """Forward active energy (total and rates) of the n-th latest daily freeze, n 1..62: 05 06 01 nn."""
    assert 1 <= days_ago <= MAX_FROZEN_DAYS, days_ago
    return DataIdentifier.of(0x05, 0x06, 0x01, days_ago)


def daily_frozen_reverse_active(days_ago: int) -> DataIdentifier:
    """Reverse active energy (total and rates) of the n-th latest daily freeze, n 1..62: 05 06 02 nn."""
    assert 1 <= days_ago <= MAX_FROZEN_DAYS, days_ago
    return DataIdentifier.of(0x05, 0x06, 0x02, days_ago)


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Energy:
    """An energy register, XXXXXX.XX kWh on the wire."""

    energy_wh: int

    def __post_init__(self) -> None:
        assert 0 <= self.energy_wh <= MAX_ENERGY_WH, self.energy_wh
        assert self.energy_wh % WH_PER_ENERGY_STEP == 0, self.energy_wh


@dataclass(frozen=True, slots=True)
class EnergyBlock:
    """A block of energy registers: the total, then rates 1..n, each XXXXXX.XX kWh."""

    total_wh: int
    rates_wh: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        assert len(self.rates_wh) <= MAX_RATES, len(self.rates_wh)
        for value in (self.total_wh, *self.rates_wh):
            assert 0 <= value <= MAX_ENERGY_WH, value
            assert value % WH_PER_ENERGY_STEP == 0, value


@dataclass(frozen=True, slots=True)
class Voltage:
    """A phase voltage, XXX.X V on the wire."""

    voltage_mv: int

    def __post_init__(self) -> None:
        assert 0 <= self.voltage_mv <= MAX_VOLTAGE_MV, self.voltage_mv
        assert self.voltage_mv % MV_PER_VOLTAGE_STEP == 0, self.voltage_mv

    @property
    def voltage_v(self) -> float:
        """The voltage in volts."""
        return self.voltage_mv / 1000


@dataclass(frozen=True, slots=True)
class Current:
    """A phase current, XXX.XXX A on the wire, negative when power flows in reverse."""

    current_ma: int

    def __post_init__(self) -> None:
        assert -MAX_CURRENT_MA <= self.current_ma <= MAX_CURRENT_MA, self.current_ma

    @property
    def current_a(self) -> float:
        """The current in amperes."""
        return self.current_ma / 1000


@dataclass(frozen=True, slots=True)
class ActivePower:
    """Active power, XX.XXXX kW on the wire (a resolution of 0.1 W), negative in reverse."""

    power_mw: int

    def __post_init__(self) -> None:
        assert -MAX_POWER_MW <= self.power_mw <= MAX_POWER_MW, self.power_mw
        assert self.power_mw % MW_PER_POWER_STEP == 0, self.power_mw

    @property
    def power_w(self) -> int:
        """The power in whole watts, halves rounded away from zero."""
        magnitude = (abs(self.power_mw) + 500) // 1000
        return -magnitude if self.power_mw < 0 else magnitude


@dataclass(frozen=True, slots=True)
class StatusWord3:
    """Meter running status word 3 (operation): its bits, as the standard numbers them."""

    bits: int

    RELAY_OPEN = 1 << 4  # relay state: 0 closed (通), 1 open (断)
    RELAY_COMMAND_OPEN = 1 << 6  # state the last relay command asked for: 0 closed, 1 open
    PRE_TRIP_ALARM = 1 << 7  # pre-trip alarm: 0 none, 1 raised
    KEEP_SUPPLY = 1 << 12  # keep supply (保电), defined by Q/GDW 1365 smart meters; reserved in DL/T 645-2007

    def __post_init__(self) -> None:
        assert 0 <= self.bits <= 0xFFFF, self.bits

    @property
    def relay_open(self) -> bool:
        """Whether the load relay is open (bit 4): the position, whatever was commanded."""
        return bool(self.bits & self.RELAY_OPEN)

    @property
    def relay(self) -> RelayState:
        """The load relay's position (bit 4)."""
        return RelayState.OPEN if self.relay_open else RelayState.CLOSED

    @property
    def relay_command_open(self) -> bool:
        """Whether the last relay command was to open (bit 6)."""
        return bool(self.bits & self.RELAY_COMMAND_OPEN)

    @property
    def pre_trip_alarm(self) -> bool:
        """Whether the pre-trip alarm is raised (bit 7)."""
        return bool(self.bits & self.PRE_TRIP_ALARM)

    @property
    def keep_supply(self) -> bool:
        """Whether keep supply (保电) is on (bit 12, Q/GDW 1365 meters)."""
        return bool(self.bits & self.KEEP_SUPPLY)


@dataclass(frozen=True, slots=True)
class FrozenTime:
    """When a freeze happened, YYMMDDhhmm on the meter's wall clock (naive)."""

    at: datetime

    def __post_init__(self) -> None:
        assert self.at.tzinfo is None, self.at
        assert self.at.second == 0, self.at
        assert self.at.microsecond == 0, self.at
        assert bcd.FIRST_YEAR <= self.at.year <= bcd.LAST_YEAR, self.at


@dataclass(frozen=True, slots=True)
class MeterDate:
    """The meter's date and weekday (0 Sunday .. 6 Saturday), YYMMDDWW."""

    day: date
    weekday: int

    def __post_init__(self) -> None:
        assert bcd.FIRST_YEAR <= self.day.year <= bcd.LAST_YEAR, self.day
        assert 0 <= self.weekday <= 6, self.weekday


@dataclass(frozen=True, slots=True)
class MeterTime:
    """The meter's time of day, hhmmss."""

    at: time

    def __post_init__(self) -> None:
        assert self.at.tzinfo is None, self.at
        assert self.at.microsecond == 0, self.at


Value = Energy | EnergyBlock | Voltage | Current | ActivePower | StatusWord3 | FrozenTime | MeterDate | MeterTime


class ValueFormat(Enum):
    """How an identifier's value is laid out on the wire."""

    ENERGY = "XXXXXX.XX kWh"
    ENERGY_BLOCK = "n × XXXXXX.XX kWh"
    VOLTAGE = "XXX.X V"
    CURRENT = "XXX.XXX A"
    ACTIVE_POWER = "XX.XXXX kW"
    STATUS_WORD_3 = "16 bits"
    FROZEN_TIME = "YYMMDDhhmm"
    DATE = "YYMMDDWW"
    TIME = "hhmmss"


@dataclass(frozen=True, slots=True)
class IdentifierSpec:
    """What one identifier holds: a name and the format of its value."""

    identifier: DataIdentifier
    name: str
    value_format: ValueFormat


@dataclass(frozen=True, slots=True)
class _Family:
    di3: int
    di2: int
    di1: range
    di0: range
    name: str  # `{n}` stands for the byte that varies
    value_format: ValueFormat


_ONE = range(0, 1)
_PHASE_NAMES = {1: "A", 2: "B", 3: "C"}
_FAMILIES = (
    _Family(0x00, 0x01, _ONE, _ONE, "forward active energy, total", ValueFormat.ENERGY),
    _Family(0x00, 0x01, range(1, MAX_RATES + 1), _ONE, "forward active energy, rate {n}", ValueFormat.ENERGY),
    _Family(0x00, 0x01, range(0xFF, 0x100), _ONE, "forward active energy, total and rates", ValueFormat.ENERGY_BLOCK),
    _Family(0x00, 0x02, _ONE, _ONE, "reverse active energy, total", ValueFormat.ENERGY),
    _Family(0x00, 0x02, range(1, MAX_RATES + 1), _ONE, "reverse active energy, rate {n}", ValueFormat.ENERGY),
    _Family(0x00, 0x02, range(0xFF, 0x100), _ONE, "reverse active energy, total and rates", ValueFormat.ENERGY_BLOCK),
    _Family(0x02, 0x01, range(1, PHASES + 1), _ONE, "phase {phase} voltage", ValueFormat.VOLTAGE),
    _Family(0x02, 0x02, range(1, PHASES + 1), _ONE, "phase {phase} current", ValueFormat.CURRENT),
    _Family(0x02, 0x03, _ONE, _ONE, "active power, total", ValueFormat.ACTIVE_POWER),
    _Family(0x02, 0x03, range(1, PHASES + 1), _ONE, "phase {phase} active power", ValueFormat.ACTIVE_POWER),
    _Family(0x04, 0x00, range(0x01, 0x02), range(0x01, 0x02), "meter date and weekday", ValueFormat.DATE),
    _Family(0x04, 0x00, range(0x01, 0x02), range(0x02, 0x03), "meter time", ValueFormat.TIME),
    _Family(0x04, 0x00, range(0x05, 0x06), range(0x03, 0x04), "meter running status word 3", ValueFormat.STATUS_WORD_3),
    _Family(
        0x05, 0x06, _ONE, range(1, MAX_FROZEN_DAYS + 1), "daily freeze time, freeze {n} back", ValueFormat.FROZEN_TIME
    ),
    _Family(
        0x05,
        0x06,
        range(0x01, 0x02),
        range(1, MAX_FROZEN_DAYS + 1),
        "daily frozen forward active energy, freeze {n} back",
        ValueFormat.ENERGY_BLOCK,
    ),
    _Family(
        0x05,
        0x06,
        range(0x02, 0x03),
        range(1, MAX_FROZEN_DAYS + 1),
        "daily frozen reverse active energy, freeze {n} back",
        ValueFormat.ENERGY_BLOCK,
    ),
)


def lookup(identifier: DataIdentifier) -> IdentifierSpec | None:
    """What `identifier` holds, or None when this codec does not know it."""
    di3, di2, di1, di0 = identifier.parts
    for family in _FAMILIES:
        if family.di3 == di3 and family.di2 == di2 and di1 in family.di1 and di0 in family.di0:
            varying = di0 if len(family.di0) > 1 else di1
            name = family.name.format(n=varying, phase=_PHASE_NAMES.get(di1, ""))
            return IdentifierSpec(identifier, name, family.value_format)
    return None


def known_identifiers() -> tuple[DataIdentifier, ...]:
    """Every identifier this codec knows, in order."""
    found = [
        DataIdentifier.of(family.di3, family.di2, di1, di0)
        for family in _FAMILIES
        for di1 in family.di1
        for di0 in family.di0
    ]
    return tuple(sorted(found))


# --------------------------------------------------------------------------- codec


def _spec(identifier: DataIdentifier) -> IdentifierSpec:
    spec = lookup(identifier)
    if spec is None:
        raise UnknownIdentifierError(f"data identifier {identifier} has no known value format")
    return spec


def _expect_size(spec: IdentifierSpec, data: bytes, size: int) -> None:
    if len(data) != size:
        raise MessageError(f"{spec.name} ({spec.identifier}) takes {size} bytes, got {len(data)}")


def _decode_energy_block(spec: IdentifierSpec, data: bytes) -> EnergyBlock:
    count = len(data) // ENERGY_BYTES
    if not data or len(data) % ENERGY_BYTES or count > MAX_RATES + 1:
        raise MessageError(
            f"{spec.name} ({spec.identifier}) takes 1 to {MAX_RATES + 1} registers of {ENERGY_BYTES} bytes,"
            f" got {len(data)} bytes"
        )
    values = [
        bcd.decode_unsigned(data[i : i + ENERGY_BYTES]) * WH_PER_ENERGY_STEP for i in range(0, len(data), ENERGY_BYTES)
    ]
    return EnergyBlock(total_wh=values[0], rates_wh=tuple(values[1:]))


def _decode_date(data: bytes) -> MeterDate:
    weekday, day, month, year = (bcd.decode_unsigned(data[i : i + 1]) for i in range(DATE_BYTES))
    if weekday > 6:
        raise BcdError(f"weekday {weekday} is not 0..6")
    try:
        return MeterDate(date(bcd.FIRST_YEAR + year, month, day), weekday)
    except ValueError:
        raise BcdError(f"20{year:02d}-{month:02d}-{day:02d} is not a date") from None


def _decode_time(data: bytes) -> MeterTime:
    second, minute, hour = (bcd.decode_unsigned(data[i : i + 1]) for i in range(TIME_BYTES))
    try:
        return MeterTime(time(hour, minute, second))
    except ValueError:
        raise BcdError(f"{hour:02d}:{minute:02d}:{second:02d} is not a time of day") from None


def decode_value(identifier: DataIdentifier, data: bytes) -> Value:
    """The typed value of `identifier` from its data bytes (after the DI, without the +0x33)."""
    spec = _spec(identifier)
    match spec.value_format:
        case ValueFormat.ENERGY:
            _expect_size(spec, data, ENERGY_BYTES)
            return Energy(bcd.decode_unsigned(data) * WH_PER_ENERGY_STEP)
        case ValueFormat.ENERGY_BLOCK:
            return _decode_energy_block(spec, data)
        case ValueFormat.VOLTAGE:
            _expect_size(spec, data, VOLTAGE_BYTES)
            return Voltage(bcd.decode_unsigned(data) * MV_PER_VOLTAGE_STEP)
        case ValueFormat.CURRENT:
            _expect_size(spec, data, CURRENT_BYTES)
            return Current(bcd.decode_signed(data))
        case ValueFormat.ACTIVE_POWER:
            _expect_size(spec, data, POWER_BYTES)
            return ActivePower(bcd.decode_signed(data) * MW_PER_POWER_STEP)
        case ValueFormat.STATUS_WORD_3:
            _expect_size(spec, data, STATUS_WORD_BYTES)
            return StatusWord3(int.from_bytes(data, "little"))
        case ValueFormat.FROZEN_TIME:
            _expect_size(spec, data, FROZEN_TIME_BYTES)
            return FrozenTime(bcd.decode_wall_time(data))
        case ValueFormat.DATE:
            _expect_size(spec, data, DATE_BYTES)
            return _decode_date(data)
        case ValueFormat.TIME:
            _expect_size(spec, data, TIME_BYTES)
            return _decode_time(data)


_VALUE_TYPES: dict[ValueFormat, type] = {
    ValueFormat.ENERGY: Energy,
    ValueFormat.ENERGY_BLOCK: EnergyBlock,
    ValueFormat.VOLTAGE: Voltage,
    ValueFormat.CURRENT: Current,
    ValueFormat.ACTIVE_POWER: ActivePower,
    ValueFormat.STATUS_WORD_3: StatusWord3,
    ValueFormat.FROZEN_TIME: FrozenTime,
    ValueFormat.DATE: MeterDate,
    ValueFormat.TIME: MeterTime,
}


def encode_value(identifier: DataIdentifier, value: Value) -> bytes:
    """The data bytes of `value` for `identifier` (without the +0x33); the value's type must fit it."""
    spec = _spec(identifier)
    expected = _VALUE_TYPES[spec.value_format]
    if not isinstance(value, expected):
        raise TypeError(f"{spec.name} ({identifier}) holds {expected.__name__}, not {type(value).__name__}")
    match value:
        case Energy(energy_wh=energy_wh):
            return bcd.encode_unsigned(energy_wh // WH_PER_ENERGY_STEP, ENERGY_BYTES)
        case EnergyBlock(total_wh=total_wh, rates_wh=rates_wh):
            return b"".join(bcd.encode_unsigned(wh // WH_PER_ENERGY_STEP, ENERGY_BYTES) for wh in (total_wh, *rates_wh))
        case Voltage(voltage_mv=voltage_mv):
            return bcd.encode_unsigned(voltage_mv // MV_PER_VOLTAGE_STEP, VOLTAGE_BYTES)
        case Current(current_ma=current_ma):
            return bcd.encode_signed(current_ma, CURRENT_BYTES)
        case ActivePower(power_mw=power_mw):
            return bcd.encode_signed(power_mw // MW_PER_POWER_STEP, POWER_BYTES)
        case StatusWord3(bits=bits):
            return bits.to_bytes(STATUS_WORD_BYTES, "little")
        case FrozenTime(at=at):
            return bcd.encode_wall_time(at, seconds=False)
        case MeterDate(day=day, weekday=weekday):
            fields = (weekday, day.day, day.month, day.year - bcd.FIRST_YEAR)
            return b"".join(bcd.encode_unsigned(field, 1) for field in fields)
        case MeterTime(at=at):
            return b"".join(bcd.encode_unsigned(field, 1) for field in (at.second, at.minute, at.hour))
