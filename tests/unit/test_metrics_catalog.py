"""The metrics the code defines, against what names them elsewhere: the Grafana dashboard, docs/metrics.md,
Prometheus' scrape targets and the compose services that run them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry

from headend.api.metrics import ApiMetrics, CollectionToday
from headend.dispatch.metrics import DispatchMetrics
from headend.engine.metrics import EngineMetrics
from headend.ingest.metrics import IngestMetrics
from headend.ingest.worker import IngestWorker
from headend.poll.metrics import PollMetrics
from headend.poll.service import PollTotals
from headend.reports.collection import CollectionCounts

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "headend.json"
METRIC_NAME = re.compile(r"\bheadend_[a-z0-9_]+\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
WORKER_PORT = 9100  # HEADEND_METRICS_PORT of docker-compose.yml's workers


@dataclass(frozen=True, slots=True)
class Family:
    """A metric family as the code defines it."""

    name: str
    type: str
    labels: frozenset[str]

    @property
    def series(self) -> tuple[str, ...]:
        """The names its samples are exposed under."""
        return tuple(self.name + suffix for suffix in SUFFIXES[self.type])

    @property
    def documented_name(self) -> str:
        """The name docs/metrics.md lists it under: what a query names (a histogram's without its suffixes)."""
        return self.name + "_total" if self.type == "counter" else self.name


def defined_families() -> dict[str, Family]:
    """Every `headend_…` family of every capability, with its labels (one sample of each labelled family made)."""
    registries = [CollectorRegistry() for _ in range(5)]
    ingest, engine, dispatch, poll, api = registries
    worker = SimpleNamespace(received=0, stats=SimpleNamespace(messages=0, db_retries=0))
    IngestMetrics(ingest).watch(cast(IngestWorker, worker))
    EngineMetrics(engine, lateness_s=300, eager_on_grid=True, backlog_every_s=30)
    dispatcher = DispatchMetrics(dispatch, query_every_s=30)
    dispatcher.round_trip.labels("disconnect").observe(1)
    dispatcher.commands.labels("sent").set(1)
    PollMetrics(poll).watch(PollTotals())
    ApiMetrics(api).answered("GET", "/healthz", 200, 0.01)
    CollectionToday(lambda: CollectionCounts(10, 9, 8), 60, api)
    families: dict[str, Family] = {}
    for registry in registries:
        for family in registry.collect():
            labels = frozenset(k for s in family.samples for k in s.labels if k != "le")
            assert family.name not in families, f"{family.name} defined twice"
            families[family.name] = Family(family.name, family.type, labels)
    assert all(name.startswith("headend_") for name in families)
    return families


FAMILIES = defined_families()
SERIES = {series: family for family in FAMILIES.values() for series in family.series}


def _dashboard() -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(DASHBOARD.read_text(encoding="utf-8")))


def _yaml(*parts: str) -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load(ROOT.joinpath(*parts).read_text(encoding="utf-8")))


PANELS = _dashboard()["panels"]


@pytest.mark.parametrize("panel", PANELS, ids=[p["title"] for p in PANELS])
def test_every_panel_queries_metrics_the_code_defines_by_their_labels(panel: dict[str, Any]) -> None:
    assert panel["targets"], "a panel without a query"
    for target in panel["targets"]:
        expr = target["expr"]
        named = METRIC_NAME.findall(expr)
        assert named, f"{expr!r} names no head-end metric"
        unknown = sorted(set(named) - set(SERIES))
        assert unknown == [], f"{expr!r}: not defined by the code"
        labels = frozenset().union(*(SERIES[name].labels for name in named))
        grouped = {label.strip() for group in re.findall(r"\bby \(([^)]*)\)", expr) for label in group.split(",")}
        matched = set(re.findall(r"\{\s*([a-z_]+)\s*=", expr))
        assert sorted((grouped | matched) - labels - {"le"}) == [], f"{expr!r}: labels its metrics do not have"
        assert not re.search(r"\ble\b", expr) or "_bucket" in expr
        assert target["datasource"] == panel["datasource"]


def test_the_dashboard_has_the_panels_asked_for_on_the_provisioned_datasource() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "headend"
    ids = [p["id"] for p in PANELS]
    assert len(ids) == len(set(ids))
    [source] = _yaml("deploy", "grafana", "provisioning", "datasources", "prometheus.yml")["datasources"]
    assert {p["datasource"]["uid"] for p in PANELS} == {source["uid"]}
    assert source["url"] == "http://prometheus:9090"
    queried = {name for p in PANELS for t in p["targets"] for name in METRIC_NAME.findall(t["expr"])}
    for needed in (
        "headend_collection_today_success_ratio",  # collection success, today against the target
        "headend_ingest_messages_total",  # ingest rate
        "headend_ingest_dead_letters_total",
        "headend_dispatch_commands",  # command states
        "headend_dispatch_command_round_trip_seconds_bucket",
        "headend_api_requests_total",  # API errors
    ):
        assert needed in queried
    [today] = [p for p in PANELS if p["title"] == "Collection success today vs the 98 % target"]
    steps = today["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert {"color": "green", "value": 0.98} in steps  # the target line


def test_docs_list_every_metric_with_its_type_and_labels() -> None:
    docs = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    rows = {
        m[1]: (m[2], m[3])
        for m in re.finditer(r"^\| `(headend_[a-z0-9_]+)` \| (counter|gauge|histogram) \| ([^|]*) \|", docs, re.M)
    }
    for family in FAMILIES.values():
        assert family.documented_name in rows, f"{family.documented_name} is not in docs/metrics.md"
        kind, labels = rows[family.documented_name]
        assert kind == family.type, family.name
        assert set(re.findall(r"`([a-z_]+)`", labels)) == set(family.labels), family.name
    documented = {name.removesuffix("_total") for name in rows}
    assert sorted(documented - set(FAMILIES)) == []  # nothing documented that the code does not define


def test_prometheus_scrapes_every_worker_service_of_compose_and_the_api() -> None:
    compose = _yaml("docker-compose.yml")
    services: dict[str, Any] = compose["services"]
    workers = {
        name
        for name, service in services.items()
        if service.get("command") and service["command"][0] in {"ingest", "engine", "dispatch", "poll"}
    }
    assert {"ingest-1", "ingest-2", "engine-1", "dispatch", "poll"} <= workers
    config = _yaml("deploy", "prometheus", "prometheus.yml")
    targets = {t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {f"{name}:{WORKER_PORT}" for name in workers} | {"api:8080"}
    for name in workers:
        environment = services[name]["environment"]
        assert environment["HEADEND_METRICS_PORT"] == str(WORKER_PORT), name
        assert environment["HEADEND_METRICS_HOST"] == "0.0.0.0", name
        assert "ports" not in services[name]  # the exporters are not published
    assert services["api"]["command"][0] == "serve"


def test_compose_provisions_grafana_with_the_dashboard_and_prometheus_with_its_config() -> None:
    services = _yaml("docker-compose.yml")["services"]
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    [provider] = _yaml("deploy", "grafana", "provisioning", "dashboards", "headend.yml")["providers"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    for name in ("prometheus", "grafana", "api"):
        assert "healthcheck" in services[name], name
        assert all(port.startswith("127.0.0.1:") for port in services[name].get("ports", [])), name
