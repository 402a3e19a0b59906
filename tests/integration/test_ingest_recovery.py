"""The ingest worker survives its dependencies: a database that goes away and a broker that restarts, mid-stream.

It holds what it received, says in its status line every period that it cannot make progress, and resumes on its own
when they are back, without losing or duplicating a reading.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from headend.mqtt.embedded_broker import free_port
from headend.settings import Settings
from protocols.mqtt_codec import encode_meter_reading
from protocols.readings import MeterReading
from tests.integration.conftest import ADMIN_URL, Publisher, count, register, wait_for
from tests.integration.ingest_support import PortPublisher, RunningWorker, restartable_mosquitto, superuser

pytestmark = pytest.mark.integration
START = datetime.combine(datetime.now(UTC).date() - timedelta(days=2), datetime.min.time(), UTC)
SLOT = timedelta(minutes=15)


def publish_slots(publisher: Publisher | PortPublisher, meters: list[str], slots: range) -> int:
    """One reading per meter and 15-minute slot; how many were published."""
    for slot in slots:
        for meter_id in meters:
            reading = MeterReading(meter_id, START + slot * SLOT, 1000 + slot)
            publisher.publish(f"meters/{meter_id}/readings", encode_meter_reading(reading))
    return len(slots) * len(meters)


def status_lines(caplog: pytest.LogCaptureFixture, since: float) -> list[logging.LogRecord]:
    """The ingest status lines logged since `since` (time.time())."""
    return [r for r in caplog.records if r.getMessage().startswith("ingest: ") and r.created >= since]


def assert_every_reading_stored_once(db: psycopg.Connection[Any], meters: list[str], expected: int) -> None:
    """All `expected` readings of `meters` are stored, and counted once in the daily statistics."""
    wait_for(
        lambda: count(db, "SELECT count(*) FROM readings WHERE meter_id = ANY(%s)", meters) == expected,
        60,
        f"{expected} readings",
    )
    assert (
        count(db, "SELECT sum(readings_count) FROM meter_day_collection WHERE meter_id = ANY(%s)", meters) == expected
    )


def test_while_the_database_refuses_connections_the_worker_says_so_every_period_and_loses_nothing(
    db: psycopg.Connection[Any],
    unique: str,
    settings_for: Callable[..., Settings],
    database_url: str,
    publisher: Publisher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "headend.ingest.worker")
    meters = [f"b{unique}{i:02d}" for i in range(20)]
    register(db, meters)
    running = RunningWorker(settings_for(database_url).model_copy(update={"status_interval_s": 0.5}), database_url)
    try:
        published = publish_slots(publisher, meters, range(0, 5))
        publisher.flush()
        assert_every_reading_stored_once(db, meters, published)
        dbname = db.info.dbname
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
            try:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                    (dbname, db.info.backend_pid),
                )
                cut_at = time.time()
                published += publish_slots(publisher, meters, range(5, 10))
                publisher.flush()

                def problem_lines() -> list[logging.LogRecord]:
                    return [r for r in status_lines(caplog, cut_at) if vars(r)["state"] == "problem"]

                wait_for(lambda: len(problem_lines()) >= 4, 30, "four status lines saying what is wrong")
                assert count(db, "SELECT count(*) FROM readings WHERE meter_id = ANY(%s)", meters) == 100
            finally:
                admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        lines = problem_lines()
        assert {r.levelno for r in lines} == {logging.WARNING}
        assert all("database write failing" in r.getMessage() for r in lines), lines[0].getMessage()
        assert all("database" in str(vars(r)["problem"]) for r in lines)
        # one a period, not one per retry
        gaps = [b.created - a.created for a, b in itertools.pairwise(lines)]
        assert all(gap >= 0.4 for gap in gaps), gaps
        assert_every_reading_stored_once(db, meters, published)
        assert running.worker.stats.db_retries > 0
        back_at = time.time()
        wait_for(lambda: bool(status_lines(caplog, back_at)), 10, "a status line after the outage")
        assert vars(status_lines(caplog, back_at)[-1])["problem"] is None
        assert running.thread.is_alive()
    finally:
        running.stop()
    assert running.failure is None


def test_the_worker_reconnects_after_the_connection_is_killed_mid_stream_and_stores_all_once(
    db: psycopg.Connection[Any],
    unique: str,
    settings_for: Callable[..., Settings],
    database_url: str,
    publisher: Publisher,
) -> None:
    meters = [f"k{unique}{i:02d}" for i in range(20)]
    register(db, meters)
    running = RunningWorker(settings_for(database_url), database_url)
    try:
        published = 0
        for part in range(6):
            published += publish_slots(publisher, meters, range(part * 5, part * 5 + 5))
            publisher.flush()
            with superuser(db) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                    "AND pid <> pg_backend_pid() AND pid <> %s",
                    (db.info.dbname, db.info.backend_pid),
                )
        assert_every_reading_stored_once(db, meters, published)
        assert running.worker.stats.db_retries > 0
        assert running.thread.is_alive()
    finally:
        running.stop()
    assert running.failure is None


def test_after_a_broker_restart_the_worker_resumes_without_loss_or_duplication(
    db: psycopg.Connection[Any],
    unique: str,
    settings_for: Callable[..., Settings],
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "headend.ingest.worker")
    meters = [f"r{unique}{i:02d}" for i in range(20)]
    register(db, meters)
    port = free_port()
    with restartable_mosquitto(port) as broker:
        settings = settings_for(database_url).model_copy(update={"mqtt_port": port, "status_interval_s": 0.5})
        running = RunningWorker(settings, database_url)
        try:
            with psycopg.connect(make_conninfo(ADMIN_URL, dbname=db.info.dbname)) as blocker:
                # hold the worker's commits, so that the broker goes down with messages delivered, not yet acknowledged
                blocker.execute("LOCK TABLE meter_register_state IN EXCLUSIVE MODE")
                publisher = PortPublisher(port)
                published = publish_slots(publisher, meters, range(0, 10))
                publisher.close()
                wait_for(lambda: running.worker.received >= published, 30, "everything delivered to the worker")
                broker.stop()
                down_at = time.time()
                wait_for(
                    lambda: any(
                        "not connected to the broker" in r.getMessage() and r.levelno == logging.WARNING
                        for r in status_lines(caplog, down_at)
                    ),
                    10,
                    "a status line saying the broker is out of reach",
                )
            # the held batch commits now; its acknowledgements went nowhere, so the broker delivers it again
            broker.start()
            assert running.worker.connected.wait(30), "worker did not reconnect"
            publisher = PortPublisher(port)
            published += publish_slots(publisher, meters, range(10, 20))
            publisher.close()
            assert_every_reading_stored_once(db, meters, published)
            wait_for(lambda: running.worker.received >= published, 30, "everything delivered")
            assert running.worker.received > published  # what was not acknowledged came again ...
            assert running.worker.stats.duplicates > 0  # ... and was not stored twice
            assert running.thread.is_alive()
        finally:
            running.stop()
    assert running.failure is None
