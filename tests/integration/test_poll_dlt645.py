"""`headend poll` reading DL/T 645-2007 meters behind the simulated serial-to-TCP gateway on 127.0.0.1: registers
stored as the meters show them, one exchange at a time on the bus, failures kept with their reasons."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from headend.mqtt.embedded_broker import free_port
from headend.poll.service import run_poller
from headend.registry.meter_import import import_meters, read_registry_file
from headend.settings import Settings
from simulators.dlt645_gateway import Dlt645Gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
NOW = datetime(2026, 12, 6, 3, 7, 30, tzinfo=UTC)  # the meters' true time: their registers stand still


@pytest.fixture
def gateway() -> Iterator[Dlt645Gateway]:
    running = Dlt645Gateway("127.0.0.1", free_port(), 6, seed=3, clock=lambda: NOW, baud=9600, latency_s=0.005)
    running.start()
    yield running
    running.stop()


def test_meters_behind_a_gateway_are_read_one_exchange_at_a_time(
    db: psycopg.Connection[Any], database_url: str, gateway: Dlt645Gateway, tmp_path: Path
) -> None:
    registry = tmp_path / "dlt645.csv"
    gateway.write_registry_csv(registry)
    parsed = read_registry_file(registry)
    assert parsed.errors == []
    import_meters(db, parsed.rows)
    silent, corrupt, refusing = gateway.addresses[:3]
    gateway.set_fault(silent, "no_answer")
    gateway.set_fault(corrupt, "corrupt")
    gateway.set_fault(refusing, "abnormal")

    settings = Settings(database_url=database_url, poll_timeout_s=0.3, poll_retries=1, poll_retry_backoff_s=0.01)
    totals = asyncio.run(run_poller(settings, database_url, threading.Event(), once=True))
    assert (totals.read, totals.failed, totals.stored) == (3, 3, 3)

    for address in gateway.addresses[3:]:
        truth = gateway.snapshot(address)
        row = db.execute(
            "SELECT energy_import_wh, relay_state, source FROM readings WHERE meter_id = %s", (truth.meter_id,)
        ).fetchone()
        assert row == (truth.energy_wh, truth.relay.value, f"dlt645:{gateway.endpoint} bus rs485-1 address {address}")
    failures = dict(
        db.execute("SELECT meter_id, kind || ' ' || attempts || ': ' || reason FROM poll_failures").fetchall()
    )
    assert failures[gateway.meter_id(silent)] == f"timeout 2: no answer from {silent} to read 00010000 within 0.3 s"
    assert failures[gateway.meter_id(corrupt)].startswith("bad_frame 2: read 00010000 of")
    assert failures[gateway.meter_id(refusing)].startswith(f"meter_error 1: meter {refusing} refused read_data")
    # one exchange at a time: no use of the bus began before the one before it ended
    log = gateway.bus_log()
    assert len(log) >= 3 * 5
    assert all(later.started >= earlier.ended for earlier, later in itertools.pairwise(log))
