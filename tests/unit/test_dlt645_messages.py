"""DL/T 645-2007 typed messages: `protocols.dlt645.messages`, against published frames and properties."""

from __future__ import annotations

import contextlib
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.dlt645 import identifiers as di
from protocols.dlt645.errors import (
    BcdError,
    ErrorFlags,
    FrameError,
    Function,
    MessageError,
    MeterErrorResponse,
    describe_errors,
)
from protocols.dlt645.frame import BROADCAST, WILDCARD, Address, Control, Frame, encode_frame
from protocols.dlt645.identifiers import DataIdentifier, Energy, Voltage
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
    decode_message,
    encode_message,
    from_frame,
    raise_for_error,
    to_frame,
)
from protocols.errors import ProtocolError

METER = Address("000012345678")

FUZZ_EXAMPLES = 1000  # cheap examples: a wider net for the decoders that face the wire


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def wall(year: int, month: int, day: int, hour: int, minute: int, second: int) -> datetime:
    return datetime(year, month, day, hour, minute, second)  # noqa: DTZ001 - the meter's wall clock, as sent


def wakeup_of(data: bytes) -> int:
    return len(data) - len(data.lstrip(b"\xfe"))


# --------------------------------------------------------------------------- published frames

# Each entry: the bytes as published, where, and the message they carry. Every one decodes to the message
# and the message encodes back to the same bytes (with as many FE bytes as were published).
PUBLISHED: list[tuple[str, str, Message]] = [
    (
        # read address to the wildcard address, with four wake-up bytes: fdxxw/rs-dlt645, src/tcp.rs
        "fe fe fe fe 68 aa aa aa aa aa aa 68 13 00 df 16",
        "read address",
        ReadAddress(),
    ),
    (
        # read forward active total energy of meter 12345678: https://luatdoc.papapoi.com/572
        "FEFEFEFE6878563412000068110433333433C616",
        "read energy",
        ReadData(METER, di.FORWARD_ACTIVE_TOTAL),
    ),
    (
        # read phase A voltage with the wildcard address (the one meter on the line answers):
        # WKJay/DLT645, readme.md, section 五 (注意事项)
        "68 AA AA AA AA AA AA 68 11 04 33 34 34 35 B1 16",
        "read voltage, wildcard",
        ReadData(WILDCARD, di.PHASE_A_VOLTAGE),
    ),
    (
        # the worked example of the "DLT645-2007报文解析" document: meter 000000000161 answers 000000.26 kWh
        # (the same frames are quoted in the comments of a public Java parser of the standard)
        "FE FE FE FE 68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16",
        "read energy, document example",
        ReadData(Address("000000000161"), di.FORWARD_ACTIVE_TOTAL),
    ),
    (
        "68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33 8A 16",
        "energy answer, document example",
        ReadDataResponse(Address("000000000161"), di.FORWARD_ACTIVE_TOTAL, h("26 00 00 00")),
    ),
    (
        # same document: phase A voltage 100.1 V
        "68 61 01 00 00 00 00 68 91 06 33 34 34 35 34 43 10 16",
        "voltage answer, document example",
        ReadDataResponse(Address("000000000161"), di.PHASE_A_VOLTAGE, h("01 10")),
    ),
    (
        # a meter's answer for grid frequency (02 80 00 02, 50.03 Hz), an identifier outside our table:
        # VaccariaSeed/go-dlt645-2007, README.md ("解析报文")
        "FE FE FE FE 68 00 51 44 18 11 17 68 91 06 35 33 B3 35 36 83 45 16",
        "frequency answer",
        ReadDataResponse(Address("171118445100"), DataIdentifier.parse("02800002"), h("03 50")),
    ),
    (
        # remote trip (N1 = 1A), PA 00, password 000000, operator 00000000, valid until 2018-05-12 15:41:24:
        # the "645拉闸报文例子" in the comment of packDisconnect, ProtocolMeter645_2007Util.java (Holley, emcp)
        "68 11 11 11 11 11 11 68 1C 10 33 33 33 33 33 33 33 33 4D 33 57 74 48 45 38 4B 55 16",
        "trip",
        RelayControl(
            Address("111111111111"),
            RelayCommand.TRIP,
            wall(2018, 5, 12, 15, 41, 24),
            password_level=0x00,
            password="000000",
            operator_code="00000000",
        ),
    ),
    (
        # the meter's normal answer to it, same file (validDisconnectResult: "16D2009C6811111111111168",
        # written there last byte first)
        "68 11 11 11 11 11 11 68 9C 00 D2 16",
        "trip accepted",
        RelayControlResponse(Address("111111111111")),
    ),
    (
        # broadcast time 2017-06-05 10:22:51, from the comment "645-07广播校时" of BroadcastTime_TxDATA_DL645
        # in a public concentrator firmware, which also gives a time sent to the single address 111111111111
        "68 99 99 99 99 99 99 68 08 06 84 55 43 38 39 4A 4B 16",
        "broadcast time",
        BroadcastTime(wall(2017, 6, 5, 10, 22, 51)),
    ),
    (
        "68 11 11 11 11 11 11 68 08 06 58 73 43 38 39 4A 0D 16",
        "time to one meter",
        BroadcastTime(wall(2017, 6, 5, 10, 40, 25), Address("111111111111")),
    ),
]


@pytest.mark.parametrize(("published", "what", "message"), PUBLISHED, ids=[entry[1] for entry in PUBLISHED])
def test_published_frames(published: str, what: str, message: Message) -> None:
    data = h(published)
    assert decode_message(data) == message, what
    assert encode_message(message, wakeup=wakeup_of(data)) == data, what


def test_published_answers_give_their_values() -> None:
    energy = decode_message(h(PUBLISHED[4][0]))
    voltage = decode_message(h(PUBLISHED[5][0]))
    assert isinstance(energy, ReadDataResponse)
    assert isinstance(voltage, ReadDataResponse)
    assert energy.value() == Energy(260)  # 0.26 kWh
    assert voltage.value() == Voltage(100_100)  # 100.1 V


# --------------------------------------------------------------------------- each function


ROUND_TRIPS: list[Message] = [
    ReadData(METER, di.daily_frozen_forward_active(3)),
    ReadData(Address("AAAA12345678"), di.STATUS_WORD_3),
    ReadDataResponse(METER, di.STATUS_WORD_3, h("10 00")),
    ReadDataResponse(METER, di.FORWARD_ACTIVE_BLOCK, bytes(20), follow_up=True),
    ReadFollowUp(METER, di.FORWARD_ACTIVE_BLOCK, seq=1),
    ReadFollowUpResponse(METER, di.FORWARD_ACTIVE_BLOCK, bytes(8), seq=1),
    ReadFollowUpResponse(METER, di.FORWARD_ACTIVE_BLOCK, bytes(8), seq=2, follow_up=True),
    ErrorResponse(METER, Function.READ_DATA, ErrorFlags.NO_DATA_REQUESTED),
    ErrorResponse(METER, Function.READ_FOLLOW_UP, ErrorFlags.OTHER),
    ErrorResponse(METER, Function.RELAY_CONTROL, ErrorFlags.PASSWORD_ERROR_OR_UNAUTHORISED),
    ReadAddress(),
    ReadAddressResponse(METER),
    BroadcastTime(wall(2026, 11, 22, 8, 0, 0)),
    *[
        RelayControl(METER, command, wall(2026, 11, 22, 8, 10, 0), 0x02, "123456", "00000001")
        for command in RelayCommand
    ],
    RelayControlResponse(METER),
]


@pytest.mark.parametrize("message", ROUND_TRIPS, ids=[type(m).__name__ for m in ROUND_TRIPS])
def test_each_function_round_trips(message: Message) -> None:
    for wakeup in (0, 4):
        assert decode_message(encode_message(message, wakeup=wakeup)) == message


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (ReadData(METER, di.FORWARD_ACTIVE_TOTAL), 0x11),
        (ReadDataResponse(METER, di.FORWARD_ACTIVE_TOTAL, bytes(4)), 0x91),
        (ReadDataResponse(METER, di.FORWARD_ACTIVE_TOTAL, bytes(4), follow_up=True), 0xB1),
        (ErrorResponse(METER, Function.READ_DATA, ErrorFlags.OTHER), 0xD1),
        (ReadFollowUp(METER, di.FORWARD_ACTIVE_TOTAL, 1), 0x12),
        (ReadFollowUpResponse(METER, di.FORWARD_ACTIVE_TOTAL, b"", 1), 0x92),
        (ReadFollowUpResponse(METER, di.FORWARD_ACTIVE_TOTAL, b"", 1, follow_up=True), 0xB2),
        (ErrorResponse(METER, Function.READ_FOLLOW_UP, ErrorFlags.OTHER), 0xD2),
        (ReadAddress(), 0x13),
        (ReadAddressResponse(METER), 0x93),
        (BroadcastTime(wall(2026, 1, 1, 0, 0, 0)), 0x08),
        (RelayControl(METER, RelayCommand.ALLOW_CLOSE, wall(2026, 1, 1, 0, 0, 0), 2, "000000", "00000000"), 0x1C),
        (RelayControlResponse(METER), 0x9C),
        (ErrorResponse(METER, Function.RELAY_CONTROL, ErrorFlags.OTHER), 0xDC),
    ],
)
def test_control_codes(message: Message, code: int) -> None:
    assert to_frame(message).control.code == code


def test_read_address_answer_carries_the_address_in_its_data() -> None:
    # data 34 33 33 33 33 33 is the address 000000000001 with +0x33 on each byte
    data = h("68 01 00 00 00 00 00 68 93 06 34 33 33 33 33 33 9D 16")
    assert decode_message(data) == ReadAddressResponse(Address("000000000001"))
    assert encode_message(ReadAddressResponse(Address("000000000001")), wakeup=0) == data


def test_relay_control_data_field_order() -> None:
    message = RelayControl(METER, RelayCommand.ALLOW_CLOSE, wall(2026, 11, 22, 8, 10, 30), 0x02, "123456", "87654321")
    # PA, P0 P1 P2, C0 C1 C2 C3, N1, N2, ss mm hh DD MM YY
    assert to_frame(message).data == h("02 56 34 12 21 43 65 87 1B 00 30 10 08 22 11 26")
    assert [int(command) for command in RelayCommand] == [0x1A, 0x1B, 0x1C, 0x2A, 0x2B, 0x3A, 0x3B]


def test_broadcast_time_data_is_ss_mm_hh_dd_mm_yy() -> None:
    frame = to_frame(BroadcastTime(wall(2026, 11, 22, 8, 9, 10)))
    assert frame.address == BROADCAST
    assert frame.data == h("10 09 08 22 11 26")


# --------------------------------------------------------------------------- error answers


def test_error_answer_and_its_meaning() -> None:
    answer = encode_message(ErrorResponse(METER, Function.READ_DATA, ErrorFlags.NO_DATA_REQUESTED), wakeup=0)
    assert answer == h("68 78 56 34 12 00 00 68 D1 01 35") + bytes([sum(answer[:11]) & 0xFF, 0x16])
    message = decode_message(answer)
    assert message == ErrorResponse(METER, Function.READ_DATA, ErrorFlags.NO_DATA_REQUESTED)
    with pytest.raises(MeterErrorResponse, match="meter 000012345678 refused read_data: no data requested") as info:
        raise_for_error(message)
    assert info.value.errors == ErrorFlags.NO_DATA_REQUESTED
    assert info.value.function is Function.READ_DATA
    assert info.value.address == "000012345678"


def test_relay_control_refused_for_a_wrong_password() -> None:
    answer = ErrorResponse(METER, Function.RELAY_CONTROL, ErrorFlags.PASSWORD_ERROR_OR_UNAUTHORISED)
    with pytest.raises(MeterErrorResponse, match="refused relay_control: password error or unauthorised"):
        raise_for_error(decode_message(encode_message(answer)))


def test_normal_answers_pass_raise_for_error() -> None:
    answer = RelayControlResponse(METER)
    assert raise_for_error(answer) is answer


@pytest.mark.parametrize(
    ("bits", "meaning"),
    [
        (0x00, "no error bit set"),
        (0x01, "other error"),
        (0x08, "communication rate cannot be changed"),
        (0x70, "year time zones exceeded, day periods exceeded, tariffs exceeded"),
        (0x80, "reserved bit 7"),
    ],
)
def test_error_bits(bits: int, meaning: str) -> None:
    assert describe_errors(ErrorFlags(bits)) == meaning


# --------------------------------------------------------------------------- bad messages


def frame_bytes(address: Address, code: int, data: bytes) -> bytes:
    return encode_frame(Frame(address, Control.from_code(code), data), wakeup=0)


RELAY_DATA = h("02 56 34 12 21 43 65 87 1A 00 30 10 08 22 11 26")


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (frame_bytes(METER, 0x14, bytes(12)), MessageError, r"function 0x14 \(write_data\) is not supported"),
        (frame_bytes(METER, 0x01, b""), MessageError, "has no function 0x01"),
        (frame_bytes(METER, 0x11, bytes(5)), MessageError, "read data .* has 4 data bytes, got 5"),
        (frame_bytes(METER, 0x51, bytes(4)), MessageError, "sets a bit only answers set"),
        (frame_bytes(METER, 0x91, bytes(3)), MessageError, "4 to 200 data bytes, got 3"),
        (frame_bytes(METER, 0x91, bytes(201)), MessageError, "got 201"),
        (frame_bytes(METER, 0x92, bytes(4)), MessageError, "5 to 200 data bytes, got 4"),
        (frame_bytes(WILDCARD, 0x91, bytes(4)), MessageError, "not a meter's own address"),
        (frame_bytes(BROADCAST, 0x9C, b""), MessageError, "not a meter's own address"),
        (frame_bytes(METER, 0xD1, b""), MessageError, "has 1 data bytes, got 0"),
        (frame_bytes(METER, 0xF1, b"\x01"), MessageError, "announces follow-up frames"),
        (frame_bytes(METER, 0xD3, b"\x01"), MessageError, "abnormal answer to function 0x13"),
        (frame_bytes(METER, 0xBC, b""), MessageError, "announces follow-up frames its function has not"),
        (frame_bytes(METER, 0x93, METER.to_wire()[:5]), MessageError, "has 6 data bytes, got 5"),
        (frame_bytes(METER, 0x93, Address("000000000001").to_wire()), MessageError, "in its data and"),
        (frame_bytes(METER, 0x93, h("1F 00 00 00 00 00")), FrameError, "neither two decimal digits"),
        (frame_bytes(METER, 0x9C, b"\x00"), MessageError, "has 0 data bytes, got 1"),
        (frame_bytes(METER, 0x1C, RELAY_DATA[:-1]), MessageError, "has 16 data bytes, got 15"),
        (frame_bytes(WILDCARD, 0x1C, RELAY_DATA), MessageError, "sent to one meter"),
        (frame_bytes(METER, 0x1C, RELAY_DATA[:8] + b"\x1d" + RELAY_DATA[9:]), MessageError, "N1 0x1D"),
        (frame_bytes(METER, 0x1C, RELAY_DATA[:-1] + b"\x2a"), BcdError, "0x2A is not two decimal digits"),
        (frame_bytes(METER, 0x1C, RELAY_DATA[:-3] + h("30 02 26")), BcdError, "2026-02-30"),
        (frame_bytes(BROADCAST, 0x08, h("10 09 08 22 13 26")), BcdError, "2026-13-22"),
        (frame_bytes(WILDCARD, 0x08, h("10 09 08 22 11 26")), MessageError, "not to AAAAAAAAAAAA"),
        (frame_bytes(WILDCARD, 0x13, b"\x00"), MessageError, "has 0 data bytes, got 1"),
    ],
)
def test_bad_messages_are_typed_errors(data: bytes, error: type[ProtocolError], message: str) -> None:
    with pytest.raises(error, match=message):
        decode_message(data)


def test_read_answers_hold_at_most_200_data_bytes() -> None:
    longest = ReadDataResponse(METER, di.FORWARD_ACTIVE_BLOCK, bytes(MAX_READ_DATA_BYTES - 4))
    assert len(to_frame(longest).data) == MAX_READ_DATA_BYTES
    assert decode_message(encode_message(longest)) == longest


# --------------------------------------------------------------------------- properties

meter_addresses = st.text("0123456789", min_size=12, max_size=12).filter(lambda s: s != "9" * 12).map(Address)
request_addresses = meter_addresses | st.integers(1, 6).map(lambda n: Address("AA" * n + "0" * (12 - 2 * n)))
identifiers = st.sampled_from(di.known_identifiers()) | st.integers(0, 0xFFFF_FFFF).map(DataIdentifier)
wall_times = st.datetimes(wall(2000, 1, 1, 0, 0, 0), wall(2099, 12, 31, 23, 59, 59)).map(
    lambda t: t.replace(microsecond=0)
)
hex_digits = "0123456789ABCDEF"

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(ReadData, request_addresses, identifiers),
    st.builds(ReadDataResponse, meter_addresses, identifiers, st.binary(max_size=196), st.booleans()),
    st.builds(ReadFollowUp, request_addresses, identifiers, st.integers(0, 0xFF)),
    st.builds(
        ReadFollowUpResponse,
        meter_addresses,
        identifiers,
        st.binary(max_size=195),
        st.integers(0, 0xFF),
        st.booleans(),
    ),
    st.builds(
        ErrorResponse,
        meter_addresses,
        st.sampled_from([Function.READ_DATA, Function.READ_FOLLOW_UP, Function.RELAY_CONTROL]),
        st.integers(0, 0xFF).map(ErrorFlags),
    ),
    st.builds(ReadAddress, request_addresses | st.just(BROADCAST)),
    st.builds(ReadAddressResponse, meter_addresses),
    st.builds(BroadcastTime, wall_times, meter_addresses | st.just(BROADCAST)),
    st.builds(
        RelayControl,
        meter_addresses,
        st.sampled_from(RelayCommand),
        wall_times,
        st.integers(0, 0xFF),
        st.text(hex_digits, min_size=6, max_size=6),
        st.text(hex_digits, min_size=8, max_size=8),
    ),
    st.builds(RelayControlResponse, meter_addresses),
)


@given(messages, st.integers(0, 4))
def test_encode_then_decode_is_identity(message: Message, wakeup: int) -> None:
    assert decode_message(encode_message(message, wakeup=wakeup)) == message


@settings(max_examples=FUZZ_EXAMPLES)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_a_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_message(data)


any_addresses = st.binary(min_size=6, max_size=6)
SUPPORTED_CODES = [0x08, 0x11, 0x12, 0x13, 0x1C, 0x91, 0x92, 0x93, 0x9C, 0xB1, 0xB2, 0xD1, 0xD2, 0xDC]
interesting_codes = st.sampled_from(SUPPORTED_CODES)


@settings(max_examples=FUZZ_EXAMPLES)
@given(any_addresses, interesting_codes | st.integers(0, 0xFF), st.binary(max_size=255))
def test_any_well_framed_bytes_decode_or_raise_a_protocol_error(address: bytes, code: int, data: bytes) -> None:
    # a valid frame around arbitrary content reaches the message layer, past the checksum
    body = bytes([0x68, *address, 0x68, code, len(data), *((b + 0x33) & 0xFF for b in data)])
    with contextlib.suppress(ProtocolError):
        message = decode_message(body + bytes([sum(body) & 0xFF, 0x16]))
        assert from_frame(to_frame(message)) == message
