"""Why a poll failed: a kind the collection report groups by, and a one-line reason."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

REASON_MAX_CHARS = 1000


class FailureKind(StrEnum):
    """What went wrong with a poll (migration 0021 checks the same list)."""

    TIMEOUT = "timeout"  # no answer within the device's timeout
    NO_CONNECTION = "no_connection"  # the endpoint refused or dropped the connection
    EXCEPTION_RESPONSE = "exception_response"  # a Modbus exception code
    BAD_FRAME = "bad_frame"  # a corrupt answer: checksum, framing, length
    METER_ERROR = "meter_error"  # a DL/T 645 abnormal answer
    BAD_VALUE = "bad_value"  # an answer whose values cannot be a reading


class PollError(Exception):
    """A request to a meter that failed, with its kind and reason."""

    def __init__(self, kind: FailureKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PollFailure:
    """A poll that failed after its retries."""

    meter_id: str
    at: datetime
    kind: FailureKind
    reason: str
    attempts: int

    def __post_init__(self) -> None:
        assert self.at.utcoffset() is not None
        assert self.attempts >= 0  # 0: not tried, its bus was found unreachable by an earlier meter's poll
