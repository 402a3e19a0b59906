"""`headend demo`: everything on one machine with no services: database, broker, ingest, a simulated fleet."""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from headend.db.connection import connect_database, database_urls
from headend.db.engine import libpq_dsn
from headend.db.grants import DbRole
from headend.db.migrate import migrate
from headend.db.roles import role_names, role_url, setup_roles
from headend.demo.prepaid_loop import DemoMeter, PrepaidLoop
from headend.ingest.worker import IngestWorker
from headend.mqtt.embedded_broker import EmbeddedBroker, free_port
from headend.registry.meter_import import import_meters, read_registry_file
from headend.reports.collection import CollectionReport, collection_report
from headend.settings import MqttProtocol, Settings
from simulators.clock import INTERVALS_PER_DAY, SimClock
from simulators.command_responder import CommandResponder
from simulators.faults import FaultConfig
from simulators.fleet import Fleet, build_fleet, write_registry_csv
from simulators.fleet_sim import FleetSimulation
from simulators.load_shapes import SHAPES, meter_scale
from simulators.publisher import BrokerConfig, PublishStats, run_simulation

log = logging.getLogger(__name__)

STORY_POLL_S = 0.25


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What the demo simulates."""

    meters: int = 200
    concentrators: int = 4
    regions: tuple[str, ...] = ("chengdu", "deyang", "mianyang")
    days: int = 1
    speed: float | None = 1800.0
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


DEMO_DATABASE = "headend_demo"


def fresh_demo_database(server_url: str) -> str:
    """Drop and create the demo's own database on the embedded server: every demo starts from nothing."""
    with psycopg.connect(libpq_dsn(server_url), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DEMO_DATABASE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DEMO_DATABASE}")
    return make_url(server_url).set(database=DEMO_DATABASE).render_as_string(hide_password=False)


def run_demo(
    settings: Settings, options: DemoOptions, echo: Callable[[str], None], stop: threading.Event
) -> CollectionReport:
    """Run the whole collection loop and return the final report of the last simulated day."""
    with database_urls(settings) as urls, broker_settings(settings) as live:
        if settings.database_url:
            url = owner_url = urls.service
            echo("database: configured")
        else:
            assert urls.admin is not None
            # set up as production is: migrated by the owner role, everything else run as operator (owning nothing)
            admin_url = fresh_demo_database(urls.admin)
            setup_roles(admin_url, settings.db_role_prefix, {})
            names = role_names(settings.db_role_prefix)
            url, owner_url = role_url(admin_url, names[DbRole.OPERATOR]), role_url(admin_url, names[DbRole.OWNER])
            echo(
                f"database: embedded PostgreSQL in {settings.data_dir}, database {DEMO_DATABASE} (new for each demo), "
                f"as role {names[DbRole.OPERATOR]}"
            )
        echo(f"broker: {live.mqtt_host}:{live.mqtt_port} ({'configured' if settings.mqtt_host else 'embedded'})")
        migrate(
            owner_url,
            require_timescaledb=settings.require_timescaledb,
            collection_timezone=settings.timezone,
            role_prefix=settings.db_role_prefix,
        )
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
        try:
            obey = functools.partial(CommandResponder, fleet, _broker_config(live), meters=simulation.meters)
            with PrepaidLoop(live, url, demo_meters(simulation), obey, clock.start, echo) as loop:
                report_day = _simulate(live, url, options, simulation, clock, worker, loop, echo, stop)
                for line in loop.summary():
                    echo(line)
            with connect_database(url) as conn:
                return collection_report(conn, report_day)
        finally:
            worker.stop()
            ingest.join(30)


def _simulate(
    live: Settings,
    url: str,
    options: DemoOptions,
    simulation: FleetSimulation,
    clock: SimClock,
    worker: IngestWorker,
    loop: PrepaidLoop,
    echo: Callable[[str], None],
    stop: threading.Event,
) -> date:
    """Run the fleet to its end, telling the prepaid story as it happens; the last simulated day."""
    broker = _broker_config(live)
    published: list[PublishStats] = []
    intervals = options.days * INTERVALS_PER_DAY
    sim_thread = threading.Thread(
        target=lambda: published.append(
            run_simulation(simulation, clock, intervals, broker, stop=stop, progress=loop.now.advance)
        ),
        name="simulator",
        daemon=True,
    )
    sim_thread.start()
    first_day = clock.start.date()
    echo(
        f"simulating {options.days} day(s) from {first_day} at "
        f"{'max speed' if options.speed is None else f'{options.speed:g}x'}"
    )
    next_report = time.monotonic() + options.report_every_s
    try:
        while sim_thread.is_alive():
            sim_thread.join(STORY_POLL_S)
            loop.poll()
            if time.monotonic() >= next_report:
                next_report += options.report_every_s
                _echo_progress(url, live, simulation.counts.intervals, first_day, echo)
                _echo_balances(loop, echo)
    except BaseException:
        stop.set()  # the fleet must not outlive the services it publishes to
        sim_thread.join(30)
        raise
    report_day = _echo_progress(url, live, simulation.counts.intervals, first_day, echo)
    _wait_for_ingest(worker, published, stop)
    loop.finish(stop)
    _echo_balances(loop, echo)
    return report_day


def demo_meters(simulation: FleetSimulation) -> list[DemoMeter]:
    """The fleet's reporting meters as the prepaid loop sees them: expected daily use, register at the start."""
    seed = simulation.fleet.seed
    return [
        DemoMeter(
            m.meter_id,
            m.concentrator_id,
            str(m.kind),
            SHAPES[m.kind].mean_daily_wh * meter_scale(m.meter_id, m.kind, seed),
            simulation.meters[m.meter_id].register_wh,
        )
        for m in simulation.fleet.meters
        if m.meter_id not in simulation.plan.offline_ids
    ]


def _broker_config(live: Settings) -> BrokerConfig:
    return BrokerConfig(
        host=str(live.mqtt_host),
        port=live.mqtt_port,
        username=live.mqtt_username,
        password=live.mqtt_password,
        tls=live.mqtt_tls_enabled,
        ca_file=live.mqtt_tls_ca_file,
        cert_file=live.mqtt_tls_cert_file,
        key_file=live.mqtt_tls_key_file,
        tls_insecure=live.mqtt_tls_insecure,
    )


def _echo_balances(loop: PrepaidLoop, echo: Callable[[str], None]) -> None:
    line = loop.balances()
    if line is not None:
        echo(line)


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
