"""Faults a simulated Modbus meter can be given at run time: silence, exception answers, a slow or corrupt answer, a
stuck relay.

One fault a unit at a time; `None` is a healthy unit. A Modbus device has no clock to drift, so there is no drift here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum


class ExceptionCode(IntEnum):
    """Modbus exception codes (Modbus Application Protocol V1.1b3, section 7)."""

    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_DATA_ADDRESS = 0x02
    ILLEGAL_DATA_VALUE = 0x03
    SERVER_DEVICE_FAILURE = 0x04
    ACKNOWLEDGE = 0x05
    SERVER_DEVICE_BUSY = 0x06
    MEMORY_PARITY_ERROR = 0x08
    GATEWAY_PATH_UNAVAILABLE = 0x0A
    GATEWAY_TARGET_NO_RESPONSE = 0x0B


@dataclass(frozen=True, slots=True)
class NoAnswer:
    """The unit answers nothing, as a meter that is off or not on the bus: the client times out."""


@dataclass(frozen=True, slots=True)
class ExceptionAnswer:
    """The unit answers requests with an exception code: every request, or those of the given function codes."""

    code: int = ExceptionCode.ILLEGAL_DATA_ADDRESS
    functions: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if isinstance(self.code, bool) or not isinstance(self.code, int) or not 1 <= self.code <= 255:
            raise ValueError(f"an exception code is 1..255, got {self.code!r}")
        if any(isinstance(f, bool) or not isinstance(f, int) or not 1 <= f <= 127 for f in self.functions):
            raise ValueError(f"function codes are 1..127, got {sorted(self.functions)}")

    def applies_to(self, function: int) -> bool:
        """Whether a request of `function` is answered with the exception."""
        return not self.functions or function in self.functions


@dataclass(frozen=True, slots=True)
class SlowAnswer:
    """The unit answers correctly, but `delay_s` real seconds after the request (a client may time out first)."""

    delay_s: float

    def __post_init__(self) -> None:
        if isinstance(self.delay_s, bool) or not (math.isfinite(self.delay_s) and 0 <= self.delay_s <= 3600):
            raise ValueError(f"delay_s must be within 0..3600 seconds, got {self.delay_s!r}")


@dataclass(frozen=True, slots=True)
class CorruptAnswer:
    """The unit answers with a frame that is not what was asked: a read one register short, anything else garbled;
    behind an RTU gateway, the answer with a CRC that does not match its bytes.

    Modbus TCP has no checksum: a gateway that passes a damaged serial answer on gives a frame whose byte count
    disagrees with the request, or bytes that are no Modbus frame at all (which a client waits past until it times
    out). RTU frames carry their CRC-16 through a transparent gateway, so the client sees the damage itself.
    """


@dataclass(frozen=True, slots=True)
class StuckRelay:
    """The unit acknowledges relay writes, but its relay does not move; the status register tells the truth."""


ModbusFault = NoAnswer | ExceptionAnswer | SlowAnswer | CorruptAnswer | StuckRelay
