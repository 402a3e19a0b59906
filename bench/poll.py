"""Polling benchmark: readings/s the head-end's poller collects from simulated Modbus TCP and DL/T 645-2007 meters,
against a bare client loop reading the same meters from the same servers in the same run.

Run `uv run python -m bench.poll [--quick] [--protocol modbus|dlt645|both] [--meters N] [--endpoints N] [--repeat N]`.
For each protocol:

- the simulators, in processes of their own (so that the poller's process is measured alone): N meters (default
  1,000) behind E endpoints (default 50) on free 127.0.0.1 ports, all served by the tasks of one event loop.
  Modbus: `simulators.modbus_sim.ModbusMeterFleet`, one pymodbus server an endpoint, units 1..N/E, the five
  register maps in turn. DL/T 645: `simulators.dlt645_gateway.Dlt645Gateway`, one RS-485 bus a gateway, at
  `--baud` (default 9600) with the meters' turnaround (`--latency-s`, default the simulator's 30 ms);
- **bare**: pymodbus's `AsyncModbusTcpClient` (DL/T 645: `protocols.dlt645.client.Dlt645Connection`) reading the
  very registers (identifiers) the poller reads of every meter, one request at a time an endpoint, every endpoint
  at once, nothing else: no decoding into readings, no retries, no stamps;
- **poll_round**: `headend.poll.poller.Poller.poll_round` over the same meters, readings delivered to a counter
  (no database); the production `PollConfig` (timeouts, retries, connections);
- **run_poller**: `headend.poll.service.run_poller(..., once=True)` end to end into a throwaway, migrated PostgreSQL
  database on 127.0.0.1:5432 whose registry holds the simulators' `registry_rows()`: registry read, every meter
  polled, readings written through `ReadingWriter` (validation, de-duplication, collection statistics), links
  closed. Each round is a load point of its own (the poller's clock set back a whole interval a round), as in
  production, so no reading is a duplicate.

Bare and poll_round keep their connections between a warm-up round and the timed round; run_poller opens its own, as
`headend poll --once` does (one untimed run first, so that every meter has its register state). readings/s = meters
read ÷ seconds of the round; medians of `--repeat` runs (default 3); the ratio ours/bare (target ≥ 0.8). CPU seconds
of this process and of the simulators' processes are printed beside each figure: a simulator near a whole core
limits both loops alike. `--profile` adds cProfile's top functions of one poll_round and one bare round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import logging
import multiprocessing
import os
import pstats
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any, Final

import psycopg
from pymodbus.client import AsyncModbusTcpClient

from bench._common import (
    ADMIN_URL,
    HOST,
    BenchError,
    check_measured_code,
    code_digest,
    code_fingerprint,
    die_with_parent,
    fmt_int,
    format_table,
    machine_ticks,
    median,
    ratio,
    run_bench,
    stop_child,
    throwaway_database,
)
from headend.poll.dlt645_reader import OPTIONAL
from headend.poll.failures import PollFailure
from headend.poll.poller import Poller
from headend.poll.service import poll_config, run_poller
from headend.poll.targets import PolledMeter, parse_endpoint
from headend.registry.meter_import import import_meters, parse_row
from headend.settings import Settings
from protocols.dlt645.client import Dlt645Connection
from protocols.dlt645.errors import MeterErrorResponse
from protocols.dlt645.identifiers import FORWARD_ACTIVE_TOTAL
from protocols.readings import MeterReading
from protocols.register_map import ReadRequest, available_models, load_register_map, plan_reads
from simulators.dlt645_gateway import DEFAULT_LATENCY_S, Dlt645Gateway
from simulators.modbus_sim import ModbusMeterFleet

PROTOCOLS: Final = ("modbus", "dlt645")
TARGET: Final = 0.8
DLT645_IDENTIFIERS: Final = (FORWARD_ACTIVE_TOTAL, *OPTIONAL)  # what the poller asks a DL/T 645 meter, in order
START_TIMEOUT_S: Final = 120.0
CLIENT_TIMEOUT_S: Final = 2.0  # bare clients: HEADEND_POLL_TIMEOUT_S's default
# the code on the measured path: a change of any of it during a benchmark makes its runs incomparable
MEASURED: Final = ("headend/poll", "headend/ingest", "headend/db", "headend/settings.py", "protocols", "simulators")


# ================================================================ the simulators, in processes of their own


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """The endpoints one simulator process serves: their numbers, meters an endpoint, bus timing."""

    protocol: str
    endpoints: tuple[int, ...]  # endpoint numbers, for meter ids and seeds unique across processes
    meters_each: tuple[int, ...]
    baud: int
    latency_s: float


def split_meters(meters: int, endpoints: int) -> list[int]:
    """Meters an endpoint: `meters` spread over `endpoints` as evenly as whole meters go, the larger first."""
    assert 1 <= endpoints <= meters
    base, extra = divmod(meters, endpoints)
    return [base + (1 if i < extra else 0) for i in range(endpoints)]


def server_specs(
    protocol: str, meters: int, endpoints: int, processes: int, baud: int, latency_s: float
) -> list[ServerSpec]:
    """The endpoints split over `processes` simulator processes (round-robin)."""
    counts = split_meters(meters, endpoints)
    processes = min(processes, endpoints)
    return [
        ServerSpec(
            protocol,
            tuple(range(p, endpoints, processes)),
            tuple(counts[i] for i in range(p, endpoints, processes)),
            baud,
            latency_s,
        )
        for p in range(processes)
    ]


def simulator_main(spec: ServerSpec, conn: Connection) -> None:
    """A simulator process: serve every endpoint of `spec` on 127.0.0.1, send their registry rows, serve until told."""
    die_with_parent()
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    asyncio.run(_serve(spec, conn))


async def _serve(spec: ServerSpec, conn: Connection) -> None:
    tasks: list[asyncio.Task[None]] = []
    try:
        if spec.protocol == "modbus":
            fleets = [
                ModbusMeterFleet(HOST, 0, available_models(), n, meter_id_prefix=f"MB{e:03d}x", seed=e)
                for e, n in zip(spec.endpoints, spec.meters_each, strict=True)
            ]
            listening = [asyncio.Event() for _ in fleets]
            tasks = [asyncio.create_task(f.serve(listening=ev.set)) for f, ev in zip(fleets, listening, strict=True)]
            await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in listening)), START_TIMEOUT_S)
            rows = [row for fleet in fleets for row in fleet.registry_rows()]
        else:
            gateways = [
                Dlt645Gateway(
                    HOST,
                    0,
                    n,
                    first_address=e * 1000 + 1,
                    seed=e,
                    baud=spec.baud,
                    latency_s=spec.latency_s,
                    meter_id_prefix=f"DL{e:03d}x",
                )
                for e, n in zip(spec.endpoints, spec.meters_each, strict=True)
            ]
            tasks = [asyncio.create_task(g.serve()) for g in gateways]
            deadline = time.monotonic() + START_TIMEOUT_S
            while any(g.port == 0 for g in gateways):  # serve() sets the port once it listens
                if time.monotonic() > deadline or any(t.done() for t in tasks):
                    raise RuntimeError("the DL/T 645 gateways did not start listening")
                await asyncio.sleep(0.01)
            rows = [row for gateway in gateways for row in gateway.registry_rows()]
        conn.send(rows)
        await asyncio.get_running_loop().run_in_executor(None, _wait_for_stop, conn)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _wait_for_stop(conn: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        conn.recv()


class Simulators:
    """The simulator processes of one protocol: started, their registry rows received, stopped on exit."""

    def __init__(self, ctx: SpawnContext, specs: list[ServerSpec]) -> None:
        self._ctx = ctx
        self._specs = specs
        self.processes: list[SpawnProcess] = []
        self._conns: list[Connection] = []
        self.rows: list[dict[str, str]] = []

    def __enter__(self) -> Simulators:
        try:
            for spec in self._specs:
                parent, child = self._ctx.Pipe()
                process = self._ctx.Process(target=simulator_main, args=(spec, child), daemon=True)
                process.start()
                child.close()
                self.processes.append(process)
                self._conns.append(parent)
            for conn, process in zip(self._conns, self.processes, strict=True):
                if not conn.poll(START_TIMEOUT_S):
                    raise BenchError(f"simulator process {process.pid} did not start within {START_TIMEOUT_S:.0f} s")
                try:
                    self.rows.extend(conn.recv())
                except EOFError:
                    raise BenchError(f"simulator process {process.pid} ended with {process.exitcode}") from None
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for process in self.processes:
            process.join(10)
            stop_child(process)
        for conn in self._conns:
            conn.close()

    def cpu_s(self) -> float:
        """CPU seconds the simulator processes used so far."""
        return sum(process_cpu_s(p.pid) for p in self.processes if p.pid is not None)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads), from /proc; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()  # fields from the third (state) on
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def polled_meters(rows: Sequence[dict[str, str]]) -> list[PolledMeter]:
    """The registry rows as the poller loads them (same order: endpoint, bus, meter id)."""
    meters = [
        PolledMeter(
            row["meter_id"],
            row["protocol"],
            parse_endpoint(row["endpoint"], row["bus"] or None),
            row["model"] or None,
            int(row["unit_id"]) if row["unit_id"] else None,
            row["address"] or None,
        )
        for row in rows
    ]
    return sorted(meters, key=lambda m: (f"{m.endpoint.host}:{m.endpoint.port}", m.endpoint.bus, m.meter_id))


def by_endpoint(meters: Sequence[PolledMeter]) -> dict[tuple[str, int, str], list[PolledMeter]]:
    """Meters grouped by endpoint and bus, in their order."""
    groups: dict[tuple[str, int, str], list[PolledMeter]] = {}
    for meter in meters:
        groups.setdefault((meter.endpoint.host, meter.endpoint.port, meter.endpoint.bus), []).append(meter)
    return groups


# ================================================================ the loops


@dataclass
class Sample:
    """One timed round: meters read, seconds, CPU seconds of this process and of the simulators, machine busy."""

    read: int
    seconds: float
    cpu_s: float
    server_cpu_s: float
    machine_busy: float
    failed: int = 0

    @property
    def rate(self) -> float:
        """Readings (meters read) per second."""
        return self.read / self.seconds if self.seconds else 0.0


async def _timed(sims: Simulators, round_: Callable[[], Awaitable[tuple[int, int]]]) -> Sample:
    busy0, total0 = machine_ticks()
    server0, cpu0, started = sims.cpu_s(), time.process_time(), time.perf_counter()
    read, failed = await round_()
    seconds = time.perf_counter() - started
    cpu, server = time.process_time() - cpu0, sims.cpu_s() - server0
    busy1, total1 = machine_ticks()
    return Sample(read, seconds, cpu, server, (busy1 - busy0) / max(1, total1 - total0), failed)


class BareModbus:
    """pymodbus clients, one an endpoint, reading every meter's planned requests: nothing else."""

    def __init__(self, meters: Sequence[PolledMeter]) -> None:
        self._groups = by_endpoint(meters)
        plans = {model: plan_reads(load_register_map(model)) for model in {m.model or "" for m in meters}}
        self._work = {
            key: [(m.unit_id or 0, plans[m.model or ""]) for m in group] for key, group in self._groups.items()
        }
        self._clients: dict[tuple[str, int, str], AsyncModbusTcpClient] = {}

    async def connect(self) -> None:
        """One connection an endpoint."""
        for host, port, bus in self._groups:
            client = AsyncModbusTcpClient(host, port=port, timeout=CLIENT_TIMEOUT_S, retries=0, reconnect_delay=0)
            if not await client.connect():
                raise BenchError(f"bare client: cannot connect to {host}:{port}")
            self._clients[(host, port, bus)] = client

    def close(self) -> None:
        """Close every connection."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    async def round(self) -> tuple[int, int]:
        """Every meter once: (meters read, meters failed)."""

        async def endpoint(client: AsyncModbusTcpClient, work: list[tuple[int, tuple[ReadRequest, ...]]]) -> int:
            read = 0
            for unit, requests in work:
                ok = True
                for request in requests:
                    call = client.read_holding_registers if request.function == 3 else client.read_input_registers
                    response = await call(request.address, count=request.count, device_id=unit)
                    ok = ok and not response.isError()
                read += ok
            return read

        counts = await asyncio.gather(*(endpoint(self._clients[key], work) for key, work in self._work.items()))
        read = sum(counts)
        return read, sum(len(w) for w in self._work.values()) - read


class BareDlt645:
    """DL/T 645 connections, one a gateway, reading the poller's five identifiers of every meter: nothing else."""

    def __init__(self, meters: Sequence[PolledMeter]) -> None:
        self._groups = by_endpoint(meters)
        self._connections: dict[tuple[str, int, str], Dlt645Connection] = {}

    async def connect(self) -> None:
        """One connection a gateway (bus)."""
        for host, port, bus in self._groups:
            connection = Dlt645Connection(host, port, timeout_s=CLIENT_TIMEOUT_S)
            await connection.client()
            self._connections[(host, port, bus)] = connection

    async def close(self) -> None:
        """Close every connection."""
        for connection in self._connections.values():
            await connection.close()
        self._connections.clear()

    async def round(self) -> tuple[int, int]:
        """Every meter once: (meters read, meters failed)."""

        async def gateway(connection: Dlt645Connection, meters: list[PolledMeter]) -> int:
            read = 0
            for meter in meters:
                address = meter.address or ""
                for identifier in DLT645_IDENTIFIERS:
                    with contextlib.suppress(MeterErrorResponse):  # no such data: a whole answer all the same
                        await connection.read_data(address, identifier)
                read += 1
            return read

        counts = await asyncio.gather(*(gateway(self._connections[key], group) for key, group in self._groups.items()))
        read = sum(counts)
        return read, sum(len(g) for g in self._groups.values()) - read


async def bare_sample(sims: Simulators, protocol: str, meters: Sequence[PolledMeter]) -> Sample:
    """Connect, one warm-up round, one timed round, close."""
    if protocol == "modbus":
        modbus = BareModbus(meters)
        try:
            await modbus.connect()
            await modbus.round()
            return await _timed(sims, modbus.round)
        finally:
            modbus.close()
    dlt645 = BareDlt645(meters)
    try:
        await dlt645.connect()
        await dlt645.round()
        return await _timed(sims, dlt645.round)
    finally:
        await dlt645.close()


def _now() -> datetime:
    return datetime.now(UTC)


async def poller_sample(sims: Simulators, settings: Settings, meters: list[PolledMeter]) -> Sample:
    """A Poller with production settings: one warm-up round, one timed round; readings delivered to a counter."""
    poller = Poller(poll_config(settings), _now)

    async def deliver(readings: list[tuple[PolledMeter, MeterReading]], failures: list[PollFailure]) -> None:
        return None

    async def one_round() -> tuple[int, int]:
        totals = await poller.poll_round(meters, None, deliver)
        return totals.read, totals.failed

    try:
        await one_round()
        return await _timed(sims, one_round)
    finally:
        await poller.close()


def round_clock(shift: timedelta) -> Callable[[], datetime]:
    """The poller's clock `shift` off the true time (a past load point of its own for each round)."""
    return lambda: datetime.now(UTC) + shift


def round_shifts(rounds: int, interval: timedelta) -> list[timedelta]:
    """Clock shifts for `rounds` runs of run_poller, oldest first, the last at the true time: each round a load point
    of its own, later than the one before (a reading never older than what its meter has stored)."""
    return [-interval * (rounds - 1 - k) for k in range(rounds)]


async def run_poller_sample(sims: Simulators, settings: Settings, url: str, shift: timedelta) -> Sample:
    """`run_poller(once=True)` end to end: registry read, connections opened, every meter polled and stored."""
    stored: list[int] = []

    async def one_round() -> tuple[int, int]:
        totals = await run_poller(settings, url, threading.Event(), once=True, clock=round_clock(shift))
        stored.append(totals.stored)
        return totals.read, totals.failed

    sample = await _timed(sims, one_round)
    if stored[0] != sample.read:
        raise BenchError(f"run_poller stored {stored[0]} of the {sample.read} readings it read (duplicates?)")
    return sample


def import_registry(url: str, rows: Sequence[dict[str, str]]) -> None:
    """Register the simulators' meters as `headend meters import` does."""
    with psycopg.connect(url) as conn:
        import_meters(conn, [parse_row(row) for row in rows])


def profile(coroutine: Callable[[], Coroutine[Any, Any, None]], top: int) -> str:
    """cProfile's top functions (by own time) of one run of `coroutine`."""
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(coroutine())
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


# ================================================================ the run


@dataclass
class Figures:
    """The samples of one protocol."""

    protocol: str
    meters: int
    endpoints: int
    bare: list[Sample] = field(default_factory=list)
    poll_round: list[Sample] = field(default_factory=list)
    run_poller: list[Sample] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)


def _rate(samples: Sequence[Sample]) -> float:
    return median([s.rate for s in samples])


def _per_meter_us(samples: Sequence[Sample], what: Callable[[Sample], float]) -> str:
    return f"{median([what(s) / max(1, s.read) * 1e6 for s in samples]):,.0f}"


def describe(protocol: str, args: argparse.Namespace) -> str:
    """What is measured, for the header and the table."""
    if protocol == "modbus":
        return f"Modbus TCP, {args.meters:,} meters behind {args.endpoints} endpoints (the 5 register maps in turn)"
    return (
        f"DL/T 645-2007, {args.meters:,} meters behind {args.endpoints} gateways, {args.baud} baud, "
        f"turnaround {args.latency_s * 1000:g} ms"
    )


def report(all_figures: Sequence[Figures]) -> str:
    """The figures, the CPU beside them, the profiles."""
    rows, cpu_rows = [], []
    label = {"modbus": "Modbus", "dlt645": "DL/T 645"}
    for figures in all_figures:
        bare = _rate(figures.bare)
        for name, samples in (("poll_round", figures.poll_round), ("run_poller --once", figures.run_poller)):
            ours = _rate(samples)
            r = ratio(ours, bare)
            rows.append(
                [
                    f"{label[figures.protocol]}, {name}",
                    f"{fmt_int(ours)} readings/s",
                    f"bare {fmt_int(bare)} readings/s",
                    f"{r:.2f}",
                    f"≥ {TARGET:.2f} × bare",
                    "yes" if r >= TARGET else "**no**",
                ]
            )
        for name, samples in (
            ("bare", figures.bare),
            ("poll_round", figures.poll_round),
            ("run_poller --once", figures.run_poller),
        ):
            cpu_rows.append(
                [
                    f"{label[figures.protocol]}, {name}",
                    " · ".join(f"{s.rate:,.0f}" for s in samples),
                    f"{median([s.seconds for s in samples]):.2f}",
                    _per_meter_us(samples, lambda s: s.cpu_s),
                    _per_meter_us(samples, lambda s: s.server_cpu_s),
                    f"{median([s.cpu_s / s.seconds for s in samples]):.0%}",
                    f"{median([s.server_cpu_s / s.seconds for s in samples]):.0%}",
                    f"{median([s.machine_busy for s in samples]):.0%}",
                ]
            )
    parts = [
        format_table(["figure", "ours", "limit (same run)", "ratio", "target", "met?"], rows),
        format_table(
            [
                "loop",
                "readings/s, each run",
                "s a round",
                "our CPU µs/meter",
                "simulators' CPU µs/meter",
                "our CPU",
                "simulators' CPU",
                "machine busy",
            ],
            cpu_rows,
        ),
        "our CPU: this process (its database thread included), as a share of one core over the round; the "
        "simulators': their processes (one event loop each). A loop near 100 % of a core is CPU-bound there.",
    ]
    for figures in all_figures:
        parts.extend(figures.profiles)
    return "\n\n".join(parts)


def measure(ctx: SpawnContext, protocol: str, args: argparse.Namespace) -> Figures:
    """Every loop of one protocol, `args.repeat` times, alternating."""
    figures = Figures(protocol, args.meters, args.endpoints)
    specs = server_specs(protocol, args.meters, args.endpoints, args.server_processes, args.baud, args.latency_s)
    print(f"\n{describe(protocol, args)}; simulators in {len(specs)} process(es)", flush=True)
    with Simulators(ctx, specs) as sims, throwaway_database() as url:
        meters = polled_meters(sims.rows)
        if len(meters) != args.meters:
            raise BenchError(f"the simulators serve {len(meters)} meters, not {args.meters}")
        import_registry(url, sims.rows)
        settings = Settings(database_url=url)
        interval = timedelta(seconds=settings.poll_interval_s)
        shifts = round_shifts(args.repeat + 1, interval)
        warm = asyncio.run(run_poller_sample(sims, settings, url, shifts[0]))  # every meter's first reading
        print(f"  run_poller warm-up (first readings of every meter): {warm.rate:,.0f} readings/s", flush=True)
        for n in range(args.repeat):
            check_measured_code(MEASURED, args.digest)
            bare = asyncio.run(bare_sample(sims, protocol, meters))
            ours = asyncio.run(poller_sample(sims, settings, meters))
            full = asyncio.run(run_poller_sample(sims, settings, url, shifts[n + 1]))
            for sample, what in ((bare, "bare"), (ours, "poll_round"), (full, "run_poller")):
                if sample.read != len(meters) or sample.failed:
                    raise BenchError(f"{what}: {sample.read} of {len(meters)} meters read, {sample.failed} failed")
            figures.bare.append(bare)
            figures.poll_round.append(ours)
            figures.run_poller.append(full)
            print(
                f"  run {n + 1}: bare {bare.rate:,.0f}, poll_round {ours.rate:,.0f} "
                f"({ratio(ours.rate, bare.rate):.2f}), run_poller {full.rate:,.0f} "
                f"({ratio(full.rate, bare.rate):.2f}) readings/s; machine {bare.machine_busy:.0%} / "
                f"{ours.machine_busy:.0%} / {full.machine_busy:.0%} busy",
                flush=True,
            )
        if args.profile:
            figures.profiles.append(f"### profile: {protocol} poll_round\n\n" + _profile_poller(settings, meters))
            figures.profiles.append(f"### profile: {protocol} bare\n\n" + _profile_bare(protocol, meters))
    return figures


def _profile_poller(settings: Settings, meters: list[PolledMeter]) -> str:
    async def go() -> None:
        poller = Poller(poll_config(settings), _now)

        async def deliver(readings: list[tuple[PolledMeter, MeterReading]], failures: list[PollFailure]) -> None:
            return None

        try:
            await poller.poll_round(meters, None, deliver)
        finally:
            await poller.close()

    return profile(go, 25)


def _profile_bare(protocol: str, meters: list[PolledMeter]) -> str:
    async def go() -> None:
        if protocol == "modbus":
            modbus = BareModbus(meters)
            await modbus.connect()
            try:
                await modbus.round()
            finally:
                modbus.close()
        else:
            dlt645 = BareDlt645(meters)
            await dlt645.connect()
            try:
                await dlt645.round()
            finally:
                await dlt645.close()

    return profile(go, 25)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.poll", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run: a smoke test of under a minute")
    parser.add_argument("--protocol", choices=[*PROTOCOLS, "both"], default="both", help="what to measure")
    parser.add_argument("--meters", type=int, default=None, help="meters of each protocol (default 1,000; quick 200)")
    parser.add_argument(
        "--endpoints", type=int, default=None, help="Modbus endpoints and DL/T 645 gateways (default 50; quick 20)"
    )
    parser.add_argument("--repeat", type=int, default=None, help="runs of each loop (default 3, quick 1)")
    parser.add_argument("--baud", type=int, default=9600, help="DL/T 645 bus speed (default 9600)")
    parser.add_argument(
        "--latency-s",
        type=float,
        default=DEFAULT_LATENCY_S,
        help=f"DL/T 645 meters' turnaround (default the simulator's {DEFAULT_LATENCY_S} s)",
    )
    parser.add_argument(
        "--server-processes", type=int, default=1, help="simulator processes a protocol, endpoints split (default 1)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one poll_round and one bare round")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.meters is None:
        args.meters = 200 if args.quick else 1000
    if args.endpoints is None:
        args.endpoints = 20 if args.quick else 50
    if args.repeat < 1 or args.meters < 1 or args.endpoints < 1 or args.server_processes < 1:
        parser.error("--repeat, --meters, --endpoints and --server-processes must be ≥ 1")
    if args.endpoints > args.meters:
        parser.error("--endpoints must not exceed --meters")
    if -(-args.meters // args.endpoints) > 247:
        parser.error("a Modbus endpoint has at most 247 units: raise --endpoints")
    if args.endpoints > 999:
        parser.error("at most 999 endpoints (meter ids number them in three digits)")
    if args.baud < 1 or args.latency_s < 0:
        parser.error("--baud must be positive and --latency-s not negative")
    args.protocols = list(PROTOCOLS) if args.protocol == "both" else [args.protocol]
    return args


def run(args: argparse.Namespace) -> None:
    """Every protocol asked for; simulators and databases go whatever happens."""
    started = time.monotonic()
    print(f"python -m bench.poll {' '.join(sys.argv[1:])}  ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")
    args.digest = code_digest(MEASURED)
    print(code_fingerprint(MEASURED, args.digest))
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    defaults = Settings()
    print(
        f"poller: HEADEND_POLL_* defaults (timeout {defaults.poll_timeout_s} s, retries {defaults.poll_retries}, "
        f"connections {defaults.poll_connections}); database {ADMIN_URL.rsplit('@', 1)[-1]}",
        flush=True,
    )
    ctx = multiprocessing.get_context("spawn")
    results = [measure(ctx, protocol, args) for protocol in args.protocols]
    check_measured_code(MEASURED, args.digest)
    print(f"\nfinished in {time.monotonic() - started:.0f} s; load average now {os.getloadavg()[0]:.2f}\n")
    print(report(results))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
