"""Binary-coded decimal as DL/T 645-2007 transmits it: least significant byte first."""

from __future__ import annotations

from datetime import datetime

from protocols.dlt645.errors import BcdError

SIGN_BIT = 0x80
FIRST_YEAR = 2000  # the wire carries two year digits; meters count from 2000
LAST_YEAR = 2099


def is_bcd_byte(byte: int) -> bool:
    """Whether both nibbles of `byte` are decimal digits."""
    return (byte >> 4) <= 9 and (byte & 0x0F) <= 9


def decode_unsigned(data: bytes) -> int:
    """The unsigned integer of BCD bytes sent least significant first."""
    value = 0
    for byte in reversed(data):
        if not is_bcd_byte(byte):
            raise BcdError(f"byte 0x{byte:02X} is not two decimal digits")
        value = value * 100 + (byte >> 4) * 10 + (byte & 0x0F)
    return value


def encode_unsigned(value: int, size: int) -> bytes:
    """`value` as `size` BCD bytes, least significant first."""
    assert 0 <= value < 10 ** (2 * size), (value, size)
    out = bytearray()
    for _ in range(size):
        value, pair = divmod(value, 100)
        out.append((pair // 10) << 4 | pair % 10)
    return bytes(out)


def max_signed(size: int) -> int:
    """The largest magnitude a signed BCD field of `size` bytes holds (its top digit pair at most 79)."""
    return int(8 * 10 ** (2 * size - 1) - 1)


def decode_signed(data: bytes) -> int:
    """The integer of signed BCD bytes: the top bit of the most significant byte is the sign."""
    assert data, "a signed field has at least one byte"
    top = data[-1]
    magnitude = decode_unsigned(data[:-1] + bytes([top & ~SIGN_BIT & 0xFF]))
    return -magnitude if top & SIGN_BIT else magnitude


def encode_signed(value: int, size: int) -> bytes:
    """`value` as `size` signed BCD bytes, least significant first."""
    assert abs(value) <= max_signed(size), (value, size)
    out = bytearray(encode_unsigned(abs(value), size))
    if value < 0:
        out[-1] |= SIGN_BIT
    return bytes(out)


def decode_wall_time(data: bytes) -> datetime:
    """A meter's wall-clock time from BCD `[ss] mm hh DD MM YY`, least significant first.

    Five bytes carry minutes, six carry seconds too; the result is naive, as the wire has no zone.
    """
    assert len(data) in (5, 6), len(data)
    digits = [decode_unsigned(data[i : i + 1]) for i in range(len(data))]
    if len(digits) == 5:
        digits.insert(0, 0)
    second, minute, hour, day, month, year = digits
    try:
        # the meter's local clock, without a zone on the wire: naive by design
        return datetime(FIRST_YEAR + year, month, day, hour, minute, second)  # noqa: DTZ001
    except ValueError:
        shown = f"20{year:02d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d}"
        raise BcdError(f"{shown} is not a time") from None


def encode_wall_time(moment: datetime, *, seconds: bool) -> bytes:
    """A naive wall-clock time as BCD `[ss] mm hh DD MM YY`, least significant first."""
    assert moment.tzinfo is None, "times on the wire are the meter's wall clock: pass a naive datetime"
    assert FIRST_YEAR <= moment.year <= LAST_YEAR, moment
    assert moment.microsecond == 0, moment
    assert seconds or moment.second == 0, moment
    fields = [moment.minute, moment.hour, moment.day, moment.month, moment.year - FIRST_YEAR]
    if seconds:
        fields.insert(0, moment.second)
    return bytes(encode_unsigned(field, 1)[0] for field in fields)
