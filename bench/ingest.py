"""Ingest benchmark: readings/s committed by the worker against the raw database limit and a bare MQTT subscriber.

Run `uv run python -m bench.ingest [--quick] [--repeat N]`. It prints, in one run:

(a) concentrator ingest (256 readings a message) end to end (publisher running) and from a pre-filled
    queue, against the raw limit: binary COPY into a temp table + INSERT … ON CONFLICT DO NOTHING into the
    same freshly migrated `readings` table, committed every `ingest_batch_rows` rows;
(b) single-meter messages end to end and from a pre-filled queue, against a bare paho subscriber
    (QoS 1, auto-ack, counting only) on the same broker;
(c) the peak RSS (VmHWM) of `python -m headend ingest` with 1,000,000 meters registered: idle, through a
    workload touching 200,000 of them, and while the broker fills its inbox with the largest messages allowed.

Everything runs against throwaway databases `bench_<random>` on the PostgreSQL at 127.0.0.1:5432 and a private
mosquitto on a free 127.0.0.1 port; the worker, the publisher and the subscriber are separate processes.
Databases, processes, broker sessions and the broker are cleaned up on exit, also on failure or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import multiprocessing
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.sharedctypes import SynchronizedArray
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench._common import (
    BenchError,
    Broker,
    code_digest,
    code_fingerprint,
    create_session,
    die_with_parent,
    fmt_int,
    format_table,
    machine_ticks,
    median,
    private_mosquitto,
    proc_status_kib,
    purge_session,
    ratio,
    run_bench,
    scalar,
    stop_child,
    stop_process,
    throwaway_database,
    unique_token,
    wait_until,
)
from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions, libpq_dsn
from headend.db.partitions import ensure_partitions
from headend.ingest.messages import Decoded, InboundMessage, decode_message
from headend.ingest.worker import IngestWorker, subscription_filters
from headend.ingest.writer import ReadingWriter
from headend.settings import Settings
from protocols.mqtt_codec import encode_concentrator_batch, encode_meter_reading
from protocols.mqtt_topics import concentrator_readings_topic, meter_readings_topic
from protocols.readings import MAX_READINGS_PER_BATCH, MeterReading, RelayState

ZONE = ZoneInfo("Asia/Shanghai")
INTERVAL = timedelta(minutes=15)
READINGS_PER_MESSAGE = 256
PUBLISHER_WINDOW = 10_000  # messages published and not yet acknowledged (mids are 16-bit)
PUBLISHER_POLL_EVERY = 100
MB = 1_000_000  # the RSS target is in MB; /proc reports KiB

Message = tuple[str, bytes]
Row = tuple[object, ...]


# ================================================================ workloads


def meter_id(i: int) -> str:
    """Id of bench meter number `i`."""
    return f"bm{i:07d}"


def dcu_id(d: int) -> str:
    """Id of bench concentrator number `d`."""
    return f"bd{d:05d}"


@dataclass(frozen=True, slots=True)
class Fleet:
    """`meters` meters, `per_dcu` of them behind each concentrator."""

    meters: int
    per_dcu: int

    @property
    def dcus(self) -> int:
        """Number of concentrators."""
        return math.ceil(self.meters / self.per_dcu)


def register_fleet(url: str, fleet: Fleet) -> None:
    """Register the fleet's concentrators and meters (server-side INSERT … SELECT; ids as `meter_id`/`dcu_id`)."""
    with psycopg.connect(libpq_dsn(url), autocommit=True) as conn:
        with conn.transaction():
            conn.execute(
                "INSERT INTO concentrators (concentrator_id, region) "
                "SELECT 'bd' || lpad(d::text, 5, '0'), 'bench' FROM generate_series(0, %s - 1) AS d",
                (fleet.dcus,),
            )
            conn.execute(
                "INSERT INTO meters (meter_id, protocol, concentrator_id, region) "
                "SELECT 'bm' || lpad(i::text, 7, '0'), 'mqtt', 'bd' || lpad((i / %s)::text, 5, '0'), 'bench' "
                "FROM generate_series(0, %s - 1) AS i",
                (fleet.per_dcu, fleet.meters),
            )
        conn.execute("ANALYZE meters")
        conn.execute("ANALYZE concentrators")
        assert scalar(conn, "SELECT count(*) FROM meters") == fleet.meters


def slot_times(slots: int, now: datetime) -> list[datetime]:
    """`slots` consecutive 15-minute instants ending one interval before `now`, in local time (+08:00)."""
    last = now.astimezone(UTC).replace(second=0, microsecond=0)
    last -= timedelta(minutes=last.minute % 15) + INTERVAL
    return [(last - (slots - 1 - k) * INTERVAL).astimezone(ZONE) for k in range(slots)]


def make_reading(i: int, k: int, ts: datetime) -> MeterReading:
    """Reading of meter `i` at slot `k`: a register rising with k, the fields a real meter sends."""
    step = 100 + i % 300
    return MeterReading(
        meter_id=meter_id(i),
        ts=ts,
        energy_import_wh=1_000_000 + (i % 1000) * 10_000 + k * step,
        power_w=step * 4,
        voltage_v=220.0 + (i % 20) / 10,
        relay=RelayState.CLOSED,
        seq=k,
    )


@dataclass(slots=True)
class Workload:
    """Pre-encoded messages, and the rows they should become."""

    messages: list[Message]
    readings: int
    rows: list[Row] = field(default_factory=list)  # for the raw limit; filled for concentrator workloads only

    def dump(self, path: Path) -> Path:
        """Pickle the messages for a publisher process."""
        with path.open("wb") as handle:
            pickle.dump(self.messages, handle, protocol=pickle.HIGHEST_PROTOCOL)
        return path

    @property
    def days(self) -> set[date]:
        """UTC days the rows fall on (partitions needed)."""
        return {ts.astimezone(UTC).date() for ts in {r[1] for r in self.rows} if isinstance(ts, datetime)}


def concentrator_workload(fleet: Fleet, slots: int, now: datetime, *, stride: int = 1, with_rows: bool) -> Workload:
    """Slot by slot, one message per concentrator of up to 256 readings: its meters `i` with `i % stride == 0`."""
    messages: list[Message] = []
    rows: list[Row] = []
    count = 0
    for k, ts in enumerate(slot_times(slots, now)):
        sent_at = ts + timedelta(minutes=2)
        for d in range(fleet.dcus):
            ids = [i for i in range(d * fleet.per_dcu, min((d + 1) * fleet.per_dcu, fleet.meters)) if i % stride == 0]
            for start in range(0, len(ids), READINGS_PER_MESSAGE):
                readings = [make_reading(i, k, ts) for i in ids[start : start + READINGS_PER_MESSAGE]]
                messages.append(
                    (concentrator_readings_topic(dcu_id(d)), encode_concentrator_batch(dcu_id(d), sent_at, readings))
                )
                count += len(readings)
                if with_rows:
                    source = f"mqtt:dcu:{dcu_id(d)}"
                    rows.extend(
                        (r.meter_id, r.ts, r.energy_import_wh, None, r.power_w, r.voltage_v, "closed", 0, source, now)
                        for r in readings
                    )
    return Workload(messages, count, rows)


def meter_workload(meters: int, slots: int, now: datetime) -> Workload:
    """Slot by slot, one `meters/{id}/readings` message per meter."""
    messages = [
        (meter_readings_topic(meter_id(i)), encode_meter_reading(make_reading(i, k, ts)))
        for k, ts in enumerate(slot_times(slots, now))
        for i in range(meters)
    ]
    return Workload(messages, len(messages))


# ================================================================ child processes (spawned)

# slots of a worker's probe: monotonic times (CLOCK_MONOTONIC is system-wide on Linux) and counters
W_STARTED, W_CONNECTED, W_MESSAGES, W_INSERTED, W_DUPLICATES, W_DEAD, W_BATCHES, W_FIRST_COMMIT, W_LAST_COMMIT = range(
    9
)
W_SLOTS = 9
# slots of a publisher's or subscriber's probe
P_READY, P_FIRST, P_LAST, P_COUNT, P_FAILED, P_STARTED = range(6)
P_SLOTS = 6
MONITOR_PERIOD_S = 0.005


def worker_main(
    settings_kwargs: dict[str, Any],
    url: str,
    probe: SynchronizedArray[Any],
    stop: Event,
    switch_interval_s: float | None,
) -> None:
    """An IngestWorker, with a thread copying its stats into `probe` (cheap: one tuple compare every 5 ms)."""
    die_with_parent()
    if switch_interval_s is not None:  # an experiment on GIL hand-over latency, see --worker-switch-interval
        sys.setswitchinterval(switch_interval_s)
    logging.basicConfig(level=logging.WARNING, format="worker %(levelname)s %(name)s: %(message)s")
    worker = IngestWorker(Settings(**settings_kwargs), url)

    def monitor() -> None:
        last: tuple[int, ...] = ()
        while True:
            s = worker.stats
            now = (s.messages, s.readings_inserted, s.duplicates, s.dead_letters, s.batches)
            if now != last:
                t = time.monotonic()
                probe[W_MESSAGES], probe[W_INSERTED], probe[W_DUPLICATES], probe[W_DEAD], probe[W_BATCHES] = now
                if not probe[W_FIRST_COMMIT]:
                    probe[W_FIRST_COMMIT] = t
                probe[W_LAST_COMMIT] = t
                last = now
            if not probe[W_CONNECTED] and worker.connected.is_set():
                probe[W_CONNECTED] = time.monotonic()
            if stop.is_set():
                worker.stop()
                return
            time.sleep(MONITOR_PERIOD_S)

    threading.Thread(target=monitor, name="bench-monitor", daemon=True).start()
    probe[W_STARTED] = time.monotonic()
    worker.run()


def publisher_main(host: str, port: int, path: str, probe: SynchronizedArray[Any], go: Event) -> None:
    """Publish the pickled messages at QoS 1 as fast as paho goes; record first publish and last PUBACK.

    Single-threaded (publish writes to the socket directly, `loop` reads PUBACKs), with paho's in-flight limit
    off and our own window instead: paho rescans every outstanding message on each PUBACK when a limit is set
    (`_update_inflight`), which is quadratic and made a threaded publisher ~15x slower than this one.
    """
    die_with_parent()
    with open(path, "rb") as handle:
        messages: list[Message] = pickle.load(handle)  # our own temp file
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{unique_token()}", protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    total = len(messages)
    acked = 0
    connected = False

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        nonlocal connected
        connected = True

    def on_publish(client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        nonlocal acked
        acked += 1

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(host, port, keepalive=60)
    try:
        while not connected:
            client.loop(timeout=0.1)
        probe[P_READY] = time.monotonic()
        go.wait()
        probe[P_FIRST] = time.monotonic()
        for n, (topic, payload) in enumerate(messages, 1):
            if client.publish(topic, payload, qos=1).rc != mqtt.MQTT_ERR_SUCCESS:
                probe[P_FAILED] = 1
                return
            if n % PUBLISHER_POLL_EVERY == 0:
                client.loop(timeout=0)
                while n - acked > PUBLISHER_WINDOW:
                    client.loop(timeout=0.01)
        deadline = time.monotonic() + 600
        while acked < total and time.monotonic() < deadline:
            client.loop(timeout=0.01)
        probe[P_LAST] = time.monotonic()
        probe[P_COUNT] = acked
        if acked < total:
            probe[P_FAILED] = 1
    finally:
        client.disconnect()


def subscriber_main(
    host: str,
    port: int,
    client_id: str,
    filters: list[str],
    receive_maximum: int,
    probe: SynchronizedArray[Any],
    stop: Event,
) -> None:
    """A bare paho subscriber: MQTT 5, persistent session, QoS 1, automatic ack, counting messages only."""
    die_with_parent()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    count = 0

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe([(f, 1) for f in filters])

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        probe[P_READY] = time.monotonic()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        nonlocal count
        count += 1
        if count == 1:
            probe[P_FIRST] = time.monotonic()
        probe[P_LAST] = time.monotonic()
        probe[P_COUNT] = count

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    properties.ReceiveMaximum = receive_maximum
    probe[P_STARTED] = time.monotonic()
    client.connect(host, port, keepalive=60, clean_start=False, properties=properties)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()


# ================================================================ orchestration


@dataclass(frozen=True, slots=True)
class Env:
    """What every measurement needs."""

    ctx: SpawnContext
    broker: Broker
    tmp: Path
    base_settings: Settings
    profile_dir: Path | None
    py_spy: str | None
    switch_interval_s: float | None = None


@dataclass(slots=True)
class WorkerHandle:
    """A spawned worker process with its probe."""

    process: SpawnProcess
    probe: SynchronizedArray[Any]
    stop: Event
    client_id: str

    def alive_or_raise(self) -> None:
        if not self.process.is_alive():
            raise BenchError(f"ingest worker exited with {self.process.exitcode}")


def worker_settings(env: Env, url: str, client_id: str, group: str) -> dict[str, Any]:
    """Settings of a bench worker: our database and broker, unique session; the rest from HEADEND_* or defaults."""
    return {
        "database_url": url,
        "mqtt_host": env.broker.host,
        "mqtt_port": env.broker.port,
        "mqtt_client_id": client_id,
        "mqtt_shared_group": group,
    }


def start_worker(env: Env, stack: contextlib.ExitStack, url: str, client_id: str, group: str) -> WorkerHandle:
    """Spawn an ingest worker; stop it and purge its session when `stack` closes."""
    probe = env.ctx.Array("d", W_SLOTS)
    stop = env.ctx.Event()
    process = env.ctx.Process(
        target=worker_main,
        args=(worker_settings(env, url, client_id, group), url, probe, stop, env.switch_interval_s),
        daemon=True,
    )
    stack.callback(purge_session, env.broker, client_id)
    process.start()

    def shutdown() -> None:
        stop.set()
        process.join(30)
        stop_child(process)

    stack.callback(shutdown)
    return WorkerHandle(process, probe, stop, client_id)


@dataclass(frozen=True, slots=True)
class PublisherHandle:
    """A spawned publisher: its probe, its start signal, its pid."""

    probe: SynchronizedArray[Any]
    go: Event
    pid: int


def start_publisher(env: Env, stack: contextlib.ExitStack, path: Path) -> PublisherHandle:
    """Spawn a publisher that loads its messages and waits for `go`."""
    probe = env.ctx.Array("d", P_SLOTS)
    go = env.ctx.Event()
    process = env.ctx.Process(
        target=publisher_main, args=(env.broker.host, env.broker.port, str(path), probe, go), daemon=True
    )
    process.start()
    stack.callback(stop_child, process)
    stack.callback(go.set)  # let it finish on the way out
    wait_until(lambda: bool(probe[P_READY]) or not process.is_alive(), 120, "the publisher to connect")
    if not process.is_alive():
        raise BenchError(f"publisher exited with {process.exitcode}")
    assert process.pid is not None
    return PublisherHandle(probe, go, process.pid)


def wait_published(probe: SynchronizedArray[Any], total: int, timeout_s: float) -> None:
    """Wait until the publisher has every PUBACK."""
    wait_until(lambda: bool(probe[P_LAST]) or bool(probe[P_FAILED]), timeout_s, "the publisher's PUBACKs", 0.02)
    if probe[P_FAILED]:
        raise BenchError(f"publisher failed after {int(probe[P_COUNT])}/{total} acknowledgements")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROFILE_RATE_HZ = 200


def cpu_ticks(stat_path: str) -> int:
    """utime + stime of a /proc/…/stat file, in clock ticks (0 when it is gone)."""
    try:
        fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])


def thread_ticks(pid: int) -> dict[int, int]:
    """CPU ticks of every thread of `pid`."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return {}
    return {tid: cpu_ticks(f"/proc/{pid}/task/{tid}/stat") for tid in tids}


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """CPU counters of the processes around a worker."""

    at: float
    threads: dict[int, int]
    others: dict[str, int]
    machine: tuple[int, int]

    @classmethod
    def take(cls, worker_pid: int, others: dict[str, int]) -> CpuSnapshot:
        return cls(
            time.monotonic(),
            thread_ticks(worker_pid),
            {label: cpu_ticks(f"/proc/{pid}/stat") for label, pid in others.items()},
            machine_ticks(),
        )


def cpu_report(before: CpuSnapshot, after: CpuSnapshot, thread_names: dict[int, str]) -> str:
    """CPU used during the interval, as % of one core: each worker thread, the other processes, the machine."""
    wall = after.at - before.at

    def pct(ticks: int) -> str:
        return f"{ticks / CLOCK_TICKS / wall:6.0%}"

    lines = [f"  CPU during {wall:.1f} s, % of one core (kernel accounting, /proc):"]
    worker_total = 0
    for tid, end in sorted(after.threads.items(), key=lambda kv: -(kv[1] - before.threads.get(kv[0], 0))):
        used = end - before.threads.get(tid, 0)
        worker_total += used
        if used:
            lines.append(f"    {pct(used)}  worker thread {tid} {thread_names.get(tid, '(not sampled by py-spy)')}")
    lines.append(f"    {pct(worker_total)}  worker process, all threads")
    for label, end in after.others.items():
        lines.append(f"    {pct(end - before.others.get(label, 0))}  {label}")
    busy = after.machine[0] - before.machine[0]
    total = after.machine[1] - before.machine[1]
    cores = os.cpu_count() or 1
    lines.append(f"    machine: {busy / total:.0%} of {cores} cores busy (everything, including other users)")
    return "\n".join(lines)


@contextlib.contextmanager
def profiling(env: Env, name: str | None, worker_pid: int, others: dict[str, int], *, gil: bool) -> Iterator[None]:
    """While the block runs: py-spy on the worker (all threads; with `gil`, only the GIL holder's samples),
    and the CPU time of each worker thread and of `others` from /proc. Does nothing unless profiling."""
    if name is None or env.profile_dir is None or env.py_spy is None:
        yield
        return
    env.profile_dir.mkdir(parents=True, exist_ok=True)
    out = env.profile_dir / f"{name}{'-gil' if gil else ''}.txt"
    command = [env.py_spy, "record", "--pid", str(worker_pid), "--rate", str(PROFILE_RATE_HZ), "--threads"]
    command += ["--format", "raw", "-o", str(out), *(["--gil"] if gil else [])]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches
    before = CpuSnapshot.take(worker_pid, others)
    try:
        yield
    finally:
        after = CpuSnapshot.take(worker_pid, others)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            stop_process(process)
        if process.stderr is not None:
            process.stderr.close()
        if out.exists():
            summary, names = summarise_profile(out, after.at - before.at, gil=gil)
            print(f"\n-- profile {name}{' (--gil)' if gil else ''}: {out}", flush=True)
            print(cpu_report(before, after, names))
            print(summary, flush=True)


def summarise_profile(path: Path, elapsed_s: float, *, gil: bool) -> tuple[str, dict[int, str]]:
    """Per thread: share of samples, and where they go (inclusive and self), from py-spy's raw output."""
    by_thread: Counter[str] = Counter()
    selfs: dict[str, Counter[str]] = {}
    inclusive: dict[str, Counter[str]] = {}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0]
        by_thread[thread] += count
        selfs.setdefault(thread, Counter())[frames[-1]] += count
        seen = set()
        for frame in frames[1:]:
            function, _, where = frame.partition(" (")
            label = f"{function} ({where.split(':')[0]})"
            if label not in seen:
                seen.add(label)
                inclusive.setdefault(thread, Counter())[label] += count
    names: dict[int, str] = {}
    for thread in by_thread:
        head, _, thread_name = thread.partition(": ")
        with contextlib.suppress(ValueError):
            names[int(head.removeprefix("thread (").rstrip(")"), 0)] = thread_name
    expected = PROFILE_RATE_HZ * elapsed_s
    what = "holding the GIL" if gil else "sampled as active (py-spy's idle heuristic; see CPU above for the truth)"
    lines = [f"  py-spy: {sum(by_thread.values())} samples in {elapsed_s:.1f} s at {PROFILE_RATE_HZ} Hz"]
    for thread, total in by_thread.most_common():
        lines.append(f"  {thread}: {total / expected:.0%} of wall time {what}")
        lines.append("    inclusive:")
        shown = [(label, c) for label, c in inclusive[thread].most_common() if c < total][:18]
        lines.extend(f"      {c / total:6.1%}  {label}" for label, c in shown)
        lines.append("    self:")
        lines.extend(f"      {c / total:6.1%}  {label}" for label, c in selfs[thread].most_common(10))
    return "\n".join(lines), names


@dataclass(frozen=True, slots=True)
class WorkerRun:
    """One measured worker run."""

    rate: float  # readings/s (a) or messages/s (b)
    seconds: float
    batches: int
    messages: int
    readings: int
    publisher_rate: float = 0.0  # messages/s the publisher achieved (end-to-end runs)


def check_worker_totals(handle: WorkerHandle, url: str, messages: int, readings: int) -> None:
    """Every reading committed once, none dead-lettered, and the table agrees."""
    p = handle.probe
    if int(p[W_DEAD]) or int(p[W_INSERTED]) != readings:
        raise BenchError(
            f"worker stored {int(p[W_INSERTED])} readings ({int(p[W_DUPLICATES])} duplicates, "
            f"{int(p[W_DEAD])} dead letters) of {readings} expected in {messages} messages"
        )
    with psycopg.connect(libpq_dsn(url), autocommit=True) as conn:
        stored = scalar(conn, "SELECT count(*) FROM readings")
    if stored != readings:
        raise BenchError(f"readings has {stored} rows, {readings} expected")


def wait_worker_messages(handle: WorkerHandle, messages: int, timeout_s: float) -> None:
    """Wait until the worker has committed `messages` messages."""

    def done() -> bool:
        handle.alive_or_raise()
        return int(handle.probe[W_MESSAGES]) >= messages

    wait_until(done, timeout_s, f"the worker to commit {messages} messages", 0.02)


def timeout_for(units: int, floor_rate: float = 2000) -> float:
    """A generous timeout: 60 s plus `units` at `floor_rate` per second."""
    return 60 + units / floor_rate


def worker_end_to_end(
    env: Env,
    fleet: Fleet,
    workload: Workload,
    path: Path,
    rate_of_messages: bool,
    profile_as: str | None = None,
    profile_gil: bool = False,
) -> WorkerRun:
    """Worker subscribed and idle; the publisher sends everything; time from first publish to last commit."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(throwaway_database())
        register_fleet(url, fleet)
        token = unique_token()
        handle = start_worker(env, stack, url, f"bench-ingest-{token}", f"g{token}")
        wait_until(
            lambda: bool(handle.probe[W_CONNECTED]) or not handle.process.is_alive(), 60, "the worker to subscribe"
        )
        handle.alive_or_raise()
        assert handle.process.pid is not None
        publisher = start_publisher(env, stack, path)
        pub = publisher.probe
        others = {"publisher process": publisher.pid, "mosquitto": env.broker.pid}
        with psycopg.connect(libpq_dsn(url), autocommit=True) as conn:
            backends = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'"
            ).fetchall()
        others |= {f"PostgreSQL backend {pid} of the worker": int(pid) for (pid,) in backends}
        with profiling(env, profile_as, handle.process.pid, others, gil=profile_gil):
            publisher.go.set()
            wait_worker_messages(handle, len(workload.messages), timeout_for(workload.readings))
        wait_published(pub, len(workload.messages), 60)
        check_worker_totals(handle, url, len(workload.messages), workload.readings)
        seconds = handle.probe[W_LAST_COMMIT] - pub[P_FIRST]
        units = len(workload.messages) if rate_of_messages else workload.readings
        return WorkerRun(
            rate=units / seconds,
            seconds=seconds,
            batches=int(handle.probe[W_BATCHES]),
            messages=len(workload.messages),
            readings=workload.readings,
            publisher_rate=len(workload.messages) / (pub[P_LAST] - pub[P_FIRST]),
        )


def prefill(env: Env, stack: contextlib.ExitStack, client_id: str, group: str, path: Path, total: int) -> None:
    """Create the session `client_id` (subscribed, offline) and publish everything into it."""
    filters = subscription_filters(env.base_settings.model_copy(update={"mqtt_shared_group": group}))
    create_session(env.broker, client_id, filters)
    stack.callback(purge_session, env.broker, client_id)
    publisher = start_publisher(env, stack, path)
    publisher.go.set()
    wait_published(publisher.probe, total, timeout_for(total, 500))


def worker_prefilled(env: Env, fleet: Fleet, workload: Workload, path: Path, rate_of_messages: bool) -> WorkerRun:
    """Everything queued in the worker's session first; time from `run()` to the last commit."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(throwaway_database())
        register_fleet(url, fleet)
        token = unique_token()
        client_id, group = f"bench-ingest-{token}", f"g{token}"
        prefill(env, stack, client_id, group, path, len(workload.messages))
        handle = start_worker(env, stack, url, client_id, group)
        wait_worker_messages(handle, len(workload.messages), timeout_for(workload.readings))
        check_worker_totals(handle, url, len(workload.messages), workload.readings)
        seconds = handle.probe[W_LAST_COMMIT] - handle.probe[W_STARTED]
        units = len(workload.messages) if rate_of_messages else workload.readings
        return WorkerRun(
            units / seconds, seconds, int(handle.probe[W_BATCHES]), len(workload.messages), workload.readings
        )


def start_subscriber(
    env: Env, stack: contextlib.ExitStack, client_id: str, group: str
) -> tuple[SpawnProcess, SynchronizedArray[Any]]:
    """Spawn a bare subscriber on the worker's filters; stop it and purge its session when `stack` closes."""
    filters = subscription_filters(env.base_settings.model_copy(update={"mqtt_shared_group": group}))
    probe = env.ctx.Array("d", P_SLOTS)
    stop = env.ctx.Event()
    args = (env.broker.host, env.broker.port, client_id, filters, env.base_settings.mqtt_receive_maximum, probe, stop)
    process = env.ctx.Process(target=subscriber_main, args=args, daemon=True)
    stack.callback(purge_session, env.broker, client_id)
    process.start()

    def shutdown() -> None:
        stop.set()
        process.join(10)
        stop_child(process)

    stack.callback(shutdown)
    return process, probe


def bare_end_to_end(env: Env, workload: Workload, path: Path) -> float:
    """Bare subscriber subscribed; publisher sends everything; msgs/s from first publish to last message."""
    total = len(workload.messages)
    with contextlib.ExitStack() as stack:
        token = unique_token()
        process, probe = start_subscriber(env, stack, f"bench-bare-{token}", f"g{token}")
        wait_until(lambda: bool(probe[P_READY]) or not process.is_alive(), 60, "the bare subscriber to subscribe")
        publisher = start_publisher(env, stack, path)
        pub = publisher.probe
        publisher.go.set()
        wait_until(
            lambda: int(probe[P_COUNT]) >= total, timeout_for(total), f"the bare subscriber to get {total}", 0.02
        )
        return total / float(probe[P_LAST] - pub[P_FIRST])


def bare_prefilled(env: Env, workload: Workload, path: Path) -> float:
    """Everything queued in the bare subscriber's session first; msgs/s from connect to last message."""
    total = len(workload.messages)
    with contextlib.ExitStack() as stack:
        token = unique_token()
        client_id, group = f"bench-bare-{token}", f"g{token}"
        prefill(env, stack, client_id, group, path, total)
        process, probe = start_subscriber(env, stack, client_id, group)
        wait_until(
            lambda: int(probe[P_COUNT]) >= total, timeout_for(total), f"the bare subscriber to get {total}", 0.02
        )
        del process
        # from just before connect(), like the worker's figure from just before run()
        return total / float(probe[P_LAST] - probe[P_STARTED])


# ---------------------------------------------------------------- raw limit and in-process diagnostics


# The raw limit uses its own SQL, independent of the writer's internals: the same COPY and merge any writer
# has to do at least (plain), and the same plus the bookkeeping the schema asks of the writer on plain
# PostgreSQL (`meter_register_state`, `collection_daily`), without any validation.
_RAW_STAGE_DDL = """
CREATE TEMP TABLE bench_stage (
    meter_id varchar(32) NOT NULL, ts timestamptz NOT NULL, energy_import_wh bigint NOT NULL,
    energy_export_wh bigint, power_w integer, voltage_v double precision, relay_state text,
    quality_flags smallint NOT NULL, source text NOT NULL, received_at timestamptz NOT NULL
) ON COMMIT DELETE ROWS
"""
_RAW_COPY = (
    "COPY bench_stage (meter_id, ts, energy_import_wh, energy_export_wh, power_w, voltage_v, relay_state, "
    "quality_flags, source, received_at) FROM STDIN (FORMAT BINARY)"
)
_RAW_TYPES = ["varchar", "timestamptz", "int8", "int8", "int4", "float8", "text", "int2", "text", "timestamptz"]
_RAW_INSERT = """
INSERT INTO readings (meter_id, ts, energy_import_wh, energy_export_wh, power_w, voltage_v, relay_state,
                      quality_flags, source, received_at)
SELECT * FROM bench_stage
ON CONFLICT (meter_id, ts) DO NOTHING
"""
_RAW_BOOKKEEPING = """
WITH ins AS (
    INSERT INTO readings (meter_id, ts, energy_import_wh, energy_export_wh, power_w, voltage_v, relay_state,
                          quality_flags, source, received_at)
    SELECT * FROM bench_stage
    ON CONFLICT (meter_id, ts) DO NOTHING
    RETURNING meter_id, ts, energy_import_wh
), state AS (
    INSERT INTO meter_register_state AS s (meter_id, last_ts, last_energy_import_wh)
    SELECT DISTINCT ON (meter_id) meter_id, ts, energy_import_wh FROM ins ORDER BY meter_id, ts DESC
    ON CONFLICT (meter_id) DO UPDATE SET last_ts = excluded.last_ts,
                                         last_energy_import_wh = excluded.last_energy_import_wh
    WHERE excluded.last_ts > s.last_ts
), daily AS (
    INSERT INTO collection_daily AS d (day, meter_id, readings_count, slots)
    SELECT (ts AT TIME ZONE %(zone)s)::date, meter_id, count(*),
           bit_or(B'1'::bit(96) >> (extract(hour FROM ts AT TIME ZONE %(zone)s)::int * 4
                                    + extract(minute FROM ts AT TIME ZONE %(zone)s)::int / 15))
    FROM ins GROUP BY 1, 2
    ON CONFLICT (day, meter_id) DO UPDATE SET readings_count = d.readings_count + excluded.readings_count,
                                              slots = d.slots | excluded.slots
)
SELECT count(*) FROM ins
"""


def raw_limit(workload: Workload, batch_rows: int, *, bookkeeping: bool) -> float:
    """Rows/s of binary COPY into a temp table + INSERT … ON CONFLICT DO NOTHING, committed every `batch_rows`.

    With `bookkeeping`, the insert also upserts `meter_register_state` and `collection_daily` from its
    RETURNING rows, as the writer must on plain PostgreSQL.
    """
    with throwaway_database() as url, psycopg.connect(libpq_dsn(url), autocommit=True) as conn:
        ensure_partitions(conn, workload.days)
        zone = SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall()).collection_timezone
        with conn.transaction():
            conn.execute(_RAW_STAGE_DDL)
        sql, params = (_RAW_BOOKKEEPING, {"zone": zone}) if bookkeeping else (_RAW_INSERT, None)
        rows = workload.rows
        started = time.perf_counter()
        for start in range(0, len(rows), batch_rows):
            with conn.transaction():
                with conn.cursor().copy(_RAW_COPY) as copy:
                    copy.set_types(_RAW_TYPES)
                    for row in rows[start : start + batch_rows]:
                        copy.write_row(row)
                conn.execute(sql, params)
        elapsed = time.perf_counter() - started
        if scalar(conn, "SELECT count(*) FROM readings") != len(rows):
            raise BenchError("raw limit: row count mismatch")
    return len(rows) / elapsed


def reading_batches(messages: list[Message], readings_per_message: int, batch_rows: int) -> Iterator[list[Message]]:
    """Consecutive messages grouped into batches of about `batch_rows` readings."""
    per_batch = max(1, batch_rows // readings_per_message)
    for start in range(0, len(messages), per_batch):
        yield messages[start : start + per_batch]


@dataclass(frozen=True, slots=True)
class InProcess:
    """Rates of the worker's Python stages, measured in this process without MQTT."""

    decode_rate: float  # readings/s of decode_message alone
    write_rate: float  # readings/s of ReadingWriter.write alone (validation, COPY, merge, commit)
    batch_readings: float  # mean readings per batch


def in_process(fleet: Fleet, workload: Workload, batch_rows: int, future_tolerance_s: int) -> InProcess:
    """Decode and write the workload batch by batch in this process, timing each stage apart."""
    decode_s = write_s = 0.0
    batches = 0
    with throwaway_database() as url, psycopg.connect(libpq_dsn(url), autocommit=True) as conn:
        register_fleet(url, fleet)
        options = SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall())
        writer = ReadingWriter(conn, options, timedelta(seconds=future_tolerance_s))
        writer.ensure_partitions(workload.days)
        for batch in reading_batches(workload.messages, READINGS_PER_MESSAGE, batch_rows):
            t0 = time.perf_counter()
            now = datetime.now(UTC)
            decoded = Decoded()
            for topic, payload in batch:
                decode_message(InboundMessage(topic, payload, now, 0, 1, 0), decoded)
            t1 = time.perf_counter()
            result = writer.write(decoded, datetime.now(UTC))
            t2 = time.perf_counter()
            decode_s += t1 - t0
            write_s += t2 - t1
            batches += 1
            if result.dead_letters:
                raise BenchError(f"in-process write: {result.dead_letters} dead letters")
        if scalar(conn, "SELECT count(*) FROM readings") != workload.readings:
            raise BenchError("in-process write: row count mismatch")
    return InProcess(workload.readings / decode_s, workload.readings / write_s, workload.readings / batches)


def decode_rate(workload: Workload, batch_rows: int) -> float:
    """Messages/s of decode_message alone over the workload."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    for batch in reading_batches(workload.messages, 1, batch_rows):
        decoded = Decoded()
        for topic, payload in batch:
            decode_message(InboundMessage(topic, payload, now, 0, 1, 0), decoded)
    return len(workload.messages) / (time.perf_counter() - started)


# ---------------------------------------------------------------- (c) peak RSS of `python -m headend ingest`


@dataclass(frozen=True, slots=True)
class RssRun:
    """Peak RSS of the CLI worker, idle and after the workload."""

    idle_kib: int
    peak_kib: int
    seconds: float
    backlog_kib: int


def cli_worker(env: Env, stack: contextlib.ExitStack, url: str, client_id: str, group: str) -> subprocess.Popen[bytes]:
    """`python -m headend ingest` configured through HEADEND_* variables; SIGTERM and purge on exit."""
    variables = {
        **os.environ,
        "HEADEND_DATABASE_URL": url,
        "HEADEND_MQTT_HOST": env.broker.host,
        "HEADEND_MQTT_PORT": str(env.broker.port),
        "HEADEND_MQTT_CLIENT_ID": client_id,
        "HEADEND_MQTT_SHARED_GROUP": group,
    }
    log = (env.tmp / f"{client_id}.log").open("wb")
    stack.callback(log.close)
    stack.callback(purge_session, env.broker, client_id)
    process = subprocess.Popen(
        [sys.executable, "-m", "headend", "ingest"], env=variables, stdout=log, stderr=log, preexec_fn=die_with_parent
    )
    stack.callback(stop_process, process, 30)
    return process


def cli_log_tail(env: Env, client_id: str) -> str:
    """The last lines a CLI worker logged."""
    path = env.tmp / f"{client_id}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-15:]) if path.exists() else ""


class HighWater:
    """The largest VmHWM seen of one process (read from /proc: the counter is fresh after exec, unlike ru_maxrss,
    which on Linux also counts the forked copy of the parent before exec)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.kib = 0
        self.changed_at = time.monotonic()

    def sample(self) -> int:
        value = proc_status_kib(self.pid, "VmHWM") or 0
        if value > self.kib:
            self.kib, self.changed_at = value, time.monotonic()
        return self.kib


def rss_run(
    env: Env, fleet: Fleet, probe_path: Path, path: Path, workload: Workload, backlog_path: Path, backlog_messages: int
) -> RssRun:
    """Register the fleet; peak RSS of CLI workers: idle (one message), the workload, and a full inbox."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(throwaway_database())
        register_fleet(url, fleet)
        conn = stack.enter_context(psycopg.connect(libpq_dsn(url), autocommit=True))

        def alive(process: subprocess.Popen[bytes], client_id: str) -> None:
            if process.poll() is not None:
                raise BenchError(f"headend ingest exited with {process.returncode}:\n{cli_log_tail(env, client_id)}")

        def measured(name: str, messages_path: Path, total_messages: int, expected_rows: int) -> tuple[int, float]:
            """Peak RSS of a worker ingesting a pre-filled session until `expected_rows` are stored."""
            with contextlib.ExitStack() as inner:
                token = unique_token()
                client_id, group = f"bench-{name}-{token}", f"g{token}"
                prefill(env, inner, client_id, group, messages_path, total_messages)
                started = time.monotonic()
                process = cli_worker(env, inner, url, client_id, group)
                high = HighWater(process.pid)

                def stored() -> bool:
                    alive(process, client_id)
                    high.sample()
                    return scalar(conn, "SELECT count(*) FROM readings") >= expected_rows

                wait_until(stored, timeout_for(expected_rows), f"{expected_rows} rows", 0.2)
                seconds = time.monotonic() - started
                time.sleep(0.5)  # acknowledgements and the idle loop after the last commit
                alive(process, client_id)
                return high.sample(), seconds

        def full_inbox() -> int:
            """Peak RSS while the broker fills the worker's inbox to Receive Maximum with the largest messages.

            Sampled until the high-water mark has not moved for 3 s; then the worker is stopped and the rest of
            the backlog purged with its session.
            """
            with contextlib.ExitStack() as inner:
                token = unique_token()
                client_id, group = f"bench-rss-backlog-{token}", f"g{token}"
                prefill(env, inner, client_id, group, backlog_path, backlog_messages)
                process = cli_worker(env, inner, url, client_id, group)
                high = HighWater(process.pid)

                def settled() -> bool:
                    alive(process, client_id)
                    high.sample()
                    return high.kib > 0 and time.monotonic() - high.changed_at > 3

                wait_until(settled, 120, "the worker's RSS to settle", 0.1)
                return high.kib

        idle, _ = measured("rss-idle", probe_path, 1, 1)
        peak, seconds = measured("rss", path, len(workload.messages), 1 + workload.readings)
        backlog = full_inbox()
        return RssRun(idle, peak, seconds, backlog)


# ================================================================ report


@dataclass(slots=True)
class Results:
    """Per-run figures, by name."""

    runs: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.runs.setdefault(name, []).append(value)

    def med(self, name: str) -> float:
        return median(self.runs[name]) if self.runs.get(name) else float("nan")

    def has(self, name: str) -> bool:
        return bool(self.runs.get(name))

    def listing(self, name: str, scale: float = 1.0, digits: int = 0) -> str:
        return ", ".join(f"{v / scale:,.{digits}f}" for v in self.runs.get(name, []))


def report(results: Results, plan: Plan) -> str:
    """The main table and the context table."""
    r = results
    rows: list[list[str]] = []

    def compare(label: str, ours: str, limit: str, target: str, runs_of: str, scale: float = 1.0) -> None:
        if not r.has(ours):
            return
        lim = r.med(limit) if limit else float("nan")
        rows.append(
            [
                label,
                fmt_int(r.med(ours) / scale),
                fmt_int(lim / scale) if limit and r.has(limit) else "—",
                f"{ratio(r.med(ours), lim):.2f}" if limit and r.has(limit) else "—",
                target,
                runs_of,
            ]
        )

    compare("(a) concentrator, end to end [readings/s]", "a_e2e", "raw", "≥ 0.80 × raw", r.listing("a_e2e"))
    compare("(a) concentrator, pre-filled queue [readings/s]", "a_pre", "raw", "≥ 0.80 × raw", r.listing("a_pre"))
    compare("raw COPY + INSERT … ON CONFLICT [rows/s]", "raw", "", "(≈ 240k in the issue)", r.listing("raw"))
    compare("(b) single-meter, end to end [msgs/s]", "b_e2e", "bare_e2e", "≥ 0.80 × bare", r.listing("b_e2e"))
    compare("(b) bare subscriber, end to end [msgs/s]", "bare_e2e", "", "(≈ 9k in the issue)", r.listing("bare_e2e"))
    compare("(b) single-meter, pre-filled queue [msgs/s]", "b_pre", "bare_pre", "≥ 0.80 × bare", r.listing("b_pre"))
    compare("(b) bare subscriber, pre-filled queue [msgs/s]", "bare_pre", "", "", r.listing("bare_pre"))
    for label, name in (
        (f"(c) peak RSS, {plan.c_fleet.meters:,} meters, {plan.c_readings:,} readings [MB]", "rss_peak"),
        ("(c) peak RSS, full inbox of 1024-reading messages [MB]", "rss_backlog"),
    ):
        if r.has(name):
            rows.append([label, f"{r.med(name) / MB:.1f}", "—", "—", "< 300 MB", r.listing(name, MB, 1)])
    main = format_table(["figure", "ours (median)", "limit (median)", "ratio", "target", "runs"], rows)

    context: list[list[str]] = []

    def note(label: str, name: str, scale: float = 1.0, digits: int = 0) -> None:
        if r.has(name):
            context.append([label, f"{r.med(name) / scale:,.{digits}f}", r.listing(name, scale, digits)])

    note("(a) publisher alone during end to end [msgs/s]", "a_pub")
    note("(a) worker: mean readings per committed batch (end to end)", "a_batch", digits=1)
    note("(a) worker: mean readings per committed batch (pre-filled)", "a_pre_batch", digits=1)
    note("(a) raw + register-state and daily-summary upserts, no validation [rows/s]", "raw_merge")
    note("(a) in-process decode_message only, worker's batch size [readings/s]", "ip_decode")
    note("(a) in-process ReadingWriter.write only, worker's batch size [readings/s]", "ip_write")
    note("(b) publisher alone during end to end [msgs/s]", "b_pub")
    note("(b) worker: mean messages per committed batch (end to end)", "b_batch", digits=1)
    note("(b) worker: mean messages per committed batch (pre-filled)", "b_pre_batch", digits=1)
    note("(b) in-process decode_message only [msgs/s]", "ip_decode_b")
    note("(c) idle worker (one message) VmHWM [MB]", "rss_idle", MB, 1)
    note("(c) seconds to ingest the (c) workload", "rss_seconds", digits=1)
    extra = format_table(["context", "median", "runs"], context) if context else ""
    return main + ("\n\n" + extra if extra else "")


# ================================================================ main


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes of one benchmark run."""

    a_fleet: Fleet
    a_slots: int
    b_meters: int
    b_slots: int
    c_fleet: Fleet
    c_stride: int

    @property
    def c_readings(self) -> int:
        """Readings of the (c) workload."""
        return math.ceil(self.c_fleet.meters / self.c_stride)

    def describe(self) -> str:
        a = self.a_fleet.meters * self.a_slots
        c = self.c_readings
        return (
            f"(a) {self.a_fleet.meters:,} meters behind {self.a_fleet.dcus:,} concentrators x {self.a_slots} slots = "
            f"{a:,} readings in {self.a_fleet.dcus * self.a_slots:,} messages of {READINGS_PER_MESSAGE}\n"
            f"(b) {self.b_meters:,} meters x {self.b_slots} slots = {self.b_meters * self.b_slots:,} single-meter "
            "messages\n"
            f"(c) {self.c_fleet.meters:,} meters behind {self.c_fleet.dcus:,} concentrators; {c:,} readings "
            f"(every {self.c_stride}th meter, one slot) in messages of {READINGS_PER_MESSAGE}"
        )


FULL = Plan(Fleet(50_000, 256), 12, 20_000, 5, Fleet(1_000_000, 1280), 5)
QUICK = Plan(Fleet(10_000, 256), 6, 5_000, 2, Fleet(200_000, 1280), 5)


# the code on the measured path
MEASURED: Final = ("headend/ingest", "protocols")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run: a smoke test of about a minute")
    parser.add_argument("--repeat", type=int, default=None, help="runs of each measurement (default 3, quick 1)")
    parser.add_argument("--parts", default="abc", help="which parts to run, any of 'abc' (default all)")
    parser.add_argument("--no-diagnostics", action="store_true", help="skip the in-process and full-merge figures")
    parser.add_argument(
        "--profile-dir",
        type=Path,
        default=None,
        help="also run one extra, unmeasured end-to-end (a) and (b) under py-spy and summarise it (needs py-spy)",
    )
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "/tmp/py-spy", help="py-spy binary")
    parser.add_argument("--mosquitto", default="mosquitto", help="mosquitto binary for the private broker")
    parser.add_argument(
        "--worker-switch-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="experiment: sys.setswitchinterval in the spawned workers of (a) and (b) (Python's default 0.005)",
    )
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1 or not set(args.parts) <= set("abc"):
        parser.error("--repeat must be ≥ 1 and --parts a subset of 'abc'")
    return args


class MachineLoad:
    """Share of all CPUs busy over an interval (everything on the machine, other users included)."""

    def __init__(self) -> None:
        self._start = machine_ticks()

    def busy(self) -> str:
        end = machine_ticks()
        total = end[1] - self._start[1]
        return f"machine {((end[0] - self._start[0]) / total if total else 0):.0%} busy"


def part_a(env: Env, plan: Plan, results: Results, repeat: int, now: datetime, diagnostics: bool) -> None:
    """(a) concentrator ingest, end to end and pre-filled, against the raw limit; diagnostics; profiles."""
    base = env.base_settings
    workload = concentrator_workload(plan.a_fleet, plan.a_slots, now, with_rows=True)
    path = workload.dump(env.tmp / "a.pickle")
    for n in range(repeat):
        load = MachineLoad()
        results.add("raw", raw_limit(workload, base.ingest_batch_rows, bookkeeping=False))
        e2e = worker_end_to_end(env, plan.a_fleet, workload, path, rate_of_messages=False)
        results.add("a_e2e", e2e.rate)
        results.add("a_pub", e2e.publisher_rate)
        results.add("a_batch", e2e.readings / e2e.batches)
        pre = worker_prefilled(env, plan.a_fleet, workload, path, rate_of_messages=False)
        results.add("a_pre", pre.rate)
        results.add("a_pre_batch", pre.readings / pre.batches)
        if diagnostics:
            results.add("raw_merge", raw_limit(workload, base.ingest_batch_rows, bookkeeping=True))
            # at the batch size the worker really formed, so that the stage is comparable with the worker's
            worker_batch = max(READINGS_PER_MESSAGE, round(e2e.readings / e2e.batches))
            ip = in_process(plan.a_fleet, workload, worker_batch, base.future_tolerance_s)
            results.add("ip_decode", ip.decode_rate)
            results.add("ip_write", ip.write_rate)
        print(
            f"  (a) run {n + 1}: raw {fmt_int(results.runs['raw'][-1])} rows/s, end to end {fmt_int(e2e.rate)} "
            f"readings/s ({e2e.seconds:.1f} s), pre-filled {fmt_int(pre.rate)} readings/s ({pre.seconds:.1f} s); "
            f"{load.busy()}",
            flush=True,
        )
    if env.profile_dir is not None:
        for gil in (False, True):
            profiled = worker_end_to_end(env, plan.a_fleet, workload, path, False, "a-end-to-end", gil)
            print(f"  (profiled run, not counted: {fmt_int(profiled.rate)} readings/s)", flush=True)


def part_b(env: Env, plan: Plan, results: Results, repeat: int, now: datetime, diagnostics: bool) -> None:
    """(b) single-meter messages, end to end and pre-filled, against a bare subscriber; profiles."""
    workload = meter_workload(plan.b_meters, plan.b_slots, now)
    path = workload.dump(env.tmp / "b.pickle")
    fleet = Fleet(plan.b_meters, 256)
    for n in range(repeat):
        load = MachineLoad()
        results.add("bare_e2e", bare_end_to_end(env, workload, path))
        e2e = worker_end_to_end(env, fleet, workload, path, rate_of_messages=True)
        results.add("b_e2e", e2e.rate)
        results.add("b_pub", e2e.publisher_rate)
        results.add("b_batch", e2e.messages / e2e.batches)
        results.add("bare_pre", bare_prefilled(env, workload, path))
        pre = worker_prefilled(env, fleet, workload, path, rate_of_messages=True)
        results.add("b_pre", pre.rate)
        results.add("b_pre_batch", pre.messages / pre.batches)
        if diagnostics:
            results.add("ip_decode_b", decode_rate(workload, env.base_settings.ingest_batch_rows))
        print(
            f"  (b) run {n + 1}: end to end bare {fmt_int(results.runs['bare_e2e'][-1])}, worker "
            f"{fmt_int(e2e.rate)} msgs/s; pre-filled bare {fmt_int(results.runs['bare_pre'][-1])}, worker "
            f"{fmt_int(pre.rate)} msgs/s; {load.busy()}",
            flush=True,
        )
    if env.profile_dir is not None:
        for gil in (False, True):
            profiled = worker_end_to_end(env, fleet, workload, path, True, "b-end-to-end", gil)
            print(f"  (profiled run, not counted: {fmt_int(profiled.rate)} msgs/s)", flush=True)


def one_message(topic: str, payload: bytes, copies: int, readings: int) -> Workload:
    """The same message `copies` times."""
    return Workload([(topic, payload)] * copies, readings)


def part_c(env: Env, plan: Plan, results: Results, repeat: int, now: datetime) -> None:
    """(c) peak RSS of `python -m headend ingest` with the large fleet: idle, a workload, a full inbox."""
    workload = concentrator_workload(plan.c_fleet, 1, now, stride=plan.c_stride, with_rows=False)
    path = workload.dump(env.tmp / "c.pickle")
    topic = concentrator_readings_topic(dcu_id(0))
    probe_ts = slot_times(2, now)[0]
    # meter 1 is not in the workload (every `c_stride`th meter from 0)
    probe = one_message(topic, encode_concentrator_batch(dcu_id(0), probe_ts, [make_reading(1, 0, probe_ts)]), 1, 1)
    probe_path = probe.dump(env.tmp / "c-probe.pickle")
    # the largest message the contract allows, more of them than the worker may hold unacknowledged
    big_ts = slot_times(3, now)[0]
    big = encode_concentrator_batch(
        dcu_id(0), big_ts, [make_reading(i, 0, big_ts) for i in range(MAX_READINGS_PER_BATCH)]
    )
    backlog_messages = env.base_settings.mqtt_receive_maximum + 200
    backlog_path = one_message(topic, big, backlog_messages, 0).dump(env.tmp / "c-backlog.pickle")
    print(
        f"(c) full inbox: {backlog_messages:,} queued copies of one message of {MAX_READINGS_PER_BATCH} readings "
        f"({len(big):,} bytes)",
        flush=True,
    )
    for n in range(repeat):
        rss = rss_run(env, plan.c_fleet, probe_path, path, workload, backlog_path, backlog_messages)
        results.add("rss_idle", rss.idle_kib * 1024)
        results.add("rss_peak", rss.peak_kib * 1024)
        results.add("rss_seconds", rss.seconds)
        results.add("rss_backlog", rss.backlog_kib * 1024)
        print(
            f"  (c) run {n + 1}: idle {rss.idle_kib * 1024 / MB:.1f} MB, workload {rss.peak_kib * 1024 / MB:.1f} MB, "
            f"full inbox {rss.backlog_kib * 1024 / MB:.1f} MB",
            flush=True,
        )


def run(args: argparse.Namespace) -> None:
    """Everything, inside one exit stack: the private broker and the temp directory go whatever happens."""
    plan = QUICK if args.quick else FULL
    results = Results()
    now = datetime.now(UTC)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
        stack.callback(shutil.rmtree, tmp, True)
        py_spy = args.py_spy if args.profile_dir and Path(args.py_spy).exists() else None
        if args.profile_dir and py_spy is None:
            raise BenchError(f"--profile-dir needs py-spy; {args.py_spy!r} not found")
        broker = stack.enter_context(private_mosquitto(args.mosquitto))
        base = Settings(mqtt_host=broker.host, mqtt_port=broker.port, mqtt_client_id="bench", mqtt_shared_group="b")
        env = Env(
            multiprocessing.get_context("spawn"),
            broker,
            tmp,
            base,
            args.profile_dir,
            py_spy,
            args.worker_switch_interval,
        )
        print(f"python -m bench.ingest {' '.join(sys.argv[1:])}  ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")
        print(code_fingerprint(MEASURED, code_digest(MEASURED)))
        print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print(f"broker: {broker.description}")
        print(
            f"worker settings: batch_rows {base.ingest_batch_rows}, batch_wait_ms {base.ingest_batch_wait_ms}, "
            f"MQTT {base.mqtt_protocol.value}, receive_maximum {base.mqtt_receive_maximum}"
            + (f"; switch interval {env.switch_interval_s} s (experiment)" if env.switch_interval_s else "")
        )
        print(plan.describe(), flush=True)
        if "a" in args.parts:
            part_a(env, plan, results, args.repeat, now, not args.no_diagnostics)
        if "b" in args.parts:
            part_b(env, plan, results, args.repeat, now, not args.no_diagnostics)
        if "c" in args.parts:
            part_c(env, plan, results, args.repeat, now)
    print(f"\nfinished in {time.monotonic() - started:.0f} s; load average now {os.getloadavg()[0]:.2f}\n")
    print(report(results, plan))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
