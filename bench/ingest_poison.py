"""Poison benchmark: the ingest worker under a large run of hostile and faulty messages, valid readings among them.

Run `uv run python -m bench.ingest_poison [--examples N] [--seed S]`. It draws N examples of
tests/integration/poison_messages.py (the strategies of the property test tests/integration/test_ingest_poison.py:
arbitrary bytes and JSON, extreme numbers and times, NUL and lone surrogates, deep nesting, sizes at the limits, wrong
types, unknown and inactive meters, times out of the window, some messages twice), publishes them all over a private
mosquitto to an in-process ingest worker writing into a throwaway database, and prints what it did: messages, readings
stored, dead letters by reason, partitions, the time it took, and whether the database holds exactly what the
reference model says (every valid reading once, every other message or entry as one dead letter with its reason).
Exit status 1 if it does not, or if the worker died.
"""

from __future__ import annotations

import argparse
import logging
import re
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, date, datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from hypothesis import HealthCheck, Phase, given, seed, settings
from paho.mqtt.enums import CallbackAPIVersion

from bench._common import (
    BenchError,
    Broker,
    format_table,
    private_mosquitto,
    purge_session,
    run_bench,
    scalar,
    throwaway_database,
    wait_until,
)
from headend.db.partitions import existing_partition_days
from headend.ingest.worker import IngestWorker
from headend.registry.meter_import import MeterRow, import_meters
from headend.settings import Settings
from tests.integration import poison_messages as poison

Message = tuple[str, bytes]
# the kind of a dead letter, by its reason (docs/mqtt.md, "Dead-letter reasons"); the first pattern that matches
REASON_KINDS = [
    (r"^(topic '|device id )", "topic"),
    (r"^payload of \d+ bytes exceeds", "too large"),
    (r"^payload is not valid JSON", "not JSON"),
    (r"^payload is not a JSON object", "not an object"),
    (r"^(sent_at |readings must be|\d+ readings exceed)", "concentrator envelope"),
    (r"^(entry is not a JSON object|meter_id .* does not match)", "entry"),
    (r"^unknown field", "unknown field"),
    (r"(is required|^ts must be an ISO 8601 string)", "missing field"),
    (r"(must be an integer|must be a number|must be 'closed')", "wrong type"),
    (r" is outside ", "out of range"),
    (r"differs from topic", "meter mismatch"),
    (r"(no UTC offset|is not ISO 8601)", "time format"),
    (r"days old$", "too old"),
    (r"in the future$", "future"),
    (r"^unknown meter", "unknown meter"),
    (r"^meter '.*' is \w+, not active", "inactive meter"),
    (r"^refused by the database", "refused by the database"),
    (r"^could not be stored", "not storable"),
    (r"^message could not be decoded", "not decodable"),
]


def reason_kind(reason: str) -> str:
    """The kind of a dead letter's reason, as in the table of docs/mqtt.md."""
    for pattern, kind in REASON_KINDS:
        if re.search(pattern, reason):
            return kind
    return "other"


def draw_messages(examples: int, seed_value: int) -> list[Message]:
    """The messages of `examples` examples of the property test's strategy, in order."""
    drawn: list[list[Message]] = []

    @seed(seed_value)
    @settings(
        max_examples=examples,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(poison.message_lists())
    def collect(sent: list[Message]) -> None:
        drawn.append(sent)

    collect()
    return [message for sent in drawn for message in sent]


class Publisher:
    """QoS 1 publisher with a window of unacknowledged messages."""

    def __init__(self, broker: Broker) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:8]}")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self._pending: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes) -> None:
        """Queue one message, waiting for the oldest ones when the window is full."""
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BenchError(f"publish failed with {info.rc}")
        self._pending.append(info)
        if len(self._pending) >= 5000:
            self.flush()

    def flush(self) -> None:
        """Wait until everything published is acknowledged by the broker."""
        for info in self._pending:
            info.wait_for_publish(60)
            if not info.is_published():
                raise BenchError("the broker did not acknowledge a message")
        self._pending.clear()

    def close(self) -> None:
        """Flush and disconnect."""
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()


def stored_readings(conn: psycopg.Connection[Any]) -> set[tuple[str, datetime]]:
    """The readings of the poison meters."""
    rows = conn.execute("SELECT meter_id, ts FROM readings WHERE meter_id LIKE %s", (f"{poison.TOKEN}%",)).fetchall()
    return {(meter_id, ts.astimezone(UTC)) for meter_id, ts in rows}


def dead_letters(conn: psycopg.Connection[Any]) -> dict[tuple[str, bytes, int], str]:
    """The dead letters by their unique key."""
    rows = conn.execute(
        "SELECT topic, payload_sha256, coalesce(item_index, -1), reason FROM dead_letters WHERE strpos(topic, %s) > 0",
        (poison.TOKEN,),
    ).fetchall()
    return {(topic, bytes(sha), index): reason for topic, sha, index, reason in rows}


def partition_days(conn: psycopg.Connection[Any]) -> set[date]:
    """UTC days with a readings partition."""
    return existing_partition_days(conn)


def run(args: argparse.Namespace) -> None:
    """Draw, publish, ingest, compare, print."""
    logging.basicConfig(level=logging.ERROR)  # the worker logs every dead letter (up to 10 a period) at WARNING
    started = time.monotonic()
    messages = draw_messages(args.examples, args.seed)
    drawn_s = time.monotonic() - started
    sizes = [len(payload) for _, payload in messages]
    print(
        f"drew {len(messages):,} messages in {args.examples:,} examples (seed {args.seed}) in {drawn_s:.1f} s; "
        f"{sum(sizes) / 1e6:.1f} MB, the largest {max(sizes):,} bytes",
        flush=True,
    )
    token = uuid.uuid4().hex[:10]
    with private_mosquitto() as broker, throwaway_database() as url, psycopg.connect(url, autocommit=True) as conn:
        rows = [MeterRow(m, "mqtt", poison.DCU, "bench", None, 1, "active", None) for m in poison.ACTIVE]
        rows.append(MeterRow(poison.INACTIVE, "mqtt", None, "bench", None, 1, "inactive", None))
        import_meters(conn, rows)
        settings_ = Settings(
            database_url=url,
            mqtt_host=broker.host,
            mqtt_port=broker.port,
            mqtt_client_id=f"bench-poison-{token}",
            mqtt_shared_group=f"bench{token}",
            status_interval_s=0,
        )
        worker = IngestWorker(settings_, url)
        failure: list[BaseException] = []

        def work() -> None:
            try:
                worker.run()
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=work, name="ingest", daemon=True)
        thread.start()
        try:
            if not worker.connected.wait(30):
                raise BenchError("the worker did not subscribe")
            partitions_before = partition_days(conn)
            expectation = poison.Expectation()
            publisher = Publisher(broker)
            begun = time.monotonic()
            for topic, payload in messages:
                publisher.publish(topic, payload)
                expectation.receive(topic, payload)
            publisher.close()
            published_s = time.monotonic() - begun
            wait_until(
                lambda: worker.stats.messages >= len(messages) or not thread.is_alive(),
                600,
                "every message handled",
                poll_s=0.05,
            )
            handled_s = time.monotonic() - begun
            alive = thread.is_alive()
            readings = stored_readings(conn)
            dead = dead_letters(conn)
            partitions_after = partition_days(conn)
            collection = scalar(
                conn,
                "SELECT coalesce(sum(readings_count), 0) FROM collection_daily WHERE meter_id LIKE %s",
                (f"{poison.TOKEN}%",),
            )
        finally:
            worker.stop()
            thread.join(30)
            purge_session(broker, settings_.mqtt_client_id)
    report(messages, expectation, readings, dead, collection, partitions_before, partitions_after, alive, failure)
    print(
        f"time: publishing {published_s:.1f} s, until the last message was committed and acknowledged "
        f"{handled_s:.1f} s ({len(messages) / handled_s:,.0f} messages/s); worker: {worker.stats.batches:,} batches, "
        f"{worker.stats.db_retries} database retries"
    )
    if not alive or readings != expectation.readings or dead != expectation.dead or collection != len(readings):
        raise BenchError("the database does not hold what the reference model says (see above)")


def report(
    messages: list[Message],
    expectation: poison.Expectation,
    readings: set[tuple[str, datetime]],
    dead: dict[tuple[str, bytes, int], str],
    collection: int,
    partitions_before: set[date],
    partitions_after: set[date],
    alive: bool,
    failure: list[BaseException],
) -> None:
    """Print what was sent, what was stored, and how it compares with the model."""
    by_kind = Counter(reason_kind(reason) for reason in dead.values())
    expected_kinds = Counter(reason_kind(reason) for reason in expectation.dead.values())
    rows = [
        [kind, f"{by_kind.get(kind, 0):,}", f"{expected_kinds.get(kind, 0):,}"]
        for kind in sorted(by_kind.keys() | expected_kinds.keys(), key=lambda k: -expected_kinds.get(k, 0))
    ]
    print(f"messages: {len(messages):,}; distinct: {len(set(messages)):,}")
    print(
        f"readings stored: {len(readings):,} (model: {len(expectation.readings):,}; counted in collection_daily: "
        f"{collection:,}); dead letters: {len(dead):,} (model: {len(expectation.dead):,})"
    )
    print(format_table(["dead letters by reason", "recorded", "model"], rows))
    today = datetime.now(UTC).date()
    span = sorted((day - today).days for day in partitions_after)
    print(
        f"readings partitions: {len(partitions_before)} when the worker had started (ahead), {len(partitions_after)} "
        f"at the end, from {span[0]} to {span[-1]} days from today (the window: {-poison.MAX_AGE.days} to 0)"
    )
    print(f"worker alive at the end: {'yes' if alive else 'NO: ' + repr(failure)}")
    missing, extra = expectation.readings - readings, readings - expectation.readings
    wrong = {key for key in dead.keys() & expectation.dead.keys() if dead[key] != expectation.dead[key]}
    print(
        f"agreement with the model: {len(missing)} readings missing, {len(extra)} extra; dead letters "
        f"{len(expectation.dead.keys() - dead.keys())} missing, {len(dead.keys() - expectation.dead.keys())} extra, "
        f"{len(wrong)} with another reason"
    )


def main() -> int:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1000, help="examples drawn (about 6 messages each)")
    parser.add_argument("--seed", type=int, default=int(datetime.now(UTC).timestamp()) % 100_000)
    args = parser.parse_args()
    return run_bench(lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
