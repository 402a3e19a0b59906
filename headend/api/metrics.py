"""Metrics of the API at `/metrics`: requests by route and status class, their latency, the day's collection success.

Labels stay bounded whatever callers send: a request is labelled with its route's template (`/v1/accounts/{account_id}`,
never the id), `unmatched` when no route takes it, its method when it is a standard one (else `other`) and its status
class (`2xx` … `5xx`).

`/metrics` needs no token unless HEADEND_METRICS_REQUIRE_TOKEN is set (then an operator's or an admin's): it holds
counts only, no meter, account or customer. It is left out of the OpenAPI document (it is not JSON) and of
docs/api.md's endpoints; docs/metrics.md describes it.

The collection success of the current local day comes from the collection report's totals (`collection_report`,
nothing grouped or listed), computed when a scrape finds it older than HEADEND_METRICS_COLLECTION_S. One scrape
computes it at a time; a scrape meanwhile gets the value before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final
from zoneinfo import ZoneInfo

import psycopg
from fastapi import Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headend.api.auth import require_roles
from headend.api.credentials import Role
from headend.api.db import ApiState, Clock
from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions
from headend.reports.collection import CollectionCounts, collection_report
from headend.runtime.metrics import DURATION_BUCKETS, new_registry
from headend.settings import Settings

log = logging.getLogger(__name__)

METRICS_PATH: Final = "/metrics"
UNMATCHED: Final = "unmatched"
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
COLLECTION_TIMEOUT_S: Final = 10.0  # the longest a scrape waits for a pooled connection


class ApiMetrics:
    """The API's request metrics in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "headend_api_requests",
            "Requests answered, by method, route template and status class",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "headend_api_request_duration_seconds",
            "Time to answer a request, by method and route template",
            ["method", "route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )

    def answered(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count an answered request."""
        method = method if method in METHODS else "other"
        self.requests.labels(method, route, f"{status // 100}xx").inc()
        self.duration.labels(method, route).observe(seconds)


class RequestMetrics:
    """ASGI middleware counting each HTTP request once it is answered (a request that fails unanswered as a 500)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, noting its status; count it when done."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            # the router put the matched route into the scope: its template, never the path, is the label
            route = scope.get("route")
            template = getattr(route, "path", None) if route is not None else None
            self._metrics.answered(
                str(scope.get("method", "")), template or UNMATCHED, status, time.perf_counter() - started
            )


@dataclass(frozen=True, slots=True)
class _Computed:
    counts: CollectionCounts
    at: float  # Unix time


class CollectionToday(Collector):
    """The collection report's totals for the current local day, computed at most once per `every_s`."""

    def __init__(
        self,
        compute: Callable[[], CollectionCounts],
        every_s: float,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._compute = compute
        self._every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._computed: _Computed | None = None
        self._next_at = float("-inf")
        self._failures = 0
        registry.register(self)

    def describe(self) -> Iterable[Metric]:
        """The families, without samples."""
        return self._families(None, None)

    def collect(self) -> Iterable[Metric]:
        """The families; computed first when the last computation is older than the interval."""
        if self._clock() >= self._next_at and self._lock.acquire(blocking=False):
            try:
                self._refresh()
            finally:
                self._lock.release()
        return self._families(self._computed, self._failures)

    def _refresh(self) -> None:
        self._next_at = self._clock() + self._every_s
        try:
            counts = self._compute()
        except (psycopg.Error, PoolTimeout) as exc:
            self._failures += 1
            log.warning("the collection success of the day was not computed for /metrics: %s", exc)
            return
        self._computed = _Computed(counts, time.time())

    @staticmethod
    def _families(computed: _Computed | None, failures: int | None) -> list[Metric]:
        documented = {
            "expected_meters": "Meters expected to be read on the current local day",
            "read_meters": "Meters with at least one reading on the current local day",
            "complete_meters": "Meters with all 96 intervals of the current local day read",
            "success_ratio": "Collection success of the current local day: meters read ÷ meters expected (1 when none "
            "expected)",
            "computed_timestamp_seconds": "When the day's collection figures were computed (Unix time)",
        }
        values: dict[str, float] = {}
        if computed is not None:
            c = computed.counts
            values = {
                "expected_meters": c.expected,
                "read_meters": c.read,
                "complete_meters": c.complete,
                "success_ratio": c.rate,
                "computed_timestamp_seconds": computed.at,
            }
        families: list[Metric] = [
            GaugeMetricFamily(f"headend_collection_today_{name}", documentation, value=values.get(name))
            for name, documentation in documented.items()
        ]
        families.append(
            CounterMetricFamily(
                "headend_collection_today_failures",
                "Computations of the day's collection figures that failed",
                value=failures,
            )
        )
        return families


def collection_totals(pool: ConnectionPool[Any], clock: Clock) -> CollectionCounts:
    """The collection report's totals of the current day, local to the zone the daily statistics are kept in."""
    with pool.connection(timeout=COLLECTION_TIMEOUT_S) as conn:
        options = SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall())
        today = clock().astimezone(ZoneInfo(options.collection_timezone)).date()
        return collection_report(conn, today, worst=0, unread_limit=0).totals


def install_metrics(app: FastAPI, settings: Settings) -> CollectorRegistry:
    """Count the app's requests and serve its metrics at /metrics (after `app.state.api` is set); the registry."""
    state: ApiState = app.state.api
    registry = new_registry()
    app.add_middleware(RequestMetrics, metrics=ApiMetrics(registry))
    CollectionToday(lambda: collection_totals(state.pool, state.clock), settings.metrics_collection_s, registry)

    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    guard = [Depends(require_roles(Role.OPERATOR))] if settings.metrics_require_token else []
    app.add_api_route(METRICS_PATH, metrics, methods=["GET"], include_in_schema=False, dependencies=guard)
    return registry
