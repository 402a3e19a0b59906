"""Typed DL/T 645-2007 requests and answers: read data and follow-up, read address, broadcast time, relay control."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

from protocols.dlt645 import bcd
from protocols.dlt645.errors import ErrorFlags, Function, MessageError, MeterErrorResponse
from protocols.dlt645.frame import (
    BROADCAST,
    MAX_WAKEUP_ON_ENCODE,
    WILDCARD,
    Address,
    Control,
    Frame,
    address_from_wire,
    decode_frame,
    encode_frame,
)
from protocols.dlt645.identifiers import DataIdentifier, Value, decode_value

MAX_READ_DATA_BYTES = 200  # L of a read answer, the standard's limit
DI_BYTES = 4
TIME_BYTES = 6
RELAY_CONTROL_BYTES = 16  # PA P0 P1 P2, C0..C3, N1, N2, N3..N8
_PASSWORD_PATTERN = re.compile(r"[0-9A-F]{6}")
_OPERATOR_PATTERN = re.compile(r"[0-9A-F]{8}")
# the functions whose abnormal answers this codec reads (D1, D2, DC)
ERROR_FUNCTIONS = frozenset({Function.READ_DATA, Function.READ_FOLLOW_UP, Function.RELAY_CONTROL})


class RelayCommand(IntEnum):
    """Control command type N1 of relay control (0x1C)."""

    TRIP = 0x1A  # 跳闸: open the relay
    ALLOW_CLOSE = 0x1B  # 合闸允许: the customer may close it (button or card); it stays open until then
    CLOSE = 0x1C  # 直接合闸: close the relay now
    ALARM = 0x2A  # 报警
    ALARM_RELEASED = 0x2B  # 报警解除
    KEEP_SUPPLY = 0x3A  # 保电: no trip until released
    KEEP_SUPPLY_RELEASED = 0x3B  # 保电解除


def _is_response_address(address: Address) -> bool:
    # a meter answers with its own address, never a wildcard or the broadcast address
    return not address.is_wildcard and not address.is_broadcast


@dataclass(frozen=True, slots=True)
class ReadData:
    """Read data (0x11): ask a meter (or any meter, with a wildcard address) for one identifier."""

    address: Address
    identifier: DataIdentifier


@dataclass(frozen=True, slots=True)
class ReadDataResponse:
    """Normal answer to read data (0x91, or 0xB1 when follow-up frames hold the rest)."""

    address: Address
    identifier: DataIdentifier
    data: bytes
    follow_up: bool = False

    def __post_init__(self) -> None:
        assert _is_response_address(self.address), self.address
        assert len(self.data) <= MAX_READ_DATA_BYTES - DI_BYTES, len(self.data)

    def value(self) -> Value:
        """The typed value of the data; only whole when `follow_up` is false."""
        return decode_value(self.identifier, self.data)


@dataclass(frozen=True, slots=True)
class ReadFollowUp:
    """Read follow-up data (0x12): the frame numbered `seq` of an answer that had follow-up frames."""

    address: Address
    identifier: DataIdentifier
    seq: int

    def __post_init__(self) -> None:
        assert 0 <= self.seq <= 0xFF, self.seq


@dataclass(frozen=True, slots=True)
class ReadFollowUpResponse:
    """Normal answer to read follow-up data (0x92, or 0xB2 when more frames follow)."""

    address: Address
    identifier: DataIdentifier
    data: bytes
    seq: int
    follow_up: bool = False

    def __post_init__(self) -> None:
        assert _is_response_address(self.address), self.address
        assert len(self.data) <= MAX_READ_DATA_BYTES - DI_BYTES - 1, len(self.data)
        assert 0 <= self.seq <= 0xFF, self.seq


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """Abnormal answer (D6 set) to read data (0xD1), read follow-up (0xD2) or relay control (0xDC)."""

    address: Address
    function: Function
    errors: ErrorFlags

    def __post_init__(self) -> None:
        assert _is_response_address(self.address), self.address
        assert self.function in ERROR_FUNCTIONS, self.function
        assert 0 <= self.errors <= 0xFF, self.errors


@dataclass(frozen=True, slots=True)
class ReadAddress:
    """Read communication address (0x13), sent to the wildcard address: the one meter on the line answers."""

    address: Address = WILDCARD


@dataclass(frozen=True, slots=True)
class ReadAddressResponse:
    """Answer to read address (0x93): the meter's address, in the address field and the data."""

    address: Address

    def __post_init__(self) -> None:
        assert _is_response_address(self.address), self.address


@dataclass(frozen=True, slots=True)
class BroadcastTime:
    """Broadcast time (0x08): set every meter's clock to `time`, its wall clock (naive); no meter answers."""

    time: datetime
    address: Address = BROADCAST

    def __post_init__(self) -> None:
        assert self.time.tzinfo is None, "the wire carries the meter's wall clock: pass a naive datetime"
        assert bcd.FIRST_YEAR <= self.time.year <= bcd.LAST_YEAR, self.time
        assert self.time.microsecond == 0, self.time
        assert not self.address.is_wildcard, self.address


@dataclass(frozen=True, slots=True)
class RelayControl:
    """Relay control (0x1C): trip, allow close, close, alarm or keep supply, valid until a wall-clock time.

    `password` is P2 P1 P0 and `operator_code` C3 C2 C1 C0, each printed most significant first in hex digits
    (usually decimal ones); `password_level` is PA.
    """

    address: Address
    command: RelayCommand
    valid_until: datetime
    password_level: int
    password: str
    operator_code: str

    def __post_init__(self) -> None:
        assert not self.address.is_wildcard, self.address
        assert not self.address.is_broadcast, self.address
        assert self.valid_until.tzinfo is None, "valid_until is the meter's wall clock: pass a naive datetime"
        assert bcd.FIRST_YEAR <= self.valid_until.year <= bcd.LAST_YEAR, self.valid_until
        assert self.valid_until.microsecond == 0, self.valid_until
        assert 0 <= self.password_level <= 0xFF, self.password_level
        assert _PASSWORD_PATTERN.fullmatch(self.password), self.password
        assert _OPERATOR_PATTERN.fullmatch(self.operator_code), self.operator_code


@dataclass(frozen=True, slots=True)
class RelayControlResponse:
    """Normal answer to relay control (0x9C): the command was accepted."""

    address: Address

    def __post_init__(self) -> None:
        assert _is_response_address(self.address), self.address


Request = ReadData | ReadFollowUp | ReadAddress | BroadcastTime | RelayControl
Response = ReadDataResponse | ReadFollowUpResponse | ErrorResponse | ReadAddressResponse | RelayControlResponse
Message = Request | Response


# --------------------------------------------------------------------------- encoding


def _hex_bytes(printed: str) -> bytes:
    """Hex digits printed most significant first, as bytes sent least significant first."""
    return bytes.fromhex(printed)[::-1]


def _answer(function: Function, *, follow_up: bool = False) -> Control:
    return Control(function, from_meter=True, follow_up=follow_up)


def to_frame(message: Message) -> Frame:
    """The frame that carries `message`."""
    match message:
        case ReadData(address=address, identifier=identifier):
            return Frame(address, Control(Function.READ_DATA), identifier.to_wire())
        case ReadDataResponse(address=address, identifier=identifier, data=data, follow_up=follow_up):
            return Frame(address, _answer(Function.READ_DATA, follow_up=follow_up), identifier.to_wire() + data)
        case ReadFollowUp(address=address, identifier=identifier, seq=seq):
            return Frame(address, Control(Function.READ_FOLLOW_UP), identifier.to_wire() + bytes([seq]))
        case ReadFollowUpResponse(address=address, identifier=identifier, data=data, seq=seq, follow_up=follow_up):
            control = _answer(Function.READ_FOLLOW_UP, follow_up=follow_up)
            return Frame(address, control, identifier.to_wire() + data + bytes([seq]))
        case ErrorResponse(address=address, function=function, errors=errors):
            return Frame(address, Control(function, from_meter=True, abnormal=True), bytes([errors]))
        case ReadAddress(address=address):
            return Frame(address, Control(Function.READ_ADDRESS))
        case ReadAddressResponse(address=address):
            return Frame(address, _answer(Function.READ_ADDRESS), address.to_wire())
        case BroadcastTime(time=moment, address=address):
            return Frame(address, Control(Function.BROADCAST_TIME), bcd.encode_wall_time(moment, seconds=True))
        case RelayControl() as control_message:
            return Frame(control_message.address, Control(Function.RELAY_CONTROL), _relay_control_data(control_message))
        case RelayControlResponse(address=address):
            return Frame(address, _answer(Function.RELAY_CONTROL))


def _relay_control_data(message: RelayControl) -> bytes:
    return (
        bytes([message.password_level])
        + _hex_bytes(message.password)
        + _hex_bytes(message.operator_code)
        + bytes([message.command, 0x00])  # N2 is reserved
        + bcd.encode_wall_time(message.valid_until, seconds=True)
    )


def encode_message(message: Message, *, wakeup: int = MAX_WAKEUP_ON_ENCODE) -> bytes:
    """The bytes of `message`, preceded by `wakeup` FE bytes (0 to 4)."""
    return encode_frame(to_frame(message), wakeup=wakeup)


# --------------------------------------------------------------------------- decoding


def _expect_length(frame: Frame, what: str, *sizes: int) -> None:
    if len(frame.data) not in sizes:
        said = " or ".join(str(size) for size in sizes)
        raise MessageError(f"{what} (C=0x{frame.control.code:02X}) has {said} data bytes, got {len(frame.data)}")


def _expect_meter_address(frame: Frame, what: str) -> None:
    if not _is_response_address(frame.address):
        raise MessageError(f"{what} comes from address {frame.address}, not a meter's own address")


def _read_answer(frame: Frame) -> ReadDataResponse:
    what = "read data answer"
    if not DI_BYTES <= len(frame.data) <= MAX_READ_DATA_BYTES:
        raise MessageError(f"{what} has {DI_BYTES} to {MAX_READ_DATA_BYTES} data bytes, got {len(frame.data)}")
    _expect_meter_address(frame, what)
    identifier = DataIdentifier.from_wire(frame.data[:DI_BYTES])
    return ReadDataResponse(frame.address, identifier, frame.data[DI_BYTES:], follow_up=frame.control.follow_up)


def _follow_up_answer(frame: Frame) -> ReadFollowUpResponse:
    what = "read follow-up answer"
    if not DI_BYTES + 1 <= len(frame.data) <= MAX_READ_DATA_BYTES:
        raise MessageError(f"{what} has {DI_BYTES + 1} to {MAX_READ_DATA_BYTES} data bytes, got {len(frame.data)}")
    _expect_meter_address(frame, what)
    identifier = DataIdentifier.from_wire(frame.data[:DI_BYTES])
    return ReadFollowUpResponse(
        frame.address, identifier, frame.data[DI_BYTES:-1], seq=frame.data[-1], follow_up=frame.control.follow_up
    )


def _error_answer(frame: Frame, function: Function) -> ErrorResponse:
    what = "abnormal answer"
    if frame.control.follow_up:
        raise MessageError(f"{what} (C=0x{frame.control.code:02X}) announces follow-up frames")
    _expect_length(frame, what, 1)
    _expect_meter_address(frame, what)
    return ErrorResponse(frame.address, function, ErrorFlags(frame.data[0]))


def _address_answer(frame: Frame) -> ReadAddressResponse:
    what = "read address answer"
    _expect_length(frame, what, 6)
    _expect_meter_address(frame, what)
    in_data = address_from_wire(frame.data)
    if in_data != frame.address:
        raise MessageError(f"{what} carries address {in_data} in its data and {frame.address} in its header")
    return ReadAddressResponse(frame.address)


def _relay_control(frame: Frame) -> RelayControl:
    what = "relay control"
    _expect_length(frame, what, RELAY_CONTROL_BYTES)
    if frame.address.is_wildcard or frame.address.is_broadcast:
        raise MessageError(f"{what} is sent to one meter, not to {frame.address}")
    data = frame.data
    try:
        command = RelayCommand(data[8])
    except ValueError:
        raise MessageError(f"{what} command type N1 0x{data[8]:02X} is not one of the standard's") from None
    return RelayControl(
        address=frame.address,
        command=command,
        valid_until=bcd.decode_wall_time(data[10:16]),
        password_level=data[0],
        password=data[1:4][::-1].hex().upper(),
        operator_code=data[4:8][::-1].hex().upper(),
    )


def _request(frame: Frame, function: Function) -> Message:
    match function:
        case Function.READ_DATA:
            # DI alone; the load-record forms (DI with a block count, and a start time) are not read here
            _expect_length(frame, "read data", DI_BYTES)
            return ReadData(frame.address, DataIdentifier.from_wire(frame.data))
        case Function.READ_FOLLOW_UP:
            _expect_length(frame, "read follow-up", DI_BYTES + 1)
            return ReadFollowUp(frame.address, DataIdentifier.from_wire(frame.data[:DI_BYTES]), frame.data[DI_BYTES])
        case Function.READ_ADDRESS:
            _expect_length(frame, "read address", 0)
            return ReadAddress(frame.address)
        case Function.BROADCAST_TIME:
            _expect_length(frame, "broadcast time", TIME_BYTES)
            if frame.address.is_wildcard:
                raise MessageError(f"broadcast time is sent to 999999999999 or one meter, not to {frame.address}")
            return BroadcastTime(bcd.decode_wall_time(frame.data), frame.address)
        case Function.RELAY_CONTROL:
            return _relay_control(frame)
    raise MessageError(f"function 0x{function:02X} ({function.name.lower()}) is not supported")


def _response(frame: Frame, function: Function) -> Message:
    if frame.control.abnormal:
        if function not in ERROR_FUNCTIONS:
            raise MessageError(f"abnormal answer to function 0x{function:02X} is not supported")
        return _error_answer(frame, function)
    if frame.control.follow_up and function not in (Function.READ_DATA, Function.READ_FOLLOW_UP):
        raise MessageError(f"answer C=0x{frame.control.code:02X} announces follow-up frames its function has not")
    match function:
        case Function.READ_DATA:
            return _read_answer(frame)
        case Function.READ_FOLLOW_UP:
            return _follow_up_answer(frame)
        case Function.READ_ADDRESS:
            return _address_answer(frame)
        case Function.RELAY_CONTROL:
            _expect_length(frame, "relay control answer", 0)
            _expect_meter_address(frame, "relay control answer")
            return RelayControlResponse(frame.address)
    raise MessageError(f"answer to function 0x{function:02X} ({function.name.lower()}) is not supported")


def from_frame(frame: Frame) -> Message:
    """The message `frame` carries; MessageError when its control code or data field does not fit."""
    control = frame.control
    try:
        function = Function(control.function)
    except ValueError:
        raise MessageError(f"control code 0x{control.code:02X} has no function 0x{control.function:02X}") from None
    if control.from_meter:
        return _response(frame, function)
    if control.abnormal or control.follow_up:
        raise MessageError(f"request C=0x{control.code:02X} sets a bit only answers set")
    return _request(frame, function)


def decode_message(data: bytes) -> Message:
    """The message in `data` (one frame, any FE bytes before it); a ProtocolError subclass otherwise."""
    return from_frame(decode_frame(data))


def raise_for_error(message: Message) -> Message:
    """`message` itself, unless it is an abnormal answer: then MeterErrorResponse with its meaning."""
    if isinstance(message, ErrorResponse):
        raise MeterErrorResponse(str(message.address), message.function, message.errors)
    return message
