"""The ingest worker: subscribe, batch, write, and acknowledge each message only after its rows are committed."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.reasoncodes import ReasonCode
from psycopg.pq import TransactionStatus
from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception, wait_exponential

from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions, libpq_dsn
from headend.db.faults import is_data_fault
from headend.db.partitions import days_around
from headend.ingest.faults import write_isolating
from headend.ingest.messages import DeadLetter, Decoded, InboundMessage, decode_message
from headend.ingest.writer import ReadingWriter, WriteResult
from headend.mqtt.client import ConnectionWatch, connect, make_client
from headend.runtime.status import LimitedLog, Status, StatusReporter
from headend.settings import Settings
from protocols.mqtt_topics import READINGS_FILTERS

if TYPE_CHECKING:
    from headend.ingest.metrics import IngestMetrics

log = logging.getLogger(__name__)

RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0
CONNECT_TIMEOUT_S = 10  # a database host that drops packets fails the attempt instead of hanging the worker
PARTITION_CHECK_EVERY_S = 3600.0
# the counters of a status line, with their words
STATUS_LABELS = {
    "messages": "messages",
    "readings_inserted": "readings stored",
    "duplicates": "duplicates",
    "dead_letters": "dead letters",
    "batches": "batches",
    "backlog": "messages received and not yet committed",
}


@dataclass(slots=True)
class IngestStats:
    """Running totals of one worker."""

    messages: int = 0
    readings_inserted: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    batches: int = 0
    db_retries: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def counters(self) -> dict[str, int]:
        """The totals a status line reports."""
        return {
            "messages": self.messages,
            "readings_inserted": self.readings_inserted,
            "duplicates": self.duplicates,
            "dead_letters": self.dead_letters,
            "batches": self.batches,
        }

    def add(self, messages: int, result: WriteResult) -> None:
        """Count one committed batch."""
        self.messages += messages
        self.readings_inserted += result.inserted
        self.duplicates += result.duplicates
        self.dead_letters += result.dead_letters
        self.batches += 1


def subscription_filters(settings: Settings) -> list[str]:
    """Topic filters to subscribe, shared among the group's workers when a group is configured."""
    if settings.mqtt_shared_group:
        return [f"$share/{settings.mqtt_shared_group}/{f}" for f in READINGS_FILTERS]
    return list(READINGS_FILTERS)


class IngestWorker:
    """One ingest worker process; `run` blocks until `stop` is called."""

    def __init__(
        self,
        settings: Settings,
        database_url: str,
        stop: threading.Event | None = None,
        *,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._dsn = libpq_dsn(database_url)
        self._inbox: queue.Queue[InboundMessage] = queue.Queue()
        self._stop = stop or threading.Event()
        self._connected = threading.Event()
        self._generation = 0
        self.stats = IngestStats()
        self._conn: psycopg.Connection[Any] | None = None
        self._writer: ReadingWriter | None = None
        # one batch waits while another is written: decoding and writing overlap, memory stays bounded
        self._to_write: queue.Queue[tuple[list[InboundMessage], Decoded] | None] = queue.Queue(maxsize=1)
        self._writer_error: BaseException | None = None
        self._next_partition_check = 0.0
        self._partition_retry_s = RETRY_MIN_S
        self._received = 0
        self._database_problem: str | None = None
        self._dead_letter_log = LimitedLog(log, "dead letters", period_s=settings.status_interval_s or 10.0)
        self._status = StatusReporter(
            log, "ingest", settings.status_interval_s, STATUS_LABELS, limited=[self._dead_letter_log]
        )
        self._client = make_client(settings, settings.mqtt_client_id, manual_ack=True, persistent=True)
        self._broker = ConnectionWatch(self._client, settings, log)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._metrics = metrics
        if metrics is not None:
            metrics.watch(self)

    def stop(self) -> None:
        """Ask the worker to finish its current batch and return."""
        self._stop.set()

    @property
    def received(self) -> int:
        """Messages received from the broker since the start, redeliveries included."""
        return self._received

    @property
    def connected(self) -> threading.Event:
        """Set while the worker is connected and its subscriptions are acknowledged."""
        return self._connected

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if not self._broker.connect_result(reason, flags.session_present):
            return
        self._generation += 1
        client.subscribe([(f, 1) for f in subscription_filters(self._settings)])

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            log.error("broker refused the subscription: %s", refused)
            return
        log.info("subscribed to %s", ", ".join(subscription_filters(self._settings)))
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self._connected.clear()
        self._broker.disconnected(reason, stopping=self._stop.is_set())

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._received += 1
        try:
            topic = message.topic
        except UnicodeDecodeError:
            # brokers refuse such topics; should one come through, an exception here would end paho's network loop
            topic = bytes(getattr(message, "_topic", b"")).decode("utf-8", "backslashreplace")
        self._inbox.put(
            InboundMessage(topic, bytes(message.payload), datetime.now(UTC), message.mid, message.qos, self._generation)
        )

    def _next_batch(self) -> list[InboundMessage]:
        try:
            first = self._inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self._settings.ingest_batch_wait_ms / 1000
        limit = self._settings.ingest_batch_rows
        rows = len(first.payload) // 80 + 1  # a cheap size estimate; exact counts come after decoding
        while rows < limit:
            remaining = deadline - time.monotonic()
            try:
                message = self._inbox.get_nowait() if remaining <= 0 else self._inbox.get(timeout=remaining)
            except queue.Empty:
                break
            batch.append(message)
            rows += len(message.payload) // 80 + 1
        return batch

    def _open_writer(self) -> tuple[psycopg.Connection[Any], ReadingWriter]:
        conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        options = SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall())
        writer = ReadingWriter(
            conn,
            options,
            timedelta(seconds=self._settings.future_tolerance_s),
            timedelta(days=self._settings.reading_max_age_days),
        )
        return conn, writer

    def _write_once(self, decoded: Decoded) -> WriteResult:
        if self._writer is None:
            self._conn, self._writer = self._open_writer()
        try:
            return self._writer.write(decoded, datetime.now(UTC))
        except Exception as exc:
            if is_data_fault(exc) and not self._connection_usable():
                self._close_writer()
            raise

    def _connection_usable(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.closed and conn.info.transaction_status is TransactionStatus.IDLE

    def _after_failed_write(self, state: RetryCallState) -> None:
        self.stats.db_retries += 1
        error = state.outcome.exception() if state.outcome else "?"
        self._database_problem = f"database write failing ({error}), {self.stats.db_retries} retries so far"
        log.warning("database write failed (%s); holding the batch and retrying in %.1f s", error, state.upcoming_sleep)
        self._close_writer()

    def _pause(self, seconds: float) -> None:
        # waiting on the stop event lets a stop request end the pause at once
        self._stop.wait(seconds)

    def _write_with_retry(self, decoded: Decoded) -> WriteResult | None:
        """Write until it commits; None if asked to stop first (the batch stays unacknowledged).

        Only the database's faults are retried (it is down, restarting, out of resources); an error of the data is
        raised at once, for `write_isolating` to find the messages at fault.
        """
        retrying = Retrying(
            retry=retry_if_exception(lambda exc: isinstance(exc, psycopg.Error) and not is_data_fault(exc)),
            wait=wait_exponential(multiplier=RETRY_MIN_S, max=RETRY_MAX_S),
            stop=lambda state: self._stop.is_set(),
            sleep=self._pause,
            before_sleep=self._after_failed_write,
        )
        try:
            return retrying(self._write_once, decoded)
        except RetryError:
            return None

    def _store(self, batch: list[InboundMessage], decoded: Decoded) -> WriteResult | None:
        """Write a batch; messages whose data the database refuses become dead letters, the others are stored."""
        return write_isolating(batch, decoded, self._write_with_retry)

    def _close_writer(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                log.debug("closing a broken connection failed", exc_info=True)
        self._conn, self._writer = None, None

    def _create_partitions_ahead(self) -> None:
        if self._writer is None:
            return
        today = datetime.now(UTC).date()
        self._writer.ensure_partitions(set(days_around(today, 1, self._settings.partitions_ahead_days)))

    def _maintain_partitions(self) -> float:
        """Create partitions ahead; return when to check again (sooner after a failure, later after each next one)."""
        try:
            if self._writer is None:
                self._conn, self._writer = self._open_writer()
            self._create_partitions_ahead()
            self._database_problem = None
        except psycopg.Error as exc:
            log.warning("could not create partitions ahead: %s (trying again in %.1f s)", exc, self._partition_retry_s)
            self._database_problem = f"database unavailable ({exc})"
            self._close_writer()
            retry_s, self._partition_retry_s = self._partition_retry_s, min(self._partition_retry_s * 2, RETRY_MAX_S)
            return time.monotonic() + retry_s
        self._partition_retry_s = RETRY_MIN_S
        return time.monotonic() + PARTITION_CHECK_EVERY_S

    def _status_now(self) -> Status:
        problems = [p for p in (self._broker.problem(), self._database_problem) if p is not None]
        return Status(
            self.stats.counters(),
            {"backlog": self._received - self.stats.messages},
            "; ".join(problems) or None,
        )

    def run(self) -> IngestStats:
        """Consume until stopped; return the totals.

        Two threads share the work so that the two cores overlap: this one collects and decodes the
        next batch while the writer thread commits the previous one and then acknowledges it.
        """
        # partitions first, so that nothing is received before the table can take it
        self._next_partition_check = self._maintain_partitions()
        connect(self._client, self._settings, persistent=True)
        self._client.loop_start()
        writer = threading.Thread(target=self._write_loop, name="ingest-writer")
        writer.start()
        try:
            while not self._stop.is_set() and writer.is_alive():
                self._status.tick(self._status_now)
                batch = self._next_batch()
                if not batch:
                    continue
                decoded = Decoded()
                for message in batch:
                    decode_message(message, decoded)
                self._hand_over((batch, decoded), writer)
        finally:
            self._stop.set()
            self._hand_over(None, writer)
            writer.join()
            self._client.disconnect()
            self._client.loop_stop()
            self._close_writer()
        if self._writer_error is not None:
            raise self._writer_error
        return self.stats

    def _hand_over(self, item: tuple[list[InboundMessage], Decoded] | None, writer: threading.Thread) -> None:
        """Queue `item` for the writer; give up only if the writer has ended."""
        while writer.is_alive():
            try:
                self._to_write.put(item, timeout=0.2)
                return
            except queue.Full:
                self._status.tick(self._status_now)  # the writer is slow or retrying: still one line a period

    def _write_loop(self) -> None:
        """The writer thread: commit each batch, then acknowledge its messages, in arrival order."""
        try:
            while True:
                if time.monotonic() >= self._next_partition_check:
                    self._next_partition_check = self._maintain_partitions()
                try:
                    item = self._to_write.get(timeout=1.0)
                except queue.Empty:
                    continue
                if item is None:
                    return
                batch, decoded = item
                started = time.monotonic()
                result = self._store(batch, decoded)
                if result is None:
                    return  # stopping while the database is unreachable: the broker redelivers the batch
                self._database_problem = None
                self._acknowledge(batch)
                self.stats.add(len(batch), result)
                if self._metrics is not None:
                    self._metrics.batch_committed(batch, result, started)
                for dead in result.dead:
                    self._log_dead_letter(dead)
        except BaseException as exc:
            log.exception("the ingest writer failed; stopping without acknowledging the batch")
            self._writer_error = exc
            self._stop.set()

    def _log_dead_letter(self, dead: DeadLetter) -> None:
        where = [f"item {dead.item_index}"] if dead.item_index is not None else []
        if dead.meter_id is not None and dead.item_index is not None:
            where.append(f"meter {dead.meter_id}")
        self._dead_letter_log.log(
            "dead letter from %s%s: %s", dead.topic, f" ({', '.join(where)})" if where else "", dead.reason
        )

    def _acknowledge(self, batch: list[InboundMessage]) -> None:
        # a message from before a reconnect is redelivered by the broker and acknowledged then
        generation = self._generation
        for message in batch:
            if message.qos > 0 and message.generation == generation:
                self._client.ack(message.mid, message.qos)
