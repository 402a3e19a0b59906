"""Metrics scraped over HTTP from running workers and the API, on the real broker and database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from headend.api import store
from headend.api.app import create_app
from headend.api.credentials import Role, new_token
from headend.db.grants import DbRole
from headend.dispatch.metrics import DispatchMetrics
from headend.dispatch.service import run_dispatcher
from headend.engine.catalog import Catalog
from headend.engine.metrics import EngineMetrics
from headend.engine.runner import EngineRunner
from headend.ingest.metrics import IngestMetrics
from headend.ingest.worker import IngestWorker
from headend.mqtt.embedded_broker import free_port
from headend.runtime.metrics import Exporter, new_registry, start_exporter
from headend.settings import Settings
from prepay_engine.tariffs import SHANGHAI
from protocols.mqtt_codec import encode_meter_reading
from protocols.readings import MeterReading
from simulators.command_responder import CommandResponder
from simulators.fleet import Fleet, SimMeter
from simulators.load_shapes import MeterKind
from simulators.publisher import BrokerConfig
from simulators.relay_sim import RelayFault
from tests.integration.conftest import (
    MQTT_HOST,
    MQTT_PORT,
    MigratedDatabase,
    Publisher,
    count,
    register,
    wait_for,
)
from tests.integration.engine_support import DAY_START, open_test_account, seed_catalog, series, store_readings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Conn = psycopg.Connection[Any]
STEP = timedelta(minutes=15)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(port: int) -> Samples:
    """The samples an exporter on 127.0.0.1 serves."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return parse(answer.read().decode())


def get(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value; None when there is none."""
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def exported() -> Iterator[tuple[CollectorRegistry, Exporter]]:
    """A process registry served on a free port of 127.0.0.1."""
    registry = new_registry()
    exporter = start_exporter(registry, "127.0.0.1", 0)
    yield registry, exporter
    exporter.close()


# ------------------------------------------------------------------------------------------------------------- ingest


def _recent(slot: int) -> datetime:
    """A 15-minute slot of yesterday: inside the reading window whenever the test runs."""
    start = (datetime.now(UTC) - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return start + slot * STEP


def test_an_ingest_worker_s_metrics_count_what_it_stored_refused_and_why(
    db: Conn,
    database_url: str,
    settings_for: Callable[..., Settings],
    unique: str,
    publisher: Publisher,
    exported: tuple[CollectorRegistry, Exporter],
) -> None:
    registry, exporter = exported
    good, inactive = f"g{unique}", f"i{unique}"
    register(db, [good])
    register(db, [inactive], status="inactive")
    worker = IngestWorker(settings_for(database_url), database_url, metrics=IngestMetrics(registry))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.connected.wait(15), "worker did not subscribe"
        for slot in range(6):
            publisher.publish(f"meters/{good}/readings", encode_meter_reading(MeterReading(good, _recent(slot), slot)))
        for slot in range(2):  # sent again: duplicates
            publisher.publish(f"meters/{good}/readings", encode_meter_reading(MeterReading(good, _recent(slot), slot)))
        publisher.publish(f"meters/{good}/readings", b"{not json")
        publisher.publish(f"meters/{good}/readings", json.dumps({"ts": "2026-11-20T10:00:00"}).encode())
        publisher.publish(f"meters/u{unique}/readings", encode_meter_reading(MeterReading(f"u{unique}", _recent(1), 5)))
        publisher.publish(f"meters/{inactive}/readings", encode_meter_reading(MeterReading(inactive, _recent(1), 5)))
        old = datetime.now(UTC) - timedelta(days=200)
        publisher.publish(f"meters/{good}/readings", encode_meter_reading(MeterReading(good, old, 1)))
        publisher.flush()
        wait_for(lambda: worker.stats.messages >= 13, 30, "13 messages handled")
        samples = scrape(exporter.port)
    finally:
        worker.stop()
        thread.join(15)
    assert get(samples, "headend_ingest_messages_total") == 13
    assert get(samples, "headend_ingest_readings_stored_total") == 6 == count(db, "SELECT count(*) FROM readings")
    assert get(samples, "headend_ingest_duplicates_total") == 2
    dead = {
        kind: get(samples, "headend_ingest_dead_letters_total", kind=kind)
        for kind in ("malformed", "unknown_meter", "inactive_meter", "too_old", "in_future", "conflict", "other")
    }
    assert dead == {
        "malformed": 2,
        "unknown_meter": 1,
        "inactive_meter": 1,
        "too_old": 1,
        "in_future": 0,
        "conflict": 0,
        "other": 0,
    }
    assert sum(n or 0 for n in dead.values()) == count(db, "SELECT count(*) FROM dead_letters")
    received = get(samples, "headend_ingest_messages_received_total")
    assert received is not None
    assert received >= 13
    assert get(samples, "headend_ingest_inbox_messages") == 0
    batches = get(samples, "headend_ingest_batch_duration_seconds_count")
    assert batches is not None
    assert batches >= 1
    assert get(samples, "headend_ingest_batch_latency_seconds_count") == batches
    assert get(samples, "process_resident_memory_bytes") or sys.platform != "linux"


def test_headend_ingest_serves_its_metrics_on_the_metrics_port(db: Conn, database_url: str, unique: str) -> None:
    meter = f"c{unique}"
    register(db, [meter])
    port = free_port()
    env = {
        **os.environ,
        "HEADEND_DATABASE_URL": database_url,
        "HEADEND_MQTT_HOST": MQTT_HOST,
        "HEADEND_MQTT_PORT": str(MQTT_PORT),
        "HEADEND_MQTT_CLIENT_ID": f"test-ingest-{unique}",
        "HEADEND_MQTT_SHARED_GROUP": f"g{unique}",
        "HEADEND_METRICS_PORT": "1",  # the option wins
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "headend", "ingest", "--metrics-port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def serving() -> bool:
            try:
                return get(scrape(port), "headend_ingest_messages_total") is not None
            except OSError:
                return False

        wait_for(serving, 20, "the worker's metrics")
        with Publisher() as publisher:

            def stored() -> bool:
                # published until the worker's subscription takes it: its session may be newer than the first ones
                publisher.publish(f"meters/{meter}/readings", encode_meter_reading(MeterReading(meter, _recent(3), 7)))
                publisher.flush()
                return count(db, "SELECT count(*) FROM readings") == 1

            wait_for(stored, 20, "a reading stored")
        wait_for(lambda: get(scrape(port), "headend_ingest_readings_stored_total") == 1, 10, "it counted")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    assert process.returncode == 0


# ------------------------------------------------------------------------------------------------------------- engine


def test_the_engine_s_backlog_is_the_accounts_a_sweep_takes_and_its_batches_are_counted(db: Conn) -> None:
    catalog = seed_catalog(db)
    register(db, ["m1", "m2", "m3"])
    for n in (1, 2, 3):
        open_test_account(db, catalog, f"a{n}", f"m{n}")
    at = DAY_START + timedelta(hours=2)
    for meter_id in ("m1", "m2"):
        store_readings(db, series(meter_id, DAY_START + STEP, 4, STEP, 1_000_100, 100), now=at)
    registry = CollectorRegistry()
    clock = [0.0]
    metrics = EngineMetrics(registry, lateness_s=300, eager_on_grid=True, backlog_every_s=30, clock=lambda: clock[0])
    metrics.tick(db, at)
    assert registry.get_sample_value("headend_engine_backlog_accounts") == 2
    runner = EngineRunner(db, 300, 1, clock=lambda: at, catalog=Catalog(), eager_on_grid=True, metrics=metrics)
    runner.sweep()
    assert registry.get_sample_value("headend_engine_batch_duration_seconds_count") == 2  # one account a batch
    assert registry.get_sample_value("headend_engine_accounts_total") == 2
    charges = registry.get_sample_value("headend_engine_interval_charges_total")
    assert charges == count(db, "SELECT count(*) FROM usage_charges") > 0
    metrics.tick(db, at)
    assert registry.get_sample_value("headend_engine_backlog_accounts") == 2  # not looked at again yet
    clock[0] += 30
    metrics.tick(db, at)
    assert registry.get_sample_value("headend_engine_backlog_accounts") == 0
    assert registry.get_sample_value("headend_engine_backlog_query_failures_total") == 0


# ----------------------------------------------------------------------------------------------------------- dispatch


def test_the_dispatcher_reports_open_commands_by_state_its_steps_and_the_round_trip(
    db: Conn, database_url: str, exported: tuple[CollectorRegistry, Exporter]
) -> None:
    registry, exporter = exported
    prefix = f"x{uuid.uuid4().hex[:6]}"
    answering, offline = f"{prefix}m1", f"{prefix}m2"
    catalog = seed_catalog(db)
    register(db, [answering, offline])
    for n, meter_id in enumerate((answering, offline), 1):
        open_test_account(db, catalog, f"{prefix}a{n}", meter_id)
        store_readings(db, series(meter_id, DAY_START + STEP, 16, STEP, 1_000_500, 500))
    EngineRunner(db, 600.0, 100, clock=lambda: DAY_START + timedelta(days=1, hours=2), catalog=catalog).sweep()
    assert count(db, "SELECT count(*) FROM command_requests") == 2  # both run out: two disconnects
    fleet = Fleet(
        tuple(
            SimMeter(m, None, "test", "SIM-1", MeterKind.RESIDENTIAL, 1_000_000, reconnect_mode="direct")
            for m in (answering, offline)
        ),
        (),
        seed=7,
    )
    responder = CommandResponder(
        fleet, BrokerConfig(host=MQTT_HOST, port=MQTT_PORT), faults={offline: RelayFault.OFFLINE}, delay_s=(0.05, 0.2)
    )
    responder.start()
    settings = Settings(
        database_url=database_url,
        mqtt_host=MQTT_HOST,
        mqtt_port=MQTT_PORT,
        dispatch_client_id=f"test-dispatch-{prefix}",
        mqtt_shared_group=None,
        dispatch_command_ttl_s=60,
        dispatch_retry_first_s=0.5,
        dispatch_retry_cap_s=1.0,
    )
    stop = threading.Event()
    metrics = DispatchMetrics(registry, query_every_s=0.2)
    thread = threading.Thread(target=run_dispatcher, args=(settings, database_url, stop), kwargs={"metrics": metrics})
    thread.start()
    try:

        def state(meter_id: str) -> str | None:
            row = db.execute("SELECT state FROM commands WHERE meter_id = %s", (meter_id,)).fetchone()
            return None if row is None else str(row[0])

        wait_for(lambda: state(answering) == "confirmed", 30, "the answering meter's disconnect confirmed")
        assert state(offline) == "sent"

        def reported() -> bool:
            samples = scrape(exporter.port)
            return (
                get(samples, "headend_dispatch_command_round_trip_seconds_count", action="disconnect") == 1
                and get(samples, "headend_dispatch_commands", state="sent") == 1
            )

        wait_for(reported, 10, "the confirmation's round trip and the open command")
        samples = scrape(exporter.port)
    finally:
        stop.set()
        thread.join(15)
        responder.stop()
    open_states = {s: get(samples, "headend_dispatch_commands", state=s) for s in ("created", "held", "acknowledged")}
    assert open_states == {"created": 0, "held": 0, "acknowledged": 0}
    steps = {
        step: get(samples, "headend_dispatch_command_steps_total", step=step)
        for step in ("taken", "confirmed", "failed", "expired", "held")
    }
    assert steps == {"taken": 2, "confirmed": 1, "failed": 0, "expired": 0, "held": 0}
    sent = get(samples, "headend_dispatch_command_steps_total", step="sent")
    assert sent is not None
    assert sent >= 2  # the offline meter's is sent again
    applied = get(samples, "headend_dispatch_events_total", result="applied")
    assert applied is not None
    assert applied >= 1
    round_trip = get(samples, "headend_dispatch_command_round_trip_seconds_sum", action="disconnect")
    confirmation = db.execute(
        "SELECT c.sent_at, a.at FROM commands c JOIN command_audit a USING (command_id) "
        "WHERE c.meter_id = %s AND a.to_state = 'confirmed'",
        (answering,),
    ).fetchone()
    assert confirmation is not None
    sent_at, confirmed_at = confirmation
    assert round_trip == pytest.approx((confirmed_at - sent_at).total_seconds())
    assert get(samples, "headend_dispatch_metrics_query_failures_total") == 0


# ---------------------------------------------------------------------------------------------------------------- API


def _api_settings(url: str, **changes: Any) -> Settings:
    return Settings(database_url=url, api_pool_size=2, **changes)


@pytest.fixture
def fleet_today(db: Conn) -> int:
    """Four meters registered; today (local) two of them read, one of those at every interval so far; how many
    are complete (1 in the day's last interval, else 0)."""
    register(db, ["t1", "t2", "t3", "t4"])
    now = datetime.now(UTC)
    midnight = now.astimezone(SHANGHAI).replace(hour=0, minute=0, second=0, microsecond=0)
    intervals = int((now - midnight) / STEP) + 1  # the current one included
    store_readings(db, series("t1", midnight, intervals, STEP, 1000, 10))
    store_readings(db, [("t2", midnight, 500)])
    return 1 if intervals == 96 else 0


def test_the_api_s_metrics_count_requests_by_route_and_status_and_show_today_s_collection(
    migrated: MigratedDatabase, db: Conn, fleet_today: int
) -> None:
    token, field_token = new_token(), new_token()
    store.create_principal(db, "ops", Role.OPERATOR, token, created_by="test")
    store.create_principal(db, "field", Role.FIELD_STAFF, field_token, created_by="test")
    # as the API's own role in production: its grants must cover the collection report
    with TestClient(create_app(_api_settings(migrated.role_url(DbRole.API)))) as client:
        auth = {"Authorization": f"Bearer {token}"}
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
        assert client.get("/v1/accounts/nobody", headers=auth).status_code == 404
        assert client.get("/v1/accounts/nobody").status_code == 401
        assert client.get("/no/such/page").status_code == 404
        answer = client.get("/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        samples = parse(answer.text)
        again = parse(client.get("/metrics").text)
    assert get(samples, "headend_api_requests_total", method="GET", route="/healthz", status="2xx") == 3
    account = "/v1/accounts/{account_id}"
    assert get(samples, "headend_api_requests_total", method="GET", route=account, status="4xx") == 2
    assert get(samples, "headend_api_requests_total", method="GET", route="unmatched", status="4xx") == 1
    assert get(samples, "headend_api_request_duration_seconds_count", method="GET", route="/healthz") == 3
    assert not [labels for (_, labels) in samples if ("route", "/v1/accounts/nobody") in labels]
    assert get(samples, "headend_collection_today_expected_meters") == 4
    assert get(samples, "headend_collection_today_read_meters") == 2
    assert get(samples, "headend_collection_today_success_ratio") == 0.5
    assert get(samples, "headend_collection_today_complete_meters") == fleet_today
    assert get(samples, "headend_collection_today_failures_total") == 0
    # the scrape before counted: /metrics is a route like the others
    assert get(again, "headend_api_requests_total", method="GET", route="/metrics", status="2xx") == 1
    computed = get(again, "headend_collection_today_computed_timestamp_seconds")
    assert computed == get(samples, "headend_collection_today_computed_timestamp_seconds")  # within the interval

    # HEADEND_METRICS_REQUIRE_TOKEN: an operator's (or admin's) token, nobody else's
    with TestClient(create_app(_api_settings(migrated.url, metrics_require_token=True))) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {field_token}"}).status_code == 403
        answer = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200
        assert "headend_api_requests_total" in answer.text
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]
