"""Metrics: the exporter, the periodic gate, values read when scraped, bounded labels, what each worker counts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.request
from collections import Counter as Tally
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import cast

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from headend.api.metrics import ApiMetrics, CollectionToday, RequestMetrics
from headend.dispatch.dispatcher import Dispatcher, DispatchStats
from headend.dispatch.metrics import DispatchMetrics
from headend.engine.charging import BatchStats
from headend.engine.metrics import EngineMetrics
from headend.ingest import faults
from headend.ingest.messages import DeadLetter, Decoded, InboundMessage, decode_message
from headend.ingest.metrics import DeadLetterKind, IngestMetrics, dead_letter_kind
from headend.ingest.validation import TimeWindow
from headend.ingest.worker import IngestWorker
from headend.ingest.writer import WriteResult
from headend.poll.failures import FailureKind
from headend.poll.metrics import PollMetrics
from headend.poll.poller import RoundTotals
from headend.poll.service import PollTotals
from headend.reports.collection import CollectionCounts
from headend.runtime.metrics import (
    Every,
    MetricsPortError,
    Reading,
    ReadingsCollector,
    new_registry,
    start_exporter,
    worker_metrics,
)
from headend.settings import Settings

NOW = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """A sample's value, None when the registry has no such sample."""
    return registry.get_sample_value(name, labels or None)


def scrape(port: int) -> str:
    """The text an exporter on 127.0.0.1 serves."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def test_the_exporter_serves_the_registry_and_gives_the_port_back_when_closed() -> None:
    registry = new_registry()
    ReadingsCollector([Reading("headend_test_things", "Things", lambda: 7)], registry)
    exporter = start_exporter(registry, "127.0.0.1", 0)
    try:
        text = scrape(exporter.port)
    finally:
        exporter.close()
    assert "headend_test_things_total 7.0" in text
    assert "process_cpu_seconds_total" in text or sys.platform != "linux"  # the process's own metrics too
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", exporter.port)) != 0  # nobody listens any more


def test_a_port_that_is_taken_is_a_set_up_error_naming_the_option() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortError, match=rf"cannot serve metrics on 127\.0\.0\.1:{port}: .*--metrics-port"):
            start_exporter(new_registry(), "127.0.0.1", port)


def test_metrics_are_off_unless_a_port_is_given_and_the_option_wins_over_the_setting() -> None:
    with worker_metrics(Settings(), None) as registry:
        assert registry is None
    with worker_metrics(Settings(metrics_port=1), 0) as registry:
        assert registry is None  # --metrics-port 0 turns off what the setting turned on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with worker_metrics(Settings(metrics_host="127.0.0.1"), port) as registry:
        assert registry is not None
        assert "python_info" in scrape(port)


def test_the_gate_opens_at_once_then_once_per_interval() -> None:
    clock = FakeClock()
    every = Every(30, clock)
    assert every.due()
    assert not every.due()
    clock.now += 29.9
    assert not every.due()
    clock.now += 0.1
    assert every.due()
    assert not every.due()


def test_readings_are_read_when_scraped_not_before() -> None:
    registry = CollectorRegistry()
    reads: list[int] = []
    seen = {"n": 3}

    def read() -> int:
        reads.append(seen["n"])
        return seen["n"]

    ReadingsCollector([Reading("headend_test_gauge", "A gauge", read, counter=False)], registry)
    assert reads == []  # registering describes, reads nothing
    seen["n"] = 5
    assert value(registry, "headend_test_gauge") == 5
    assert reads == [5]


# ------------------------------------------------------------------------------------------------------------- ingest


def _decoded_dead(topic: str, payload: bytes) -> DeadLetter:
    decoded = Decoded()
    decode_message(InboundMessage(topic, payload, NOW), decoded)
    [dead] = decoded.dead_letters
    return dead


def _reading_dead(reason: str) -> DeadLetter:
    return DeadLetter("meters/m1/readings", b"{}", reason, NOW, None, "m1")


@pytest.mark.parametrize(
    ("dead", "kind"),
    [
        (_decoded_dead("meters/m1/readings", b"{not json"), DeadLetterKind.MALFORMED),
        (_decoded_dead("meters/m1/events", b"{}"), DeadLetterKind.MALFORMED),
        (_decoded_dead("nothing/of/ours", b"{}"), DeadLetterKind.MALFORMED),
        (_reading_dead("unknown meter 'm1'"), DeadLetterKind.UNKNOWN_METER),
        (_reading_dead("meter 'm1' is inactive, not active"), DeadLetterKind.INACTIVE_METER),
        (
            _reading_dead("meter 'm1' is not behind concentrator 'd2': registered behind concentrator 'd1'"),
            DeadLetterKind.WRONG_CONCENTRATOR,
        ),
        (
            _reading_dead("meter 'm1' is not behind concentrator 'd2': a direct meter"),
            DeadLetterKind.WRONG_CONCENTRATOR,
        ),
        (
            _reading_dead(
                str(
                    TimeWindow.around(NOW, timedelta(days=92), timedelta(seconds=300)).refusal(NOW - timedelta(days=93))
                )
            ),
            DeadLetterKind.TOO_OLD,
        ),
        (
            _reading_dead(
                str(
                    TimeWindow.around(NOW, timedelta(days=92), timedelta(seconds=300)).refusal(NOW + timedelta(hours=1))
                )
            ),
            DeadLetterKind.IN_FUTURE,
        ),
        (
            _reading_dead("conflicts with the reading stored for meter 'm1' at 2026-11-22T02:00:00+00:00 (…)"),
            DeadLetterKind.CONFLICT,
        ),
        (_reading_dead(faults.refusal_reason(psycopg.errors.CheckViolation("no"))), DeadLetterKind.REFUSED_BY_DATABASE),
        (
            DeadLetter("meters/m1/readings", b"{}", faults.refusal_reason(ValueError("odd")), NOW),
            DeadLetterKind.REFUSED_BY_DATABASE,
        ),
        (_reading_dead("something new"), DeadLetterKind.OTHER),
    ],
    ids=lambda v: v.value if isinstance(v, DeadLetterKind) else "",
)
def test_a_dead_letter_s_reason_maps_to_one_of_a_few_kinds(dead: DeadLetter, kind: DeadLetterKind) -> None:
    assert dead_letter_kind(dead) is kind


def test_an_ingest_batch_is_counted_with_its_dead_letters_by_kind_and_the_worker_s_own_counts() -> None:
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)
    worker = SimpleNamespace(received=12, stats=SimpleNamespace(messages=9, db_retries=2))
    metrics.watch(cast(IngestWorker, worker))
    assert value(registry, "headend_ingest_dead_letters_total", kind="conflict") == 0  # every kind from the start
    batch = [InboundMessage("meters/m1/readings", b"", datetime.now(UTC) - timedelta(seconds=2))] * 3
    dead = (_reading_dead("unknown meter 'm9'"), _reading_dead("unknown meter 'm8'"), _decoded_dead("x", b""))
    metrics.batch_committed(batch, WriteResult(offered=5, inserted=4, dead_letters=3, dead=dead), 0.0)
    assert value(registry, "headend_ingest_messages_total") == 3
    assert value(registry, "headend_ingest_readings_stored_total") == 4
    assert value(registry, "headend_ingest_duplicates_total") == 1
    assert value(registry, "headend_ingest_dead_letters_total", kind="unknown_meter") == 2
    assert value(registry, "headend_ingest_dead_letters_total", kind="malformed") == 1
    assert value(registry, "headend_ingest_batch_duration_seconds_count") == 1
    latency = value(registry, "headend_ingest_batch_latency_seconds_sum")
    assert latency is not None
    assert 2 <= latency < 60
    assert value(registry, "headend_ingest_messages_received_total") == 12
    assert value(registry, "headend_ingest_inbox_messages") == 3
    assert value(registry, "headend_ingest_database_retries_total") == 2


# ------------------------------------------------------------------------------------------- engine, dispatch, poll


def test_an_engine_batch_is_counted() -> None:
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry, lateness_s=300, eager_on_grid=True, backlog_every_s=30)
    metrics.batch(BatchStats(accounts=10, charges=96, postings=10, charged_fen=1234, notifications=2, commands=1), 0.3)
    metrics.batch(BatchStats(accounts=1), 0.1)
    assert value(registry, "headend_engine_accounts_total") == 11
    assert value(registry, "headend_engine_interval_charges_total") == 96
    assert value(registry, "headend_engine_postings_total") == 10
    assert value(registry, "headend_engine_charged_fen_total") == 1234
    assert value(registry, "headend_engine_notifications_total") == 2
    assert value(registry, "headend_engine_command_requests_total") == 1
    assert value(registry, "headend_engine_batch_duration_seconds_count") == 2
    assert value(registry, "headend_engine_batch_duration_seconds_sum") == pytest.approx(0.4)


def test_the_dispatcher_s_steps_and_events_are_counted_once_each_from_its_totals() -> None:
    registry = CollectorRegistry()
    metrics = DispatchMetrics(registry, query_every_s=30)
    dispatcher = SimpleNamespace(totals=DispatchStats())

    def tick() -> None:
        metrics.tick(cast(Dispatcher, dispatcher), None)  # no database: the counts only

    tick()
    assert value(registry, "headend_dispatch_command_steps_total", step="confirmed") == 0
    dispatcher.totals.add(DispatchStats(taken=2, sent=3, confirmed=1, events=4, rejected_events=1))
    tick()
    tick()  # nothing new: nothing counted again
    dispatcher.totals.add(DispatchStats(sent=1, expired=1, events=1))
    tick()
    steps = {s: value(registry, "headend_dispatch_command_steps_total", step=s) for s in ("taken", "sent", "expired")}
    assert steps == {"taken": 2, "sent": 4, "expired": 1}
    assert value(registry, "headend_dispatch_command_steps_total", step="confirmed") == 1
    assert value(registry, "headend_dispatch_events_total", result="applied") == 4
    assert value(registry, "headend_dispatch_events_total", result="refused") == 1


def test_a_poll_round_is_counted_by_outcome_and_the_totals_are_read_when_scraped() -> None:
    registry = CollectorRegistry()
    metrics = PollMetrics(registry)
    totals = PollTotals()
    metrics.watch(totals)
    assert value(registry, "headend_poll_polls_total", outcome="bad_frame") == 0
    metrics.round_finished(
        NOW, RoundTotals(read=8, failed=3, by_kind=Tally({"timeout": 2, "meter_error": 1}), seconds=4)
    )
    assert value(registry, "headend_poll_polls_total", outcome="read") == 8
    assert value(registry, "headend_poll_polls_total", outcome="timeout") == 2
    assert value(registry, "headend_poll_polls_total", outcome="meter_error") == 1
    assert value(registry, "headend_poll_round_duration_seconds_sum") == 4
    totals.rereads, totals.stored, totals.frozen = 2, 50, 3
    assert value(registry, "headend_poll_rereads_total") == 2
    assert value(registry, "headend_poll_readings_stored_total") == 50
    assert value(registry, "headend_poll_daily_freezes_total") == 3
    assert {kind.value for kind in FailureKind} <= {
        s.labels["outcome"]
        for family in registry.collect()
        if family.name == "headend_poll_polls"
        for s in family.samples
    }


# ------------------------------------------------------------------------------------------------------------ the API


@pytest.fixture
def api_client() -> Iterator[tuple[TestClient, CollectorRegistry]]:
    registry = CollectorRegistry()
    app = FastAPI()

    @app.get("/v1/things/{thing_id}")
    def thing(thing_id: str) -> dict[str, str]:
        if thing_id == "boom":
            raise RuntimeError("a bug")
        return {"id": thing_id}

    app.add_middleware(RequestMetrics, metrics=ApiMetrics(registry))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, registry


def test_requests_are_labelled_by_route_template_status_class_and_a_known_method(
    api_client: tuple[TestClient, CollectorRegistry],
) -> None:
    client, registry = api_client
    for n in range(3):
        assert client.get(f"/v1/things/t{n}").status_code == 200
    assert client.get("/v1/things/boom").status_code == 500
    assert client.get("/nothing/here/42").status_code == 404
    assert client.post("/v1/things/t1").status_code == 405
    assert client.request("BREW", "/v1/things/t1").status_code == 405
    route = "/v1/things/{thing_id}"
    assert value(registry, "headend_api_requests_total", method="GET", route=route, status="2xx") == 3
    assert value(registry, "headend_api_requests_total", method="GET", route=route, status="5xx") == 1
    assert value(registry, "headend_api_requests_total", method="GET", route="unmatched", status="4xx") == 1
    assert value(registry, "headend_api_requests_total", method="POST", route=route, status="4xx") == 1
    assert value(registry, "headend_api_requests_total", method="other", route=route, status="4xx") == 1
    assert value(registry, "headend_api_request_duration_seconds_count", method="GET", route=route) == 4
    routes = {s.labels["route"] for f in registry.collect() for s in f.samples if "route" in s.labels}
    assert routes == {route, "unmatched"}  # never a path with an id in it


def test_the_day_s_collection_is_computed_at_most_once_per_interval_and_kept_when_a_computation_fails() -> None:
    registry = CollectorRegistry()
    clock = FakeClock()
    answers: list[CollectionCounts | Exception] = [
        CollectionCounts(expected=200, read=197, complete=150),
        psycopg.OperationalError("the server went away"),
        CollectionCounts(expected=200, read=199, complete=160),
    ]
    calls: list[int] = []

    def compute() -> CollectionCounts:
        calls.append(1)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    CollectionToday(compute, 60, registry, clock)
    assert calls == []  # registering computes nothing
    assert value(registry, "headend_collection_today_success_ratio") == pytest.approx(0.985)
    assert value(registry, "headend_collection_today_expected_meters") == 200
    clock.now += 59
    assert value(registry, "headend_collection_today_read_meters") == 197
    assert len(calls) == 1
    clock.now += 1
    assert value(registry, "headend_collection_today_read_meters") == 197  # failed: the last figures stay
    assert value(registry, "headend_collection_today_failures_total") == 1
    clock.now += 60
    assert value(registry, "headend_collection_today_complete_meters") == 160
    assert len(calls) == 3


def test_a_scrape_during_a_slow_computation_gets_the_figures_before_at_once() -> None:
    registry = CollectorRegistry()
    clock = FakeClock()
    release = threading.Event()
    started = threading.Event()
    answers = [CollectionCounts(10, 9, 9), CollectionCounts(10, 10, 10)]

    def compute() -> CollectionCounts:
        if len(answers) == 1:
            started.set()
            release.wait(10)
        return answers.pop(0)

    CollectionToday(compute, 60, registry, clock)
    assert value(registry, "headend_collection_today_read_meters") == 9
    clock.now += 60
    slow = threading.Thread(target=lambda: list(registry.collect()))
    slow.start()
    assert started.wait(5)
    assert value(registry, "headend_collection_today_read_meters") == 9  # not blocked behind the slow one
    release.set()
    slow.join(5)
    assert value(registry, "headend_collection_today_read_meters") == 10


def test_nothing_computed_yet_shows_no_figures_but_the_failures() -> None:
    registry = CollectorRegistry()

    def compute() -> CollectionCounts:
        raise psycopg.OperationalError("down")

    CollectionToday(compute, 60, registry, FakeClock())
    samples = [(s.name, s.value) for f in registry.collect() for s in f.samples]
    assert samples == [("headend_collection_today_failures_total", 1)]


# ------------------------------------------------------------------------------------------------- the command line

PROBE = """
import json, sys
from typer.testing import CliRunner
from headend.cli.app import app
outputs = {}
for command in sys.argv[1:]:
    result = CliRunner().invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    outputs[command] = result.output
print(json.dumps({"modules": sorted(sys.modules), "outputs": outputs}))
"""
WORKERS = ("ingest", "engine", "dispatch", "poll")


def test_each_worker_has_the_metrics_port_option_and_help_does_not_load_prometheus_client() -> None:
    # one process for every help: none of them may load it, so neither may all of them together
    out = subprocess.run([sys.executable, "-c", PROBE, "", *WORKERS], check=True, capture_output=True, text=True).stdout
    probe = json.loads(out.strip().splitlines()[-1])
    assert [w for w in WORKERS if "--metrics-port" not in probe["outputs"][w]] == []
    loaded = {m for m in probe["modules"] if m.split(".")[0] == "prometheus_client" or m.endswith(".metrics")}
    assert loaded == {"headend.cli.metrics"}  # the option's type only
