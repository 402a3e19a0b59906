"""Reaction benchmark: from the reading that exhausts a balance to the disconnect published, from a payment to the
reconnect published, with the fleet's readings flowing in the background.

Run `uv run python -m bench.reaction [--quick] [--repeat N] [--accounts N] [--sample N] [--loads 1,15]`. Each run:

- a fresh copy of a template database with N prepaid accounts (default 100,000) and their meters, generated
  set-based by `bench.charging`'s generator (checked against `open_account` first), on the strict policy:
  disconnect at a zero balance, no friendly-credit windows, no notice period, no emergency credit. All but S of
  them (default 200) have ample credit and sit behind concentrators of 256 meters; the S probe accounts, spread
  evenly over the id space, are direct MQTT meters with 0.50 yuan, less than the next reading costs;
- the production processes, each its own OS process: `headend ingest`, `headend engine` (eager on grid),
  `headend dispatch`, a `CommandResponder` obeying the probe meters' relay commands, a bare paho subscriber on
  the command topics, and a fleet publisher sending every other meter's reading of the quarter hour in
  concentrator batches at L times the real rate of the fleet (1×: N readings per 15 minutes). A run covers one
  interval: the engine charges on the wall clock, so readings of several intervals compressed into minutes would
  be stamped in the past (older than what the accounts have seen: not found due) or the future (refused);
- the probes: each probe meter publishes its exhausting reading at t0; t1 is when the bare subscriber receives
  the disconnect. Once the disconnect is confirmed (the responder answered, the dispatcher recorded it), the
  probe account is paid with `headend.engine.accounts.pay`; t0 is when `pay` returns, t1 when the subscriber
  receives the reconnect;
- the raw limits, interleaved with the probes under the same load: a bare paho publish → subscribe on the same
  broker, and a one-row INSERT + COMMIT on the same database.

Databases are `bench_<random>` on the PostgreSQL at 127.0.0.1:5432, the broker a private mosquitto on a free
127.0.0.1 port; all are removed on exit, also on failure or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import pickle
import queue
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from bench._common import (
    BenchError,
    Broker,
    check_measured_code,
    code_digest,
    code_fingerprint,
    die_with_parent,
    fmt_int,
    format_table,
    machine_ticks,
    median,
    private_mosquitto,
    purge_session,
    ratio,
    run_bench,
    scalar,
    stop_child,
    stop_process,
    unique_token,
    wait_until,
)
from bench.charging import (
    CHANNEL,
    POLICY,
    REGISTER_MODULUS,
    TARIFF,
    ZONE,
    Workload,
    check_generated_rows,
    cloned_database,
    process_cpu_s,
    template_database,
    template_open,
)
from headend.db.engine import libpq_dsn
from headend.db.partitions import days_around, ensure_partitions
from headend.engine.accounts import pay
from headend.engine.catalog import Catalog
from headend.engine.charging import charge_due
from headend.settings import Settings
from prepay_engine.payments import ToppedUp, TopUp
from prepay_engine.policy import PolicyConfig
from protocols.mqtt_codec import encode_concentrator_batch, encode_meter_reading
from protocols.mqtt_topics import COMMAND_FILTERS, concentrator_readings_topic, meter_readings_topic, parse_topic
from protocols.readings import MeterReading, RelayState
from protocols.relay_codec import RelayAction, decode_command
from simulators.command_responder import CommandResponder
from simulators.fleet import Fleet as SimFleet
from simulators.fleet import SimMeter
from simulators.load_shapes import MeterKind
from simulators.publisher import BrokerConfig

INTERVAL: Final = timedelta(minutes=15)
PER_DCU: Final = 256  # meters behind a concentrator, readings in its batch
PROBE_CREDIT_FEN: Final = 50  # 0.50 yuan ...
PROBE_WH: Final = 2000  # ... and the probe reading uses 2 kWh: at least 0.71 yuan (valley, tier 1) under the tariff
BACKGROUND_CREDIT_FEN: Final = 1_000_000  # far above every threshold: the background never triggers a decision
PAYMENT_FEN: Final = 10_000  # lifts a probe account above the warnings: a reconnect and nothing else
PING_TOPIC: Final = "bench/ping"
WATCH_FILTERS: Final = (*COMMAND_FILTERS, f"{PING_TOPIC}/#")
ROLES: Final = ("ingest", "engine", "dispatch")
BENCH_LATENESS_S: Final = 3600
STORM_LIMIT: Final = int(Settings.model_fields["dispatch_storm_limit"].default)
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
SWEEP_LINE = re.compile(r"charged (\d+) accounts: (\d+) charges, .* in ([0-9.]+) s$")


# ================================================================ pure helpers


def sample_indices(accounts: int, sample: int) -> list[int]:
    """Account numbers of the probes: one in the middle of each of `sample` equal slices of the first accounts."""
    assert 1 <= sample <= accounts, (sample, accounts)
    stride = accounts // sample
    return [j * stride + stride // 2 for j in range(sample)]


def sample_sql(accounts: int, sample: int) -> str:
    """SQL predicate on the account number `i` that holds exactly for `sample_indices(accounts, sample)`."""
    stride = accounts // sample
    return f"(i % {stride} = {stride // 2} AND i / {stride} < {sample})"


def grid_floor(t: datetime) -> datetime:
    """The latest 15-minute grid instant at or before `t` (UTC)."""
    u = t.astimezone(UTC)
    return u.replace(minute=u.minute - u.minute % 15, second=0, microsecond=0)


def background_step_wh(i: int) -> int:
    """Energy of background meter `i` in its 15 minutes: 50–540 Wh in 10 Wh register steps."""
    return 10 * (5 + i * 37 % 50)


def poisson_times(count: int, mean_gap_s: float, seed: int) -> list[float]:
    """`count` offsets from 0 with exponential gaps (a Poisson process), the first after one gap."""
    rng = random.Random(seed)
    times: list[float] = []
    t = 0.0
    for _ in range(count):
        t += rng.expovariate(1 / mean_gap_s)
        times.append(t)
    return times


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100): the smallest value with at least q % of the values at or below."""
    assert values, "no values"
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def max_outstanding(spans: Sequence[tuple[float, float]], start: float, end: float) -> int:
    """The most spans (begin, end) open at one instant of [start, end]; a span is open from its begin until its end."""
    open_now = sum(1 for b, e in spans if b <= start < e)
    most = open_now
    events = sorted((t, step) for b, e in spans for t, step in ((b, 1), (e, -1)) if start < t <= end)
    for _, step in events:  # at equal times the ends (-1) come first
        open_now += step
        most = max(most, open_now)
    return most


@dataclass(frozen=True, slots=True)
class Summary:
    """p50, p90, p99 and max of a set of latencies (seconds), and how many there were."""

    p50: float
    p90: float
    p99: float
    max: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls(math.nan, math.nan, math.nan, math.nan, 0)
        return cls(percentile(values, 50), percentile(values, 90), percentile(values, 99), max(values), len(values))

    def ms(self) -> str:
        parts = zip(("p50", "p90", "p99", "max"), (self.p50, self.p90, self.p99, self.max), strict=True)
        return " · ".join(f"{name} {_ms(value)}" for name, value in parts) + " ms"


@dataclass(frozen=True, slots=True)
class Sweep:
    """One runner sweep that charged something, as `headend engine` logs it."""

    ended: float  # wall clock (seconds since the epoch)
    accounts: int
    charges: int
    seconds: float


def parse_sweep(line: str) -> Sweep | None:
    """A runner log line 'YYYY-MM-DD HH:MM:SS,mmm INFO …: charged N accounts: C charges, … in S s', else None.

    The log's time is the process's local time, as `logging` writes it.
    """
    stamp = LOG_LINE.match(line)
    sweep = SWEEP_LINE.search(line)
    if stamp is None or sweep is None:
        return None
    ended = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # noqa: DTZ007 - local, as logged
    return Sweep(ended, int(sweep.group(1)), int(sweep.group(2)), float(sweep.group(3)))


def group_by_concentrator(rows: Sequence[tuple[str, str, int, int]]) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """(concentrator, meter, register Wh, power W) rows → each concentrator with its meters' readings, in order."""
    groups: dict[str, list[tuple[str, int, int]]] = {}
    for dcu, meter, wh, power in rows:
        groups.setdefault(dcu, []).append((meter, wh, power))
    return list(groups.items())


# ================================================================ the fleet


@dataclass(frozen=True, slots=True)
class Probe:
    """A probe account: its number, ids, and the register of the reading that exhausts it."""

    i: int
    account_id: str
    meter_id: str
    exhausting_wh: int


@dataclass(frozen=True, slots=True)
class Template:
    """The template database and what the runs need to know of it."""

    url: str
    grid: datetime  # every meter's next reading is at this instant, one interval after its anchor
    accounts: int
    probes: list[Probe]
    dcus: list[tuple[str, list[tuple[str, int, int]]]]
    setup_s: float
    size_bytes: int

    @property
    def background_readings(self) -> int:
        """Readings of one quarter hour of the background fleet."""
        return sum(len(m) for _, m in self.dcus)


def reaction_workload(accounts: int, sample: int, grid: datetime) -> Workload:
    """Every account opened at `grid` − 15 min on an on-grid reading; probes with 0.50 yuan, the rest with plenty."""
    anchor = f"timestamptz '{(grid - INTERVAL).isoformat()}'"
    return Workload(
        name="reaction",
        accounts=accounts,
        anchor=anchor,
        first=f"{anchor} + interval '15 minutes'",
        readings="0",  # only the opening reading: the next one is published during the run
        omit_from="NULL",
        omit_to="NULL",
        credit=f"CASE WHEN {sample_sql(accounts, sample)} THEN {PROBE_CREDIT_FEN} ELSE {BACKGROUND_CREDIT_FEN} END",
        expected="0",
        incomplete="false",
    )


def _register_concentrators(conn: psycopg.Connection[Any], accounts: int, sample: int) -> None:
    """Put the background meters behind concentrators of PER_DCU, in account order; the probes stay direct."""
    numbered = (
        f"SELECT meter_id, 'bd' || lpad(((row_number() OVER (ORDER BY i) - 1) / {PER_DCU})::text, 5, '0') AS dcu "
        f"FROM bench_plan WHERE NOT {sample_sql(accounts, sample)}"
    )
    with conn.transaction():
        conn.execute(
            f"INSERT INTO concentrators (concentrator_id, region) SELECT DISTINCT dcu, 'bench' FROM ({numbered}) n"
        )
        conn.execute(f"UPDATE meters m SET concentrator_id = n.dcu FROM ({numbered}) n WHERE m.meter_id = n.meter_id")
    conn.execute("VACUUM ANALYZE meters")
    conn.execute("VACUUM ANALYZE concentrators")


@contextlib.contextmanager
def reaction_template(accounts: int, sample: int) -> Iterator[Template]:
    """Generate the fleet into a template database (dropped on exit)."""
    grid = grid_floor(datetime.now(UTC))
    w = reaction_workload(accounts, sample, grid)
    with template_database(w) as (tpl, setup_s):
        started = time.perf_counter()
        with template_open(tpl) as conn:
            _register_concentrators(conn, accounts, sample)
            # the ingest worker makes today's partitions itself; the template has them from the start
            ensure_partitions(conn, days_around(datetime.now(UTC).date(), 1, 2))
            rows = conn.execute(
                "SELECT p.i, p.account_id, p.meter_id, p.opening_wh, p.credit_fen, m.concentrator_id "
                "FROM bench_plan p JOIN meters m USING (meter_id) ORDER BY p.i"
            ).fetchall()
            size = scalar(conn, "SELECT pg_database_size(current_database())")
        probes = [
            Probe(int(i), str(a), str(m), (int(wh) + PROBE_WH) % REGISTER_MODULUS)
            for i, a, m, wh, credit, dcu in rows
            if dcu is None
        ]
        if [p.i for p in probes] != sample_indices(accounts, sample) or any(
            r[4] != (PROBE_CREDIT_FEN if r[5] is None else BACKGROUND_CREDIT_FEN) for r in rows
        ):
            raise BenchError("the generated probes are not the accounts sample_indices names")
        background = [
            (
                str(dcu),
                str(m),
                (int(wh) + background_step_wh(int(i))) % REGISTER_MODULUS,
                background_step_wh(int(i)) * 4,
            )
            for i, a, m, wh, credit, dcu in rows
            if dcu is not None
        ]
        yield Template(
            tpl,
            grid,
            accounts,
            probes,
            group_by_concentrator(background),
            setup_s + time.perf_counter() - started,
            size,
        )


# ================================================================ child processes (spawned)

# slots of the fleet publisher's probe
B_READY, B_START, B_READINGS, B_MESSAGES, B_ACKED, B_BEHIND, B_LAST, B_DONE, B_FAILED = range(9)
B_SLOTS: Final = 9
# slots of a run's control flags, shared with its children. Flags, not multiprocessing Events: setting an Event
# that a killed process was waiting on blocks for ever (Condition.notify waits for the dead waiter to wake)
C_STOP, C_FLEET_GO, C_FLEET_STOP, C_WATCH_READY, C_METERS_READY = range(5)
C_SLOTS: Final = 5
FLAG_POLL_S: Final = 0.002


def wait_flag(flags: SynchronizedArray[Any], slot: int, until: float | None = None) -> bool:
    """Wait until flag `slot` is set (True) or the monotonic time `until` has come (False)."""
    while not flags[slot]:
        left = math.inf if until is None else until - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(FLAG_POLL_S, left))
    return True


def fleet_main(
    host: str,
    port: int,
    plan_path: str,
    grid_iso: str,
    rate: float,
    seed: int,
    probe: SynchronizedArray[Any],
    flags: SynchronizedArray[Any],
) -> None:
    """Publish one quarter hour of the background fleet: each concentrator's batch in turn, paced at `rate`/s.

    The concentrators go in a seeded random order (their meters are not uploaded in account order). Records what
    was published and acknowledged, and how far behind its schedule the publisher fell at worst.
    """
    die_with_parent()
    with open(plan_path, "rb") as handle:
        dcus: list[tuple[str, list[tuple[str, int, int]]]] = pickle.load(handle)  # our own temp file
    random.Random(seed).shuffle(dcus)
    ts = datetime.fromisoformat(grid_iso).astimezone(ZONE)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-fleet-{unique_token()}", protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(1000)

    def on_publish(client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        probe[B_ACKED] += 1

    client.on_publish = on_publish
    client.connect(host, port, keepalive=60)
    client.loop_start()
    try:
        probe[B_READY] = 1
        wait_flag(flags, C_FLEET_GO)
        start = time.monotonic()
        probe[B_START] = start
        sent = 0
        for dcu_id, meters in dcus:
            due = start + sent / rate
            if wait_flag(flags, C_FLEET_STOP, due):
                break
            probe[B_BEHIND] = max(probe[B_BEHIND], time.monotonic() - due)
            readings = [
                MeterReading(m, ts, wh, power_w=power, voltage_v=220.0 + len(m) % 7, relay=RelayState.CLOSED, seq=1)
                for m, wh, power in meters
            ]
            payload = encode_concentrator_batch(dcu_id, datetime.now(ZONE), readings)
            rc = client.publish(concentrator_readings_topic(dcu_id), payload, qos=1).rc
            if rc != mqtt.MQTT_ERR_SUCCESS:
                probe[B_FAILED] = rc
                return
            sent += len(meters)
            probe[B_READINGS] = sent
            probe[B_MESSAGES] += 1
            probe[B_LAST] = time.monotonic()
        probe[B_DONE] = 1
        wait_flag(flags, C_FLEET_STOP)
        deadline = time.monotonic() + 30
        while probe[B_ACKED] < probe[B_MESSAGES] and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        client.disconnect()
        client.loop_stop()


def watcher_main(host: str, port: int, out: multiprocessing.Queue[Any], flags: SynchronizedArray[Any]) -> None:
    """The bare subscriber: paho, QoS 1, on the command topics and the ping topic; (monotonic, wall, topic, payload)."""
    die_with_parent()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-watch-{unique_token()}", protocol=mqtt.MQTTv311)

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe([(f, 1) for f in WATCH_FILTERS])

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        flags[C_WATCH_READY] = 1

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        out.put((time.monotonic(), time.time(), message.topic, bytes(message.payload)))

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, port, keepalive=60)
    client.loop_start()
    wait_flag(flags, C_STOP)
    client.disconnect()
    client.loop_stop()


def responder_main(host: str, port: int, meter_ids: list[str], flags: SynchronizedArray[Any]) -> None:
    """A `CommandResponder` for the probe meters (direct MQTT meters, relays closed, default relay delay)."""
    die_with_parent()
    meters = tuple(SimMeter(m, None, "bench", "DDZY1710-Z", MeterKind.RESIDENTIAL, 0) for m in meter_ids)
    broker = BrokerConfig(host=host, port=port, client_id=f"bench-meters-{unique_token()}")
    with CommandResponder(SimFleet(meters, (), seed=0), broker):
        flags[C_METERS_READY] = 1
        wait_flag(flags, C_STOP)


# ================================================================ processes of a run


@dataclass(slots=True)
class Knobs:
    """Settings of the processes under test."""

    engine_poll_s: float
    dispatch_poll_s: float
    lateness_s: int
    storm_limit: int


@dataclass(slots=True)
class Cluster:
    """The processes of one run."""

    tmp: Path
    headend: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    children: dict[str, SpawnProcess] = field(default_factory=dict)
    fleet_failed: SynchronizedArray[Any] | None = None  # the fleet publisher's probe

    def log(self, role: str) -> Path:
        return self.tmp / f"{role}.log"

    def log_tail(self, role: str, lines: int = 15) -> str:
        path = self.log(role)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def check_alive(self) -> None:
        for role, process in self.headend.items():
            if process.poll() is not None:
                raise BenchError(f"headend {role} exited with {process.returncode}:\n{self.log_tail(role)}")
        for name, child in self.children.items():
            if not child.is_alive():
                raise BenchError(f"the {name} process exited with {child.exitcode}")
        if self.fleet_failed is not None and self.fleet_failed[B_FAILED]:
            raise BenchError(
                f"the fleet publisher's publish failed: {mqtt.error_string(int(self.fleet_failed[B_FAILED]))}"
            )

    def pids(self, broker: Broker) -> dict[str, int]:
        found = {f"headend {role}": p.pid for role, p in self.headend.items()}
        found |= {name: p.pid for name, p in self.children.items() if p.pid is not None}
        return found | {"mosquitto": broker.pid, "bench main process": os.getpid()}


def headend_env(url: str, role: str, broker: Broker, token: str, knobs: Knobs) -> dict[str, str]:
    """The environment of one `python -m headend` process: only our HEADEND_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADEND_")}
    return env | {
        "HEADEND_DATABASE_URL": f"{url}?application_name=bench-{role}",
        "HEADEND_MQTT_HOST": broker.host,
        "HEADEND_MQTT_PORT": str(broker.port),
        "HEADEND_MQTT_CLIENT_ID": f"bench-ingest-{token}",
        "HEADEND_MQTT_SHARED_GROUP": f"g{token}",
        "HEADEND_DISPATCH_CLIENT_ID": f"bench-dispatch-{token}",
        "HEADEND_ENGINE_EAGER_ON_GRID": "true",
        "HEADEND_ENGINE_LATENESS_S": str(knobs.lateness_s),
        "HEADEND_ENGINE_POLL_S": str(knobs.engine_poll_s),
        "HEADEND_DISPATCH_POLL_S": str(knobs.dispatch_poll_s),
        "HEADEND_DISPATCH_STORM_LIMIT": str(knobs.storm_limit),
    }


def start_headend(
    stack: contextlib.ExitStack, cluster: Cluster, url: str, broker: Broker, token: str, knobs: Knobs
) -> None:
    """`python -m headend ingest|engine|dispatch` with their logs in the run's directory; stopped on exit."""
    for role in ROLES:
        log = cluster.log(role).open("wb")
        stack.callback(log.close)
        process = subprocess.Popen(
            [sys.executable, "-m", "headend", "--log-level", "info", role],
            env=headend_env(url, role, broker, token, knobs),
            stdout=log,
            stderr=log,
            preexec_fn=die_with_parent,
        )
        stack.callback(stop_process, process, 30)
        cluster.headend[role] = process
    stack.callback(purge_session, broker, f"bench-ingest-{token}")
    stack.callback(purge_session, broker, f"bench-dispatch-{token}")


def backends(conn: psycopg.Connection[Any]) -> dict[str, list[int]]:
    """PostgreSQL backend pids of the run's database by application name (bench-ingest, bench-engine, …)."""
    found: dict[str, list[int]] = {}
    for pid, name in conn.execute(
        "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'bench-%' ORDER BY pid"
    ):
        found.setdefault(str(name), []).append(int(pid))
    return found


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """CPU seconds of the run's processes and their backends, and the machine's jiffies, at one moment."""

    at: float
    seconds: dict[str, float]
    machine: tuple[int, int]

    @classmethod
    def take(cls, pids: dict[str, list[int]]) -> CpuSnapshot:
        return cls(
            time.monotonic(),
            {label: sum(process_cpu_s(p) for p in group) for label, group in pids.items()},
            machine_ticks(),
        )


def cpu_shares(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """Share of one core each process (group) used between the snapshots; 'machine' is the share of all cores."""
    wall = after.at - before.at
    shares = {label: (after.seconds[label] - before.seconds.get(label, 0.0)) / wall for label in after.seconds}
    busy = after.machine[0] - before.machine[0]
    total = after.machine[1] - before.machine[1]
    shares["machine (all cores, everyone)"] = busy / total if total else 0.0
    return shares


# ================================================================ one run


@dataclass(slots=True)
class ProbeRun:
    """What happened to one probe."""

    probe: Probe
    sent: float = 0.0  # monotonic
    sent_wall: float = 0.0
    disconnect: float = 0.0  # monotonic arrival of the disconnect at the subscriber
    disconnect_wall: float = 0.0
    confirmed: float = 0.0
    pay_at: float = 0.0  # when to pay (monotonic)
    pay_started: float = 0.0
    paid: float = 0.0  # monotonic, when `pay` returned
    paid_wall: float = 0.0
    reconnect: float = 0.0
    reconnect_wall: float = 0.0


@dataclass(slots=True)
class RunResult:
    """Figures of one run."""

    load: float
    disconnect: list[float]
    reconnect: list[float]
    pay_s: list[float]
    mqtt_rtt: list[float]
    db_commit: list[float]
    mqtt_rtt_idle: list[float]
    db_commit_idle: list[float]
    idle_sweep_s: list[float]
    idle_cpu: dict[str, float]
    cpu: dict[str, float]
    window_s: float
    published_rate: float  # background readings/s published during the probe window
    stored_rate: float
    charged_rate: float
    max_backlog: int  # most background readings received by the worker and not yet in a charging batch
    background_latency: list[float]  # each background reading: received by the worker → its charging batch began
    catch_up_s: float  # after the window, until every stored reading was charged
    fleet_behind_s: float
    sweeps: list[Sweep]
    stages_disconnect: dict[str, list[float]]
    stages_reconnect: dict[str, list[float]]
    eager: int  # probes charged under the eager rule (younger than the lateness when published)
    slow: tuple[int, int]  # disconnects over SLOW_S, and how many of them waited on a long runner iteration
    resent: int


class Run:
    """One measured run at one background load on a fresh copy of the template."""

    def __init__(self, tpl: Template, broker: Broker, ctx: SpawnContext, args: argparse.Namespace, load: float) -> None:
        self.tpl = tpl
        self.broker = broker
        self.ctx = ctx
        self.args = args
        self.load = load
        self.rate = tpl.accounts / INTERVAL.total_seconds() * load
        self.knobs = Knobs(args.engine_poll_s, args.dispatch_poll_s, args.lateness_s, max(STORM_LIMIT, args.sample))
        self.seed = args.seed

    def execute(self) -> RunResult:
        with contextlib.ExitStack() as stack:
            tmp = Path(tempfile.mkdtemp(prefix="bench-reaction-"))
            stack.callback(shutil.rmtree, tmp, True)
            if self.args.keep_logs is not None:
                keep = self.args.keep_logs / f"load{self.load:g}-{unique_token()}"
                stack.callback(shutil.copytree, tmp, keep, ignore=shutil.ignore_patterns("*.pickle"))
            url = stack.enter_context(cloned_database(self.tpl.url))
            conn = stack.enter_context(
                psycopg.connect(libpq_dsn(f"{url}?application_name=bench-main"), autocommit=True)
            )
            conn.execute("CREATE TABLE bench_ping (n int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
            # the runner's full sweep (every HEADEND_ENGINE_FULL_SWEEP_S) at this size, timed before anything runs
            idle_sweeps = self._idle_sweeps(conn)
            cluster = Cluster(tmp)
            self.cluster = cluster
            self.conn = conn
            self._start_children(stack, cluster)
            token = unique_token()
            start_headend(stack, cluster, url, self.broker, token, self.knobs)
            self._wait_ready(cluster, conn)
            groups = {label: [pid] for label, pid in cluster.pids(self.broker).items()}
            for name, pids in backends(conn).items():
                groups[f"PostgreSQL backend{'s' if len(pids) > 1 else ''} of {name.removeprefix('bench-')}"] = pids
            self.client = self._publisher(stack)

            # idle: the processes run, nothing is published
            before = CpuSnapshot.take(groups)
            ping_idle, db_idle = self._raw_limits(self.args.idle_pings)
            time.sleep(max(0.0, self.args.idle_s - (time.monotonic() - before.at)))
            idle_cpu = cpu_shares(before, CpuSnapshot.take(groups))

            # the fleet runs; warm up, then the probes with the raw limits interleaved
            self.flags[C_FLEET_GO] = 1
            time.sleep(self.args.warmup_s)
            cluster.check_alive()
            published_before = float(self.fleet_probe[B_READINGS])
            before = CpuSnapshot.take(groups)
            window_started = time.monotonic()
            window_started_wall = time.time()
            probes, ping, db = self._probe_window()
            window_s = time.monotonic() - window_started
            cpu = cpu_shares(before, CpuSnapshot.take(groups))
            fleet = self.fleet_probe
            published = fleet[B_READINGS]
            self.flags[C_FLEET_STOP] = 1
            # it exits once its messages are acknowledged; no longer one of the processes that must stay up
            cluster.children.pop("fleet publisher").join(35)
            behind = float(fleet[B_BEHIND])
            catch_up = self._wait_charged(int(published))
            self._check(probes)
            stages_d, stages_r = self._stages(probes)
            window_ended_wall = window_started_wall + window_s
            background = self._background()
            in_window = [(a, b) for a, b in background if window_started_wall <= a <= window_ended_wall]
            sweeps = [s for s in self._sweeps() if window_started_wall <= s.ended <= window_ended_wall]
            lateness = self.knobs.lateness_s
            grid = self.tpl.grid.timestamp()
            return RunResult(
                load=self.load,
                disconnect=[p.disconnect - p.sent for p in probes],
                reconnect=[p.reconnect - p.paid for p in probes],
                pay_s=[p.paid - p.pay_started for p in probes],
                mqtt_rtt=ping,
                db_commit=db,
                mqtt_rtt_idle=ping_idle,
                db_commit_idle=db_idle,
                idle_sweep_s=idle_sweeps,
                idle_cpu=idle_cpu,
                cpu=cpu,
                window_s=window_s,
                published_rate=(published - published_before) / window_s,
                stored_rate=len(in_window) / window_s,
                charged_rate=sum(1 for _, b in background if window_started_wall <= b <= window_ended_wall) / window_s,
                max_backlog=max_outstanding(background, window_started_wall, window_ended_wall),
                background_latency=[b - a for a, b in in_window],
                catch_up_s=catch_up,
                fleet_behind_s=behind,
                sweeps=sweeps,
                stages_disconnect=stages_d,
                stages_reconnect=stages_r,
                eager=sum(1 for p in probes if p.sent_wall - grid < lateness),
                slow=slow_disconnects(probes, self._sweeps()),
                resent=self.resent,
            )

    # --- setup

    def _idle_sweeps(self, conn: psycopg.Connection[Any]) -> list[float]:
        """Seconds of `charge_due` when nothing is due: what the idle runner does every poll."""
        catalog = Catalog()
        times = []
        for _ in range(5):
            now = datetime.now(UTC)
            started = time.perf_counter()
            _, taken = charge_due(
                conn,
                catalog,
                now=now,
                complete_until=now - timedelta(seconds=self.knobs.lateness_s),
                lateness_s=self.knobs.lateness_s,
                limit=int(Settings.model_fields["engine_batch_accounts"].default),
                eager_on_grid=True,
            )
            times.append(time.perf_counter() - started)
            if taken:
                raise BenchError(f"{len(taken)} accounts were due before anything was published")
        return times

    def _start_children(self, stack: contextlib.ExitStack, cluster: Cluster) -> None:
        host, port = self.broker.host, self.broker.port
        self.watch_queue: multiprocessing.Queue[Any] = self.ctx.Queue()
        self.flags = flags = self.ctx.Array("d", C_SLOTS)
        watcher = self.ctx.Process(target=watcher_main, args=(host, port, self.watch_queue, flags), daemon=True)
        responder = self.ctx.Process(
            target=responder_main, args=(host, port, [p.meter_id for p in self.tpl.probes], flags), daemon=True
        )
        plan = cluster.tmp / "fleet.pickle"
        with plan.open("wb") as handle:
            pickle.dump(self.tpl.dcus, handle, protocol=pickle.HIGHEST_PROTOCOL)
        self.fleet_probe = cluster.fleet_failed = self.ctx.Array("d", B_SLOTS)
        fleet = self.ctx.Process(
            target=fleet_main,
            args=(host, port, str(plan), self.tpl.grid.isoformat(), self.rate, self.seed, self.fleet_probe, flags),
            daemon=True,
        )
        children = (("bare subscriber", watcher), ("command responder", responder), ("fleet publisher", fleet))
        for name, process in children:
            process.start()
            cluster.children[name] = process

        def stop_children() -> None:
            for slot in (C_FLEET_GO, C_FLEET_STOP, C_STOP):
                flags[slot] = 1
            deadline = time.monotonic() + 35  # the fleet publisher waits up to 30 s for its acknowledgements
            for _, process in children:
                process.join(max(0.1, deadline - time.monotonic()))
                stop_child(process)

        stack.callback(stop_children)
        wait_until(lambda: bool(flags[C_WATCH_READY]) or not watcher.is_alive(), 30, "the bare subscriber")
        wait_until(lambda: bool(flags[C_METERS_READY]) or not responder.is_alive(), 60, "the command responder")
        wait_until(lambda: bool(self.fleet_probe[B_READY]) or not fleet.is_alive(), 60, "the fleet publisher")
        cluster.check_alive()

    def _wait_ready(self, cluster: Cluster, conn: psycopg.Connection[Any]) -> None:
        def ready() -> bool:
            cluster.check_alive()
            subscribed = all(
                "subscribed to" in cluster.log(r).read_text(errors="replace") for r in ("ingest", "dispatch")
            )
            return subscribed and "bench-engine" in backends(conn)

        wait_until(ready, 60, "headend ingest, engine and dispatch to start", 0.1)

    def _publisher(self, stack: contextlib.ExitStack) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-probe-{unique_token()}", protocol=mqtt.MQTTv311
        )
        client.max_inflight_messages_set(1000)
        client.connect(self.broker.host, self.broker.port, keepalive=60)
        client.loop_start()
        stack.callback(client.loop_stop)
        stack.callback(client.disconnect)
        wait_until(client.is_connected, 10, "the probe publisher to connect")
        return client

    # --- measurements

    def _raw_limits(self, count: int) -> tuple[list[float], list[float]]:
        """`count` pings and one-row commits, alternating, about 20 ms apart (before the fleet starts)."""
        ping: list[float] = []
        db: list[float] = []
        sent: dict[str, float] = {}
        for n in range(count):
            topic = f"{PING_TOPIC}/idle-{n}"
            sent[topic] = time.monotonic()
            self.client.publish(topic, b"ping", qos=1)
            db.append(self._db_ping(-1 - n))
            time.sleep(0.02)
        deadline = time.monotonic() + 10
        while len(ping) < count and time.monotonic() < deadline:
            try:
                t, _, topic, _ = self.watch_queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if topic in sent:
                ping.append(t - sent.pop(topic))
        if len(ping) < count:
            raise BenchError(f"{count - len(ping)} idle pings were not received")
        return ping, db

    def _db_ping(self, n: int) -> float:
        started = time.perf_counter()
        self.conn.execute("INSERT INTO bench_ping (n) VALUES (%s)", (n,))
        return time.perf_counter() - started

    def _counts(self) -> tuple[int, int]:
        """(background readings stored, charged) now."""
        stored = scalar(
            self.conn, "SELECT count(*) FROM readings WHERE ts = %s AND source <> 'mqtt:meter'", (self.tpl.grid,)
        )
        charged = scalar(self.conn, "SELECT count(*) FROM usage_charges")
        probes_charged = scalar(
            self.conn,
            "SELECT count(*) FROM usage_charges WHERE account_id = ANY(%s)",
            ([p.account_id for p in self.tpl.probes],),
        )
        return stored, charged - probes_charged

    def _probe_window(self) -> tuple[list[ProbeRun], list[float], list[float]]:
        """Probes at Poisson times; a payment after each confirmed disconnect; pings and commits in between."""
        gap = self.args.probe_gap_s
        origin = time.monotonic() + 0.05
        runs = [ProbeRun(p) for p in self.tpl.probes]
        order = list(range(len(runs)))
        random.Random(self.seed + 1).shuffle(order)  # probes in random account order
        schedule: list[tuple[float, str, int]] = [
            (origin + t, "probe", order[j]) for j, t in enumerate(poisson_times(len(runs), gap, self.seed + 2))
        ]
        pings = len(runs)
        schedule += [(origin + t, "ping", n) for n, t in enumerate(poisson_times(pings, gap, self.seed + 3))]
        schedule += [(origin + t, "db", n) for n, t in enumerate(poisson_times(pings, gap, self.seed + 4))]
        schedule.sort()
        by_meter = {r.probe.meter_id: r for r in runs}
        ping_sent: dict[str, float] = {}
        ping: list[float] = []
        db: list[float] = []
        catalog = Catalog()
        pay_rng = random.Random(self.seed + 5)
        next_poll = 0.0
        next_alive = 0.0
        self.resent = 0
        deadline_after_last = self.args.timeout_s
        ts = self.tpl.grid.astimezone(ZONE)
        while True:
            now = time.monotonic()
            while schedule and schedule[0][0] <= now:
                _, kind, n = schedule.pop(0)
                if kind == "probe":
                    r = runs[n]
                    payload = encode_meter_reading(
                        MeterReading(r.probe.meter_id, ts, r.probe.exhausting_wh, power_w=PROBE_WH * 4, seq=1)
                    )
                    r.sent_wall = time.time()
                    r.sent = time.monotonic()
                    self.client.publish(meter_readings_topic(r.probe.meter_id), payload, qos=1)
                elif kind == "ping":
                    topic = f"{PING_TOPIC}/{n}"
                    ping_sent[topic] = time.monotonic()
                    self.client.publish(topic, b"ping", qos=1)
                else:
                    db.append(self._db_ping(n))
            for r in runs:
                if r.pay_at and not r.paid and r.pay_at <= time.monotonic():
                    self._pay(r, catalog)
            self._drain(by_meter, ping_sent, ping)
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + 0.1
                waiting = [r for r in runs if r.disconnect and not r.confirmed]
                if waiting:
                    for (account_id,) in self.conn.execute(
                        "SELECT account_id FROM prepaid_accounts "
                        "WHERE supply = 'disconnected' AND account_id = ANY(%s)",
                        ([r.probe.account_id for r in waiting],),
                    ):
                        r = next(w for w in waiting if w.probe.account_id == account_id)
                        r.confirmed = time.monotonic()
                        r.pay_at = r.confirmed + pay_rng.uniform(0, 2 * gap)
            if now >= next_alive:
                next_alive = now + 1.0
                self.cluster.check_alive()
            if not schedule and all(r.reconnect for r in runs) and len(ping) == pings:
                return runs, ping, db
            last = max(r.sent for r in runs)
            if not schedule and now - last > deadline_after_last:
                missing = {
                    "disconnect": sum(1 for r in runs if not r.disconnect),
                    "confirmation": sum(1 for r in runs if r.disconnect and not r.confirmed),
                    "reconnect": sum(1 for r in runs if r.paid and not r.reconnect),
                    "ping": pings - len(ping),
                }
                raise BenchError(f"{deadline_after_last:.0f} s after the last probe, still missing: {missing}")
            wake = min([schedule[0][0]] if schedule else [now + 0.005], default=now + 0.005)
            time.sleep(max(0.0, min(wake - time.monotonic(), 0.005)))

    def _pay(self, r: ProbeRun, catalog: Catalog) -> None:
        request = TopUp(CHANNEL, f"bench-{unique_token()}", r.probe.account_id, PAYMENT_FEN, datetime.now(UTC))
        r.pay_started = time.monotonic()
        result = pay(self.conn, catalog, request, now=datetime.now(UTC), received_by="bench")
        r.paid = time.monotonic()
        r.paid_wall = time.time()
        if not isinstance(result.outcome, ToppedUp) or result.decided is None:
            raise BenchError(f"payment of {r.probe.account_id} refused: {result.outcome}")
        if [str(c.action) for c in result.decided.commands] != ["reconnect"]:
            raise BenchError(f"payment of {r.probe.account_id} decided {result.decided.commands}, not one reconnect")

    def _drain(self, by_meter: dict[str, ProbeRun], ping_sent: dict[str, float], ping: list[float]) -> None:
        while True:
            try:
                t, wall, topic, payload = self.watch_queue.get_nowait()
            except queue.Empty:
                return
            if topic in ping_sent:
                ping.append(t - ping_sent.pop(topic))
                continue
            if topic.startswith(PING_TOPIC):
                continue
            command = decode_command(parse_topic(topic), payload)
            r = by_meter.get(command.meter_id)
            if r is None:
                raise BenchError(f"a {command.action} for {command.meter_id}, which is not a probe meter")
            if command.action is RelayAction.DISCONNECT:
                if r.disconnect:
                    self.resent += 1
                elif r.sent:
                    r.disconnect, r.disconnect_wall = t, wall
            elif command.action is RelayAction.RECONNECT:
                if r.reconnect:
                    self.resent += 1
                elif r.paid:
                    r.reconnect, r.reconnect_wall = t, wall

    # --- after the window

    def _wait_charged(self, published: int) -> float:
        """Seconds until every published background reading is stored and charged (the runner caught up)."""
        started = time.monotonic()

        def done() -> bool:
            self.cluster.check_alive()
            stored, charged = self._counts()
            return stored == published and charged == stored

        wait_until(done, self.args.timeout_s + published / 500, f"{published:,} background readings charged", 0.2)
        return time.monotonic() - started

    def _check(self, probes: list[ProbeRun]) -> None:
        """Nothing refused, every probe charged once, disconnected, paid and reconnected."""
        dead = scalar(self.conn, "SELECT count(*) FROM dead_letters")
        if dead:
            raise BenchError(f"{dead} dead letters")
        ids = [p.probe.account_id for p in probes]
        rows: dict[str, int] = dict(
            self.conn.execute(
                "SELECT action || ':' || state, count(*) FROM commands WHERE account_id = ANY(%s) GROUP BY 1", (ids,)
            ).fetchall()
        )
        wanted = len(ids)
        if rows.get("disconnect:confirmed") != wanted or sum(rows.values()) != 2 * wanted:
            raise BenchError(f"probe commands: {rows}, expected {wanted} confirmed disconnects and {wanted} reconnects")
        charges = scalar(self.conn, "SELECT count(*) FROM usage_charges WHERE account_id = ANY(%s)", (ids,))
        if charges != wanted:
            raise BenchError(f"{charges} interval charges of the {wanted} probe accounts, expected one each")

    def _stages(self, probes: list[ProbeRun]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """Where each probe's time went, from the times the processes recorded (wall clock, one machine)."""
        by_account = {p.probe.account_id: p for p in probes}
        disconnect: dict[str, list[float]] = {k: [] for k in DISCONNECT_STAGES}
        reconnect: dict[str, list[float]] = {k: [] for k in RECONNECT_STAGES}
        rows = self.conn.execute(
            """
            SELECT c.account_id, c.action, extract(epoch FROM r.received_at), extract(epoch FROM q.requested_at),
                extract(epoch FROM c.issued_at),
                extract(epoch FROM (SELECT min(a.at) FROM command_audit a WHERE a.command_id = c.command_id
                    AND a.to_state = 'sent'))
            FROM commands c JOIN command_requests q ON q.request_id = c.command_id
            LEFT JOIN readings r ON r.meter_id = c.meter_id AND r.ts = %s
            WHERE c.account_id = ANY(%s)
            """,
            (self.tpl.grid, list(by_account)),
        ).fetchall()
        for account_id, action, received, requested, issued, sent in rows:
            p = by_account[account_id]
            if action == "disconnect":
                marks = [p.sent_wall, float(received), float(requested), float(issued), float(sent), p.disconnect_wall]
                stages = disconnect
            else:
                marks = [p.paid_wall, float(issued), float(sent), p.reconnect_wall]
                stages = reconnect
            for name, a, b in zip(stages, marks, marks[1:], strict=False):
                stages[name].append(b - a)
        return disconnect, reconnect

    def _background(self) -> list[tuple[float, float]]:
        """Each stored background reading: (received by the worker, its account's charging batch began), wall clock.

        The batch's start is the account row's `updated_at` (`now()` of the runner's transaction): a background
        account is charged once in a run, and nothing else updates its row.
        """
        rows = self.conn.execute(
            "SELECT extract(epoch FROM r.received_at)::float8, extract(epoch FROM a.updated_at)::float8 "
            "FROM readings r JOIN prepaid_accounts a ON a.meter_id = r.meter_id "
            "WHERE r.ts = %s AND r.source <> 'mqtt:meter'",
            (self.tpl.grid,),
        ).fetchall()
        return [(float(a), float(b)) for a, b in rows]

    def _sweeps(self) -> list[Sweep]:
        lines = self.cluster.log("engine").read_text(errors="replace").splitlines()
        return [s for s in (parse_sweep(line) for line in lines) if s is not None]


SLOW_S: Final = 0.5
LONG_ITERATION_S: Final = 0.4


def slow_disconnects(probes: Sequence[ProbeRun], sweeps: Sequence[Sweep]) -> tuple[int, int]:
    """Disconnects slower than SLOW_S, and how many of them overlap a runner iteration of at least LONG_ITERATION_S
    (one that ended after the reading was published and began before the disconnect arrived)."""
    slow = [p for p in probes if p.disconnect - p.sent > SLOW_S]
    long = [s for s in sweeps if s.seconds >= LONG_ITERATION_S]
    waited = sum(
        1 for p in slow if any(s.ended > p.sent_wall and s.ended - s.seconds < p.disconnect_wall for s in long)
    )
    return len(slow), waited


DISCONNECT_STAGES: Final = (
    "published → received by `headend ingest`",
    "→ the runner's batch began (ingest batch wait and commit, runner poll or the batch in hand)",
    "→ the dispatcher took the request (runner batch to its commit, dispatcher poll)",
    "→ the dispatcher began the send (its step's other commands)",
    "→ at the bare subscriber (re-check, audit commit, publish)",
)
RECONNECT_STAGES: Final = (
    "`pay` returned → the dispatcher took the request (dispatcher poll)",
    "→ the dispatcher began the send (its step's other commands)",
    "→ at the bare subscriber (re-check, audit commit, publish)",
)


# ================================================================ report


@dataclass(slots=True)
class Results:
    """Runs by load."""

    runs: dict[float, list[RunResult]] = field(default_factory=dict)

    def add(self, result: RunResult) -> None:
        self.runs.setdefault(result.load, []).append(result)


def _med(values: Sequence[float]) -> float:
    return median(values) if values else math.nan


def _ms(value: float) -> str:
    """Milliseconds: one decimal below 10 ms."""
    if math.isnan(value):
        return "—"
    ms = value * 1000
    return f"{ms:,.1f}" if ms < 10 else f"{ms:,.0f}"


def load_label(load: float, accounts: int) -> str:
    """'15× (1,667 readings/s)'."""
    rate = accounts / INTERVAL.total_seconds() * load
    return f"{load:g}× ({fmt_int(rate)} readings/s)"


# the path's unavoidable work: MQTT hops and commits (ingest batch, runner batch, dispatcher intake, send audit)
FLOOR_HOPS: Final = {"disconnect": (2, 4), "reconnect": (1, 2)}


def floor_s(run: RunResult, what: str, q: float) -> float:
    """The raw floor of a path at percentile q: its MQTT hops and commits at the raw limits measured in the run."""
    hops, commits = FLOOR_HOPS[what]
    return hops * percentile(run.mqtt_rtt, q) + commits * percentile(run.db_commit, q)


def _pct(runs: Sequence[RunResult], name: str, q: float) -> float:
    """Median over the runs of each run's q-th percentile of `name`."""
    return _med([percentile(getattr(r, name), q) for r in runs if getattr(r, name)])


def latency_table(results: Results, accounts: int) -> str:
    """The targets: p50/p90/p99/max (medians over the runs), the p99 of each run, against the path's raw floor."""
    rows: list[list[str]] = []
    for load, runs in results.runs.items():
        for what in ("disconnect", "reconnect"):
            p99 = _pct(runs, what, 99)
            floor50 = _med([floor_s(r, what, 50) for r in runs])
            floor99 = _med([floor_s(r, what, 99) for r in runs])
            rows.append(
                [
                    f"{what}, fleet at {load_label(load, accounts)}",
                    _ms(_pct(runs, what, 50)),
                    _ms(_pct(runs, what, 90)),
                    f"**{_ms(p99)}**",
                    _ms(_med([max(getattr(r, what)) for r in runs])),
                    " · ".join(_ms(percentile(getattr(r, what), 99)) for r in runs),
                    f"{sum(len(getattr(r, what)) for r in runs):,}",
                    f"{_ms(floor50)} / {_ms(floor99)}",
                    f"{ratio(_pct(runs, what, 50), floor50):,.0f}× / {ratio(p99, floor99):,.0f}×",
                    "yes" if p99 < 1.0 else "**no**",
                ]
            )
    header = [
        "figure (ms)",
        "p50",
        "p90",
        "p99",
        "max",
        "p99 of each run",
        "n",
        "floor p50 / p99",
        "ratio",
        "p99 < 1 s?",
    ]
    return format_table(header, rows)


def raw_table(results: Results, accounts: int) -> str:
    """The raw limits and the payer's wait."""
    rows: list[list[str]] = []
    everything = [r for runs in results.runs.values() for r in runs]
    items: list[tuple[str, Sequence[RunResult], str]] = []
    for load, runs in results.runs.items():
        label = f"fleet at {load_label(load, accounts)}"
        items += [
            (f"bare paho publish → subscribe (QoS 1), {label}", runs, "mqtt_rtt"),
            (f"one-row INSERT + COMMIT, {label}", runs, "db_commit"),
            (f"`pay` (the payer's wait, not in the reconnect figure), {label}", runs, "pay_s"),
        ]
    items += [
        ("bare paho publish → subscribe, processes up, fleet idle (all runs)", everything, "mqtt_rtt_idle"),
        ("one-row INSERT + COMMIT, processes up, fleet idle (all runs)", everything, "db_commit_idle"),
        ("a full sweep's `charge_due` with nothing due, at this size (all runs)", everything, "idle_sweep_s"),
    ]
    for label, group, name in items:
        rows.append(
            [
                label,
                _ms(_pct(group, name, 50)),
                _ms(_pct(group, name, 90)),
                _ms(_pct(group, name, 99)),
                _ms(_med([max(getattr(r, name)) for r in group])),
                f"{sum(len(getattr(r, name)) for r in group):,}",
            ]
        )
    return format_table(["raw limit or context (ms)", "p50", "p90", "p99", "max", "n"], rows)


def context_table(results: Results, accounts: int) -> str:
    """The background load achieved, the runner's sweeps, the probes' path."""
    rows: list[list[str]] = []

    def each(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
        return f"{fmt.format(_med(values))} ({' · '.join(fmt.format(v) for v in values)})"

    for load, runs in results.runs.items():
        label = f"{load:g}×"
        rows.append(
            [
                f"{label}: background readings/s published / stored / charged in the probe window",
                f"{each([r.published_rate for r in runs])} / {each([r.stored_rate for r in runs])} / "
                f"{each([r.charged_rate for r in runs])}",
            ]
        )
        rows.append(
            [
                f"{label}: background readings received by the worker and not yet in a charging batch, at most",
                each([float(r.max_backlog) for r in runs]),
            ]
        )
        rows.append(
            [
                f"{label}: a background reading from the worker's receipt to its charging batch, p50 / p99 / max [ms]",
                f"{_ms(_pct(runs, 'background_latency', 50))} / {_ms(_pct(runs, 'background_latency', 99))} / "
                f"{_ms(_med([max(r.background_latency, default=math.nan) for r in runs]))}",
            ]
        )
        rows.append(
            [
                f"{label}: after the window, until the runner had charged every stored reading [s]",
                each([r.catch_up_s for r in runs], "{:,.1f}"),
            ]
        )
        rows.append(
            [
                f"{label}: the fleet publisher's worst lag behind its schedule [s]",
                each([r.fleet_behind_s for r in runs], "{:,.2f}"),
            ]
        )
        rows.append([f"{label}: probe window [s]", each([r.window_s for r in runs], "{:,.1f}")])
        sweeps = [s for r in runs for s in r.sweeps]
        if sweeps:
            rows.append(
                [
                    f"{label}: runner iterations (react, or full sweep + react) that charged, in the window "
                    "(all runs): count; accounts p50 / p99 / max; seconds p50 / p99 / max",
                    f"{len(sweeps):,}; {percentile([s.accounts for s in sweeps], 50):,} / "
                    f"{percentile([s.accounts for s in sweeps], 99):,} / {max(s.accounts for s in sweeps):,}; "
                    f"{percentile([s.seconds for s in sweeps], 50):.2f} / "
                    f"{percentile([s.seconds for s in sweeps], 99):.2f} / {max(s.seconds for s in sweeps):.2f}",
                ]
            )
        rows.append(
            [
                f"{label}: disconnects over {SLOW_S * 1000:.0f} ms / of them while the runner was in an iteration of "
                f"≥ {LONG_ITERATION_S * 1000:.0f} ms (a full sweep, or a backlog)",
                f"{sum(r.slow[0] for r in runs)} / {sum(r.slow[1] for r in runs)}",
            ]
        )
        rows.append(
            [
                f"{label}: probes charged under the eager rule / commands seen more than once",
                f"{sum(r.eager for r in runs):,} of {sum(len(r.disconnect) for r in runs):,} / "
                f"{sum(r.resent for r in runs)}",
            ]
        )
    return format_table(["context", "median (runs)"], rows)


def cpu_table(results: Results) -> str:
    """CPU of each process and backend: idle (processes up, nothing published) and in the probe windows."""
    everything = [r for runs in results.runs.values() for r in runs]
    labels = list(dict.fromkeys(label for r in everything for label in r.cpu))
    rows = []
    for label in labels:
        cells = [label, f"{_med([r.idle_cpu.get(label, 0.0) for r in everything]):.0%}"]
        cells += [f"{_med([r.cpu.get(label, 0.0) for r in runs]):.0%}" for runs in results.runs.values()]
        rows.append(cells)
    header = ["CPU, % of one core (machine: of both)", "idle", *(f"fleet at {load:g}×" for load in results.runs)]
    return format_table(header, rows)


def stage_table(results: Results) -> str:
    """Where the probes' time went, stage by stage (p50 and p99 over the probes, medians over the runs)."""
    rows: list[list[str]] = []
    for load, runs in results.runs.items():
        for what, attr, names in (
            ("disconnect", "stages_disconnect", DISCONNECT_STAGES),
            ("reconnect", "stages_reconnect", RECONNECT_STAGES),
        ):
            for name in names:
                values = [getattr(r, attr)[name] for r in runs]
                rows.append(
                    [
                        f"{load:g}× {what}: {name}",
                        _ms(_med([percentile(v, 50) for v in values if v])),
                        _ms(_med([percentile(v, 99) for v in values if v])),
                    ]
                )
    return format_table(["stage (wall-clock marks the processes recorded)", "p50 [ms]", "p99 [ms]"], rows)


def report(results: Results, args: argparse.Namespace) -> str:
    """All tables."""
    return "\n\n".join(
        [
            latency_table(results, args.accounts),
            raw_table(results, args.accounts),
            context_table(results, args.accounts),
            cpu_table(results),
            stage_table(results),
        ]
    )


# ================================================================ main


# the code on the measured path: a change of any of it during a benchmark makes its runs incomparable
MEASURED: Final = (
    "headend/ingest",
    "headend/engine",
    "headend/dispatch",
    "headend/db",
    "headend/migrations",
    "headend/money",
    "headend/settings.py",
    "headend/mqtt",
    "prepay_engine",
    "protocols",
    "simulators/command_responder.py",
    "simulators/relay_sim.py",
)


def check_code(digest: str) -> None:
    """Refuse to go on measuring code other than what the benchmark started with (others edit it meanwhile)."""
    check_measured_code(MEASURED, digest)


def default(name: str) -> object:
    """The default of a setting (the benchmark's processes get no HEADEND_* but the ones it sets)."""
    found = Settings.model_fields.get(name)
    return "n/a" if found is None else found.default


def describe_policy(policy: PolicyConfig) -> str:
    """The policy's terms, for the header."""
    f = policy.friendly
    windows = "none" if f.night_start is None and not f.needs_calendar else str(f)
    return (
        f"policy {policy.name}: disconnect at a balance ≤ {policy.disconnect_threshold_fen} fen, notice period "
        f"{policy.notice_period}, friendly-credit windows {windows}, warnings at {policy.warning_thresholds_fen} fen"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reaction", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run: a smoke test of about 2 minutes")
    parser.add_argument("--repeat", type=int, default=None, help="runs at each load (default 3, quick 1)")
    parser.add_argument(
        "--accounts", type=int, default=None, help="accounts and meters (default 100,000; quick 10,000)"
    )
    parser.add_argument("--sample", type=int, default=None, help="probe accounts a run (default 200; quick 40)")
    parser.add_argument(
        "--loads",
        default="1,15",
        help="background fleet rates, in multiples of the real rate (N readings per 15 min), comma-separated "
        "(default 1,15: steady, and the whole quarter hour's readings within a minute)",
    )
    parser.add_argument("--probe-gap-s", type=float, default=0.2, help="mean gap between probes (Poisson)")
    parser.add_argument("--warmup-s", type=float, default=None, help="fleet running before the probes (default 10)")
    parser.add_argument("--idle-s", type=float, default=5.0, help="idle phase measured before the fleet starts")
    parser.add_argument("--idle-pings", type=int, default=50, help="raw-limit samples in the idle phase")
    parser.add_argument("--engine-poll-s", type=float, default=0.1, help="HEADEND_ENGINE_POLL_S (default 0.1)")
    parser.add_argument("--dispatch-poll-s", type=float, default=0.1, help="HEADEND_DISPATCH_POLL_S (default 0.1)")
    parser.add_argument(
        "--lateness-s",
        type=int,
        default=BENCH_LATENESS_S,
        help=f"HEADEND_ENGINE_LATENESS_S (default {BENCH_LATENESS_S}: every reading of a run is younger, so only "
        "the eager rule charges it at once)",
    )
    parser.add_argument("--timeout-s", type=float, default=120.0, help="longest wait for a probe's commands")
    parser.add_argument("--seed", type=int, default=1, help="seed of the probe and payment times")
    parser.add_argument("--mosquitto", default="mosquitto", help="mosquitto binary for the private broker")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy each run's process logs to DIR/")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.accounts is None:
        args.accounts = 10_000 if args.quick else 100_000
    if args.sample is None:
        args.sample = 40 if args.quick else 200
    if args.warmup_s is None:
        args.warmup_s = 5.0 if args.quick else 10.0
    try:
        args.load_list = [float(x) for x in args.loads.split(",") if x.strip()]
    except ValueError:
        parser.error("--loads takes numbers, e.g. 1,15")
    if args.repeat < 1 or not args.load_list or min(args.load_list) <= 0:
        parser.error("--repeat must be ≥ 1 and --loads positive")
    if not 1 <= args.sample <= args.accounts // 2:
        parser.error("--sample must be between 1 and half the accounts")
    if args.accounts > 10_000_000:
        parser.error("account numbers are 7 digits: at most 10,000,000 accounts")
    return args


def run(args: argparse.Namespace) -> None:
    """Everything; the databases, the broker and the processes go whatever happens."""
    started = time.monotonic()
    print(f"python -m bench.reaction {' '.join(sys.argv[1:])}  ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")
    args.digest = code_digest(MEASURED)
    print(code_fingerprint(MEASURED, args.digest))
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(describe_policy(POLICY) + f"; tariff {TARIFF.code}; no emergency credit")
    print(
        f"processes: headend ingest (batch_wait_ms {default('ingest_batch_wait_ms')}), headend engine (eager on "
        f"grid, poll_s {args.engine_poll_s}, lateness_s {args.lateness_s}, batch_accounts "
        f"{default('engine_batch_accounts')}, full_sweep_s {default('engine_full_sweep_s')}), headend dispatch "
        f"(poll_s {args.dispatch_poll_s}, storm_limit {max(STORM_LIMIT, args.sample)}); the rest HEADEND_* defaults",
        flush=True,
    )
    check_generated_rows()
    print("generated rows match open_account's", flush=True)
    ctx = multiprocessing.get_context("spawn")
    results = Results()
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(private_mosquitto(args.mosquitto))
        print(f"broker: {broker.description}", flush=True)
        tpl = stack.enter_context(reaction_template(args.accounts, args.sample))
        print(
            f"fleet: {args.accounts:,} accounts, {len(tpl.probes):,} probes (direct meters), "
            f"{tpl.background_readings:,} background meters behind {len(tpl.dcus):,} concentrators; readings at "
            f"{tpl.grid:%H:%M} UTC; set up in {tpl.setup_s:.1f} s, database {tpl.size_bytes / 1e6:,.0f} MB",
            flush=True,
        )
        for n in range(args.repeat):
            for load in args.load_list:
                check_code(args.digest)
                result = Run(tpl, broker, ctx, args, load).execute()
                results.add(result)
                d, r = Summary.of(result.disconnect), Summary.of(result.reconnect)
                print(
                    f"  run {n + 1}, fleet at {load_label(load, args.accounts)}: disconnect {d.ms()}; reconnect "
                    f"{r.ms()}; MQTT round trip {Summary.of(result.mqtt_rtt).ms()}; commit "
                    f"{Summary.of(result.db_commit).ms()}; background {result.stored_rate:,.0f} stored, "
                    f"{result.charged_rate:,.0f} charged readings/s, waiting ≤ {result.max_backlog:,}, "
                    f"receipt → charging {Summary.of(result.background_latency).ms()}; machine "
                    f"{result.cpu['machine (all cores, everyone)']:.0%} busy",
                    flush=True,
                )
    check_code(args.digest)
    print(f"\nfinished in {time.monotonic() - started:.0f} s; load average now {os.getloadavg()[0]:.2f}\n")
    print(report(results, args))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
