"""DL/T 645-2007 link layer: `FE…FE 68 A0..A5 68 C L DATA CS 16`, addresses, control codes, checksum."""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocols.dlt645.bcd import is_bcd_byte
from protocols.dlt645.errors import ChecksumError, FrameError

START = 0x68
END = 0x16
WAKEUP = 0xFE
WILDCARD_BYTE = 0xAA
DATA_OFFSET = 0x33  # added to every data byte on the wire, so that a data field is never all zeros
HEADER_BYTES = 10  # 68, six address bytes, 68, C, L
TRAILER_BYTES = 2  # CS, 16
MAX_DATA_BYTES = 255  # what L can say; each function has a smaller limit of its own
MAX_WAKEUP_ON_ENCODE = 4
# an input can hold any number of FE bytes before the frame; beyond this it is not a frame from a meter
MAX_INPUT_BYTES = 1024

_ADDRESS_PATTERN = re.compile(r"(?:AA)*(?:[0-9]{2})*")
ADDRESS_DIGITS = 12
BROADCAST_DIGITS = "999999999999"

DIRECTION_BIT = 0x80  # D7: 1 for an answer from the meter (slave)
ABNORMAL_BIT = 0x40  # D6: 1 for an abnormal answer
FOLLOW_UP_BIT = 0x20  # D5: 1 when more frames follow
FUNCTION_MASK = 0x1F  # D4..D0


def is_valid_address(digits: str) -> bool:
    """Whether `digits` is a valid printed address: 12 digits, high-order pairs possibly `AA`."""
    return len(digits) == ADDRESS_DIGITS and _ADDRESS_PATTERN.fullmatch(digits) is not None


@dataclass(frozen=True, slots=True)
class Address:
    """A meter's communication address as printed on its nameplate: 12 digits, most significant first.

    Wildcard bytes (`AA`) may stand for the high-order digits (the standard's shortened addressing);
    `AAAAAAAAAAAA` matches every meter and `999999999999` is the broadcast address.
    """

    digits: str

    def __post_init__(self) -> None:
        assert is_valid_address(self.digits), self.digits

    @property
    def is_wildcard(self) -> bool:
        """Whether any byte of the address is the wildcard `AA`."""
        return self.digits.startswith("AA")

    @property
    def is_broadcast(self) -> bool:
        """Whether this is the broadcast address 999999999999."""
        return self.digits == BROADCAST_DIGITS

    def to_wire(self) -> bytes:
        """The six address bytes A0..A5, least significant first."""
        pairs = [self.digits[i : i + 2] for i in range(0, ADDRESS_DIGITS, 2)]
        return bytes(WILDCARD_BYTE if pair == "AA" else int(pair, 16) for pair in reversed(pairs))

    def __str__(self) -> str:
        return self.digits


BROADCAST = Address(BROADCAST_DIGITS)
WILDCARD = Address("AA" * 6)


def address_from_wire(data: bytes) -> Address:
    """The address of six bytes A0..A5; the wildcard `AA` only above every BCD byte."""
    assert len(data) == 6, len(data)
    pairs = []
    for byte in reversed(data):
        if byte == WILDCARD_BYTE:
            pairs.append("AA")
        elif is_bcd_byte(byte):
            pairs.append(f"{byte:02X}")
        else:
            raise FrameError(f"address byte 0x{byte:02X} is neither two decimal digits nor the wildcard AA")
    digits = "".join(pairs)
    if not _ADDRESS_PATTERN.fullmatch(digits):
        raise FrameError(f"address {digits} has a wildcard byte below a digit")
    return Address(digits)


@dataclass(frozen=True, slots=True)
class Control:
    """The control byte C: direction (D7), abnormal answer (D6), follow-up frames (D5), function (D4..D0)."""

    function: int
    from_meter: bool = False
    abnormal: bool = False
    follow_up: bool = False

    def __post_init__(self) -> None:
        assert 0 <= self.function <= FUNCTION_MASK, self.function

    @property
    def code(self) -> int:
        """The control byte as sent."""
        return (
            self.function
            | (DIRECTION_BIT if self.from_meter else 0)
            | (ABNORMAL_BIT if self.abnormal else 0)
            | (FOLLOW_UP_BIT if self.follow_up else 0)
        )

    @classmethod
    def from_code(cls, code: int) -> Control:
        """The control byte `code` taken apart."""
        assert 0 <= code <= 0xFF, code
        return cls(
            function=code & FUNCTION_MASK,
            from_meter=bool(code & DIRECTION_BIT),
            abnormal=bool(code & ABNORMAL_BIT),
            follow_up=bool(code & FOLLOW_UP_BIT),
        )


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: address, control byte and data field as the application sees it (without the +0x33)."""

    address: Address
    control: Control
    data: bytes = b""

    def __post_init__(self) -> None:
        assert len(self.data) <= MAX_DATA_BYTES, len(self.data)


def checksum(data: bytes) -> int:
    """Sum modulo 256 of `data`: the bytes from the first 68 through the last data byte."""
    return sum(data) & 0xFF


def encode_frame(frame: Frame, *, wakeup: int = MAX_WAKEUP_ON_ENCODE) -> bytes:
    """The bytes of `frame`, preceded by `wakeup` FE bytes (0 to 4)."""
    assert 0 <= wakeup <= MAX_WAKEUP_ON_ENCODE, wakeup
    body = bytearray([START, *frame.address.to_wire(), START, frame.control.code, len(frame.data)])
    body.extend((byte + DATA_OFFSET) & 0xFF for byte in frame.data)
    return bytes([WAKEUP] * wakeup) + bytes(body) + bytes([checksum(bytes(body)), END])


def _skip_wakeup(data: bytes) -> int:
    start = 0
    while start < len(data) and data[start] == WAKEUP:
        start += 1
    return start


def frame_length(data: bytes) -> int | None:
    """Bytes the first frame of `data` takes, leading FE bytes included; None while it is incomplete.

    For reading a stream: raises FrameError as soon as the bytes seen cannot start a frame.
    """
    start = _skip_wakeup(data)
    if start >= MAX_INPUT_BYTES:
        raise FrameError(f"{start} wake-up bytes and no frame")
    if start < len(data) and data[start] != START:
        raise FrameError(f"frame starts with 0x{data[start]:02X}, not 68")
    if start + 7 < len(data) and data[start + 7] != START:
        raise FrameError(f"second start byte is 0x{data[start + 7]:02X}, not 68")
    if len(data) < start + HEADER_BYTES:
        return None
    total = start + HEADER_BYTES + data[start + HEADER_BYTES - 1] + TRAILER_BYTES
    return total if len(data) >= total else None


def decode_frame(data: bytes) -> Frame:
    """The one frame in `data`, after any number of FE wake-up bytes; FrameError or ChecksumError otherwise."""
    if len(data) > MAX_INPUT_BYTES:
        raise FrameError(f"{len(data)} bytes exceed the limit of {MAX_INPUT_BYTES} for one frame")
    start = _skip_wakeup(data)
    body = data[start:]
    if not body:
        raise FrameError("no frame: empty, or only wake-up bytes")
    if body[0] != START:
        raise FrameError(f"frame starts with 0x{body[0]:02X}, not 68")
    if len(body) < HEADER_BYTES + TRAILER_BYTES:
        raise FrameError(f"truncated: {len(body)} bytes, a frame has at least {HEADER_BYTES + TRAILER_BYTES}")
    if body[7] != START:
        raise FrameError(f"second start byte is 0x{body[7]:02X}, not 68")
    length = body[9]
    expected = HEADER_BYTES + length + TRAILER_BYTES
    if len(body) < expected:
        raise FrameError(f"truncated: L says {length} data bytes, the frame has {len(body)} of {expected} bytes")
    if len(body) > expected:
        raise FrameError(f"length mismatch: L says {length} data bytes, {len(body) - expected} bytes follow the frame")
    if body[-1] != END:
        raise FrameError(f"frame ends with 0x{body[-1]:02X}, not 16")
    expected_checksum = checksum(body[:-2])
    if body[-2] != expected_checksum:
        raise ChecksumError(f"checksum 0x{body[-2]:02X}, the bytes sum to 0x{expected_checksum:02X}")
    address = address_from_wire(body[1:7])
    payload = bytes((byte - DATA_OFFSET) & 0xFF for byte in body[HEADER_BYTES:-2])
    return Frame(address=address, control=Control.from_code(body[8]), data=payload)
