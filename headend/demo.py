"""`headend demo`: everything on one machine with no services: database, broker, ingest, a simulated fleet."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

from headend.db.migrate import migrate
from headend.embedded import EmbeddedBroker, free_port
from headend.ingest.worker import IngestWorker
from headend.registry import import_meters, read_registry_file
from headend.reports.collection import CollectionReport, collection_report
from headend.services import connect_database, database_url
from headend.settings import MqttProtocol, Settings
from simulators.clock import INTERVALS_PER_DAY, SimClock
from simulators.faults import FaultConfig
from simulators.fleet import Fleet, build_fleet, write_registry_csv
from simulators.fleet_sim import FleetSimulation
from simulators.publisher import BrokerConfig, PublishStats, run_simulation

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What the demo simulates."""

    meters: int = 200
    concentrators: int = 4
    regions: tuple[str, ...] = ("chengdu", "deyang", "mianyang")
    days: int = 1
    speed: float | None = 900.0
    offline_fraction: float = 0.02
    drop_rate: float = 0.002
    report_every_s: float = 5.0
    seed: int = 1


@contextlib.contextmanager
def broker_settings(settings: Settings) -> Iterator[Settings]:
    """The configured broker, or an embedded amqtt broker (MQTT 3.1.1, no shared subscriptions)."""
    if settings.mqtt_host:
        yield settings
        return
    broker = EmbeddedBroker(free_port())
    broker.start()
    try:
        yield settings.model_copy(
            update={
                "mqtt_host": "127.0.0.1",
                "mqtt_port": broker.port,
                "mqtt_protocol": MqttProtocol.V311,
                "mqtt_shared_group": None,
                "mqtt_client_id": "headend-demo-ingest",
            }
        )
    finally:
        broker.stop()


def register_fleet(url: str, fleet: Fleet, installed_on: date) -> int:
    """Register the simulated fleet through the same CSV import operators use; return the meter count."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fleet.csv"
        write_registry_csv(fleet, path, installed_on=installed_on)
        parsed = read_registry_file(path)
    assert not parsed.errors, parsed.errors
    with connect_database(url) as conn:
        import_meters(conn, parsed.rows)
    return len(parsed.rows)


def run_demo(
    settings: Settings, options: DemoOptions, echo: Callable[[str], None], stop: threading.Event
) -> CollectionReport:
    """Run the whole collection loop and return the final report of the last simulated day."""
    with database_url(settings) as url, broker_settings(settings) as live:
        echo(f"database: {'configured' if settings.database_url else 'embedded PostgreSQL in ' + settings.data_dir}")
        echo(f"broker: {live.mqtt_host}:{live.mqtt_port} ({'configured' if settings.mqtt_host else 'embedded'})")
        migrate(url, require_timescaledb=settings.require_timescaledb, collection_timezone=settings.timezone)
        fleet = build_fleet(
            options.meters, options.concentrators, list(options.regions), options.seed, id_prefix="DEMO"
        )
        zone = settings.zone
        first_day = datetime.now(zone).date() - timedelta(days=options.days)
        registered = register_fleet(url, fleet, first_day)
        echo(f"registered {registered} meters behind {options.concentrators} concentrators")

        worker = IngestWorker(live, url)
        ingest = threading.Thread(target=worker.run, name="ingest", daemon=True)
        ingest.start()
        if not worker.connected.wait(30):
            raise RuntimeError("the ingest worker could not subscribe to the broker")

        clock = SimClock(datetime.combine(first_day, dtime(), zone), options.speed)
        faults = FaultConfig(offline_fraction=options.offline_fraction, drop_rate=options.drop_rate)
        simulation = FleetSimulation(fleet, faults, zone=zone)
        broker = BrokerConfig(
            host=str(live.mqtt_host), port=live.mqtt_port, username=live.mqtt_username, password=live.mqtt_password
        )
        published: list[PublishStats] = []
        sim_thread = threading.Thread(
            target=lambda: published.append(
                run_simulation(simulation, clock, options.days * INTERVALS_PER_DAY, broker, stop=stop)
            ),
            name="simulator",
            daemon=True,
        )
        sim_thread.start()
        echo(
            f"simulating {options.days} day(s) from {first_day} at "
            f"{'max speed' if options.speed is None else f'{options.speed:g}x'}"
        )
        try:
            report_day: date = first_day
            while sim_thread.is_alive():
                sim_thread.join(options.report_every_s)
                report_day = _echo_progress(url, settings, simulation.counts.intervals, first_day, echo)
            _wait_for_ingest(worker, published, stop)
            with connect_database(url) as conn:
                return collection_report(conn, report_day)
        finally:
            worker.stop()
            ingest.join(30)


def _echo_progress(url: str, settings: Settings, intervals: int, first_day: date, echo: Callable[[str], None]) -> date:
    day = first_day + timedelta(days=max(intervals - 1, 0) // INTERVALS_PER_DAY)
    with connect_database(url) as conn:
        report = collection_report(conn, day, unread_limit=0)
    t = report.totals
    echo(
        f"  {day} · {intervals % INTERVALS_PER_DAY or INTERVALS_PER_DAY}/96 intervals sent · "
        f"read {t.read}/{t.expected} ({t.rate:.1%}) · complete {t.complete}"
    )
    return day


def _wait_for_ingest(worker: IngestWorker, published: list[PublishStats], stop: threading.Event) -> None:
    """Give ingest time to commit what the broker accepted (it acknowledges only after commit)."""
    if not published:
        return
    expected = published[0].messages_published
    deadline = time.monotonic() + 60
    while worker.stats.messages < expected and time.monotonic() < deadline and not stop.is_set():
        time.sleep(0.2)
