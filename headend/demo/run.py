"""`headend demo`: everything on one machine with no services: database, broker, ingest, a simulated MQTT fleet, and
simulated Modbus and DL/T 645 meters read by the poll worker."""

from __future__ import annotations

import asyncio
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
from typing import Final

import psycopg
from sqlalchemy.engine import make_url

from headend.db.connection import connect_database, database_urls
from headend.db.engine import libpq_dsn
from headend.db.grants import DbRole
from headend.db.migrate import migrate
from headend.db.roles import role_names, role_url, setup_roles
from headend.demo.polled_story import (
    PolledDemoMeter,
    collection_by_protocol,
    format_by_protocol,
    polled_part,
    story_meter,
)
from headend.demo.prepaid_loop import INTERVAL, DemoMeter, OpenPart, PrepaidLoop
from headend.ingest.worker import IngestWorker
from headend.mqtt.embedded_broker import EmbeddedBroker, free_port
from headend.poll.poller import RoundTotals
from headend.poll.service import run_poller
from headend.registry.meter_import import import_meters, read_registry_file
from headend.reports.collection import CollectionReport, GroupCounts, collection_report, format_report
from headend.settings import MqttProtocol, Settings
from protocols.register_map import load_register_map
from simulators.clock import INTERVALS_PER_DAY, SimClock
from simulators.command_responder import CommandResponder
from simulators.dlt645_gateway import Dlt645Gateway
from simulators.faults import FaultConfig
from simulators.fleet import Fleet, build_fleet, write_registry_csv
from simulators.fleet_sim import FleetSimulation
from simulators.load_shapes import SHAPES, MeterKind, meter_scale
from simulators.modbus_sim import ModbusMeterFleet
from simulators.polled_registry import MODBUS_REGISTRY_COLUMNS, write_polled_registry_csv
from simulators.publisher import BrokerConfig, PublishStats, run_simulation

log = logging.getLogger(__name__)

STORY_POLL_S = 0.25
POLLED_MODELS: Final = ("hiking_dds238_2_znsr", "eastron_sdm120")  # a prepaid meter with a relay, and one without
# The simulated gateway's bus runs at 115,200 baud with a quick turnaround: the five exchanges a DL/T 645 meter takes
# at a real bus's 2,400 baud last about a second, half an hour of the demo's simulated time at 1800x, and the fleet
# waits for each round.
DLT645_BAUD: Final = 115_200
DLT645_LATENCY_S: Final = 0.002
CLOCK_CHECK_S: Final = 0.01  # the poller looks at the simulated clock this often (real seconds): it moves in steps
ROUND_WAIT_S: Final = 30.0  # the longest the fleet waits for the poller's round at a load point
POLL_LOGGER: Final = "headend.poll.service"  # a line a round: 96 a simulated day, too many for the story


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
    modbus_meters: int = 4
    dlt645_meters: int = 3


@dataclass(frozen=True, slots=True)
class DemoReport:
    """The demo's final report: the collection report of the last simulated day, and its figures by protocol."""

    collection: CollectionReport
    by_protocol: list[GroupCounts]

    def text(self) -> str:
        """The collection report as `headend collection-report` prints it, then the day by protocol."""
        return "\n".join([format_report(self.collection), *format_by_protocol(self.by_protocol)])


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


class LoadPointClock:
    """The polled meters' and the poll worker's clock: the instant the MQTT fleet has reported up to, held there until
    the poller has read that load point.

    So the polled meters are read at every load point of the simulated day whatever the speed (the fleet waits for a
    round that takes longer than an interval), each reading stamped at its load point, in step with the MQTT meters.
    """

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._read = start - INTERVAL  # the latest load point the poller has read
        self._closed = False
        self._changed = threading.Condition()
        self.rounds = self.read = self.failed = 0
        self.missed = 0  # load points the fleet went on from unread

    def __call__(self) -> datetime:
        """The simulated instant now."""
        return self._now

    def round_done(self, load_point: datetime, totals: RoundTotals) -> None:
        """The poller has stored its round at `load_point` (its `on_round`)."""
        with self._changed:
            self._read = max(self._read, load_point)
            self.rounds += 1
            self.read += totals.read
            self.failed += totals.failed
            self._changed.notify_all()

    def close(self) -> None:
        """The poller has stopped: nothing waits for it any more."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def advance(self, instant: datetime, stop: threading.Event) -> bool:
        """Move to `instant` and wait until the poller has read it (at most ROUND_WAIT_S); whether it has."""
        deadline = time.monotonic() + ROUND_WAIT_S
        with self._changed:
            self._now = max(self._now, instant)
            while self._read < instant:
                left = deadline - time.monotonic()
                if self._closed or stop.is_set() or left <= 0:
                    self.missed += 1
                    return False
                self._changed.wait(min(left, 0.1))
        return True


class PolledFleet:
    """The demo's polled meters: simulated Modbus TCP meters and a DL/T 645 gateway on free ports of 127.0.0.1, on the
    load-point clock, and the poll worker that reads them. Use as a context manager: the servers run inside it."""

    def __init__(self, options: DemoOptions, start: datetime) -> None:
        self.clock = LoadPointClock(start)
        self.seed = options.seed
        regions = options.regions or ("demo",)
        self.modbus = (
            ModbusMeterFleet(
                "127.0.0.1", 0, POLLED_MODELS, options.modbus_meters, seed=options.seed, clock=self.clock,
                region=regions[0],
            )
            if options.modbus_meters
            else None
        )  # fmt: skip
        self.gateway = (
            Dlt645Gateway(
                "127.0.0.1", 0, options.dlt645_meters, seed=options.seed, clock=self.clock, baud=DLT645_BAUD,
                latency_s=DLT645_LATENCY_S, region=regions[-1],
            )
            if options.dlt645_meters
            else None
        )  # fmt: skip
        self._stack = contextlib.ExitStack()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._failures: list[str] = []

    def __enter__(self) -> PolledFleet:
        with contextlib.ExitStack() as stack:
            if self.modbus is not None:
                stack.enter_context(self.modbus)
            if self.gateway is not None:
                stack.enter_context(self.gateway)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_polling()
        self._stack.close()

    def meters(self) -> list[PolledDemoMeter]:
        """The polled meters as the story sees them (once the servers listen: their places name the ports)."""
        meters = []
        if self.modbus is not None:
            for unit in self.modbus.unit_ids:
                spec = self.modbus.spec(unit)
                relay = load_register_map(spec.model).relay
                meters.append(
                    PolledDemoMeter(
                        spec.meter_id,
                        "modbus",
                        spec.model,
                        f"{self.modbus.endpoint} unit {unit}",
                        str(spec.kind),
                        self._daily_wh(spec.meter_id, spec.kind),
                        switchable=relay is not None and relay.control is not None,
                        pv=False,
                    )
                )
        if self.gateway is not None:
            for address in self.gateway.addresses:
                truth = self.gateway.snapshot(address)
                meters.append(
                    PolledDemoMeter(
                        truth.meter_id,
                        "dlt645",
                        "dlt645_2007",
                        f"{self.gateway.endpoint} address {address}",
                        str(truth.kind),
                        self._daily_wh(truth.meter_id, truth.kind),
                        switchable=True,
                        pv=truth.pv_peak_w > 0,
                    )
                )
        return meters

    def _daily_wh(self, meter_id: str, kind: MeterKind) -> float:
        return SHAPES[kind].mean_daily_wh * meter_scale(meter_id, kind, self.seed)

    def describe(self) -> list[str]:
        """Where the polled meters are, a line per protocol."""
        lines = []
        if self.modbus is not None:
            units = self.modbus.unit_ids
            lines.append(
                f"{len(units)} Modbus TCP meters at {self.modbus.endpoint} (units {units[0]}-{units[-1]}: "
                f"{', '.join(POLLED_MODELS)} in turn)"
            )
        if self.gateway is not None:
            lines.append(
                f"{len(self.gateway.addresses)} DL/T 645-2007 meters behind a serial-to-TCP gateway at "
                f"{self.gateway.endpoint} (bus {self.gateway.bus}, {DLT645_BAUD:,} baud simulated)"
            )
        return lines

    def register(self, url: str, installed_on: date, allowed: str | None) -> int:
        """Register the polled meters through the CSV import, `allowed` reconnect-allowed (合闸允许); the count."""
        rows = [
            *(self.modbus.registry_rows() if self.modbus is not None else []),
            *(self.gateway.registry_rows() if self.gateway is not None else []),
        ]
        for row in rows:
            row["installed_on"] = installed_on.isoformat()
            row["reconnect_mode"] = "allowed" if row["meter_id"] == allowed else ""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "polled.csv"
            write_polled_registry_csv(path, rows, (*MODBUS_REGISTRY_COLUMNS, "installed_on", "reconnect_mode"))
            parsed = read_registry_file(path)
        assert not parsed.errors, parsed.errors
        with connect_database(url) as conn:
            import_meters(conn, parsed.rows)
        return len(parsed.rows)

    def press_button(self, meter_id: str) -> str:
        """The customer presses the button of the DL/T 645 meter `meter_id`; where its relay is then."""
        assert self.gateway is not None
        [address] = [a for a in self.gateway.addresses if self.gateway.meter_id(a) == meter_id]
        return str(self.gateway.press_button(address))

    def start_polling(self, settings: Settings, url: str) -> None:
        """Run the poll worker in a thread of its own: a round at each load point the clock reaches, the first at
        once (the clock stands on the start of the simulated day)."""

        def run() -> None:
            try:
                asyncio.run(
                    run_poller(
                        settings,
                        url,
                        self._stop,
                        clock=self.clock,
                        clock_check_s=CLOCK_CHECK_S,
                        on_round=self.clock.round_done,
                    )
                )
            except Exception as exc:
                log.exception("the demo's poll worker stopped")
                self._failures.append(f"the poll worker stopped: {exc}")
            finally:
                self.clock.close()

        self._poller = threading.Thread(target=run, name="demo-poller", daemon=True)
        self._poller.start()

    def check(self) -> None:
        """Raise if the poll worker stopped."""
        if self._failures:
            raise RuntimeError("; ".join(self._failures))

    def stop_polling(self) -> None:
        """Stop the poll worker (its links closed) and wait for it."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(30)
            self._poller = None


def poll_settings(settings: Settings) -> Settings:
    """The poll worker's settings for the demo: its meters answer on this machine, so a short timeout."""
    return settings.model_copy(update={"poll_timeout_s": 0.5, "poll_retries": 1, "poll_retry_backoff_s": 0.05})


def run_demo(
    settings: Settings, options: DemoOptions, echo: Callable[[str], None], stop: threading.Event
) -> DemoReport:
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
        polled = PolledFleet(options, clock.start) if options.modbus_meters or options.dlt645_meters else None
        poll_log = logging.getLogger(POLL_LOGGER)
        poll_level = poll_log.level
        poll_log.setLevel(logging.WARNING)
        try:
            with contextlib.ExitStack() as stack:
                more = None
                if polled is not None:
                    stack.enter_context(polled)
                    more = _start_polled(polled, poll_settings(live), url, first_day, echo, stop)
                # the simulated devices answer re-reads (read_readings) from what they took, as well as relay commands
                obey = functools.partial(
                    CommandResponder,
                    fleet,
                    _broker_config(live),
                    meters=simulation.meters,
                    history=simulation.history,
                )
                loop = stack.enter_context(
                    PrepaidLoop(live, url, demo_meters(simulation), obey, clock.start, echo, more)
                )
                report_day = _simulate(live, url, options, simulation, clock, worker, loop, polled, echo, stop)
                for line in loop.summary():
                    echo(line)
                if polled is not None:
                    for line in _polled_summary(polled, loop):
                        echo(line)
            with connect_database(url) as conn:
                return DemoReport(collection_report(conn, report_day), collection_by_protocol(conn, report_day))
        finally:
            poll_log.setLevel(poll_level)
            worker.stop()
            ingest.join(30)


def _start_polled(
    polled: PolledFleet,
    settings: Settings,
    url: str,
    first_day: date,
    echo: Callable[[str], None],
    stop: threading.Event,
) -> OpenPart:
    """Register the polled meters, read them once at the start, start the poll worker; what opens their accounts."""
    meters = polled.meters()
    story = story_meter(meters)
    registered = polled.register(url, first_day, None if story is None else story.meter_id)
    echo(f"registered {registered} polled meters (the same CSV import, protocol modbus and dlt645):")
    for line in polled.describe():
        echo(f"    {line}")
    polled.start_polling(settings, url)
    clock = polled.clock
    if not clock.advance(clock(), stop):
        polled.check()
        raise RuntimeError(f"the poll worker did not read the polled meters within {ROUND_WAIT_S:g} s")
    echo(
        f"poll: the first round at {clock().astimezone(settings.zone):%H:%M} read {clock.read} of {registered} "
        "polled meters; the poll worker reads them at every load point the simulated fleet reaches, "
        "the fleet waiting for each round"
    )
    return polled_part(meters, polled.press_button, settings.zone, echo)


def _polled_summary(polled: PolledFleet, loop: PrepaidLoop) -> list[str]:
    clock = polled.clock
    every = "one at each load point" if not clock.missed else f"{clock.missed} load point(s) not read"
    return [
        "Polled meters",
        *(f"  {line}" for line in polled.describe()),
        f"  poll rounds           : {clock.rounds}, {every} ({clock.read} meters read, {clock.failed} failed)",
        *loop.part_summary(),
    ]


def _simulate(
    live: Settings,
    url: str,
    options: DemoOptions,
    simulation: FleetSimulation,
    clock: SimClock,
    worker: IngestWorker,
    loop: PrepaidLoop,
    polled: PolledFleet | None,
    echo: Callable[[str], None],
    stop: threading.Event,
) -> date:
    """Run the fleet to its end, telling the prepaid story as it happens; the last simulated day."""
    broker = _broker_config(live)
    published: list[PublishStats] = []
    intervals = options.days * INTERVALS_PER_DAY
    stalled: list[datetime] = []

    def progress(instant: datetime, counts: object) -> None:
        # the polled meters' clock first: their readings of the instant are stored before the engine's clock reaches it
        if polled is not None and not polled.clock.advance(instant, stop) and not stop.is_set():
            stalled.append(instant)
        loop.now.advance(instant, counts)

    sim_thread = threading.Thread(
        target=lambda: published.append(
            run_simulation(simulation, clock, intervals, broker, stop=stop, progress=progress)
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
    told_stalls = 0
    try:
        while sim_thread.is_alive():
            sim_thread.join(STORY_POLL_S)
            loop.poll()
            if polled is not None:
                polled.check()
            if len(stalled) > told_stalls:
                echo(f"poll: no round at {stalled[-1].astimezone(live.zone):%H:%M} within {ROUND_WAIT_S:g} s; going on")
                told_stalls = len(stalled)
            if time.monotonic() >= next_report:
                next_report += options.report_every_s
                _echo_progress(url, live, simulation.counts.intervals, first_day, polled, echo)
                _echo_balances(loop, echo)
    except BaseException:
        stop.set()  # the fleet must not outlive the services it publishes to
        sim_thread.join(30)
        raise
    if polled is not None:
        polled.stop_polling()  # the last load point is read: nothing more to poll
    report_day = _echo_progress(url, live, simulation.counts.intervals, first_day, polled, echo)
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
    for line in loop.balances():
        echo(line)


def _echo_progress(
    url: str,
    settings: Settings,
    intervals: int,
    first_day: date,
    polled: PolledFleet | None,
    echo: Callable[[str], None],
) -> date:
    day = first_day + timedelta(days=max(intervals - 1, 0) // INTERVALS_PER_DAY)
    with connect_database(url) as conn:
        report = collection_report(conn, day, unread_limit=0)
    t = report.totals
    rounds = "" if polled is None else f" · {polled.clock.rounds} poll rounds"
    echo(
        f"  {day} · {intervals % INTERVALS_PER_DAY or INTERVALS_PER_DAY}/96 intervals sent · "
        f"read {t.read}/{t.expected} ({t.rate:.1%}) · complete {t.complete}{rounds}"
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
