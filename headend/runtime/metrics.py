"""Prometheus metrics of one process: its registry, the HTTP exporter a worker serves it on, helpers for definitions.

Each process counts into a registry of its own, never prometheus_client's global one: a test or the demo may run
several workers in one process, each with its metrics. The definitions live beside what they count
(`headend.ingest.metrics`, `headend.engine.metrics`, `headend.dispatch.metrics`, `headend.poll.metrics`,
`headend.api.metrics`); docs/metrics.md lists them all.

A worker serves its registry on `--metrics-port` (or HEADEND_METRICS_PORT) at HEADEND_METRICS_HOST, 127.0.0.1 unless
set; `headend serve` serves the API's on its own port at /metrics. Only the commands that run a worker or the API
import this module: prometheus_client stays out of `headend --help`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from headend.db.errors import SetupError
from headend.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# seconds: from a fast database call to a slow one; a histogram's buckets are part of its series, keep them few
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class MetricsPortError(SetupError):
    """The exporter cannot listen where it was told to (the port taken, the address not this host's)."""


def new_registry() -> CollectorRegistry:
    """A registry for one process's metrics, with the process's own (CPU, memory, open files, Python and its GC)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


@dataclass(slots=True)
class Exporter:
    """A registry served over HTTP (every path answers with the metrics) by a thread of its own."""

    host: str
    port: int  # the port bound: the one asked for, or the one the system chose for 0
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def start_exporter(registry: CollectorRegistry, host: str, port: int) -> Exporter:
    """Serve `registry` on host:port (0: a free port, for tests); MetricsPortError when it cannot listen there."""
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsPortError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; choose another --metrics-port "
            "(HEADEND_METRICS_PORT) or HEADEND_METRICS_HOST"
        ) from None
    return Exporter(host, int(server.server_port), server, thread)


@contextmanager
def worker_metrics(settings: Settings, port: int | None) -> Iterator[CollectorRegistry | None]:
    """The registry a worker counts into, served while the block runs; None when off (`port` None: the setting)."""
    port = settings.metrics_port if port is None else port
    if not port:
        yield None
        return
    registry = new_registry()
    exporter = start_exporter(registry, settings.metrics_host, port)
    log.info("metrics at http://%s:%d/metrics", settings.metrics_host, exporter.port)
    try:
        yield registry
    finally:
        exporter.close()


class Every:
    """A gate open at most once per `interval_s` (the first call included): for queries behind gauges."""

    def __init__(self, interval_s: float, clock: Clock = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._next = float("-inf")

    def due(self) -> bool:
        """Whether the interval is over; if so the next one starts now."""
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self._interval_s
        return True


@dataclass(frozen=True, slots=True)
class Reading:
    """A counter or gauge whose value a worker already keeps: read when the metrics are scraped, never pushed."""

    name: str  # a counter's without `_total`
    documentation: str
    value: Callable[[], float]
    counter: bool = True


class ReadingsCollector(Collector):
    """Collects `Reading`s: the worker's own totals cost it nothing more than it already does to keep them."""

    def __init__(self, readings: Iterable[Reading], registry: CollectorRegistry) -> None:
        self._readings = tuple(readings)
        registry.register(self)

    def describe(self) -> Iterable[Metric]:
        """The families, without samples (so that registering reads no value)."""
        return [self._family(r) for r in self._readings]

    def collect(self) -> Iterable[Metric]:
        """The families with their current values."""
        return [self._family(r, float(r.value())) for r in self._readings]

    @staticmethod
    def _family(reading: Reading, value: float | None = None) -> Metric:
        if reading.counter:
            return CounterMetricFamily(reading.name, reading.documentation, value=value)
        return GaugeMetricFamily(reading.name, reading.documentation, value=value)
