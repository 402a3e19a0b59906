"""DL/T 645-2007 data identifiers and their value formats: `protocols.dlt645.identifiers`."""

from __future__ import annotations

import contextlib
from datetime import date, datetime, time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.dlt645 import identifiers as di
from protocols.dlt645.errors import BcdError, MessageError, UnknownIdentifierError
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
    ValueFormat,
    Voltage,
    decode_value,
    encode_value,
    known_identifiers,
    lookup,
)
from protocols.errors import ProtocolError
from protocols.readings import RelayState

KNOWN = known_identifiers()

FUZZ_EXAMPLES = 1000  # cheap examples: a wider net for the decoders that face the wire


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def test_identifier_is_printed_di3_first_and_sent_di0_first() -> None:
    identifier = DataIdentifier.parse("00 01 00 00")
    assert identifier == di.FORWARD_ACTIVE_TOTAL == DataIdentifier.of(0x00, 0x01, 0x00, 0x00)
    assert str(identifier) == "00010000"
    assert identifier.to_wire() == h("00 00 01 00")
    assert DataIdentifier.from_wire(h("00 01 01 02")) == di.PHASE_A_VOLTAGE
    assert repr(di.STATUS_WORD_3) == "DataIdentifier.parse('04000503')"
    with pytest.raises(ValueError, match="eight hex digits"):
        DataIdentifier.parse("0001000")


@pytest.mark.parametrize(
    ("identifier", "printed", "name", "value_format"),
    [
        (di.FORWARD_ACTIVE_TOTAL, "00010000", "forward active energy, total", ValueFormat.ENERGY),
        (di.forward_active_rate(1), "00010100", "forward active energy, rate 1", ValueFormat.ENERGY),
        (di.forward_active_rate(4), "00010400", "forward active energy, rate 4", ValueFormat.ENERGY),
        (di.FORWARD_ACTIVE_BLOCK, "0001FF00", "forward active energy, total and rates", ValueFormat.ENERGY_BLOCK),
        (di.REVERSE_ACTIVE_TOTAL, "00020000", "reverse active energy, total", ValueFormat.ENERGY),
        (di.reverse_active_rate(2), "00020200", "reverse active energy, rate 2", ValueFormat.ENERGY),
        (di.PHASE_A_VOLTAGE, "02010100", "phase A voltage", ValueFormat.VOLTAGE),
        (di.phase_voltage(3), "02010300", "phase C voltage", ValueFormat.VOLTAGE),
        (di.PHASE_A_CURRENT, "02020100", "phase A current", ValueFormat.CURRENT),
        (di.TOTAL_ACTIVE_POWER, "02030000", "active power, total", ValueFormat.ACTIVE_POWER),
        (di.active_power(2), "02030200", "phase B active power", ValueFormat.ACTIVE_POWER),
        (di.METER_DATE, "04000101", "meter date and weekday", ValueFormat.DATE),
        (di.METER_TIME, "04000102", "meter time", ValueFormat.TIME),
        (di.STATUS_WORD_3, "04000503", "meter running status word 3", ValueFormat.STATUS_WORD_3),
        (di.daily_frozen_time(1), "05060001", "daily freeze time, freeze 1 back", ValueFormat.FROZEN_TIME),
        (
            di.daily_frozen_forward_active(1),
            "05060101",
            "daily frozen forward active energy, freeze 1 back",
            ValueFormat.ENERGY_BLOCK,
        ),
        (
            di.daily_frozen_forward_active(62),
            "0506013E",
            "daily frozen forward active energy, freeze 62 back",
            ValueFormat.ENERGY_BLOCK,
        ),
        (
            di.daily_frozen_reverse_active(7),
            "05060207",
            "daily frozen reverse active energy, freeze 7 back",
            ValueFormat.ENERGY_BLOCK,
        ),
    ],
)
def test_identifier_table(identifier: DataIdentifier, printed: str, name: str, value_format: ValueFormat) -> None:
    assert str(identifier) == printed
    spec = lookup(identifier)
    assert spec is not None
    assert (spec.name, spec.value_format) == (name, value_format)
    assert identifier in KNOWN


@pytest.mark.parametrize(
    "printed", ["00000000", "00014000", "02010400", "0506003F", "05060100", "04000504", "02800002"]
)
def test_identifiers_outside_the_table(printed: str) -> None:
    identifier = DataIdentifier.parse(printed)
    assert lookup(identifier) is None
    with pytest.raises(UnknownIdentifierError, match=f"{printed} has no known value format"):
        decode_value(identifier, b"\x00\x00\x00\x00")


def test_table_size() -> None:
    # 1 + 63 + 1 per energy direction, 3 voltages, 3 currents, 4 powers, date, time, status word 3,
    # 62 freeze times, 62 + 62 frozen energies
    assert len(KNOWN) == 2 * 65 + 3 + 3 + 4 + 3 + 3 * 62


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("identifier", "data", "value"),
    [
        # 000000.26 kWh, the worked example of the "DLT645-2007报文解析" document (see test_dlt645_messages)
        (di.FORWARD_ACTIVE_TOTAL, h("26 00 00 00"), Energy(260)),
        # 123456.78 kWh and 230.1 V: the value examples of peace0phmind/dlt645, frame_test.go (TestFrame_GetValue)
        (di.FORWARD_ACTIVE_TOTAL, h("78 56 34 12"), Energy(123_456_780)),
        (di.PHASE_A_VOLTAGE, h("01 23"), Voltage(230_100)),
        (di.PHASE_A_VOLTAGE, h("01 10"), Voltage(100_100)),
        (di.PHASE_A_CURRENT, h("00 50 00"), Current(5_000)),
        (di.PHASE_A_CURRENT, h("00 50 80"), Current(-5_000)),
        (di.PHASE_A_CURRENT, h("99 99 79"), Current(799_999)),
        (di.TOTAL_ACTIVE_POWER, h("34 12 01"), ActivePower(1_123_400)),  # 01.1234 kW
        (di.TOTAL_ACTIVE_POWER, h("00 50 82"), ActivePower(-2_500_000)),  # -02.5000 kW
        (di.STATUS_WORD_3, h("10 00"), StatusWord3(0x0010)),
        (di.METER_DATE, h("01 05 06 17"), MeterDate(date(2017, 6, 5), 1)),
        (di.METER_TIME, h("51 22 10"), MeterTime(time(10, 22, 51))),
        (di.daily_frozen_time(1), h("00 00 17 03 22"), FrozenTime(datetime(2022, 3, 17))),  # noqa: DTZ001
        (
            di.daily_frozen_forward_active(1),
            h("00 00 01 00  00 20 00 00  00 30 00 00  00 40 00 00  00 10 00 00"),
            EnergyBlock(100_000, (20_000, 30_000, 40_000, 10_000)),
        ),
        (di.FORWARD_ACTIVE_BLOCK, h("26 00 00 00"), EnergyBlock(260)),
    ],
)
def test_decode_and_encode_values(identifier: DataIdentifier, data: bytes, value: Value) -> None:
    assert decode_value(identifier, data) == value
    assert encode_value(identifier, value) == data


def test_convenience_units() -> None:
    assert Voltage(230_100).voltage_v == pytest.approx(230.1)
    assert Current(-5_000).current_a == pytest.approx(-5.0)
    assert ActivePower(1_123_400).power_w == 1123
    assert ActivePower(1_500).power_w == 2  # halves away from zero
    assert ActivePower(-1_500).power_w == -2
    assert ActivePower(-1_400).power_w == -1


@pytest.mark.parametrize(
    ("bits", "relay", "command_open", "alarm", "keep_supply"),
    [
        (0x0000, RelayState.CLOSED, False, False, False),
        (0x0010, RelayState.OPEN, False, False, False),
        (0x0050, RelayState.OPEN, True, False, False),
        (0x0040, RelayState.CLOSED, True, False, False),  # commanded open, still closed: the read-back tells
        (0x0080, RelayState.CLOSED, False, True, False),
        (0x1000, RelayState.CLOSED, False, False, True),
    ],
)
def test_status_word_3_bits(bits: int, relay: RelayState, command_open: bool, alarm: bool, keep_supply: bool) -> None:
    word = decode_value(di.STATUS_WORD_3, bits.to_bytes(2, "little"))
    assert isinstance(word, StatusWord3)
    assert word.relay is relay
    assert word.relay_open == (relay is RelayState.OPEN)
    assert word.relay_command_open == command_open
    assert word.pre_trip_alarm == alarm
    assert word.keep_supply == keep_supply


@pytest.mark.parametrize(
    ("identifier", "data", "error", "message"),
    [
        (di.FORWARD_ACTIVE_TOTAL, h("26 00 00"), MessageError, "takes 4 bytes, got 3"),
        (di.FORWARD_ACTIVE_TOTAL, h("2A 00 00 00"), BcdError, "0x2A is not two decimal digits"),
        (di.PHASE_A_VOLTAGE, h("01 23 00"), MessageError, "takes 2 bytes, got 3"),
        (di.PHASE_A_CURRENT, h("00 00 8F"), BcdError, "not two decimal digits"),
        (di.FORWARD_ACTIVE_BLOCK, h("26 00 00"), MessageError, "registers of 4 bytes, got 3 bytes"),
        (di.FORWARD_ACTIVE_BLOCK, b"", MessageError, "got 0 bytes"),
        (di.FORWARD_ACTIVE_BLOCK, bytes(4 * 65), MessageError, "got 260 bytes"),
        (di.daily_frozen_time(1), h("00 25 17 03 22"), BcdError, "is not a time"),
        (di.METER_DATE, h("07 05 06 17"), BcdError, "weekday 7"),
        (di.METER_DATE, h("01 31 04 17"), BcdError, "2017-04-31 is not a date"),
        (di.METER_TIME, h("00 60 10"), BcdError, "10:60:00 is not a time of day"),
    ],
)
def test_bad_values_are_typed_errors(
    identifier: DataIdentifier, data: bytes, error: type[ProtocolError], message: str
) -> None:
    with pytest.raises(error, match=message):
        decode_value(identifier, data)


def test_encoding_a_value_of_the_wrong_type_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="holds Voltage, not Energy"):
        encode_value(di.PHASE_A_VOLTAGE, Energy(10))


# --------------------------------------------------------------------------- properties


def _wh() -> st.SearchStrategy[int]:
    return st.integers(0, di.MAX_ENERGY_WH // 10).map(lambda n: n * 10)


_VALUES: dict[ValueFormat, st.SearchStrategy[Value]] = {
    ValueFormat.ENERGY: _wh().map(Energy),
    ValueFormat.ENERGY_BLOCK: st.builds(EnergyBlock, _wh(), st.lists(_wh(), max_size=di.MAX_RATES).map(tuple)),
    ValueFormat.VOLTAGE: st.integers(0, di.MAX_VOLTAGE_MV // 100).map(lambda n: Voltage(n * 100)),
    ValueFormat.CURRENT: st.integers(-di.MAX_CURRENT_MA, di.MAX_CURRENT_MA).map(Current),
    ValueFormat.ACTIVE_POWER: st.integers(-di.MAX_POWER_MW // 100, di.MAX_POWER_MW // 100).map(
        lambda n: ActivePower(n * 100)
    ),
    ValueFormat.STATUS_WORD_3: st.integers(0, 0xFFFF).map(StatusWord3),
    ValueFormat.FROZEN_TIME: st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31, 23, 59)).map(  # noqa: DTZ001
        lambda t: FrozenTime(t.replace(second=0, microsecond=0))
    ),
    ValueFormat.DATE: st.builds(MeterDate, st.dates(date(2000, 1, 1), date(2099, 12, 31)), st.integers(0, 6)),
    ValueFormat.TIME: st.times().map(lambda t: MeterTime(t.replace(microsecond=0))),
}


@st.composite
def identified_values(draw: st.DrawFn) -> tuple[DataIdentifier, Value]:
    identifier = draw(st.sampled_from(KNOWN))
    spec = lookup(identifier)
    assert spec is not None
    return identifier, draw(_VALUES[spec.value_format])


@given(identified_values())
def test_every_known_identifier_round_trips(pair: tuple[DataIdentifier, Value]) -> None:
    identifier, value = pair
    assert decode_value(identifier, encode_value(identifier, value)) == value


@settings(max_examples=FUZZ_EXAMPLES)
@given(st.sampled_from(KNOWN) | st.integers(0, 0xFFFF_FFFF).map(DataIdentifier), st.binary(max_size=260))
def test_any_data_decodes_or_raises_a_protocol_error(identifier: DataIdentifier, data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_value(identifier, data)
