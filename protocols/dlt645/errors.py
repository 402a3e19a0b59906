"""Typed errors of the DL/T 645-2007 codec, each a `protocols.errors.ProtocolError`."""

from __future__ import annotations

from enum import IntEnum, IntFlag

from protocols.errors import ProtocolError


class Dlt645Error(ProtocolError):
    """Bytes that do not follow DL/T 645-2007, or a meter that answered with an error."""


class FrameError(Dlt645Error):
    """Bytes that are not one frame: start or end byte, length, truncation, size, address."""


class ChecksumError(FrameError):
    """A frame whose checksum byte is not the sum of its bytes from the first 68."""


class BcdError(Dlt645Error):
    """A value, time or address digit that is not binary-coded decimal."""


class MessageError(Dlt645Error):
    """A well-formed frame whose control code or data field does not fit the function."""


class UnknownIdentifierError(MessageError):
    """A data identifier whose value format this codec does not know."""


class Function(IntEnum):
    """Function code of the control byte (bits D4..D0)."""

    BROADCAST_TIME = 0x08
    READ_DATA = 0x11
    READ_FOLLOW_UP = 0x12
    READ_ADDRESS = 0x13
    WRITE_DATA = 0x14
    WRITE_ADDRESS = 0x15
    FREEZE = 0x16
    CHANGE_BAUD_RATE = 0x17
    CHANGE_PASSWORD = 0x18
    CLEAR_DEMAND = 0x19
    CLEAR_METER = 0x1A
    CLEAR_EVENTS = 0x1B
    RELAY_CONTROL = 0x1C


class ErrorFlags(IntFlag):
    """Bits of the error byte (ERR) of an abnormal answer."""

    OTHER = 0x01
    NO_DATA_REQUESTED = 0x02
    PASSWORD_ERROR_OR_UNAUTHORISED = 0x04
    BAUD_RATE_CANNOT_BE_CHANGED = 0x08
    YEAR_TIME_ZONES_EXCEEDED = 0x10
    DAY_PERIODS_EXCEEDED = 0x20
    TARIFFS_EXCEEDED = 0x40
    RESERVED = 0x80


_MEANINGS = {
    ErrorFlags.OTHER: "other error",
    ErrorFlags.NO_DATA_REQUESTED: "no data requested",
    ErrorFlags.PASSWORD_ERROR_OR_UNAUTHORISED: "password error or unauthorised",
    ErrorFlags.BAUD_RATE_CANNOT_BE_CHANGED: "communication rate cannot be changed",
    ErrorFlags.YEAR_TIME_ZONES_EXCEEDED: "year time zones exceeded",
    ErrorFlags.DAY_PERIODS_EXCEEDED: "day periods exceeded",
    ErrorFlags.TARIFFS_EXCEEDED: "tariffs exceeded",
    ErrorFlags.RESERVED: "reserved bit 7",
}


def describe_errors(flags: ErrorFlags) -> str:
    """The meaning of every bit set in an error byte, in bit order; `no error bit set` for zero."""
    meanings = [text for flag, text in _MEANINGS.items() if flags & flag]
    return ", ".join(meanings) if meanings else "no error bit set"


class MeterErrorResponse(Dlt645Error):  # noqa: N818 - named for the answer it reports
    """A meter answered a request with an abnormal answer (D6 set); `errors` says why."""

    def __init__(self, address: str, function: Function, errors: ErrorFlags) -> None:
        super().__init__(f"meter {address} refused {function.name.lower()}: {describe_errors(errors)}")
        self.address = address
        self.function = function
        self.errors = errors
