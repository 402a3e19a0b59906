"""Helpers shared by the benchmark scripts: throwaway databases, a private broker, sessions, processes, tables."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy.engine import make_url

from headend.db.migrate import migrate

ADMIN_URL = os.environ.get("HEADEND_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1


class BenchError(RuntimeError):
    """A benchmark step failed or timed out; the figures of the run are not valid."""


REPO_ROOT = Path(__file__).resolve().parent.parent


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def code_digest(paths: Sequence[str]) -> str:
    """sha256 of the Python files under `paths` (relative to the repository): the code a benchmark measures."""
    digest = hashlib.sha256()
    for name in paths:
        path = REPO_ROOT / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(str(file.relative_to(REPO_ROOT)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def check_measured_code(paths: Sequence[str], digest: str) -> None:
    """Refuse to go on measuring code other than what the benchmark started with (others edit it meanwhile)."""
    now = code_digest(paths)
    if now != digest:
        raise BenchError(f"the measured code changed during the benchmark ({digest} → {now}); rerun when it is stable")


def code_fingerprint(paths: Sequence[str], digest: str) -> str:
    """The commit and uncommitted changes of the measured code, and its digest: figures belong to the code."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False).stdout
        except OSError:
            return ""

    commit = git("rev-parse", "--short", "HEAD").strip()
    if not commit:
        return f"code: {REPO_ROOT} is not a git checkout; sha256 of the measured code {digest}"
    dirty = git("status", "--porcelain", "--", *paths)
    changed = ", ".join(line[3:] for line in dirty.splitlines()) or "none"
    return f"code: commit {commit}; uncommitted changes in the measured code: {changed}; its sha256 {digest}"


def unique_token() -> str:
    """A short random token for database names, client ids and shared-subscription groups."""
    return uuid.uuid4().hex[:10]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.01) -> None:
    """Poll `condition` until it holds; raise BenchError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


# ---------------------------------------------------------------- databases


def database_url(name: str) -> str:
    """The URL of database `name` on the admin server."""
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_database(name: str) -> None:
    """Drop database `name` if it exists, disconnecting its sessions."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def throwaway_database(collection_timezone: str = "Asia/Shanghai") -> Iterator[str]:
    """A freshly created and migrated database `bench_<random>`, dropped on exit (also on failure)."""
    name = f"bench_{unique_token()}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = database_url(name)
        migrate(url, require_timescaledb=False, collection_timezone=collection_timezone)
        yield url
    finally:
        drop_database(name)


def scalar(conn: psycopg.Connection[Any], sql: str, params: Sequence[object] | None = None) -> int:
    """The single integer a query returns."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


# ---------------------------------------------------------------- broker


@dataclass(frozen=True, slots=True)
class Broker:
    """Where a broker listens, and what it is (for the report)."""

    host: str
    port: int
    description: str
    pid: int


PRIVATE_BROKER_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 0
log_dest none
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((HOST, port)) == 0


def mosquitto_version(binary: str) -> str:
    """`mosquitto version X.Y.Z` of the binary, or 'unknown'."""
    try:
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5, check=False).stdout
    except OSError:
        return "unknown"
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("mosquitto version ").strip() or "unknown"


@contextlib.contextmanager
def private_mosquitto(binary: str = "mosquitto") -> Iterator[Broker]:
    """Our own mosquitto on a free 127.0.0.1 port: no queue or in-flight limits, no persistence; stopped on exit."""
    path = shutil.which(binary)
    if path is None:
        raise BenchError(f"{binary!r} not found on PATH")
    workdir = Path(tempfile.mkdtemp(prefix="bench-mosquitto-"))
    port = free_port()
    config = workdir / "mosquitto.conf"
    config.write_text(PRIVATE_BROKER_CONFIG.format(port=port))
    config.chmod(0o644)
    workdir.chmod(0o755)
    process = subprocess.Popen(
        [path, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent
    )
    try:
        deadline = time.monotonic() + 10
        while not _port_open(port):
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise BenchError(f"mosquitto exited with {process.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                raise BenchError("mosquitto did not start listening within 10 s")
            time.sleep(0.05)
        version = mosquitto_version(path)
        yield Broker(
            HOST,
            port,
            f"private mosquitto {version} on {HOST}:{port} (max_queued_messages 0, max_inflight_messages 0, "
            "persistence false)",
            process.pid,
        )
    finally:
        stop_process(process)
        if process.stderr is not None:
            process.stderr.close()
        shutil.rmtree(workdir, ignore_errors=True)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """SIGTERM one process we started, then SIGKILL it if it does not exit."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class _Startable(Protocol):
    def is_alive(self) -> bool: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...


def stop_child(process: _Startable, timeout_s: float = 10) -> None:
    """Terminate one multiprocessing child we started, then kill it if it does not exit."""
    if not process.is_alive():
        return
    process.terminate()
    process.join(timeout_s)
    if process.is_alive():
        process.kill()
        process.join(5)


def die_with_parent() -> None:
    """Linux: have the kernel SIGTERM this process when its parent dies (even by SIGKILL): nothing outlives a run."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# ---------------------------------------------------------------- MQTT sessions


def _v5_client(client_id: str) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)


def _connect_v5(client: mqtt.Client, broker: Broker, *, clean_start: bool, receive_maximum: int | None = None) -> None:
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if not clean_start:
        properties.SessionExpiryInterval = 24 * 3600
    if receive_maximum is not None:
        properties.ReceiveMaximum = receive_maximum
    client.connect(broker.host, broker.port, keepalive=30, clean_start=clean_start, properties=properties)


def create_session(broker: Broker, client_id: str, filters: Sequence[str]) -> None:
    """Create a persistent MQTT 5 session subscribed (QoS 1) to `filters`, then disconnect: the broker queues for it.

    This is what a worker's session looks like after it has run once and stopped.
    """
    client = _v5_client(client_id)
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    _connect_v5(client, broker, clean_start=False)
    client.loop_start()
    try:
        client.subscribe([(f, 1) for f in filters])
        if not subscribed.wait(10):
            raise BenchError(f"broker did not acknowledge the subscription of {client_id}")
    finally:
        client.disconnect()
        client.loop_stop()


def purge_session(broker: Broker, client_id: str) -> None:
    """Delete the broker-side session of `client_id` by connecting once with clean start (no session expiry)."""
    client = _v5_client(client_id)
    done = threading.Event()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        done.set()

    client.on_connect = on_connect
    try:
        _connect_v5(client, broker, clean_start=True)
    except OSError:
        return  # the broker is gone, and its sessions with it
    client.loop_start()
    done.wait(5)
    client.disconnect()
    client.loop_stop()


# ---------------------------------------------------------------- processes and memory


def proc_status_kib(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmHWM, VmRSS), or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


# ---------------------------------------------------------------- numbers and tables


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


def ratio(ours: float, limit: float) -> float:
    """ours / limit (0 when the limit is 0)."""
    return ours / limit if limit else 0.0


def fmt_int(value: float) -> str:
    """A rate or count with thousands separators."""
    return f"{value:,.0f}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with columns padded for the terminal."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "| " + " | ".join("-" * w for w in widths) + " |", *(line(r) for r in rows)])


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_bench(run: Callable[[], None]) -> int:
    """Run a benchmark: SIGTERM exits cleanly (throwaway databases are dropped); a BenchError is exit status 1."""
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        run()
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0
