"""The engine survives its database: a lost connection — its working one, its LISTEN — is replaced with backoff, the
status line says so every period until the engine charges again, and nothing is lost or charged twice: a batch cut
off by the loss is rolled back by the server and charged again, once.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from headend.engine import charging
from headend.engine.accounts import open_account
from headend.engine.catalog import Catalog
from headend.engine.runner import EngineRunner
from headend.engine.settlement import tally_problems
from headend.money import ledger_store
from prepay_engine.tariffs import SHANGHAI
from prepay_engine.usage import MeterRegister, RegisterReading, charge_usage, open_usage
from tests.integration.conftest import ADMIN_URL, count, register, wait_for
from tests.integration.engine_support import DAY_START, STRICT_POLICY, TARIFF, seed_catalog, series, store_readings

Conn = psycopg.Connection[Any]
STEP = timedelta(minutes=15)
LATENESS_S = 600.0
AT = DAY_START + timedelta(hours=6)  # the runners' clock
APP = "reconnecting-runner"


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    """An autocommit connection to a fresh migrated database."""
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


def _open(conn: Conn, meters: list[str], opened_at: datetime = DAY_START) -> None:
    catalog = seed_catalog(conn)
    register(conn, meters)
    for meter_id in meters:
        open_account(
            conn,
            catalog,
            f"a-{meter_id}",
            meter_id=meter_id,
            tariff_code=TARIFF.code,
            policy_code=STRICT_POLICY.name,
            opened_at=opened_at,
            opening_register_wh=1_000_000,
            zone=SHANGHAI,
        )


def _readings(meter_id: str, first: int, n: int) -> list[tuple[str, datetime, int]]:
    """Readings number `first`..`first + n - 1` of the meter's day (on the grid from 00:15, 250 Wh each)."""
    return series(meter_id, DAY_START + (first + 1) * STEP, n, STEP, 1_000_000 + (first + 1) * 250, 250)


def _connect(database_url: str) -> Conn:
    return psycopg.connect(database_url, autocommit=True, application_name=APP, options="-c TimeZone=UTC")


def _runner(database_url: str, first: Conn, **kwargs: Any) -> EngineRunner:
    """A runner on `first` (its caller's to close) that opens its next connections itself."""
    return EngineRunner(
        first,
        LATENESS_S,
        1,
        clock=lambda: AT,
        catalog=Catalog(),
        eager_on_grid=True,
        connect=lambda: _connect(database_url),
        **kwargs,
    )


def _terminate_others(conn: Conn) -> int:
    """End every other client session of the test database, as a restart or a failover of the server would.

    Client sessions only: a background worker of the database (TimescaleDB's job scheduler, an autovacuum worker)
    runs as a superuser, and ending it is refused to the role the test connects as.
    """
    return count(
        conn,
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend') AS t",
    )


def _allow_connections(database: str, *, allow: bool) -> None:
    """Let sessions into the test database, or keep every new one out (a database being restored, say)."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {"true" if allow else "false"}')


def _waiting_runner(conn: Conn) -> int | None:
    """The backend of the runner while it waits for stored batches (its last look at them found none new), else None."""
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'idle' "
        "AND (query LIKE 'SELECT batch_id FROM reading_batches%%' OR query LIKE 'DELETE FROM reading_batches%%')",
        (APP,),
    ).fetchone()
    return None if row is None else int(row[0])


def _expected_fen(meter_id: str, readings: list[tuple[str, datetime, int]]) -> dict[str, int]:
    """The pure charger's charges of the meter's readings: charge id → fen."""
    state = open_usage(MeterRegister(meter_id), DAY_START, 1_000_000)
    charged = charge_usage(
        state, [RegisterReading(m, ts, wh) for m, ts, wh in readings], TARIFF, complete_until=AT, eager_on_grid=True
    )
    return {c.charge_id: c.amount_fen for c in charged.charges}


def _assert_each_interval_once(conn: Conn, meters: list[str], readings: int) -> None:
    """Every interval charged once, as the pure charger charges it, each batch's charges under one posting."""
    charged = dict(conn.execute("SELECT charge_id, amount_fen FROM usage_charges").fetchall())
    assert count(conn, "SELECT count(*) FROM usage_charges") == len(charged) == len(meters) * readings
    expected: dict[str, int] = {}
    for meter_id in meters:
        expected |= _expected_fen(meter_id, _readings(meter_id, 0, readings))
    assert charged == expected
    postings = conn.execute(
        "SELECT p.posting_id, p.amount_fen, coalesce(sum(c.amount_fen), 0), count(c.charge_id) "
        "FROM ledger_postings p LEFT JOIN usage_charges c USING (posting_id) WHERE p.kind = 'usage' "
        "GROUP BY p.posting_id, p.amount_fen"
    ).fetchall()
    assert all(amount == summed and n > 0 for _, amount, summed, n in postings), postings
    assert sum(r[1] for r in postings) == sum(charged.values())
    assert count(conn, "SELECT count(*) FROM usage_charges WHERE amount_fen > 0 AND posting_id IS NULL") == 0
    assert ledger_store.check_invariants(conn) == ()
    assert tally_problems(conn) == []


def test_a_running_engine_replaces_its_lost_connections_and_charges_each_interval_once(
    database_url: str, conn: Conn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "headend.engine.runner")
    meters = ["m1", "m2", "m3"]
    _open(conn, meters)
    for meter_id in meters:
        store_readings(conn, _readings(meter_id, 0, 8), now=AT)
    original = charging._append_usage_postings
    cut: list[int] = []

    def cut_off_once(cur: psycopg.Cursor[Any], *args: Any, **kwargs: Any) -> int:
        written = original(cur, *args, **kwargs)
        if not cut:
            # the batch's postings are written, its commit has not happened: the server ends the session now
            cut.append(cur.connection.info.backend_pid)
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (cut[0],))
        return written

    monkeypatch.setattr(charging, "_append_usage_postings", cut_off_once)
    stop = threading.Event()
    first_conn = _connect(database_url)
    runner = _runner(database_url, first_conn, full_sweep_s=3600, status_interval_s=0.2)
    thread = threading.Thread(target=runner.run, args=(stop, 600.0))
    thread.start()
    try:
        wait_for(lambda: count(conn, "SELECT count(*) FROM usage_charges") == 3 * 8, 10, "the first readings charged")
        wait_for(lambda: _waiting_runner(conn) is not None, 10, "the runner to wait for stored batches")
        waiting = _waiting_runner(conn)
        assert waiting is not None
        assert waiting != cut[0]
        # every session ends while the runner waits on its LISTEN
        assert _terminate_others(conn) >= 1
        wait_for(lambda: _waiting_runner(conn) not in (None, waiting), 10, "the runner to listen again")
        # a poll of ten minutes and a sweep an hour: only the notification of its new LISTEN wakes it in time
        for meter_id in meters:
            store_readings(conn, _readings(meter_id, 8, 4), now=AT)
        wait_for(lambda: count(conn, "SELECT count(*) FROM usage_charges") == 3 * 12, 10, "the new readings charged")
    finally:
        stop.set()
        thread.join(10)
        first_conn.close()
    assert not thread.is_alive()
    assert runner.conn.closed  # the connection the runner opened itself is closed when it stops
    _assert_each_interval_once(conn, meters, 12)
    said = [r.getMessage() for r in caplog.records]
    assert sum("lost the database connection" in line for line in said) == 2
    assert sum("reconnected to the database" in line for line in said) == 2


def test_the_status_line_says_every_period_that_the_database_is_out_of_reach(
    database_url: str, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "headend.engine.runner")
    meters = ["m1"]
    _open(conn, meters)
    store_readings(conn, _readings("m1", 0, 4), now=AT)
    name = conn.info.dbname
    stop = threading.Event()

    def status_lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("engine: ")]

    first_conn = _connect(database_url)
    runner = _runner(database_url, first_conn, full_sweep_s=3600, status_interval_s=0.2)
    thread = threading.Thread(target=runner.run, args=(stop, 600.0))
    thread.start()
    try:
        wait_for(lambda: _waiting_runner(conn) is not None, 10, "the runner to charge and wait")
        _allow_connections(name, allow=False)
        try:
            _terminate_others(conn)
            store_readings(conn, _readings("m1", 4, 4), now=AT)  # nothing can charge them while it is away
            wait_for(
                lambda: sum(vars(r)["state"] == "problem" for r in status_lines()) >= 4,
                20,
                "status lines that say the database is out of reach",
            )
        finally:
            _allow_connections(name, allow=True)
        wait_for(lambda: count(conn, "SELECT count(*) FROM usage_charges") == 8, 30, "the readings charged")
        wait_for(lambda: vars(status_lines()[-1])["state"] != "problem", 10, "a status line without the problem")
    finally:
        stop.set()
        thread.join(10)
        first_conn.close()
    assert not thread.is_alive()
    lines = status_lines()
    troubled = [r for r in lines if vars(r)["state"] == "problem"]
    assert all(r.levelno == logging.WARNING for r in troubled)
    assert all("database connection lost" in str(vars(r)["problem"]) for r in troubled)
    assert "not currently accepting connections" in str(vars(troubled[-1])["problem"])
    # one a period while it lasted: no gap of several periods between them (the backoff does not silence it)
    gaps = [b.created - a.created for a, b in itertools.pairwise(troubled)]
    assert max(gaps) < 1.5, gaps
    assert lines.index(troubled[-1]) < len(lines) - 1
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("charging again")]
    _assert_each_interval_once(conn, meters, 8)


def test_headend_engine_survives_the_end_of_its_sessions(database_url: str, conn: Conn, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    start = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0) - timedelta(hours=3)
    _open(conn, ["m1"], opened_at=start)
    first = series("m1", start + STEP, 8, STEP, 1_000_250, 250)
    store_readings(conn, first)
    log_file = tmp_path / "engine.log"
    env = {
        **os.environ,
        "HEADEND_DATABASE_URL": database_url,
        "HEADEND_ENGINE_LATENESS_S": "60",
        "HEADEND_STATUS_INTERVAL_S": "0.5",
    }
    with log_file.open("w") as log_out:
        engine = subprocess.Popen(
            [sys.executable, "-m", "headend", "engine"], env=env, stdout=subprocess.PIPE, stderr=log_out, text=True
        )
        try:
            wait_for(lambda: count(conn, "SELECT count(*) FROM usage_charges") == 8, 30, "the engine to charge")
            for times in (1, 2):
                _terminate_others(conn)
                wait_for(
                    lambda: log_file.read_text().count("reconnected to the database") == times,  # noqa: B023
                    10,
                    "the engine to reconnect",
                )
            store_readings(conn, series("m1", start + 9 * STEP, 4, STEP, 1_000_250 + 8 * 250, 250))
            wait_for(lambda: count(conn, "SELECT count(*) FROM usage_charges") == 12, 30, "the new readings charged")
        finally:
            engine.send_signal(signal.SIGTERM)
            output, _ = engine.communicate(timeout=30)
    assert engine.returncode == 0, log_file.read_text()
    assert "stopped:" in output
    assert count(conn, "SELECT count(DISTINCT charge_id) FROM usage_charges") == 12
    assert ledger_store.check_invariants(conn) == ()
