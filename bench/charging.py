"""Charging benchmark: interval charges/s of the engine runner and the time of a daily settlement, against SQL floors.

Run `uv run python -m bench.charging [--quick] [--repeat N] [--accounts N] [--settle-accounts N]`. It prints, in
one run:

(1) the runner: N accounts (default 20,000), each with one meter and a local day of 15-minute readings
    (96 charges an account), charged by one `EngineRunner.sweep()` from start to finish, at `batch_accounts`
    2000 (the default of Settings), 500 and 5000; against the raw limit measured in the same run: binary COPY
    of the same postings into a logged copy of `ledger_postings` without indexes, constraints or triggers,
    plus the UPDATE of the same customer balance rows, committed per batch of the same size; and the time of
    `prepay_engine.usage.charge_usage` alone over the same readings (no database); and `--runners` runner
    processes (default 2) sweeping the same fleet at once, sharing it through SKIP LOCKED;
(2) the daily settlement: M accounts (default 1,000,000) that the runner has charged up to the last 1–4
    intervals of the day; `settle_day` timed end to end, against the SQL floor: one `UPDATE prepaid_accounts
    SET seen_until = …` of every row plus one binary COPY of as many postings.

Each fleet is generated set-based in SQL into a template database (the rows `open_account` and a top-up would
write, checked against accounts opened through `open_account` in a scratch database first); each measurement
runs on a fresh copy of the template (`CREATE DATABASE … TEMPLATE … STRATEGY FILE_COPY`), the sweeps, the
settlements and `charge_usage` alone each in a spawned process of its own. Every run is checked against what
the workload must produce (charges, fen, postings, incomplete accounts, arrears); a mismatch aborts the
benchmark, and so does a change of the engine code during the run. Databases are `bench_<random>` on the
PostgreSQL at 127.0.0.1:5432, dropped on exit.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import cProfile
import gc
import multiprocessing
import os
import pstats
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import psycopg
from psycopg.rows import dict_row
from sqlalchemy.engine import make_url

from bench._common import (
    ADMIN_URL,
    BenchError,
    check_measured_code,
    code_digest,
    code_fingerprint,
    database_url,
    die_with_parent,
    drop_database,
    fmt_int,
    format_table,
    machine_ticks,
    median,
    ratio,
    run_bench,
    scalar,
    throwaway_database,
    unique_token,
)
from headend.db.engine import connect_utc, libpq_dsn
from headend.db.partitions import ensure_partitions
from headend.engine.accounts import OPERATOR_ACTOR, open_account
from headend.engine.catalog import Catalog, put_policy, put_tariff
from headend.engine.charging import BatchStats
from headend.engine.runner import EngineRunner, tune_gc_for_batches
from headend.engine.settlement import Settlement, day_end_utc, settle_day, settle_workers, tally_problems
from headend.money import ledger_store
from headend.settings import Settings
from prepay_engine.account import usage_postings
from prepay_engine.ledger import (
    REVENUE_ACCOUNT_ID,
    Posting,
    cash_in_transit_account_id,
    customer_accounts,
    house_accounts,
)
from prepay_engine.policy import FriendlyCreditWindows, PolicyConfig
from prepay_engine.tariffs import SHANGHAI, example_jiangsu_residential
from prepay_engine.usage import (
    DEFAULT_REGISTER_MAX_WH,
    DEFAULT_REGISTER_STEP_WH,
    MeterRegister,
    RegisterReading,
    UsageState,
    charge_usage,
    open_usage,
)

Connection = psycopg.Connection[Any]

ZONE: Final = SHANGHAI
DAY: Final = date(2026, 11, 20)  # a working Friday in Asia/Shanghai
DAY_START: Final = datetime(DAY.year, DAY.month, DAY.day, tzinfo=ZONE).astimezone(UTC)
DAY_END: Final = day_end_utc(DAY, ZONE)
INTERVAL: Final = timedelta(minutes=15)
TARIFF: Final = example_jiangsu_residential()
# the integration tests' strict policy: warnings at 30 and 10 yuan, disconnect at zero, no friendly windows
POLICY: Final = PolicyConfig(
    name="strict",
    warning_thresholds_fen=(3000, 1000),
    disconnect_threshold_fen=0,
    notice_period=timedelta(0),
    friendly=FriendlyCreditWindows(None, None, weekends=False, public_holidays=False, eve_of_public_holidays=False),
)
CHANNEL: Final = "bench"
TOP_UP_ACCOUNT: Final = cash_in_transit_account_id(CHANNEL)
REGISTER_MODULUS: Final = DEFAULT_REGISTER_MAX_WH + DEFAULT_REGISTER_STEP_WH  # where the register wraps to 0
READINGS_PER_DAY: Final = 96
DEFAULT_BATCH: Final = Settings().engine_batch_accounts
LATENESS_S: Final = float(Settings().engine_lateness_s)
# the runner's clock: every reading of the day (the last one up to 14 min after midnight) is older than the lateness
RUNNER_NOW: Final = DAY_END + timedelta(minutes=30)
SETTLE_NOW: Final = DAY_END + timedelta(minutes=30)
TEMPLATE_ID: Final = "TEMPLATE"


# ================================================================ workloads


@dataclass(frozen=True, slots=True)
class Workload:
    """A fleet of `accounts` accounts, one meter each, described by SQL expressions of the account number `i`.

    Account `i` opens at a reading at `anchor`; its meter then reads `readings` times, the first at `first`, then
    every 15 minutes, the register rising as `_INC_SQL` says; readings number `omit_from`..`omit_to` are not
    stored (a gap: the next reading carries the energy). `credit` fen are topped up before the anchor (0: none);
    `expected` is the number of interval charges the readings must produce.
    """

    name: str
    accounts: int
    anchor: str
    first: str
    readings: str
    omit_from: str
    omit_to: str
    credit: str
    expected: str
    incomplete: str  # accounts whose day stays incomplete (an interval of the day without a reading after it)


# the reading phase: meters read 0–14 minutes after the quarter hour
_PHASE = "make_interval(mins => (i * 7 % 15)::int)"


def runner_workload(accounts: int) -> Workload:
    """Opened at local midnight; 96 readings over the day; 1 in 50 with an hour's gap; 1 in 20 short of money."""
    return Workload(
        name="runner",
        accounts=accounts,
        anchor=f"timestamptz '{DAY_START.isoformat()}'",
        first=f"timestamptz '{DAY_START.isoformat()}' + {_PHASE} + interval '15 minutes'",
        readings=str(READINGS_PER_DAY),
        omit_from="CASE WHEN i % 50 = 7 THEN 30 END",
        omit_to="CASE WHEN i % 50 = 7 THEN 33 END",
        # most stay well in credit; 4 in 100 cross both warnings, 1 in 100 runs out (notice and disconnect)
        credit="CASE WHEN i % 100 < 4 THEN 1500 WHEN i % 100 = 4 THEN 300 ELSE 100000 END",
        expected=str(READINGS_PER_DAY),
        incomplete="false",
    )


def settlement_workload(accounts: int) -> Workload:
    """Charged up to the last 1–4 intervals of the day; 1 in 100 misses its last reading; 1 in 50 has no credit."""
    n = "(1 + i % 4)"
    return Workload(
        name="settlement",
        accounts=accounts,
        anchor=f"timestamptz '{DAY_END.isoformat()}' - {n} * interval '15 minutes' + {_PHASE}",
        first=f"timestamptz '{DAY_END.isoformat()}' - {n} * interval '15 minutes' + {_PHASE} + interval '15 minutes'",
        readings=n,
        omit_from=f"CASE WHEN i % 100 = 99 THEN {n} END",
        omit_to=f"CASE WHEN i % 100 = 99 THEN {n} END",
        credit="CASE WHEN i % 50 = 1 THEN 0 ELSE 100000 END",
        expected=f"{n} - CASE WHEN i % 100 = 99 THEN 1 ELSE 0 END",
        incomplete="i % 100 = 99",
    )


# Wh per 15 minutes, in 10 Wh register steps: 20–570 Wh, more in the local evening; 1 in 97 meters uses nothing
_INC_SQL: Final = (
    "CASE WHEN p.i % 97 = 0 THEN 0 ELSE 10 * ((2 + p.i * 37 % 20) * "
    f"(4 + (k * 7 + p.i) % 5 + CASE WHEN k % {READINGS_PER_DAY} BETWEEN 72 AND 87 THEN 4 ELSE 0 END) / 4) END"
)
# 1 in 1000 registers starts just below the wrap; 1 in 10 accounts crosses into tier 2, 1 in 10 into tier 3,
# 1 in 10 is in tier 3 already
_OPENING_SQL: Final = f"CASE WHEN i % 1000 = 500 THEN {REGISTER_MODULUS - 1000} ELSE 1000000 + (i % 1000) * 10000 END"
_CYCLE_SQL: Final = (
    "CASE i % 10 WHEN 0 THEN 2755000 WHEN 1 THEN 4795000 WHEN 2 THEN 5000000 ELSE i * 1009 % 2000000 END"
)
_PLAN_DDL: Final = """
    CREATE TABLE bench_plan (
        i bigint PRIMARY KEY, account_id text NOT NULL, meter_id text NOT NULL, anchor_ts timestamptz NOT NULL,
        first_ts timestamptz NOT NULL, readings int NOT NULL, omit_from int, omit_to int, opening_wh bigint NOT NULL,
        cycle_wh bigint NOT NULL, credit_fen bigint NOT NULL, expected_charges int NOT NULL, incomplete bool NOT NULL
    )
"""


def account_name(i: int) -> str:
    """Id of bench account number `i` (zero-padded: text order is number order)."""
    return f"ba{i:07d}"


def meter_name(i: int) -> str:
    """Id of bench meter number `i`."""
    return f"bm{i:07d}"


def _plan_sql(w: Workload) -> str:
    return f"""
        INSERT INTO bench_plan
        SELECT i, 'ba' || lpad(i::text, 7, '0'), 'bm' || lpad(i::text, 7, '0'), {w.anchor}, {w.first}, {w.readings},
            {w.omit_from}, {w.omit_to}, {_OPENING_SQL}, {_CYCLE_SQL}, {w.credit}, {w.expected}, {w.incomplete}
        FROM generate_series(0, {w.accounts - 1}) AS i
    """


def _customer_ledger_rows() -> list[tuple[str, str, int | None]]:
    """(id suffix, kind, floor) of each ledger account `customer_accounts` opens for a customer under the policy."""
    prefix = f"customer:{TEMPLATE_ID}"
    rows = []
    for account in customer_accounts(TEMPLATE_ID, credit_limit_fen=-POLICY.disconnect_threshold_fen):
        assert account.account_id.startswith(prefix), account
        rows.append((account.account_id.removeprefix(prefix), str(account.kind), account.floor_fen))
    return rows


def _fleet_sql() -> list[str]:
    """The statements that turn `bench_plan` rows into accounts, ledger rows, top-ups, readings and register state."""
    ledger_values = ", ".join(
        f"('{suffix}', '{kind}', {'NULL' if floor is None else floor})"
        for suffix, kind, floor in _customer_ledger_rows()
    )
    return [
        "INSERT INTO meters (meter_id, protocol, region) SELECT meter_id, 'mqtt', 'bench' FROM bench_plan",
        # the customer prepaid account is credit-normal: a top-up credits it, so credits = balance = the credit
        f"""
        INSERT INTO ledger_accounts (account_id, kind, floor_fen, credits_fen, balance_fen)
        SELECT 'customer:' || p.account_id || c.suffix, c.kind, c.floor,
            CASE WHEN c.kind = 'customer_prepaid' THEN p.credit_fen ELSE 0 END,
            CASE WHEN c.kind = 'customer_prepaid' THEN p.credit_fen ELSE 0 END
        FROM bench_plan p CROSS JOIN (VALUES {ledger_values}) AS c(suffix, kind, floor)
        ORDER BY 1
        """,
        # one top-up posting per account with credit, the cash account's running balance on each
        f"""
        INSERT INTO ledger_postings (posting_id, debit_account_id, credit_account_id, amount_fen, kind, at, reference,
            overdraw, debit_balance_after_fen, credit_balance_after_fen, batch_id, seq)
        SELECT 'top_up:{CHANNEL}:' || account_id, '{TOP_UP_ACCOUNT}', 'customer:' || account_id || ':prepaid',
            credit_fen, 'top_up', anchor_ts - interval '1 hour', '', false,
            sum(credit_fen) OVER (ORDER BY i), credit_fen, n, n
        FROM (SELECT p.*, row_number() OVER (ORDER BY i) AS n FROM bench_plan p WHERE credit_fen > 0) AS t
        """,
        "SELECT setval(pg_get_serial_sequence('ledger_postings', 'seq'), "
        "greatest(1, (SELECT max(seq) FROM ledger_postings)))",
        f"""
        UPDATE ledger_accounts SET debits_fen = t.total, balance_fen = t.total, version = version + 1
        FROM (SELECT coalesce(sum(credit_fen), 0) AS total FROM bench_plan) AS t
        WHERE account_id = '{TOP_UP_ACCOUNT}'
        """,
        # the state of `open_usage` at the opening reading: nothing consumed, charged up to the anchor's interval
        f"""
        INSERT INTO prepaid_accounts (account_id, tariff_code, policy_code, zone, usage_meter_id, anchor_ts,
            anchor_register_wh, charged_until, open_interval_meter_id, cycle_usage_wh, meter_id, seen_until, opened_at)
        SELECT account_id, '{TARIFF.code}', '{POLICY.name}', '{ZONE.key}', meter_id, anchor_ts, opening_wh,
            date_bin(interval '15 minutes', anchor_ts, timestamptz '1970-01-01 00:00+00'), meter_id, cycle_wh,
            meter_id, anchor_ts, anchor_ts
        FROM bench_plan ORDER BY account_id
        """,
        f"""
        INSERT INTO account_meters (account_id, meter_id, installed_at, start_register_wh, multiplier,
            register_max_wh, register_step_wh, recorded_by)
        SELECT p.account_id, p.meter_id, p.anchor_ts, p.opening_wh, m.multiplier, m.register_max_wh,
            {DEFAULT_REGISTER_STEP_WH}, '{OPERATOR_ACTOR}'
        FROM bench_plan p JOIN meters m USING (meter_id) ORDER BY p.account_id
        """,
        # stored in time order, as ingest writes them (a meter's readings are on different pages)
        f"""
        INSERT INTO readings (meter_id, ts, energy_import_wh, source, received_at)
        SELECT meter_id, ts, (opening_wh + cum) % {REGISTER_MODULUS}, 'bench', ts + interval '1 minute'
        FROM (
            SELECT p.meter_id, p.opening_wh, k, p.omit_from, p.omit_to,
                CASE WHEN k = 0 THEN p.anchor_ts ELSE p.first_ts + (k - 1) * interval '15 minutes' END AS ts,
                sum(CASE WHEN k = 0 THEN 0 ELSE {_INC_SQL} END) OVER (PARTITION BY p.i ORDER BY k) AS cum
            FROM bench_plan p CROSS JOIN LATERAL generate_series(0, p.readings) AS k
        ) AS r
        WHERE k NOT BETWEEN coalesce(omit_from, -1) AND coalesce(omit_to, -1)
        ORDER BY ts, meter_id
        """,
        """
        INSERT INTO meter_register_state (meter_id, last_ts, last_energy_import_wh)
        SELECT DISTINCT ON (meter_id) meter_id, ts, energy_import_wh FROM readings ORDER BY meter_id, ts DESC
        ON CONFLICT (meter_id) DO UPDATE SET last_ts = excluded.last_ts,
            last_energy_import_wh = excluded.last_energy_import_wh
        """,
    ]


def seed_catalog(conn: Connection) -> None:
    """The example tariff, the strict policy and the house accounts with the bench top-up channel."""
    put_tariff(conn, TARIFF, stored_by="bench", now=DAY_START)
    put_policy(conn, POLICY, stored_by="bench")
    problem = ledger_store.open_accounts(conn, house_accounts((CHANNEL,)))
    if problem is not None:
        raise BenchError(f"house accounts: {problem}")


def generate_fleet(conn: Connection, w: Workload, *, analyze: bool = True) -> float:
    """Generate the workload's fleet in a migrated database with the catalog seeded (no postings yet); seconds taken."""
    started = time.perf_counter()
    with conn.transaction():
        conn.execute(_PLAN_DDL)
        conn.execute(_plan_sql(w))
        last = conn.execute(
            "SELECT min(anchor_ts), max(first_ts + (readings - 1) * interval '15 minutes') FROM bench_plan"
        )
        low, high = last.fetchone() or (DAY_START, DAY_END)
    days = {low.astimezone(UTC).date() + timedelta(days=d) for d in range((high - low).days + 2)}
    ensure_partitions(conn, days)
    with conn.transaction():
        for sql in _fleet_sql():
            conn.execute(sql)
    if analyze:
        # a steady state: hint bits set and visibility map current, statistics known
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class Expected:
    """What charging the whole fleet must produce."""

    accounts: int
    charges: int
    incomplete: int
    no_credit: frozenset[str]


def expected_of(conn: Connection) -> Expected:
    """The expected totals from `bench_plan`."""
    row = conn.execute(
        "SELECT count(*), sum(expected_charges), count(*) FILTER (WHERE incomplete) FROM bench_plan"
    ).fetchone()
    assert row is not None
    no_credit = frozenset(str(r[0]) for r in conn.execute("SELECT account_id FROM bench_plan WHERE credit_fen = 0"))
    return Expected(int(row[0]), int(row[1]), int(row[2]), no_credit)


# ================================================================ databases


@contextlib.contextmanager
def template_database(w: Workload) -> Iterator[tuple[str, float]]:
    """A migrated database with the workload's fleet, closed to connections (a template); dropped on exit."""
    with throwaway_database() as url:
        with psycopg.connect(libpq_dsn(url), autocommit=True) as conn:
            seed_catalog(conn)
            seconds = generate_fleet(conn, w)
        name = make_url(url).database
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            # autovacuum then leaves it alone, so that copying it is never refused for another session
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        yield url, seconds


@contextlib.contextmanager
def template_open(url: str) -> Iterator[Connection]:
    """A connection to a template database (connections re-allowed for its duration)."""
    name = make_url(url).database
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    try:
        with connect(url) as conn:
            yield conn
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')


@contextlib.contextmanager
def cloned_database(template_url: str) -> Iterator[str]:
    """A file copy of the template database, dropped on exit."""
    template = make_url(template_url).database
    name = f"bench_{unique_token()}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
            break
        except psycopg.errors.ObjectInUse:
            # a session (an autovacuum worker that started before connections were closed) is still in it
            if time.monotonic() > deadline:
                raise BenchError(f"template {template} stayed in use for 120 s") from None
            time.sleep(1)
    try:
        yield database_url(name)
    finally:
        drop_database(name)


def connect(url: str) -> Connection:
    """An autocommit connection to a bench database, as the engine's commands open theirs."""
    return connect_utc(url)


# ================================================================ CPU accounting


_TICK_S: Final = 1 / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * _TICK_S


@dataclass(frozen=True, slots=True)
class Measured:
    """Wall time of a measured step, the CPU of its process and of its database backend, the machine's load."""

    wall_s: float
    python_s: float
    backend_s: float
    machine_busy: float

    def split(self) -> str:
        """Where the wall time went, in % of it."""
        w = self.wall_s or 1.0
        return (
            f"Python {self.python_s / w:.0%}, PostgreSQL backend {self.backend_s / w:.0%} of the wall time; "
            f"machine {self.machine_busy:.0%} busy"
        )


@dataclass(slots=True)
class Timed:
    """Measures the body of a `with`: wall time, this process's CPU, the CPU of `conn`'s backend, machine load."""

    conn: Connection
    _start: tuple[float, float, float, int, int] = (0.0, 0.0, 0.0, 0, 0)
    _result: Measured | None = None

    def __enter__(self) -> Timed:
        busy, total = machine_ticks()
        pid = self.conn.info.backend_pid
        self._start = (time.perf_counter(), time.process_time(), process_cpu_s(pid), busy, total)
        return self

    def __exit__(self, *exc: object) -> None:
        wall, cpu, backend, busy, total = self._start
        end_busy, end_total = machine_ticks()
        self._result = Measured(
            wall_s=time.perf_counter() - wall,
            python_s=time.process_time() - cpu,
            backend_s=process_cpu_s(self.conn.info.backend_pid) - backend,
            machine_busy=(end_busy - busy) / (end_total - total) if end_total > total else 0.0,
        )

    @property
    def measured(self) -> Measured:
        """The figures of the finished body."""
        assert self._result is not None, "read after the with block"
        return self._result


T = TypeVar("T")


def in_own_process(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a fresh spawned process: the measured code shares no heap or GC with the benchmark's data."""
    with _spawned_processes(1) as pool:
        result: T = pool.submit(fn, *args).result()
    return result


def _spawned_processes(count: int) -> concurrent.futures.ProcessPoolExecutor:
    """`count` fresh spawned worker processes, gone with the benchmark (a worker that dies fails the run loudly)."""
    return concurrent.futures.ProcessPoolExecutor(
        count, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent
    )


@contextlib.contextmanager
def profiled(path: Path | None) -> Iterator[None]:
    """Run the body under cProfile and dump the statistics to `path` (nothing when None)."""
    if path is None:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(path)


def print_profile(path: Path) -> None:
    """The top of a dumped profile, by cumulative and by own time."""
    stats = pstats.Stats(str(path))
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(30)


# ================================================================ (0) the generated rows are those open_account writes


def check_generated_rows() -> None:
    """In a scratch database: generated accounts equal accounts opened through `open_account`, invariants hold."""
    witnesses = (0, 1, 7, 500)  # in credit and tier 1, tier 2 crossing, a gap, a register near its wrap
    w = runner_workload(max(witnesses) + 1)
    with throwaway_database() as url, connect(url) as conn:
        seed_catalog(conn)
        generate_fleet(conn, w, analyze=False)
        catalog = Catalog()
        plan = {int(r["i"]): r for r in conn.cursor(row_factory=dict_row).execute("SELECT * FROM bench_plan")}
        conn.execute(
            "INSERT INTO meters (meter_id, protocol, region) "
            "SELECT 'wm' || i, 'mqtt', 'bench' FROM unnest(%s::int[]) AS i",
            (list(witnesses),),
        )
        for i in witnesses:
            open_account(
                conn,
                catalog,
                f"w{i}",
                meter_id=f"wm{i}",
                tariff_code=TARIFF.code,
                policy_code=POLICY.name,
                opened_at=plan[i]["anchor_ts"],
                opening_register_wh=int(plan[i]["opening_wh"]),
                cycle_usage_wh=int(plan[i]["cycle_wh"]),
                zone=ZONE,
            )
            for table, ignored in (
                (
                    "prepaid_accounts",
                    ("account_id", "meter_id", "usage_meter_id", "open_interval_meter_id", "updated_at"),
                ),
                ("account_meters", ("account_id", "meter_id", "recorded_at")),
            ):
                generated = _row_json(conn, table, account_name(i), ignored)
                opened = _row_json(conn, table, f"w{i}", ignored)
                if generated != opened:
                    raise BenchError(
                        f"generated {table} row of {account_name(i)} differs from open_account's: "
                        f"{_diff(generated, opened)}"
                    )
            generated_ledger = _ledger_json(conn, account_name(i))
            opened_ledger = _ledger_json(conn, f"w{i}")
            if generated_ledger != opened_ledger:
                raise BenchError(
                    f"generated ledger accounts differ from open_account's: {generated_ledger} != {opened_ledger}"
                )
        problems = ledger_store.check_invariants(conn)
        if problems:
            raise BenchError(f"generated ledger violates its invariants: {problems[:3]}")


def _row_json(conn: Connection, table: str, account_id: str, ignored: Sequence[str]) -> dict[str, Any]:
    row = conn.execute(
        f"SELECT to_jsonb(t) - %s::text[] FROM {table} t WHERE account_id = %s", (list(ignored), account_id)
    ).fetchone()
    if row is None:
        raise BenchError(f"no {table} row for {account_id}")
    return dict(row[0])


def _ledger_json(conn: Connection, account_id: str) -> list[dict[str, Any]]:
    # the balances differ by the top-up; kind, floor and the derived columns must not
    rows = conn.execute(
        "SELECT replace(account_id, %s, '') AS suffix, kind, normal_side, floor_fen, credit_limit_fen FROM "
        "ledger_accounts WHERE customer_id = %s ORDER BY account_id",
        (f"customer:{account_id}", account_id),
    ).fetchall()
    return [{"suffix": r[0], "kind": r[1], "normal_side": r[2], "floor": r[3], "credit_limit": r[4]} for r in rows]


def _diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = sorted(set(a) | set(b))
    return "; ".join(f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in keys if a.get(k) != b.get(k))


# ================================================================ (1) the runner


@dataclass(frozen=True, slots=True)
class PureInput:
    """One account's usage state at its opening and the readings the runner will feed it."""

    account_id: str
    state: UsageState
    readings: list[RegisterReading]


def load_pure_inputs(conn: Connection) -> list[PureInput]:
    """The accounts' opening states and readings, from the template database, in account order."""
    readings: dict[str, list[RegisterReading]] = defaultdict(list)
    for meter_id, ts, wh in conn.execute(
        "SELECT r.meter_id, r.ts, r.energy_import_wh FROM readings r JOIN bench_plan p USING (meter_id) "
        "WHERE r.ts > p.anchor_ts ORDER BY r.meter_id, r.ts"
    ):
        readings[meter_id].append(RegisterReading(meter_id, ts, wh))
    inputs = []
    for account_id, meter_id, anchor, opening, cycle in conn.execute(
        "SELECT account_id, meter_id, anchor_ts, opening_wh, cycle_wh FROM bench_plan ORDER BY account_id"
    ):
        state = open_usage(MeterRegister(meter_id), anchor, opening, cycle_usage_wh=cycle)
        inputs.append(PureInput(account_id, state, readings[meter_id]))
    return inputs


@dataclass(slots=True)
class PureRun:
    """`charge_usage` alone over every account: seconds, charges, and the postings the runner must write."""

    seconds: float = 0.0
    charges: int = 0
    charged_fen: int = 0
    postings: dict[str, tuple[Posting, ...]] = field(default_factory=dict)

    @property
    def posting_count(self) -> int:
        """Postings of at least 1 fen."""
        return sum(len(p) for p in self.postings.values())


def pure_charging(inputs: Sequence[PureInput], complete_until: datetime, keep_postings: bool) -> PureRun:
    """Time `charge_usage` over every account, in chunks (the results of a chunk are discarded after counting)."""
    run = PureRun()
    chunk = 1000
    for start in range(0, len(inputs), chunk):
        part = inputs[start : start + chunk]
        t0 = time.perf_counter()
        results = [charge_usage(p.state, p.readings, TARIFF, complete_until=complete_until) for p in part]
        run.seconds += time.perf_counter() - t0
        for p, result in zip(part, results, strict=True):
            run.charges += len(result.charges)
            run.charged_fen += sum(c.amount_fen for c in result.charges)
            if keep_postings:
                run.postings[p.account_id] = usage_postings(p.account_id, result.charges)
    return run


def _pure_alone(template_url: str, digest: str) -> tuple[int, int, float]:
    """In a process of its own, as a runner would be: (charges, fen, seconds) of `charge_usage` over the fleet."""
    check_code(digest)
    with template_open(template_url) as conn:
        inputs = load_pure_inputs(conn)
    # a runner holds one batch of readings, this loop all of them: out of the collector's sight, they cost what a
    # batch would
    gc.freeze()
    run = pure_charging(inputs, RUNNER_NOW - timedelta(seconds=LATENESS_S), keep_postings=False)
    return run.charges, run.charged_fen, run.seconds


_RAW_POSTINGS_DDL: Final = "CREATE TABLE raw_postings (LIKE ledger_postings INCLUDING DEFAULTS)"
_RAW_COLUMNS: Final = ledger_store.POSTING_ROW_COLUMNS
_RAW_TYPES: Final = [
    "text", "text", "text", "int8", "text", "timestamptz", "text", "text", "bool", "int8", "int8", "int8", "int8"
]  # fmt: skip
_RAW_BALANCES: Final = """
    UPDATE ledger_accounts AS a
    SET debits_fen = a.debits_fen + v.amount, balance_fen = a.balance_fen - v.amount, version = a.version + 1
    FROM unnest(%s::text[], %s::bigint[]) AS v(account_id, amount)
    WHERE a.account_id = v.account_id
"""
_RAW_REVENUE: Final = (
    "UPDATE ledger_accounts SET credits_fen = credits_fen + %s, balance_fen = balance_fen + %s, version = version + 1 "
    "WHERE account_id = %s"
)


def raw_charging_limit(
    template_url: str, postings: dict[str, tuple[Posting, ...]], batch_accounts: int, *, table: str = "raw_postings"
) -> float:
    """Postings/s of the SQL floor: per batch of accounts, COPY their postings + UPDATE their balances, commit.

    `table` "raw_postings" is a bare copy of `ledger_postings` (the floor); "ledger_postings" is the table itself,
    with its indexes, checks and foreign keys (the floor of this schema).
    """
    accounts = sorted(postings)
    total = sum(len(p) for p in postings.values())
    with cloned_database(template_url) as url, connect(url) as conn:
        conn.execute(_RAW_POSTINGS_DDL)
        before = scalar(conn, f"SELECT count(*) FROM {table}")
        seq = scalar(conn, "SELECT max(seq) FROM ledger_postings")
        running: dict[str, int] = defaultdict(int)
        revenue = 0
        started = time.perf_counter()
        for start in range(0, len(accounts), batch_accounts):
            batch = accounts[start : start + batch_accounts]
            first_seq = seq + 1
            amounts: dict[str, int] = {}
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(f"COPY {table} ({_RAW_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(_RAW_TYPES)
                    for account_id in batch:
                        for p in postings[account_id]:
                            seq += 1
                            running[p.debit_account_id] -= p.amount_fen
                            revenue += p.amount_fen
                            amounts[p.debit_account_id] = amounts.get(p.debit_account_id, 0) + p.amount_fen
                            copy.write_row(
                                ledger_store.posting_row(p, running[p.debit_account_id], revenue, first_seq, seq)
                            )
                if amounts:
                    cur.execute(_RAW_BALANCES, (list(amounts), list(amounts.values())))
                    if cur.rowcount != len(amounts):
                        raise BenchError("raw limit: balance rows missing")
                    batch_total = sum(amounts.values())
                    cur.execute(_RAW_REVENUE, (batch_total, batch_total, REVENUE_ACCOUNT_ID))
        elapsed = time.perf_counter() - started
        if scalar(conn, f"SELECT count(*) FROM {table}") != before + total:
            raise BenchError(f"raw limit into {table}: posting count mismatch")
    return total / elapsed


@dataclass(frozen=True, slots=True)
class RunnerRun:
    """One timed sweep."""

    stats: BatchStats
    timed: Measured


def runner_run(
    template_url: str,
    batch_accounts: int,
    expected: Expected,
    pure: PureRun,
    *,
    invariants: bool,
    digest: str,
    profile: Path | None = None,
) -> RunnerRun:
    """Time one `EngineRunner.sweep()` over the whole fleet on a fresh copy, in a process of its own; check it."""
    with cloned_database(template_url) as url:
        stats, timed = in_own_process(_sweep, url, batch_accounts, digest, profile)
        with connect(url) as conn:
            check_charged(conn, stats, expected, expected.charges, "runner")
            if stats.charged_fen != pure.charged_fen:
                raise BenchError(
                    f"runner: {stats.charged_fen} fen charged, but charge_usage alone gives {pure.charged_fen}"
                )
            uncharged = scalar(conn, "SELECT count(*) FROM prepaid_accounts WHERE charged_until < %s", (DAY_END,))
            if uncharged:
                raise BenchError(f"runner: {uncharged} accounts not charged up to the end of the day")
            if invariants:
                check_ledger(conn, "runner")
    return RunnerRun(stats, timed)


def _sweep(url: str, batch_accounts: int, digest: str, profile: Path | None) -> tuple[BatchStats, Measured]:
    check_code(digest)
    tune_gc_for_batches()  # as `headend engine` does
    with connect(url) as conn:
        runner = EngineRunner(conn, LATENESS_S, batch_accounts, clock=lambda: RUNNER_NOW)
        with Timed(conn) as timed, profiled(profile):
            stats = runner.sweep()
    return stats, timed.measured


def _sweep_from(url: str, batch_accounts: int, digest: str, start_at: float) -> tuple[BatchStats, float, float]:
    """One runner's sweep, started at the wall-clock instant `start_at` (so that runners overlap); its span."""
    check_code(digest)
    tune_gc_for_batches()  # as `headend engine` does
    with connect(url) as conn:
        runner = EngineRunner(conn, LATENESS_S, batch_accounts, clock=lambda: RUNNER_NOW)
        time.sleep(max(0.0, start_at - time.time()))
        began = time.time()
        stats = runner.sweep()
        return stats, began, time.time()


def parallel_runner_run(
    template_url: str, batch_accounts: int, runners: int, expected: Expected, pure: PureRun, *, digest: str
) -> tuple[BatchStats, float]:
    """`runners` runner processes sweeping one fresh copy at once (sharing it through SKIP LOCKED); their wall time."""
    with cloned_database(template_url) as url:
        start_at = time.time() + 5.0  # after every spawned process has imported and connected
        with _spawned_processes(runners) as pool:
            futures = [pool.submit(_sweep_from, url, batch_accounts, digest, start_at) for _ in range(runners)]
            results = [f.result() for f in futures]
        stats = BatchStats()
        for one, _, _ in results:
            stats += one
        wall_s = max(end for _, _, end in results) - min(began for _, began, _ in results)
        with connect(url) as conn:
            check_charged(conn, stats, expected, expected.charges, f"{runners} runners")
            if stats.charged_fen != pure.charged_fen:
                raise BenchError(f"{runners} runners: {stats.charged_fen} fen, charge_usage alone {pure.charged_fen}")
    return stats, wall_s


def check_charged(conn: Connection, stats: BatchStats, expected: Expected, charges: int, what: str) -> None:
    """The run charged every expected interval once and wrote exactly the postings its stats count."""
    posted = conn.execute("SELECT count(*), coalesce(sum(amount_fen), 0) FROM ledger_postings WHERE kind = 'usage'")
    row = posted.fetchone()
    assert row is not None
    if stats.accounts != expected.accounts:
        raise BenchError(f"{what}: looked at {stats.accounts} accounts, expected {expected.accounts}")
    if stats.charges != charges:
        raise BenchError(f"{what}: {stats.charges} interval charges, expected {charges}")
    if not 0 < stats.postings <= stats.charges:
        raise BenchError(f"{what}: {stats.postings} postings for {stats.charges} charges")
    if (int(row[0]), int(row[1])) != (stats.postings, stats.charged_fen):
        raise BenchError(
            f"{what}: the ledger holds {row[0]} usage postings / {row[1]} fen, the stats say "
            f"{stats.postings} / {stats.charged_fen}"
        )
    if stats.anomalies:
        raise BenchError(f"{what}: {stats.anomalies} usage anomalies in a clean workload")
    if scalar(conn, "SELECT count(*) FROM pg_tables WHERE tablename = 'usage_charges'"):
        # an engine that records every interval charge in a table of its own (and posts sums to the ledger)
        stored = conn.execute("SELECT count(*), coalesce(sum(amount_fen), 0) FROM usage_charges").fetchone()
        if stored is None or (int(stored[0]), int(stored[1])) != (stats.charges, stats.charged_fen):
            raise BenchError(
                f"{what}: usage_charges holds {stored}, the stats say {stats.charges} / {stats.charged_fen}"
            )
    if scalar(conn, "SELECT count(*) FROM pg_tables WHERE tablename = 'usage_tallies'"):
        problems = tally_problems(conn)
        if problems:
            raise BenchError(f"{what}: the usage tallies disagree with the charges: {'; '.join(problems[:3])}")


def check_ledger(conn: Connection, what: str) -> None:
    """`ledger_store.check_invariants` finds nothing."""
    problems = ledger_store.check_invariants(conn)
    if problems:
        raise BenchError(f"{what}: ledger invariants violated: {'; '.join(problems[:5])}")


# ================================================================ (2) the settlement


@dataclass(frozen=True, slots=True)
class SettleRun:
    """One timed settlement."""

    settlement: Settlement
    timed: Measured
    again_s: float  # the same day settled again later: nothing left to charge, as when the runner is up to date


def settle_run(
    template_url: str,
    batch_accounts: int,
    expected: Expected,
    *,
    invariants: bool,
    digest: str,
    workers: int,
    profile: Path | None = None,
) -> SettleRun:
    """Time `settle_day` over the whole fleet on a fresh copy, in a process of its own; check its figures."""
    with cloned_database(template_url) as url:
        settled, timed, again_s = in_own_process(_settle, url, batch_accounts, workers, digest, profile)
        with connect(url) as conn:
            check_charged(conn, settled.run, expected, expected.charges, "settlement")
            if settled.accounts != expected.accounts:
                raise BenchError(f"settlement: {settled.accounts} accounts, expected {expected.accounts}")
            if settled.incomplete_accounts != expected.incomplete:
                raise BenchError(
                    f"settlement: {settled.incomplete_accounts} incomplete, expected {expected.incomplete}"
                )
            owing = {
                str(r[0])
                for r in conn.execute(
                    "SELECT a.account_id FROM prepaid_accounts a JOIN ledger_accounts l "
                    "ON l.account_id = 'customer:' || a.account_id || ':prepaid' WHERE l.balance_fen < 0"
                )
            }
            in_arrears = {a.account_id for a in settled.arrears}
            if in_arrears != owing or not in_arrears <= expected.no_credit or not in_arrears:
                raise BenchError(
                    f"settlement: {len(in_arrears)} accounts in arrears, {len(owing)} with a negative balance, "
                    f"{len(in_arrears - expected.no_credit)} of them with credit"
                )
            if invariants:
                check_ledger(conn, "settlement")
    return SettleRun(settled, timed, again_s)


def _settle(
    url: str, batch_accounts: int, workers: int, digest: str, profile: Path | None
) -> tuple[Settlement, Measured, float]:
    check_code(digest)
    tune_gc_for_batches()  # as `headend settle` does
    with connect(url) as conn:
        with Timed(conn) as timed, profiled(profile):
            settled = settle_day(
                conn,
                Catalog(),
                DAY,
                ZONE,
                now=SETTLE_NOW,
                lateness_s=LATENESS_S,
                batch_accounts=batch_accounts,
                workers=workers,
                url=url,
            )
        started = time.perf_counter()
        # later, with no new reading: no account has anything to charge; the day is reported again
        again = settle_day(
            conn,
            Catalog(),
            DAY,
            ZONE,
            now=SETTLE_NOW + timedelta(minutes=15),
            lateness_s=LATENESS_S,
            batch_accounts=batch_accounts,
            workers=workers,
            url=url,
        )
        again_s = time.perf_counter() - started
        if again.run.charges or (again.day, again.arrears) != (settled.day, settled.arrears):
            raise BenchError("settling the day again charged something or changed its figures")
    return settled, timed.measured, again_s


@dataclass(frozen=True, slots=True)
class SettleFloor:
    """The SQL floor of a settlement: one UPDATE of every account row, one COPY of as many postings."""

    update_s: float
    copy_s: float
    copy_charges_s: float  # a COPY of one posting-shaped row per interval charge instead
    copy_ledger_s: float  # the COPY of the postings into `ledger_postings` itself
    runner_batch_s: float  # one runner batch (claim and charge) on the same fleet, before the floor

    @property
    def seconds(self) -> float:
        """Both statements."""
        return self.update_s + self.copy_s


def settle_floor(template_url: str, postings: int, charges: int, batch_accounts: int) -> SettleFloor:
    """Time the floor on a fresh copy; first, one batch of the runner at this fleet size (does a batch scale?)."""
    cu = SETTLE_NOW - timedelta(seconds=LATENESS_S)
    with cloned_database(template_url) as url, connect(url) as conn:
        stop = threading.Event()

        def clock() -> datetime:
            stop.set()  # the sweep looks at it between batches: this batch is the only one
            return SETTLE_NOW

        t0 = time.perf_counter()
        stats = EngineRunner(conn, LATENESS_S, batch_accounts, clock=clock).sweep(stop)
        runner_batch_s = time.perf_counter() - t0
        if stats.accounts != min(batch_accounts, scalar(conn, "SELECT count(*) FROM prepaid_accounts")):
            raise BenchError(f"one runner batch took {stats.accounts} accounts")
        conn.execute(_RAW_POSTINGS_DDL)
        t0 = time.perf_counter()
        conn.execute("UPDATE prepaid_accounts SET seen_until = %s", (cu,))
        update_s = time.perf_counter() - t0
        copy_s = _copy_postings(conn, "raw_postings", postings)
        conn.execute("TRUNCATE raw_postings")
        copy_charges_s = _copy_postings(conn, "raw_postings", charges)
        copy_ledger_s = _copy_postings(conn, "ledger_postings", postings)
    return SettleFloor(update_s, copy_s, copy_charges_s, copy_ledger_s, runner_batch_s)


def _copy_postings(conn: Connection, table: str, postings: int) -> float:
    """Seconds to COPY `postings` usage postings of the settlement's shape (1–3 per account) into `table`, commit."""
    first_seq = scalar(conn, "SELECT coalesce(max(seq), 0) + 1 FROM ledger_postings")
    before = scalar(conn, f"SELECT count(*) FROM {table}")
    t0 = time.perf_counter()
    with (
        conn.transaction(),
        conn.cursor() as cur,
        cur.copy(f"COPY {table} ({_RAW_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(_RAW_TYPES)
        for n in range(postings):
            i = n // 3
            at = DAY_END - (n % 3) * INTERVAL
            copy.write_row(
                (
                    f"usage:{meter_name(i)}:{at - INTERVAL:%Y%m%dT%H%MZ}",
                    f"customer:{account_name(i)}:prepaid",
                    REVENUE_ACCOUNT_ID,
                    1 + n % 50,
                    "usage",
                    at,
                    f"{meter_name(i)} {n % 500} Wh",
                    None,
                    True,
                    100_000 - n % 50,
                    n,
                    first_seq + n,
                    first_seq + n,
                )
            )
    seconds = time.perf_counter() - t0
    if scalar(conn, f"SELECT count(*) FROM {table}") != before + postings:
        raise BenchError(f"settlement floor: posting count mismatch in {table}")
    return seconds


# ================================================================ results and report


@dataclass(slots=True)
class Results:
    """Per-run figures, by name."""

    runs: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        """Record one run's figure."""
        self.runs.setdefault(name, []).append(value)

    def med(self, name: str) -> float:
        """Median of the runs of a figure."""
        return median(self.runs[name]) if self.runs.get(name) else float("nan")

    def has(self, name: str) -> bool:
        """Whether a figure was measured."""
        return bool(self.runs.get(name))

    def listing(self, name: str, digits: int = 0) -> str:
        """The runs of a figure, in order."""
        return " · ".join(f"{v:,.{digits}f}" for v in self.runs.get(name, []))


def report(r: Results, batches: Sequence[int]) -> str:
    """The main table and the context table."""
    rows: list[list[str]] = []
    for b in batches:
        if not r.has(f"charges_{b}"):
            continue
        ours, limit = r.med(f"charges_{b}"), r.med(f"raw_{b}")
        rows.append(
            [
                f"(1) runner sweep, batch_accounts {b} [interval charges/s]",
                fmt_int(ours),
                f"raw {fmt_int(limit)}",
                f"{ratio(ours, limit):.3f}",
                "≥ 100,000",
                "yes" if ours >= 100_000 else "**no**",
                r.listing(f"charges_{b}"),
            ]
        )
        rows.append(
            [
                f"(1) runner sweep, batch_accounts {b} [ledger postings/s]",
                fmt_int(r.med(f"postings_{b}")),
                "—",
                "—",
                "—",
                "—",
                r.listing(f"postings_{b}"),
            ]
        )
    if r.has("pure"):
        rows.append(
            [
                "(1) `charge_usage` alone, no database [interval charges/s]",
                fmt_int(r.med("pure")),
                "—",
                "—",
                "—",
                "—",
                r.listing("pure"),
            ]
        )
    for b in batches:
        if r.has(f"raw_{b}"):
            rows.append(
                [
                    f"(1) raw limit: COPY a posting row per charge + UPDATE balances, {b}-account commits [rows/s]",
                    fmt_int(r.med(f"raw_{b}")),
                    "—",
                    "—",
                    "—",
                    "—",
                    r.listing(f"raw_{b}"),
                ]
            )
    if r.has("settle_s"):
        accounts = r.med("settle_accounts")
        seconds = r.med("settle_s")
        target_s = 60 * accounts / 1_000_000
        rows.append(
            [
                f"(2) settlement of {fmt_int(accounts)} accounts [s]",
                f"{seconds:,.1f}",
                f"floor {r.med('floor_s'):,.1f}",
                f"{ratio(seconds, r.med('floor_s')):.1f}× floor",
                "< 60 s for 1M" + ("" if accounts == 1_000_000 else f" (≙ {target_s:,.1f} s here)"),
                "yes" if seconds < target_s else "**no**",
                r.listing("settle_s", 1),
            ]
        )
        rows.append(
            [
                "(2) settlement [accounts/s]",
                fmt_int(accounts / seconds),
                f"floor {fmt_int(accounts / r.med('floor_s'))}",
                f"{ratio(accounts / seconds, accounts / r.med('floor_s')):.2f}",
                "≥ 16,667",
                "yes" if accounts / seconds >= 1_000_000 / 60 else "**no**",
                " · ".join(f"{accounts / s:,.0f}" for s in r.runs["settle_s"]),
            ]
        )
        if accounts != 1_000_000:
            rows.append(
                [
                    "(2) settlement of 1,000,000 accounts, **extrapolated** linearly [s]",
                    f"{seconds * 1_000_000 / accounts:,.0f}",
                    f"floor {r.med('floor_s') * 1_000_000 / accounts:,.0f}",
                    "—",
                    "< 60 s",
                    "yes" if seconds * 1_000_000 / accounts < 60 else "**no**",
                    "—",
                ]
            )
    main = format_table(["figure", "ours (median)", "limit (median)", "ratio", "target", "met?", "runs"], rows)
    context = [[label, value] for label, value in r.notes.items()]
    return main + ("\n\n" + format_table(["context", "value"], context) if context else "")


# ================================================================ main


# the code on the measured path: a change of any of it during a benchmark makes its runs incomparable
MEASURED: Final = (
    "headend/engine",
    "headend/money/ledger_store.py",
    "headend/db/engine.py",
    "headend/migrations",
    "prepay_engine",
)


def check_code(digest: str) -> None:
    """Refuse to measure code other than what the run started with (others edit the engine concurrently)."""
    check_measured_code(MEASURED, digest)


# what this process imported; spawned measurements check that they import the same
STARTUP_DIGEST: Final = code_digest(MEASURED)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.charging", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run, ledger invariants checked")
    parser.add_argument("--repeat", type=int, default=None, help="runs of each measurement (default 3, quick 1)")
    parser.add_argument("--accounts", type=int, default=None, help="(1) accounts (default 20,000, quick 2,000)")
    parser.add_argument(
        "--settle-accounts", type=int, default=None, help="(2) accounts (default 1,000,000, quick 20,000)"
    )
    parser.add_argument(
        "--settle-repeat", type=int, default=None, help="(2) runs (default: --repeat, but 1 above 200,000 accounts)"
    )
    parser.add_argument(
        "--batches",
        default=f"{DEFAULT_BATCH},500,5000",
        help=f"(1) batch_accounts values, comma-separated (default {DEFAULT_BATCH},500,5000; the first gets --repeat "
        "runs, the others one each)",
    )
    parser.add_argument(
        "--settle-workers",
        type=int,
        default=settle_workers(Settings().settle_workers),
        help="(2) settlement worker processes (default as `headend settle`: HEADEND_SETTLE_WORKERS, else one per CPU "
        "plus one)",
    )
    parser.add_argument("--parts", default="12", help="which parts to run, any of '12' (default both)")
    parser.add_argument(
        "--runners",
        default="2",
        help="(1) also sweep with this many runner processes at once, comma-separated (default 2; '' for none)",
    )
    parser.add_argument("--invariants", action="store_true", help="check the ledger invariants after every run")
    parser.add_argument(
        "--profile-dir",
        type=Path,
        default=None,
        help="also run one extra, uncounted sweep and settlement under cProfile; stats to DIR/{runner,settlement}.prof",
    )
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.accounts is None:
        args.accounts = 2_000 if args.quick else 20_000
    if args.settle_accounts is None:
        args.settle_accounts = 20_000 if args.quick else 1_000_000
    if args.settle_repeat is None:
        args.settle_repeat = 1 if args.settle_accounts > 200_000 else args.repeat
    args.batch_sizes = [int(b) for b in args.batches.split(",") if b.strip()]
    args.runner_counts = [int(n) for n in args.runners.split(",") if n.strip()]
    args.invariants = args.invariants or args.quick
    if args.profile_dir:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    if args.repeat < 1 or args.settle_repeat < 1 or not set(args.parts) <= set("12") or not args.batch_sizes:
        parser.error("--repeat and --settle-repeat must be ≥ 1, --parts a subset of '12', --batches not empty")
    if (
        args.accounts < 1
        or args.settle_accounts < 1
        or min(args.batch_sizes) < 1
        or min(args.runner_counts, default=2) < 2
    ):
        parser.error("sizes must be ≥ 1")
    if max(args.accounts, args.settle_accounts) > 10_000_000:
        parser.error("account numbers are 7 digits: at most 10,000,000 accounts")
    return args


def part_runner(args: argparse.Namespace, r: Results) -> None:
    """(1) the runner against the raw limit and `charge_usage` alone."""
    w = runner_workload(args.accounts)
    cu = RUNNER_NOW - timedelta(seconds=LATENESS_S)
    with template_database(w) as (tpl, setup_s):
        with template_open(tpl) as conn:
            expected = expected_of(conn)
            inputs = load_pure_inputs(conn)
            size = scalar(conn, "SELECT pg_database_size(current_database())")
        r.notes["(1) fleet setup, set-based SQL incl. VACUUM ANALYZE [s]"] = f"{setup_s:,.1f}"
        print(
            f"(1) {w.accounts:,} accounts, {sum(len(p.readings) for p in inputs):,} readings after the opening ones, "
            f"{expected.charges:,} interval charges expected; set up in {setup_s:.1f} s, database {size / 1e6:,.0f} MB",
            flush=True,
        )
        pure = pure_charging(inputs, cu, keep_postings=True)
        del inputs
        # the postings stay for the whole run: out of the collector's sight they cost the raw limits' loops what a
        # small heap would, not more
        gc.freeze()
        if pure.charges != expected.charges:
            raise BenchError(f"charge_usage alone: {pure.charges} charges, expected {expected.charges}")
        r.notes["(1) postings (≥ 1 fen) / interval charges"] = f"{pure.posting_count:,} / {pure.charges:,}"
        for n in range(args.repeat):
            for b in args.batch_sizes if n == 0 else args.batch_sizes[:1]:
                raw = raw_charging_limit(tpl, pure.postings, b)
                r.add(f"raw_{b}", raw)
                if n == 0 and b == args.batch_sizes[0]:
                    r.add(f"rawledger_{b}", raw_charging_limit(tpl, pure.postings, b, table="ledger_postings"))
                run = runner_run(tpl, b, expected, pure, invariants=args.invariants and n == 0, digest=args.digest)
                s, t = run.stats, run.timed
                r.add(f"charges_{b}", s.charges / t.wall_s)
                r.add(f"postings_{b}", s.postings / t.wall_s)
                r.add(f"python_{b}", t.python_s / t.wall_s)
                r.add(f"backend_{b}", t.backend_s / t.wall_s)
                r.add(f"busy_{b}", t.machine_busy)
                print(
                    f"  (1) run {n + 1}, batch_accounts {b}: {t.wall_s:.1f} s, {s.charges / t.wall_s:,.0f} charges/s, "
                    f"{s.postings / t.wall_s:,.0f} postings/s (raw {raw:,.0f}); {t.split()}; "
                    f"{s.notifications} notifications, {s.commands} commands",
                    flush=True,
                )
            charges, fen, seconds = in_own_process(_pure_alone, tpl, args.digest)
            if (charges, fen) != (pure.charges, pure.charged_fen):
                raise BenchError(
                    f"charge_usage alone: {charges} charges / {fen} fen, then {pure.charges} / {pure.charged_fen}"
                )
            r.add("pure", charges / seconds)
            print(f"  (1) run {n + 1}: charge_usage alone {charges / seconds:,.0f} charges/s", flush=True)
        for runners in args.runner_counts:
            for n in range(args.repeat):
                stats, wall_s = parallel_runner_run(
                    tpl, args.batch_sizes[0], runners, expected, pure, digest=args.digest
                )
                r.add(f"runners_{runners}", stats.charges / wall_s)
                print(
                    f"  (1) run {n + 1}, {runners} runner processes at once, batch_accounts {args.batch_sizes[0]}: "
                    f"{wall_s:.1f} s, {stats.charges / wall_s:,.0f} charges/s",
                    flush=True,
                )
            r.notes[f"(1) {runners} runner processes at once, batch {args.batch_sizes[0]} [interval charges/s]"] = (
                f"{fmt_int(r.med(f'runners_{runners}'))} ({r.listing(f'runners_{runners}')})"
            )
        if args.profile_dir:
            path = args.profile_dir / "runner.prof"
            run = runner_run(
                tpl, args.batch_sizes[0], expected, pure, invariants=False, digest=args.digest, profile=path
            )
            print(f"  (profiled sweep, not counted: {run.stats.charges / run.timed.wall_s:,.0f} charges/s)")
            print_profile(path)
    b = args.batch_sizes[0]
    r.notes[
        f"(1) raw into `ledger_postings` itself (its indexes, checks, foreign keys) + balances, batch {b} [postings/s]"
    ] = f"{fmt_int(r.med(f'rawledger_{b}'))} ({r.listing(f'rawledger_{b}')})"
    r.notes["(1) `charge_usage` alone, share of the sweep's wall time (runner rate / charge_usage rate)"] = (
        f"{r.med(f'charges_{b}') / r.med('pure'):.0%} at batch {b}"
    )
    for b in args.batch_sizes:
        if r.has(f"python_{b}"):
            r.notes[f"(1) batch {b}: Python / PostgreSQL backend CPU, share of the sweep's wall time; machine busy"] = (
                f"{r.med(f'python_{b}'):.0%} / {r.med(f'backend_{b}'):.0%}; "
                + " · ".join(f"{v:.0%}" for v in r.runs[f"busy_{b}"])
            )


def part_settlement(args: argparse.Namespace, r: Results) -> None:
    """(2) the daily settlement against its SQL floor."""
    w = settlement_workload(args.settle_accounts)
    b = args.batch_sizes[0]
    with template_database(w) as (tpl, setup_s):
        with template_open(tpl) as conn:
            expected = expected_of(conn)
            size = scalar(conn, "SELECT pg_database_size(current_database())")
        r.notes["(2) fleet setup, set-based SQL incl. VACUUM ANALYZE [s]"] = f"{setup_s:,.1f}"
        print(
            f"(2) {w.accounts:,} accounts, {expected.charges:,} interval charges expected, {expected.incomplete:,} "
            f"accounts will stay incomplete; set up in {setup_s:.1f} s, database {size / 1e6:,.0f} MB",
            flush=True,
        )
        for n in range(args.settle_repeat):
            run = settle_run(
                tpl, b, expected, invariants=args.invariants and n == 0, digest=args.digest, workers=args.settle_workers
            )
            s, t = run.settlement, run.timed
            floor = settle_floor(tpl, s.run.postings, s.run.charges, b)
            r.add("settle_accounts", s.accounts)
            r.add("settle_s", t.wall_s)
            r.add("floor_s", floor.seconds)
            r.add("floor_update_s", floor.update_s)
            r.add("floor_copy_s", floor.copy_s)
            r.add("floor_copy_ledger_s", floor.copy_ledger_s)
            r.add("floor_copy_charges_s", floor.copy_charges_s)
            r.add("settle_busy", t.machine_busy)
            r.add("runner_batch_s", floor.runner_batch_s)
            r.add("settle_batch_s", t.wall_s / -(-s.accounts // b))
            r.add("settle_python", t.python_s / t.wall_s)
            r.add("settle_again_s", run.again_s)
            r.add("settle_backend", t.backend_s / t.wall_s)
            print(
                f"  (2) run {n + 1}: settled {s.accounts:,} accounts in {t.wall_s:.1f} s ({s.accounts / t.wall_s:,.0f} "
                f"accounts/s): {s.run.charges:,} charges, {s.run.postings:,} postings, {s.run.charged_fen:,} fen, "
                f"{s.incomplete_accounts:,} incomplete, {len(s.arrears):,} in arrears owing {s.arrears_fen:,} fen, "
                f"{s.run.notifications:,} notifications, {s.run.commands:,} commands; {t.split()}. Floor "
                f"{floor.seconds:.1f} s (UPDATE {floor.update_s:.1f} s + COPY {floor.copy_s:.1f} s; "
                f"into ledger_postings {floor.copy_ledger_s:.1f} s); one runner batch {floor.runner_batch_s:.2f} s; "
                f"settled again with nothing left to charge in {run.again_s:.1f} s",
                flush=True,
            )
            r.notes["(2) settlement figures (last run)"] = (
                f"{s.run.charges:,} charges, {s.run.postings:,} postings, {s.run.charged_fen:,} fen; "
                f"{s.incomplete_accounts:,} incomplete; {len(s.arrears):,} in arrears owing {s.arrears_fen:,} fen; "
                f"{s.run.notifications:,} notifications, {s.run.commands:,} commands"
            )
        if args.profile_dir:
            path = args.profile_dir / "settlement.prof"
            # in one process, so that the profile sees the charging
            run = settle_run(tpl, b, expected, invariants=False, digest=args.digest, workers=1, profile=path)
            print(f"  (profiled settlement, not counted: {run.settlement.accounts / run.timed.wall_s:,.0f} accounts/s)")
            print_profile(path)
    r.notes[
        "(2) the same day settled again later: nothing left to charge (the day reported, no account written) [s]"
    ] = f"{r.med('settle_again_s'):,.1f} ({r.listing('settle_again_s', 1)})"
    r.notes["(2) floor: UPDATE of every prepaid_accounts row / COPY of the postings [s]"] = (
        f"{r.med('floor_update_s'):,.1f} / {r.med('floor_copy_s'):,.1f}"
    )
    r.notes["(2) floor with a COPY of one row per interval charge instead of one per posting [s]"] = (
        f"{r.med('floor_update_s') + r.med('floor_copy_charges_s'):,.1f} (COPY {r.med('floor_copy_charges_s'):,.1f})"
    )
    r.notes["(2) the COPY of the postings into `ledger_postings` itself (indexes, checks, foreign keys) [s]"] = (
        f"{r.med('floor_copy_ledger_s'):,.1f}"
    )
    workers = (
        "" if args.settle_workers == 1 else f", the main process only: its {args.settle_workers} workers not counted"
    )
    r.notes[
        f"(2) Python / PostgreSQL backend CPU, share of the settlement's wall time (batch {b}{workers}); machine busy"
    ] = f"{r.med('settle_python'):.0%} / {r.med('settle_backend'):.0%}; " + " · ".join(
        f"{v:.0%}" for v in r.runs["settle_busy"]
    )
    r.notes[f"(2) one runner batch of {b} accounts at {args.settle_accounts:,} accounts / a settlement batch [s]"] = (
        f"{r.med('runner_batch_s'):.2f} / {r.med('settle_batch_s'):.2f}"
    )


def run(args: argparse.Namespace) -> None:
    """Everything; the databases go whatever happens."""
    started = time.monotonic()
    r = Results()
    print(f"python -m bench.charging {' '.join(sys.argv[1:])}  ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")
    print(code_fingerprint(MEASURED, STARTUP_DIGEST))
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(
        f"engine settings: lateness_s {LATENESS_S:.0f}, batch_accounts {args.batch_sizes} (default {DEFAULT_BATCH}); "
        f"tariff {TARIFF.code}, policy {POLICY.name}; day {DAY} {ZONE.key}",
        flush=True,
    )
    args.digest = STARTUP_DIGEST
    check_code(args.digest)
    check_generated_rows()
    print("generated rows match open_account's; top-ups keep the ledger invariants", flush=True)
    if "1" in args.parts:
        part_runner(args, r)
    if "2" in args.parts:
        check_code(args.digest)
        part_settlement(args, r)
    check_code(args.digest)
    print(f"\nfinished in {time.monotonic() - started:.0f} s; load average now {os.getloadavg()[0]:.2f}\n")
    print(report(r, args.batch_sizes))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
