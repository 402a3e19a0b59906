"""Metrics of the ingest worker: messages, readings, duplicates, dead letters by kind, batch times, the inbox.

A dead letter's reason is free text naming the meter, the time or the database's error: as a label it would make a
series per meter. `dead_letter_kind` maps it to a small fixed set instead (`DeadLetterKind`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram

from headend.ingest.messages import DeadLetter, InboundMessage
from headend.ingest.writer import WriteResult
from headend.runtime.metrics import DURATION_BUCKETS, Reading, ReadingsCollector

if TYPE_CHECKING:
    from headend.ingest.worker import IngestWorker


class DeadLetterKind(StrEnum):
    """Why a message or a reading became a dead letter, in a few words: the label of the dead-letter counter."""

    MALFORMED = "malformed"  # not decoded: a topic, payload or batch entry outside the wire contract
    UNKNOWN_METER = "unknown_meter"
    INACTIVE_METER = "inactive_meter"
    WRONG_CONCENTRATOR = "wrong_concentrator"  # forwarded by a concentrator the meter is not registered behind
    TOO_OLD = "too_old"  # stamped before HEADEND_READING_MAX_AGE_DAYS
    IN_FUTURE = "in_future"  # stamped beyond HEADEND_FUTURE_TOLERANCE_S
    CONFLICT = "conflict"  # another version of a stored reading
    REFUSED_BY_DATABASE = "refused_by_database"  # the database refused its rows
    OTHER = "other"


def dead_letter_kind(dead: DeadLetter) -> DeadLetterKind:
    """The kind of a dead letter, from its reason as headend.ingest writes it."""
    reason = dead.reason
    if reason.startswith(("refused by the database:", "could not be stored:")):
        return DeadLetterKind.REFUSED_BY_DATABASE
    if dead.meter_id is None:
        # only a reading refused after decoding knows its meter: the others never got that far
        return DeadLetterKind.MALFORMED
    if reason.startswith("unknown meter "):
        return DeadLetterKind.UNKNOWN_METER
    if reason.startswith("meter ") and " is not behind concentrator " in reason:
        return DeadLetterKind.WRONG_CONCENTRATOR
    if reason.startswith("meter ") and reason.endswith(", not active"):
        return DeadLetterKind.INACTIVE_METER
    if reason.startswith("ts ") and reason.endswith(" days old"):
        return DeadLetterKind.TOO_OLD
    if reason.startswith("ts ") and reason.endswith(" in the future"):
        return DeadLetterKind.IN_FUTURE
    if reason.startswith("conflicts with the reading stored "):
        return DeadLetterKind.CONFLICT
    return DeadLetterKind.OTHER


class IngestMetrics:
    """The ingest worker's metrics in `registry`; the worker calls `batch_committed` after each commit."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self.messages = Counter(
            "headend_ingest_messages",
            "Messages committed and acknowledged (each once, however often the broker delivered it)",
            registry=registry,
        )
        self.readings_stored = Counter("headend_ingest_readings_stored", "Readings stored", registry=registry)
        self.duplicates = Counter(
            "headend_ingest_duplicates", "Valid readings already stored (redelivered or sent again)", registry=registry
        )
        self.dead_letters = Counter(
            "headend_ingest_dead_letters", "Dead letters recorded, by kind of reason", ["kind"], registry=registry
        )
        for kind in DeadLetterKind:
            self.dead_letters.labels(kind.value)  # every kind shown from the start, at 0
        self.batch_duration = Histogram(
            "headend_ingest_batch_duration_seconds",
            "Time to write and commit a batch (waits for a database that is down included)",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.batch_latency = Histogram(
            "headend_ingest_batch_latency_seconds",
            "From the receipt of a batch's first message to the batch's commit",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )

    def watch(self, worker: IngestWorker) -> None:
        """Read the worker's own counts when scraped: messages received, its inbox, its database retries."""
        ReadingsCollector(
            [
                Reading(
                    "headend_ingest_messages_received",
                    "Messages received from the broker, redeliveries included",
                    lambda: worker.received,
                ),
                Reading(
                    "headend_ingest_inbox_messages",
                    "Messages received and not committed yet (waiting for their batch, or in the batch being written)",
                    lambda: max(0, worker.received - worker.stats.messages),
                    counter=False,
                ),
                Reading(
                    "headend_ingest_database_retries",
                    "Batch writes retried because the database failed",
                    lambda: worker.stats.db_retries,
                ),
            ],
            self._registry,
        )

    def batch_committed(self, batch: Sequence[InboundMessage], result: WriteResult, started: float) -> None:
        """Count a committed batch whose write began at `started` (time.monotonic)."""
        self.batch_duration.observe(time.monotonic() - started)
        if batch:
            self.batch_latency.observe(max(0.0, (datetime.now(UTC) - batch[0].received_at).total_seconds()))
        self.messages.inc(len(batch))
        self.readings_stored.inc(result.inserted)
        self.duplicates.inc(result.duplicates)
        for dead in result.dead:
            self.dead_letters.labels(dead_letter_kind(dead).value).inc()
