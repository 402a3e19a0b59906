"""A batch the database refuses because of its data: tell that from a database that is down, and find the guilty.

A database that is down, restarting or out of resources is retried with the batch held, unacknowledged. A batch the
database refuses because of what is in it (a value it cannot take, a constraint it violates) would be refused again
however often it is retried: `write_isolating` splits it in halves, and the halves in halves, writing each part in a
transaction of its own, down to the single message and then the single reading at fault, which become dead letters
with the error as their reason. The others are stored. The search costs a few writes a guilty message, and none while
nothing is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from headend.db import faults
from headend.db.faults import is_data_fault
from headend.ingest.messages import DeadLetter, Decoded, InboundMessage, SourcedReading, decode_message, reading_payload
from headend.ingest.writer import WriteResult

log = logging.getLogger(__name__)

Write = Callable[[Decoded], WriteResult | None]  # None: stopped before it could commit


def refusal_reason(exc: BaseException) -> str:
    """The reason of a dead letter the database refused: the error's first line, and its SQLSTATE."""
    return faults.refusal_reason(exc, "could not be stored")


@dataclass(frozen=True, slots=True)
class _Part:
    """Rows written together, the dead letter that stands for them if they are refused, and their finer parts."""

    decoded: Decoded
    refused: Callable[[str], DeadLetter]
    pieces: Callable[[], list[_Part]] = list


def write_isolating(messages: Sequence[InboundMessage], decoded: Decoded, write: Write) -> WriteResult | None:
    """Write `decoded`, the decoding of `messages`; if the data is at fault, store all but what is at fault.

    None when `write` gives up (the worker is stopping); an error that is not the data's is raised as it is.
    """
    try:
        return write(decoded)
    except Exception as exc:
        if not is_data_fault(exc):
            raise
        log.warning(
            "the database refused a batch of %d message(s) (%s); writing it in parts to find what is at fault",
            len(messages),
            refusal_reason(exc),
        )
        return _split([_message_part(m) for m in messages], exc, write)


def _write_parts(parts: list[_Part], write: Write) -> WriteResult | None:
    merged = Decoded()
    for part in parts:
        merged.readings.extend(part.decoded.readings)
        merged.dead_letters.extend(part.decoded.dead_letters)
    try:
        return write(merged)
    except Exception as exc:
        if not is_data_fault(exc):
            raise
        return _split(parts, exc, write)


def _split(parts: list[_Part], error: BaseException, write: Write) -> WriteResult | None:
    """Write `parts`, which were refused together with `error`, in halves; a single part that is refused is dead."""
    if len(parts) == 1:
        pieces = parts[0].pieces()
        if len(pieces) > 1:
            return _split(pieces, error, write)
        return write(Decoded(dead_letters=[parts[0].refused(refusal_reason(error))]))
    middle = len(parts) // 2
    results: list[WriteResult] = []
    for half in (parts[:middle], parts[middle:]):
        result = _write_parts(half, write)
        if result is None:
            return None
        results.append(result)
    return _combined(results)


def _combined(results: list[WriteResult]) -> WriteResult:
    return WriteResult(
        offered=sum(r.offered for r in results),
        inserted=sum(r.inserted for r in results),
        dead_letters=sum(r.dead_letters for r in results),
        dead=tuple(d for r in results for d in r.dead),
    )


def _message_part(message: InboundMessage) -> _Part:
    decoded = Decoded()
    decode_message(message, decoded)

    def refused(reason: str) -> DeadLetter:
        return DeadLetter(message.topic, message.payload, reason, message.received_at)

    def pieces() -> list[_Part]:
        # each reading of the message on its own; the dead letters of its decoding together, standing for it
        parts = [_reading_part(item) for item in decoded.readings]
        if decoded.dead_letters:
            parts.append(_Part(Decoded(dead_letters=list(decoded.dead_letters)), refused))
        return parts

    return _Part(decoded, refused, pieces)


def _reading_part(item: SourcedReading) -> _Part:
    def refused(reason: str) -> DeadLetter:
        return DeadLetter(
            item.topic, reading_payload(item), reason, item.received_at, item.item_index, item.reading.meter_id
        )

    return _Part(Decoded(readings=[item]), refused)
