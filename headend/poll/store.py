"""Store what polls return through the same writer as MQTT readings, and keep every failed poll with its reason."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions, libpq_dsn
from headend.db.faults import is_data_fault, refusal_reason
from headend.db.text import storable
from headend.ingest.messages import Decoded, SourcedReading
from headend.ingest.writer import ReadingWriter, WriteResult
from headend.poll.failures import REASON_MAX_CHARS, FailureKind, PollFailure
from headend.poll.targets import PolledMeter, load_polled_meters
from headend.settings import Settings
from protocols.readings import MeterReading

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 10
DEAD_LETTER_SOURCE = "poll"
_FAILURE_INSERT = "INSERT INTO poll_failures (meter_id, at, kind, reason, attempts) VALUES (%s, %s, %s, %s, %s)"


def sourced(meter: PolledMeter, reading: MeterReading, received_at: datetime) -> SourcedReading:
    """A polled reading as the writer takes it: its source names the protocol, endpoint and place on the bus (a dead
    letter keeps it as JSON, written only then)."""
    return SourcedReading(reading, meter.source, f"poll/{meter.protocol}/{meter.meter_id}", received_at, None)


class PollStore:
    """One database connection: readings through ReadingWriter (validation, de-duplication, dead letters,
    collection statistics, the engine's signal), failures into poll_failures. Not thread-safe: one caller."""

    def __init__(self, database_url: str, settings: Settings) -> None:
        self._dsn = libpq_dsn(database_url)
        self._settings = settings
        self._conn: psycopg.Connection[Any] | None = None
        self._writer: ReadingWriter | None = None

    def _open(self) -> tuple[psycopg.Connection[Any], ReadingWriter]:
        if self._conn is None or self._conn.closed or self._writer is None:
            self.close()
            conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            options = SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall())
            self._writer = ReadingWriter(
                conn,
                options,
                timedelta(seconds=self._settings.future_tolerance_s),
                timedelta(days=self._settings.reading_max_age_days),
                dead_letter_source=DEAD_LETTER_SOURCE,
            )
            self._conn = conn
        assert self._writer is not None
        return self._conn, self._writer

    def polled_meters(self, meter_ids: list[str] | None = None) -> list[PolledMeter]:
        """The active polled meters of the registry (or those of `meter_ids`)."""
        conn, _ = self._open()
        return load_polled_meters(conn, meter_ids)

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
        self._conn, self._writer = None, None

    def write(self, readings: list[tuple[PolledMeter, MeterReading]], failures: list[PollFailure]) -> WriteResult:
        """Store the readings (one transaction) and the failures; a reading the database refuses becomes a failure.

        A lost connection is raised, with nothing of the readings committed: the caller retries the whole call.
        """
        now = datetime.now(UTC)
        conn, writer = self._open()
        items = [sourced(meter, reading, now) for meter, reading in readings]
        failures = list(failures)
        try:
            result = writer.write(Decoded(readings=items), now)
        except psycopg.Error as exc:
            if not is_data_fault(exc):
                self.close()
                raise
            result = self._write_one_by_one(writer, items, failures, now)
        if failures:
            with conn.cursor() as cur:
                cur.executemany(
                    _FAILURE_INSERT,
                    [
                        (f.meter_id, f.at, str(f.kind), storable(f.reason, REASON_MAX_CHARS) or "?", f.attempts)
                        for f in failures
                    ],
                )
        return result

    def _write_one_by_one(
        self, writer: ReadingWriter, items: list[SourcedReading], failures: list[PollFailure], now: datetime
    ) -> WriteResult:
        offered = inserted = dead = 0
        for item in items:
            try:
                result = writer.write(Decoded(readings=[item]), now)
            except psycopg.Error as exc:
                if not is_data_fault(exc):
                    self.close()
                    raise
                failures.append(
                    PollFailure(item.reading.meter_id, now, FailureKind.BAD_VALUE, refusal_reason(exc, "not stored"), 1)
                )
                continue
            offered, inserted, dead = offered + result.offered, inserted + result.inserted, dead + result.dead_letters
        return WriteResult(offered, inserted, dead)
