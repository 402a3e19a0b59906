"""Ingest against the real broker and database: exactly once, dead letters, crash safety, load sharing."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from headend.ingest.validation import QualityFlag
from headend.ingest.worker import IngestWorker
from headend.mqtt.embedded_broker import free_port
from headend.settings import Settings
from protocols.mqtt_codec import encode_concentrator_batch, encode_meter_reading
from protocols.readings import MeterReading
from tests.integration.conftest import Publisher, admin_connection, count, register, wait_for
from tests.integration.worker_support import Lines, private_mosquitto

pytestmark = pytest.mark.integration
SHANGHAI = timedelta(hours=8)
# a local day two weeks back: inside the window of HEADEND_READING_MAX_AGE_DAYS whenever the tests run
DAY = (datetime.now(UTC) + SHANGHAI).date() - timedelta(days=16)
DAY_START = datetime.combine(DAY, datetime.min.time(), UTC) - SHANGHAI  # its local midnight in UTC


def local_ts(slot: int) -> datetime:
    """The UTC instant of 15-minute slot `slot` of the local day DAY."""
    return DAY_START + timedelta(minutes=15 * slot)


def meter_message(meter_id: str, slot: int, energy_wh: int) -> tuple[str, bytes]:
    """Topic and payload of one single-meter reading."""
    return f"meters/{meter_id}/readings", encode_meter_reading(MeterReading(meter_id, local_ts(slot), energy_wh))


@pytest.fixture
def running_worker(settings_for: Callable[..., Settings], database_url: str) -> Iterator[IngestWorker]:
    """An in-process ingest worker, subscribed before the test publishes."""
    worker = IngestWorker(settings_for(database_url), database_url)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.connected.wait(15), "worker did not subscribe"
    yield worker
    worker.stop()
    thread.join(15)
    assert not thread.is_alive()


def test_n_readings_become_n_rows(
    db: psycopg.Connection[Any], unique: str, running_worker: IngestWorker, publisher: Publisher
) -> None:
    meters = [f"m{unique}{i:03d}" for i in range(40)]
    register(db, meters[:20])
    register(db, meters[20:], concentrator=f"d{unique}")
    for slot in range(10):
        for i, meter_id in enumerate(meters[:20]):
            publisher.publish(*meter_message(meter_id, slot, 1000 * i + slot * 7))
        readings = [MeterReading(m, local_ts(slot), 500 + slot) for m in meters[20:]]
        publisher.publish(
            f"concentrators/d{unique}/readings", encode_concentrator_batch(f"d{unique}", local_ts(slot), readings)
        )
    publisher.flush()
    wait_for(lambda: count(db, "SELECT count(*) FROM readings") == 400, 30, "400 rows")
    assert count(db, "SELECT count(*) FROM dead_letters") == 0
    # the daily statistics follow the rows exactly: 10 readings in 10 distinct slots for each of 40 meters
    assert (
        count(
            db,
            "SELECT count(*) FROM meter_day_collection WHERE day = %s AND readings_count = 10 AND intervals_read = 10",
            DAY,
        )
        == 40
    )
    assert count(db, "SELECT count(*) FROM meter_register_state") == 40
    assert count(db, "SELECT count(*) FROM readings WHERE quality_flags <> 0") == 0


def test_duplicates_add_no_rows(
    db: psycopg.Connection[Any], unique: str, running_worker: IngestWorker, publisher: Publisher
) -> None:
    meters = [f"m{unique}{i:03d}" for i in range(10)]
    register(db, meters)
    for _ in range(3):
        for slot in range(5):
            for meter_id in meters:
                publisher.publish(*meter_message(meter_id, slot, 100 + slot))
        publisher.flush()
    wait_for(lambda: running_worker.stats.messages == 150, 30, "150 messages handled")
    assert count(db, "SELECT count(*) FROM readings") == 50
    assert running_worker.stats.duplicates == 100
    assert count(db, "SELECT sum(readings_count) FROM meter_day_collection") == 50


def test_bad_messages_go_to_dead_letters_and_ingest_goes_on(
    db: psycopg.Connection[Any], unique: str, running_worker: IngestWorker, publisher: Publisher
) -> None:
    good, inactive = f"g{unique}", f"i{unique}"
    register(db, [good])
    register(db, [inactive], status="inactive")
    future = datetime.now(UTC) + timedelta(hours=2)
    cases = {
        f"meters/{good}/readings": b"{not json",
        f"meters/u{unique}/readings": encode_meter_reading(MeterReading(f"u{unique}", local_ts(1), 5)),
        f"meters/{inactive}/readings": encode_meter_reading(MeterReading(inactive, local_ts(1), 5)),
    }
    for topic, payload in cases.items():
        publisher.publish(topic, payload)
    naive = {"ts": "2026-11-20T10:00:00", "energy_import_wh": 1}
    publisher.publish(f"meters/{good}/readings", json.dumps(naive).encode())
    publisher.publish(f"meters/{good}/readings", encode_meter_reading(MeterReading(good, future, 9)))
    publisher.publish(
        f"meters/{good}/readings", json.dumps({"ts": local_ts(2).isoformat(), "energy_import_wh": 1.5}).encode()
    )
    publisher.publish(*meter_message(good, 3, 42))
    publisher.flush()
    wait_for(lambda: count(db, "SELECT count(*) FROM readings") == 1, 30, "the good reading")
    wait_for(lambda: count(db, "SELECT count(*) FROM dead_letters") == 6, 30, "six dead letters")
    reasons = [r for (r,) in db.execute("SELECT reason FROM dead_letters ORDER BY dead_letter_id")]
    joined = "\n".join(reasons)
    assert "not valid JSON" in joined
    assert f"unknown meter 'u{unique}'" in joined
    assert f"meter '{inactive}' is inactive, not active" in joined
    assert "no UTC offset" in joined
    assert "in the future" in joined
    assert "energy_import_wh must be an integer" in joined
    raw = db.execute("SELECT payload FROM dead_letters WHERE reason LIKE 'payload is not valid JSON%%'").fetchone()
    assert raw is not None
    assert bytes(raw[0]) == b"{not json"


def test_register_decrease_and_rollover_are_stored_and_flagged(
    db: psycopg.Connection[Any], unique: str, running_worker: IngestWorker, publisher: Publisher
) -> None:
    rolling, reset = f"r{unique}", f"s{unique}"
    register(db, [rolling, reset])
    publisher.publish(*meter_message(rolling, 0, 999_999_000))
    publisher.publish(*meter_message(reset, 0, 50_000))
    publisher.flush()
    wait_for(lambda: count(db, "SELECT count(*) FROM readings") == 2, 30, "first readings")
    publisher.publish(*meter_message(rolling, 1, 400))
    publisher.publish(*meter_message(reset, 1, 10))
    # a late reading arriving after a later one is checked against the reading before it in time
    publisher.publish(*meter_message(reset, 2, 20))
    publisher.flush()
    wait_for(lambda: count(db, "SELECT count(*) FROM readings") == 5, 30, "all readings")
    flags = dict(
        db.execute("SELECT meter_id || '@' || extract(epoch FROM ts)::bigint, quality_flags FROM readings").fetchall()
    )
    assert flags[f"{rolling}@{int(local_ts(1).timestamp())}"] == QualityFlag.ROLLOVER
    assert flags[f"{reset}@{int(local_ts(1).timestamp())}"] == QualityFlag.REGISTER_DECREASE
    assert flags[f"{reset}@{int(local_ts(2).timestamp())}"] == 0


@pytest.mark.usefixtures("partitioned_storage")
def test_partitions_are_created_ahead_and_on_demand(
    db: psycopg.Connection[Any], unique: str, running_worker: IngestWorker, publisher: Publisher
) -> None:
    today = datetime.now(UTC).date()
    names = {
        n
        for (n,) in db.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'readings'::regclass"
        )
    }
    for offset in range(8):
        assert f"readings_p{today + timedelta(days=offset):%Y%m%d}" in names
    old = f"o{unique}"
    register(db, [old])
    # a late reading, inside the window of HEADEND_READING_MAX_AGE_DAYS (92)
    long_ago = datetime.combine(today - timedelta(days=60), datetime.min.time(), UTC) + timedelta(hours=12)
    publisher.publish(f"meters/{old}/readings", encode_meter_reading(MeterReading(old, long_ago, 7)))
    publisher.flush()
    wait_for(lambda: count(db, "SELECT count(*) FROM readings WHERE meter_id = %s", old) == 1, 30, "the old reading")
    with admin_connection(db) as admin:  # a partition is reached through readings only, by every head-end role
        assert count(admin, f"SELECT count(*) FROM readings_p{long_ago:%Y%m%d}") == 1


def test_database_connection_lost_holds_and_retries(
    db: psycopg.Connection[Any], unique: str, running_worker: IngestWorker, publisher: Publisher, database_url: str
) -> None:
    meters = [f"k{unique}{i:02d}" for i in range(20)]
    register(db, meters)
    dbname = db.info.dbname
    stop = threading.Event()

    def keep_killing() -> None:
        while not stop.wait(0.05):
            db_killer.execute(
                # client sessions only: a background worker of the database (TimescaleDB's job scheduler, an
                # autovacuum worker) runs as a superuser, and ending it is refused to the operator role
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                "AND pid <> %s AND backend_type = 'client backend'",
                (dbname, db.info.backend_pid),
            )

    with psycopg.connect(database_url, autocommit=True) as db_killer:
        killer = threading.Thread(target=keep_killing)
        killer.start()
        try:
            for slot in range(20):
                for meter_id in meters:
                    publisher.publish(*meter_message(meter_id, slot, slot))
            publisher.flush()
            wait_for(lambda: running_worker.stats.db_retries > 0, 30, "a failed write")
        finally:
            stop.set()
            killer.join()
    wait_for(lambda: count(db, "SELECT count(*) FROM readings") == 400, 60, "all 400 rows after the outage")
    assert count(db, "SELECT sum(readings_count) FROM meter_day_collection") == 400


def _worker_process(settings: Settings) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "HEADEND_DATABASE_URL": str(settings.database_url),
        "HEADEND_MQTT_HOST": str(settings.mqtt_host),
        "HEADEND_MQTT_PORT": str(settings.mqtt_port),
        "HEADEND_MQTT_CLIENT_ID": settings.mqtt_client_id,
        "HEADEND_MQTT_SHARED_GROUP": str(settings.mqtt_shared_group),
        "HEADEND_INGEST_BATCH_WAIT_MS": "20",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "headend", "--log-level", "info", "ingest"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_output(process: subprocess.Popen[str], text: str, timeout_s: float) -> list[str]:
    """Read the worker's output lines until one contains `text`; return the lines read."""
    assert process.stdout is not None
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if text in line:
                found.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not found.wait(timeout_s):
        pytest.fail(f"worker did not print {text!r} within {timeout_s} s: {''.join(lines)}")
    reader.join(5)
    return lines


def _wait_subscribed(process: subprocess.Popen[str], db: psycopg.Connection[Any], settings: Settings) -> None:
    """Wait until the broker delivers to the worker: a probe reading for a probe meter gets stored."""
    probe = f"p{settings.mqtt_client_id[-12:]}".replace("-", "")
    register(db, [probe])
    with Publisher() as pub:

        def stored() -> bool:
            pub.publish(*meter_message(probe, 0, 1))
            pub.flush()
            return count(db, "SELECT count(*) FROM readings WHERE meter_id = %s", probe) == 1

        wait_for(stored, 30, "worker subscribed")
        assert process.poll() is None


def test_worker_killed_mid_stream_loses_and_duplicates_nothing(
    db: psycopg.Connection[Any], unique: str, settings_for: Callable[..., Settings], database_url: str
) -> None:
    settings = settings_for(database_url)
    dcus = [f"d{unique}{i}" for i in range(4)]
    meters = {d: [f"{d}m{j:03d}" for j in range(100)] for d in dcus}
    for d, ids in meters.items():
        register(db, ids, concentrator=d)
    process = _worker_process(settings)
    _wait_subscribed(process, db, settings)
    base = count(db, "SELECT count(*) FROM readings")
    published = threading.Event()

    def publish_all() -> None:
        with Publisher() as pub:
            for slot in range(60):
                for d, ids in meters.items():
                    pub.publish(
                        f"concentrators/{d}/readings",
                        encode_concentrator_batch(
                            d, local_ts(slot), [MeterReading(m, local_ts(slot), slot * 10) for m in ids]
                        ),
                    )
                if slot % 10 == 0:
                    pub.flush()
        published.set()

    sender = threading.Thread(target=publish_all)
    sender.start()
    wait_for(lambda: count(db, "SELECT count(*) FROM readings") > base + 2000, 60, "ingest under way")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)
    stored_at_kill = count(db, "SELECT count(*) FROM readings") - base
    process = _worker_process(settings)
    try:
        sender.join(120)
        assert published.is_set()
        expected = 60 * 400
        wait_for(lambda: count(db, "SELECT count(*) FROM readings") - base == expected, 120, f"{expected} rows")
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert stored_at_kill < expected
    assert count(db, "SELECT count(*) FROM readings WHERE meter_id LIKE %s", f"d{unique}%") == expected
    assert (
        count(db, "SELECT sum(readings_count) FROM meter_day_collection WHERE meter_id LIKE %s", f"d{unique}%")
        == expected
    )


def test_two_workers_share_the_load_without_loss(
    db: psycopg.Connection[Any], unique: str, settings_for: Callable[..., Settings], database_url: str
) -> None:
    first, second = settings_for(database_url, "a"), settings_for(database_url, "b")
    meters = [f"w{unique}{i:03d}" for i in range(100)]
    register(db, meters)
    processes = [_worker_process(first), _worker_process(second)]
    early: list[list[str]] = [[], []]
    try:
        # a probe through the shared group may reach either worker: each must say it is subscribed
        early = [_wait_for_output(process, "subscribed to", 30) for process in processes]
        _wait_subscribed(processes[0], db, first)
        _wait_subscribed(processes[1], db, second)
        base = count(db, "SELECT count(*) FROM readings")
        with Publisher() as pub:
            for slot in range(30):
                for meter_id in meters:
                    pub.publish(*meter_message(meter_id, slot, slot))
        wait_for(lambda: count(db, "SELECT count(*) FROM readings") - base == 3000, 60, "3000 rows")
    finally:
        outputs: list[str] = []
        for process, read_early in zip(processes, early, strict=True):
            process.send_signal(signal.SIGTERM)
            outputs.append("".join(read_early) + process.communicate(timeout=30)[0])
    handled = [int(out.split("stopped: ")[1].split(" messages")[0]) for out in outputs]
    assert all(h > 0 for h in handled), handled
    assert sum(handled) >= 3000


def test_every_dead_letter_is_logged_with_its_reason_but_a_flood_only_up_to_a_limit(
    db: psycopg.Connection[Any],
    unique: str,
    settings_for: Callable[..., Settings],
    database_url: str,
    publisher: Publisher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "headend.ingest.worker")
    settings = settings_for(database_url).model_copy(update={"status_interval_s": 1.0})
    worker = IngestWorker(settings, database_url)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.connected.wait(15), "worker did not subscribe"
        dcu, good = f"d{unique}", f"g{unique}"
        register(db, [good], concentrator=dcu)
        future = datetime.now(UTC) + timedelta(hours=2)
        readings = [MeterReading(good, local_ts(1), 5), MeterReading(good, future, 9)]
        publisher.publish(f"concentrators/{dcu}/readings", encode_concentrator_batch(dcu, local_ts(1), readings))
        publisher.flush()
        wait_for(lambda: worker.stats.dead_letters == 1, 30, "the dead letter of the concentrator")
        for i in range(200):
            publisher.publish(*meter_message(f"u{unique}{i:03d}", 1, 5))
        publisher.flush()

        def logged() -> tuple[list[str], int]:
            lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dead letter from")]
            left_out = sum(int(vars(r)["left_out"]) for r in caplog.records if "left_out" in vars(r))
            return lines, left_out

        wait_for(lambda: len(logged()[0]) + logged()[1] == 201, 30, "every dead letter logged or summed up")
    finally:
        worker.stop()
        thread.join(15)
    lines, left_out = logged()
    assert lines[0] == (
        f"dead letter from concentrators/{dcu}/readings (item 1, meter {good}): ts {future.isoformat()} is more than "
        "300 s in the future"
    )
    flood = re.compile(rf"dead letter from meters/u{unique}(\d{{3}})/readings: unknown meter 'u{unique}\1'")
    assert lines[1:]
    assert all(flood.fullmatch(line) for line in lines[1:]), lines
    assert left_out > 100  # at most 10 lines a period (1 s here) of the 200 of the flood
    dead_letter_lines = [r for r in caplog.records if r.getMessage().startswith(("dead letter from", "… and"))]
    assert {r.levelno for r in dead_letter_lines} == {logging.WARNING}
    # the status lines count them
    status = [vars(r) for r in caplog.records if r.getMessage().startswith("ingest: ")]
    assert status[-1]["totals"] == {
        "messages": 201,
        "readings_inserted": 1,
        "duplicates": 0,
        "dead_letters": 201,
        "batches": worker.stats.batches,
    }
    assert status[-1]["state"] in ("running", "idle")


def _ingest_process(database_url: str, port: int, unique: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "HEADEND_DATABASE_URL": database_url,
        "HEADEND_MQTT_HOST": "127.0.0.1",
        "HEADEND_MQTT_PORT": str(port),
        "HEADEND_MQTT_CLIENT_ID": f"test-ingest-{unique}",
        "HEADEND_STATUS_INTERVAL_S": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "headend", "--log-level", "info", "--log-format", "json", "ingest"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_an_unreachable_broker_is_logged_at_every_attempt_and_the_connection_once_it_is_there(
    database_url: str, unique: str
) -> None:
    port = free_port()  # nobody listens on it
    process = _ingest_process(database_url, port, unique)
    assert process.stderr is not None
    err = Lines(process.stderr)
    try:
        first = err.wait_for(f"cannot connect to the broker 127.0.0.1:{port}: connection refused (attempt 1;", 15)
        err.wait_for("connection refused (attempt 2;", 10, after=first)
        stalled = json.loads(err.lines[err.wait_for('"worker": "ingest"', 5)])
        assert stalled["level"] == "WARNING"
        assert stalled["message"].startswith(f"ingest: not connected to the broker 127.0.0.1:{port} for ")
        assert stalled["state"] == "problem"
        with private_mosquitto(port):
            connected = json.loads(err.lines[err.wait_for(f"connected to the broker 127.0.0.1:{port} after", 40)])
            assert connected["level"] == "INFO"
            err.wait_for("subscribed to", 10)
            assert process.poll() is None
    finally:
        process.terminate()
        process.wait(30)
        err.close()
    entries = [json.loads(line) for line in err.lines]  # every line is one JSON object
    refused = [e for e in entries if e["message"].startswith("cannot connect to the broker")]
    assert [e["attempt"] for e in refused] == list(range(1, len(refused) + 1))
    assert all(e["level"] == "WARNING" for e in refused)


def test_a_broker_refusing_the_worker_is_logged_with_the_connack_reason(database_url: str, unique: str) -> None:
    port = free_port()
    with private_mosquitto(port, allow_anonymous=False):
        process = _ingest_process(database_url, port, unique)
        assert process.stderr is not None
        err = Lines(process.stderr)
        try:
            line = err.lines[err.wait_for("refused by the broker", 15)]
        finally:
            process.terminate()
            process.wait(30)
            err.close()
    assert json.loads(line)["message"] == (
        f"cannot connect to the broker 127.0.0.1:{port}: refused by the broker: Not authorized (CONNACK reason code "
        "135) (attempt 1; retrying, at most 30 s apart)"
    )
