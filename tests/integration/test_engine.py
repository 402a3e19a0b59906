"""The prepay engine runner against the real PostgreSQL: same outcome as the pure core, once, whatever happens."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from headend.db.migrate import downgrade, migrate
from headend.engine import charging
from headend.engine.accounts import AccountError, open_account, pay, replace_meter
from headend.engine.catalog import Catalog, CatalogError, put_calendar_year, put_policy, put_tariff
from headend.engine.runner import EngineRunner
from headend.engine.settlement import SettlementError, settle_day, tally_problems
from headend.money import ledger_store
from prepay_engine import account as pure_account
from prepay_engine.account import RelayAction
from prepay_engine.calendar import DeclaredYear
from prepay_engine.ledger import Ledger, house_accounts, prepaid_account_id
from prepay_engine.payments import PaymentTerms, ToppedUp, TopUp
from prepay_engine.policy import FriendlyCreditWindows
from prepay_engine.tariffs import SHANGHAI
from prepay_engine.usage import MeterRegister, RegisterReading, charge_usage
from tests.integration.conftest import count, register, wait_for
from tests.integration.engine_support import (
    DAY_START,
    STRICT_POLICY,
    TARIFF,
    open_test_account,
    seed_catalog,
    series,
    store_readings,
)

Conn = psycopg.Connection[Any]
STEP = timedelta(minutes=15)
NOW = DAY_START + timedelta(days=1, hours=2)
LATENESS_S = 600.0


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    """An autocommit connection to a fresh migrated database."""
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


def _open(conn: Conn, catalog: Catalog, account_id: str, meter_id: str, register_wh: int = 1_000_000) -> None:
    open_test_account(conn, catalog, account_id, meter_id, register_wh=register_wh)


def _runner(conn: Conn, catalog: Catalog | None = None, batch: int = 50) -> EngineRunner:
    return EngineRunner(conn, LATENESS_S, batch, clock=lambda: NOW, catalog=catalog or Catalog())


def _pure_outcome(
    meter_id: str, readings: list[tuple[str, datetime, int]], register_wh: int = 1_000_000
) -> pure_account.ReadingsApplied:
    ledger = Ledger()
    assert ledger.open_accounts(house_accounts(())) is None
    opened = pure_account.open_account(
        ledger,
        "acc",
        meter=MeterRegister(meter_id),
        opened_at=DAY_START,
        opening_register_wh=register_wh,
        tariff=TARIFF,
        terms=PaymentTerms(),
        policy=STRICT_POLICY,
    )
    assert isinstance(opened, pure_account.PrepaidAccount)
    cu = NOW - timedelta(seconds=LATENESS_S)
    step = opened.apply_readings(ledger, [RegisterReading(m, ts, wh) for m, ts, wh in readings], cu, NOW)
    assert isinstance(step, pure_account.ReadingsApplied)
    return step


def _charges(conn: Conn, account_id: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT charge_id, amount_fen FROM usage_charges WHERE account_id = %s AND amount_fen > 0", (account_id,)
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def _expected_charges(step: pure_account.ReadingsApplied) -> dict[str, int]:
    return {c.charge_id: c.amount_fen for c in step.usage.charges if c.amount_fen}


def _as(request_id: str, account_id: str) -> str:
    """A request id of the pure account "acc" as the account `account_id` makes it."""
    return request_id.replace(":acc:", f":{account_id}:", 1)


def test_runner_charges_like_the_pure_core_and_writes_its_requests(conn: Conn) -> None:
    catalog = seed_catalog(conn)
    register(conn, ["m1"])
    _open(conn, catalog, "a1", "m1")
    readings = series("m1", DAY_START + timedelta(minutes=5), 96, STEP, 1_000_000, 400)
    assert store_readings(conn, readings) == 96

    stats = _runner(conn, catalog).sweep()

    expected = _pure_outcome("m1", readings)
    assert stats.accounts == 1
    assert stats.charges == len(expected.usage.charges) == 95  # 96 readings from 00:05 close 95 intervals
    charges = conn.execute(
        "SELECT charge_id, interval_start, energy_wh, amount_yuan, amount_fen FROM usage_charges ORDER BY 2"
    ).fetchall()
    # charge ids name the meter and the interval, not the account
    assert [tuple(r) for r in charges] == [
        (c.charge_id, c.interval_start, c.energy_wh, c.amount_yuan, c.amount_fen) for c in expected.usage.charges
    ]
    # the ledger gets their sum: one posting for the batch
    posted = conn.execute("SELECT posting_id, amount_fen, at FROM ledger_postings WHERE kind = 'usage'").fetchall()
    summary = pure_account.usage_summary_posting("a1", expected.usage.charges)
    assert summary is not None
    assert [tuple(r) for r in posted] == [(summary.posting_id, summary.amount_fen, summary.at)]
    assert summary.amount_fen == sum(p.amount_fen for p in expected.posted)
    assert count(conn, "SELECT count(DISTINCT posting_id) FROM usage_charges") == 1
    balance = ledger_store.balance_fen(conn, prepaid_account_id("a1"))
    assert balance == -summary.amount_fen
    assert balance < 0
    # the policy saw the exhausted balance: the same notices and the disconnect, with the account's ids
    notices = conn.execute("SELECT request_id, kind FROM notification_outbox ORDER BY request_id").fetchall()
    assert [r[0] for r in notices] == sorted(_as(n.request_id, "a1") for n in expected.notifications)
    commands = conn.execute(
        "SELECT request_id, action, meter_id, requested_by, reasons FROM command_requests"
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in commands] == [
        (_as(c.request_id, "a1"), str(c.action), "m1") for c in expected.commands
    ]
    assert commands[0][3] == "engine"
    assert commands[0][4][0]["code"]
    assert ledger_store.check_invariants(conn) == ()

    # nothing more to do until new readings arrive; a second sweep changes nothing
    assert _runner(conn, catalog).sweep().charges == 0
    assert ledger_store.balance_fen(conn, prepaid_account_id("a1")) == balance


def test_readings_within_the_lateness_window_wait_and_are_charged_later(conn: Conn) -> None:
    catalog = seed_catalog(conn)
    register(conn, ["m1"])
    _open(conn, catalog, "a1", "m1")
    cu = NOW - timedelta(seconds=LATENESS_S)
    store_readings(conn, [("m1", cu - STEP, 1_000_500), ("m1", cu + timedelta(minutes=1), 1_000_900)])
    _runner(conn, catalog).sweep()
    row = conn.execute("SELECT anchor_ts, due_at, seen_until FROM prepaid_accounts").fetchone()
    assert row is not None
    assert row[0] == cu - STEP
    assert row[1] == cu + timedelta(minutes=1) + timedelta(seconds=LATENESS_S)
    assert row[2] == cu
    later = EngineRunner(conn, LATENESS_S, 50, clock=lambda: NOW + timedelta(minutes=2), catalog=catalog)
    assert later.sweep().accounts == 1
    anchor = conn.execute("SELECT anchor_ts, due_at FROM prepaid_accounts").fetchone()
    assert anchor == (cu + timedelta(minutes=1), None)


def test_eager_runner_charges_on_grid_readings_at_once_and_waits_at_a_gap(conn: Conn) -> None:
    catalog = seed_catalog(conn)
    register(conn, ["m1"])
    _open(conn, catalog, "a1", "m1")
    at = DAY_START + timedelta(hours=4)

    def sweep(now: datetime) -> int:
        runner = EngineRunner(conn, LATENESS_S, 50, clock=lambda: now, catalog=catalog, eager_on_grid=True)
        return runner.sweep().charges

    def state() -> tuple[Any, ...]:
        row = conn.execute("SELECT anchor_ts, seen_until, due_at FROM prepaid_accounts").fetchone()
        assert row is not None
        return tuple(row)

    store_readings(conn, series("m1", DAY_START + STEP, 16, STEP, 1_000_100, 100), now=at)
    assert sweep(at) == 16  # up to the reading stamped now, though the lateness (10 min) has not passed
    assert state() == (at, at, None)
    store_readings(conn, [("m1", at + STEP, 1_001_700)], now=at + STEP)
    assert sweep(at + STEP) == 1  # the next one is due as soon as it is stored
    # a gap: the reading after it waits for the lateness like any other
    store_readings(conn, [("m1", at + 3 * STEP, 1_001_900)], now=at + 3 * STEP)
    assert sweep(at + 3 * STEP) == 0
    lateness = timedelta(seconds=LATENESS_S)
    assert state() == (at + STEP, at + 3 * STEP - lateness, at + 3 * STEP + lateness)
    store_readings(conn, [("m1", at + 2 * STEP, 1_001_800)], now=at + 3 * STEP)
    assert sweep(at + 3 * STEP + lateness) == 2
    assert state()[0] == at + 3 * STEP
    # the same charges as a runner that waits for the lateness every time
    charged = conn.execute("SELECT charge_id, amount_fen FROM usage_charges ORDER BY interval_start").fetchall()
    assert len(charged) == 19


def test_the_runner_charges_the_accounts_of_each_new_reading_batch_at_once(conn: Conn) -> None:
    catalog = seed_catalog(conn)
    register(conn, ["m1", "m2", "m3"])
    for n in (1, 2, 3):
        _open(conn, catalog, f"a{n}", f"m{n}")
    at = DAY_START + timedelta(hours=1)
    runner = EngineRunner(conn, LATENESS_S, 50, clock=lambda: at, catalog=catalog, eager_on_grid=True)
    assert runner.react().accounts == 0
    store_readings(conn, series("m1", DAY_START + STEP, 4, STEP, 1_000_100, 100), now=at)
    store_readings(conn, series("m3", DAY_START + STEP, 4, STEP, 1_000_100, 100), now=at)
    reacted = runner.react()
    assert (reacted.accounts, reacted.charges) == (2, 8)
    assert runner.react().accounts == 0  # each batch once
    store_readings(conn, series("m1", DAY_START + STEP, 4, STEP, 1_000_100, 100), now=at)  # duplicates: no batch
    assert runner.react().accounts == 0
    assert count(conn, "SELECT count(*) FROM reading_batches") == 2


def test_a_running_engine_is_woken_by_a_stored_batch_between_full_sweeps(database_url: str, conn: Conn) -> None:
    catalog = seed_catalog(conn)
    register(conn, ["m1", "m2"])
    _open(conn, catalog, "a1", "m1")
    _open(conn, catalog, "a2", "m2")
    at = DAY_START + timedelta(hours=1)
    stop = threading.Event()
    with psycopg.connect(database_url, autocommit=True, application_name="woken-runner") as runner_conn:
        runner = EngineRunner(
            runner_conn, LATENESS_S, 50, clock=lambda: at, catalog=Catalog(), eager_on_grid=True, full_sweep_s=3600
        )
        # a poll far longer than the test: only the ingest's notification can wake the runner in time
        thread = threading.Thread(target=runner.run, args=(stop, 600.0))
        thread.start()
        try:
            wait_for(lambda: _waiting_after_its_first_sweep(conn), 10, "the runner to wait after its first sweep")
            for meter_id in ("m1", "m2"):  # a second batch while the runner may still be busy with the first
                store_readings(conn, series(meter_id, DAY_START + STEP, 4, STEP, 1_000_100, 100), now=at)
            wait_for(lambda: count(conn, "SELECT count(*) FROM usage_charges") == 8, 10, "the eight charges")
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()  # a waiting runner notices `stop` without waiting out its poll


def test_a_running_engine_logs_its_counters_once_a_period_and_idle_once(
    database_url: str, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "headend.engine.runner")
    catalog = seed_catalog(conn)
    register(conn, ["m1"])
    _open(conn, catalog, "a1", "m1")
    at = DAY_START + timedelta(hours=1)
    stop = threading.Event()

    def states() -> list[str]:
        return [str(vars(r)["state"]) for r in caplog.records if r.getMessage().startswith("engine: ")]

    with psycopg.connect(database_url, autocommit=True) as runner_conn:
        runner = EngineRunner(
            runner_conn,
            LATENESS_S,
            50,
            clock=lambda: at,
            catalog=Catalog(),
            eager_on_grid=True,
            full_sweep_s=3600,
            status_interval_s=0.2,
        )
        thread = threading.Thread(target=runner.run, args=(stop, 0.05))
        thread.start()
        try:
            wait_for(lambda: states() == ["idle"], 10, "the runner to say it is idle")
            store_readings(conn, series("m1", DAY_START + STEP, 4, STEP, 1_000_100, 100), now=at)
            wait_for(lambda: states() == ["idle", "running", "idle"], 10, "the charges, then idle again")
            time.sleep(1.0)  # five periods more, idle
        finally:
            stop.set()
            thread.join(10)
    assert states() == ["idle", "running", "idle"]
    [charged] = [vars(r) for r in caplog.records if vars(r).get("state") == "running"]
    assert charged["period"] == charged["totals"]
    assert charged["totals"] == {
        "accounts": 1,
        "charges": 4,
        "postings": 1,
        "charged_fen": count(conn, "SELECT sum(amount_fen) FROM usage_charges"),
        "notifications": count(conn, "SELECT count(*) FROM notification_outbox"),
        "commands": count(conn, "SELECT count(*) FROM command_requests"),
    }
    assert charged["totals"]["commands"] == 1  # the strict policy disconnects the exhausted account


def test_a_long_sweep_logs_its_status_between_batches(conn: Conn, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "headend.engine.runner")
    catalog = seed_catalog(conn)
    register(conn, ["m1", "m2", "m3"])
    for n in (1, 2, 3):
        _open(conn, catalog, f"a{n}", f"m{n}")
        store_readings(conn, series(f"m{n}", DAY_START + STEP, 4, STEP, 1_000_100, 100))
    # one account a batch, and a period shorter than any batch: a line after each
    runner = EngineRunner(conn, LATENESS_S, 1, clock=lambda: NOW, catalog=catalog, status_interval_s=1e-9)
    assert runner.sweep().accounts == 3
    lines = [vars(r) for r in caplog.records if r.getMessage().startswith("engine: ")]
    assert [(line["period"]["accounts"], line["totals"]["accounts"]) for line in lines] == [(1, 1), (1, 2), (1, 3)]
    assert [line["totals"]["charges"] for line in lines] == [4, 8, 12]


def _waiting_after_its_first_sweep(conn: Conn) -> bool:
    # the sweep ends with pruning old batches; then the runner waits, idle
    return (
        count(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'woken-runner' AND state = 'idle' "
            "AND query LIKE 'DELETE FROM reading_batches%%'",
        )
        == 1
    )


def test_two_runners_at_once_charge_each_interval_once(database_url: str, conn: Conn) -> None:
    catalog = seed_catalog(conn)
    accounts = 60
    meters = [f"m{i:03d}" for i in range(accounts)]
    register(conn, meters)
    readings = []
    for i, meter in enumerate(meters):
        _open(conn, catalog, f"a{i:03d}", meter)
        readings += series(meter, DAY_START + timedelta(minutes=1), 48, STEP, 1_000_000, 100 + i)
    store_readings(conn, readings)

    results: list[charging.BatchStats] = []

    def run() -> None:
        with psycopg.connect(database_url, autocommit=True) as own:
            results.append(_runner(own, batch=7).sweep())

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # each runner passed over the other's batches and took the next ones: together they left nothing
    assert _runner(conn, batch=7).sweep().accounts == 0

    # 48 readings from 00:01 close 47 intervals each
    assert sum(r.charges for r in results) == count(conn, "SELECT count(*) FROM usage_charges") == accounts * 47
    assert sum(r.postings for r in results) == count(conn, "SELECT count(*) FROM ledger_postings WHERE kind = 'usage'")
    for i, meter in enumerate(meters):
        expected = _pure_outcome(meter, [r for r in readings if r[0] == meter])
        assert _charges(conn, f"a{i:03d}") == _expected_charges(expected)
        assert ledger_store.balance_fen(conn, prepaid_account_id(f"a{i:03d}")) == -sum(
            _expected_charges(expected).values()
        )
    assert ledger_store.check_invariants(conn) == ()
    assert tally_problems(conn) == []


def test_a_runner_killed_mid_batch_leaves_nothing_and_the_next_charges_everything_once(
    database_url: str, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = seed_catalog(conn)
    register(conn, ["m1", "m2"])
    _open(conn, catalog, "a1", "m1")
    _open(conn, catalog, "a2", "m2")
    readings = series("m1", DAY_START, 40, STEP, 1_000_000, 300) + series("m2", DAY_START, 40, STEP, 1_000_000, 250)
    store_readings(conn, readings)
    original = charging._append_usage_postings

    def killed(cur: psycopg.Cursor[Any], *args: Any, **kwargs: Any) -> int:
        written = original(cur, *args, **kwargs)
        # the postings are written, the commit has not happened: the server loses the connection now
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (cur.connection.info.backend_pid,))
        return written

    monkeypatch.setattr(charging, "_append_usage_postings", killed)
    with psycopg.connect(database_url, autocommit=True) as doomed, pytest.raises(psycopg.OperationalError):
        _runner(doomed, batch=10).sweep()
    assert count(conn, "SELECT count(*) FROM ledger_postings") == 0
    assert count(conn, "SELECT count(*) FROM usage_charges") == 0
    assert count(conn, "SELECT count(*) FROM usage_tallies") == 0
    assert count(conn, "SELECT count(*) FROM notification_outbox") == 0
    assert count(conn, "SELECT count(*) FROM prepaid_accounts WHERE anchor_ts > %s", DAY_START) == 0

    monkeypatch.setattr(charging, "_append_usage_postings", original)
    stats = _runner(conn).sweep()
    expected = {
        **_expected_charges(_pure_outcome("m1", readings[:40])),
        **_expected_charges(_pure_outcome("m2", readings[40:])),
    }
    assert stats.charges == 2 * 39
    assert {**_charges(conn, "a1"), **_charges(conn, "a2")} == expected
    assert count(conn, "SELECT count(*) FROM ledger_postings WHERE kind = 'usage'") == stats.postings == 2
    assert ledger_store.check_invariants(conn) == ()
    assert tally_problems(conn) == []


def test_a_failing_account_is_isolated_and_the_others_are_charged(conn: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = seed_catalog(conn)
    register(conn, ["m1", "m2", "m3"])
    for i in (1, 2, 3):
        _open(conn, catalog, f"a{i}", f"m{i}")
        store_readings(conn, series(f"m{i}", DAY_START, 8, STEP, 1_000_000, 500))

    def broken(state: Any, *args: Any, **kwargs: Any) -> Any:
        if state.meter.meter_id == "m2":
            raise RuntimeError("tariff bug")
        return charge_usage(state, *args, **kwargs)

    monkeypatch.setattr(charging, "charge_usage", broken)
    _runner(conn, batch=3).sweep()
    charged = {r[0] for r in conn.execute("SELECT DISTINCT debit_account_id FROM ledger_postings").fetchall()}
    assert charged == {prepaid_account_id("a1"), prepaid_account_id("a3")}
    due = conn.execute("SELECT due_at FROM prepaid_accounts WHERE account_id = 'a2'").fetchone()
    assert due is not None
    assert due[0] == NOW + timedelta(minutes=5)


def test_meter_replacement_keeps_consumption_continuous(conn: Conn) -> None:
    catalog = seed_catalog(conn)
    register(conn, ["old", "new"])
    _open(conn, catalog, "a1", "old")
    swap = DAY_START + timedelta(hours=2)
    store_readings(conn, series("old", DAY_START + STEP, 8, STEP, 1_000_400, 400))  # up to 02:00, 4,200 Wh used
    replace_meter(conn, "a1", at=swap, old_final_register_wh=1_003_200, new_meter_id="new", new_start_register_wh=0)
    store_readings(conn, series("new", swap + STEP, 8, STEP, 400, 400))  # 3,200 Wh on the new meter
    _runner(conn, catalog).sweep()
    row = conn.execute("SELECT consumed_wh, usage_meter_id, meter_id FROM prepaid_accounts").fetchone()
    assert row == (3_200 + 3_200, "new", "new")
    with pytest.raises(AccountError, match="re-open charged intervals"):
        replace_meter(conn, "a1", at=swap, old_final_register_wh=0, new_meter_id="old", new_start_register_wh=0)


def test_opening_is_refused_for_a_meter_already_serving_or_unknown(conn: Conn) -> None:
    catalog = seed_catalog(conn)
    register(conn, ["m1"])
    _open(conn, catalog, "a1", "m1")
    with pytest.raises(AccountError, match="already serves account 'a1'"):
        _open(conn, catalog, "a2", "m1")
    with pytest.raises(AccountError, match="not registered"):
        _open(conn, catalog, "a3", "nope")
    register(conn, ["m9"])
    with pytest.raises(AccountError, match="no reading"):
        open_account(
            conn,
            catalog,
            "a9",
            meter_id="m9",
            tariff_code=TARIFF.code,
            policy_code=STRICT_POLICY.name,
            opened_at=DAY_START,
            zone=SHANGHAI,
        )
    assert count(conn, "SELECT count(*) FROM prepaid_accounts") == 1


def test_past_tariff_versions_cannot_change(conn: Conn) -> None:
    seed_catalog(conn)
    changed = replace(TARIFF, name="renamed")
    assert put_tariff(conn, changed, stored_by="test", now=NOW).revision == 2
    altered = replace(TARIFF, versions=(replace(TARIFF.versions[0], source="another note"),))
    with pytest.raises(CatalogError, match="can't change"):
        put_tariff(conn, altered, stored_by="test", now=NOW)


def test_settlement_charges_the_rest_of_the_day_and_reports_arrears(conn: Conn) -> None:
    catalog = seed_catalog(conn)
    register(conn, ["m1", "m2"])
    _open(conn, catalog, "a1", "m1")
    _open(conn, catalog, "a2", "m2")
    store_readings(conn, series("m1", DAY_START + STEP, 100, STEP, 1_000_400, 400))  # 4 intervals into the next day
    store_readings(conn, series("m2", DAY_START + STEP, 20, STEP, 1_000_000, 0))  # no use: stays at zero
    day = date(2026, 11, 20)
    with pytest.raises(SettlementError, match="settle after that"):
        settle_day(
            conn, catalog, day, SHANGHAI, now=DAY_START + timedelta(days=1), lateness_s=LATENESS_S, batch_accounts=10
        )
    settled = settle_day(conn, catalog, day, SHANGHAI, now=NOW, lateness_s=LATENESS_S, batch_accounts=1)
    assert settled.accounts == 2
    assert settled.run.accounts == 2
    assert settled.run.charges == 100 + 20  # the run charges whatever is chargeable, the next day's intervals too
    assert settled.incomplete_accounts == 1  # m2's readings stop at 05:00: the rest of its day is unknown
    # the day's figures are the day's intervals only
    day_end = DAY_START + timedelta(days=1)
    day_fen = count(
        conn, "SELECT sum(amount_fen) FROM usage_charges WHERE account_id = 'a1' AND interval_start < %s", day_end
    )
    assert (settled.day.charges, settled.day.energy_wh, settled.day.charged_fen) == (96 + 20, 96 * 400, day_fen)
    assert settled.run.charged_fen > settled.day.charged_fen
    assert tally_problems(conn) == []  # the day's figures are summed from the tallies the charging appended
    # usage postings never straddle the local midnight: the day's ends at it
    postings = conn.execute("SELECT at, amount_fen FROM ledger_postings WHERE kind = 'usage' ORDER BY at").fetchall()
    assert [r[0] for r in postings] == [day_end, day_end + timedelta(hours=1)]
    assert postings[0][1] == day_fen
    # arrears as of the day's end, not of now
    assert [(a.account_id, a.balance_fen) for a in settled.arrears] == [("a1", -day_fen)]
    assert ledger_store.balance_fen(conn, prepaid_account_id("a1")) < -day_fen
    stored = conn.execute(
        "SELECT charges, energy_wh, charged_fen, run_charges, arrears_accounts, arrears_fen, incomplete_accounts "
        "FROM settlements"
    ).fetchone()
    assert stored == (116, 96 * 400, day_fen, 120, 1, day_fen, 1)
    # a payment the next morning settles the debt now, but not the day's arrears; settling again changes nothing
    pay(conn, catalog, TopUp("wechat", "WX-9", "a1", 100_000, day_end + timedelta(hours=1)), now=NOW, received_by="t")
    again = settle_day(conn, catalog, day, SHANGHAI, now=NOW, lateness_s=LATENESS_S, batch_accounts=10)
    assert again.run.postings == 0
    assert (again.day, again.arrears) == (settled.day, settled.arrears)
    assert count(conn, "SELECT count(*) FROM settlements") == 1
    assert count(conn, "SELECT count(*) FROM settlement_arrears") == 1
    # the next day starts from the balances at this one's end
    following = settle_day(
        conn,
        catalog,
        day + timedelta(days=1),
        SHANGHAI,
        now=NOW + timedelta(days=1),
        lateness_s=LATENESS_S,
        batch_accounts=10,
    )
    assert following.day.charges == 4
    assert following.arrears == ()
    assert datetime.now(UTC) > NOW  # the fixed clock is in the past of the real one


def test_settlement_looks_only_at_accounts_with_something_to_charge_or_decide(conn: Conn) -> None:
    catalog = seed_catalog(conn)
    register(conn, ["m1", "m2", "m3"])
    for n in (1, 2, 3):
        _open(conn, catalog, f"a{n}", f"m{n}")
    for meter_id in ("m1", "m3"):
        store_readings(conn, series(meter_id, DAY_START + STEP, 96, STEP, 1_000_400, 400))
    assert _runner(conn, catalog).sweep().charges == 2 * 96  # the runner kept up with a1 and a3
    store_readings(conn, series("m2", DAY_START + STEP, 96, STEP, 1_000_400, 400))  # a2's, after its sweep
    # a3's decision was deferred to a time that has come by the settlement
    conn.execute("UPDATE prepaid_accounts SET wake_at = %s WHERE account_id = 'a3'", (NOW - timedelta(hours=1),))
    # xmin: the transaction that wrote the row's current version
    written = "SELECT account_id, xmin::text FROM prepaid_accounts"
    before = dict(conn.execute(written).fetchall())

    settled = settle_day(conn, catalog, date(2026, 11, 20), SHANGHAI, now=NOW, lateness_s=LATENESS_S, batch_accounts=5)

    assert (settled.run.accounts, settled.run.charges) == (2, 96)  # a2 charged, a3 decided, a1 not looked at
    after = dict(conn.execute(written).fetchall())
    assert after["a1"] == before["a1"]  # nothing was written for it
    assert after["a2"] != before["a2"]
    assert after["a3"] != before["a3"]
    assert count(conn, "SELECT count(*) FROM prepaid_accounts WHERE wake_at IS NOT NULL") == 0
    assert settled.day.charges == 3 * 96
    assert settled.incomplete_accounts == 0
    # settled again later, with nothing new: no account is looked at, no row written
    settled_rows = dict(conn.execute(written).fetchall())
    later = NOW + timedelta(minutes=15)
    again = settle_day(conn, catalog, date(2026, 11, 20), SHANGHAI, now=later, lateness_s=LATENESS_S, batch_accounts=5)
    assert again.run.accounts == 0
    assert (again.day, again.arrears) == (settled.day, settled.arrears)
    assert dict(conn.execute(written).fetchall()) == settled_rows


def test_settlement_workers_charge_every_account_once_as_one_process_would(database_url: str, conn: Conn) -> None:
    catalog = seed_catalog(conn)
    meters = [f"m{i}" for i in range(12)]
    register(conn, meters)
    for i, meter_id in enumerate(meters):
        _open(conn, catalog, f"a{i}", meter_id)
        store_readings(conn, series(meter_id, DAY_START + STEP, 96, STEP, 1_000_000 + 100 * i, 300 + 10 * i))
    day = date(2026, 11, 20)
    # batches of 2 accounts: more than workers × batch are left, so three processes share the charging
    settled = settle_day(
        conn, catalog, day, SHANGHAI, now=NOW, lateness_s=LATENESS_S, batch_accounts=2, workers=3, url=database_url
    )
    assert (settled.run.accounts, settled.run.charges) == (12, 12 * 96)
    assert count(conn, "SELECT count(DISTINCT charge_id) FROM usage_charges") == 12 * 96
    charged = dict(conn.execute("SELECT account_id, sum(amount_fen) FROM usage_charges GROUP BY account_id").fetchall())
    for i, meter_id in enumerate(meters):
        alone = _pure_outcome(
            meter_id,
            series(meter_id, DAY_START + STEP, 96, STEP, 1_000_000 + 100 * i, 300 + 10 * i),
            register_wh=1_000_000,
        )
        assert charged[f"a{i}"] == sum(c.amount_fen for c in alone.usage.charges), f"a{i}"
    assert (settled.day.charges, settled.day.charged_fen) == (12 * 96, sum(charged.values()))
    assert tally_problems(conn) == []
    again = settle_day(
        conn, catalog, day, SHANGHAI, now=NOW, lateness_s=LATENESS_S, batch_accounts=2, workers=3, url=database_url
    )
    assert again.run.charges == 0
    assert (again.day, again.arrears) == (settled.day, settled.arrears)


def test_one_batch_posting_two_local_days_of_an_account_records_the_balance_after_each(conn: Conn) -> None:
    catalog = seed_catalog(conn)
    register(conn, ["m1"])
    _open(conn, catalog, "a1", "m1")
    store_readings(conn, series("m1", DAY_START + STEP, 100, STEP, 1_000_000, 400))  # into the next local day
    _runner(conn).sweep()
    postings = conn.execute(
        "SELECT batch_id, amount_fen, debit_balance_after_fen FROM ledger_postings "
        "WHERE debit_account_id = %s AND kind = 'usage' ORDER BY seq",
        (prepaid_account_id("a1"),),
    ).fetchall()
    balance_fen = count(
        conn, f"SELECT balance_fen FROM ledger_accounts WHERE account_id = '{prepaid_account_id('a1')}'"
    )
    (first_batch, _, first_after), (second_batch, second_fen, second_after) = postings  # one posting a day
    assert first_batch == second_batch  # written by one statement
    assert second_after == balance_fen
    assert first_after == balance_fen + second_fen
    assert ledger_store.check_invariants(conn) == ()


def test_upgrading_to_usage_tallies_tallies_the_charges_already_stored(admin_url: str, conn: Conn) -> None:
    catalog = seed_catalog(conn)
    register(conn, ["m1", "m2"])
    _open(conn, catalog, "a1", "m1")
    _open(conn, catalog, "a2", "m2")
    store_readings(conn, series("m1", DAY_START + STEP, 100, STEP, 1_000_000, 400))  # into the next local day
    store_readings(conn, series("m2", DAY_START + STEP, 30, STEP, 1_000_000, 250))
    _runner(conn).sweep()
    before = settle_day(conn, catalog, date(2026, 11, 20), SHANGHAI, now=NOW, lateness_s=LATENESS_S, batch_accounts=5)
    # the schema before usage_tallies, with these charges in it; then the upgrade tallies them
    downgrade(admin_url, "0013")
    assert count(conn, "SELECT count(*) FROM pg_tables WHERE tablename = 'usage_tallies'") == 0
    migrate(admin_url, require_timescaledb=False, collection_timezone="Asia/Shanghai")
    assert count(conn, "SELECT count(*) FROM usage_tallies") == 2  # one a zone and local day
    assert tally_problems(conn) == []
    after = settle_day(conn, catalog, date(2026, 11, 20), SHANGHAI, now=NOW, lateness_s=LATENESS_S, batch_accounts=5)
    assert (after.day, after.arrears) == (before.day, before.arrears)
    assert before.day.charges == 96 + 30


def test_usage_tallies_are_append_only(conn: Conn, admin_db: Conn) -> None:
    conn.execute(
        "INSERT INTO usage_tallies (zone, local_day, charges, energy_wh, charged_fen) "
        "VALUES ('Asia/Shanghai', '2026-11-20', 1, 100, 5)"
    )
    # the trigger refuses even the superuser (no head-end role is granted these at all: test_db_roles.py)
    for statement in ("UPDATE usage_tallies SET charges = 2", "DELETE FROM usage_tallies", "TRUNCATE usage_tallies"):
        with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
            admin_db.execute(statement)
    assert count(conn, "SELECT sum(charged_fen) FROM usage_tallies") == 5


def test_settlement_covers_the_accounts_of_its_zone(conn: Conn) -> None:
    catalog = seed_catalog(conn)
    register(conn, ["m1", "m2"])
    _open(conn, catalog, "a1", "m1")
    open_account(
        conn,
        catalog,
        "a2",
        meter_id="m2",
        tariff_code=TARIFF.code,
        policy_code=STRICT_POLICY.name,
        opened_at=DAY_START,
        opening_register_wh=1_000_000,
        zone=ZoneInfo("Asia/Urumqi"),
    )
    store_readings(conn, series("m1", DAY_START + STEP, 96, STEP, 1_000_400, 400))
    store_readings(conn, series("m2", DAY_START + STEP, 96, STEP, 1_000_400, 400))
    settled = settle_day(conn, catalog, date(2026, 11, 20), SHANGHAI, now=NOW, lateness_s=LATENESS_S, batch_accounts=5)
    assert (settled.accounts, settled.run.accounts, settled.day.charges) == (1, 1, 96)
    assert [a.account_id for a in settled.arrears] == ["a1"]


def test_a_payment_while_a_disconnect_is_pending_supersedes_it_with_a_reconnect(conn: Conn) -> None:
    catalog = seed_catalog(conn)
    register(conn, ["m1"])
    _open(conn, catalog, "a1", "m1")
    store_readings(conn, series("m1", DAY_START + STEP, 16, STEP, 1_000_500, 500))
    _runner(conn, catalog).sweep()
    disconnect = conn.execute("SELECT request_id, action FROM command_requests").fetchall()
    assert [r[1] for r in disconnect] == ["disconnect"]

    result = pay(conn, catalog, TopUp("wechat", "WX-1", "a1", 10_000, NOW), now=NOW, received_by="test")

    assert isinstance(result.outcome, ToppedUp)
    assert result.decided is not None
    [reconnect] = result.decided.commands
    assert reconnect.action is RelayAction.RECONNECT
    assert reconnect.supersedes is not None
    assert reconnect.supersedes.request_id == disconnect[0][0]
    stored = conn.execute(
        "SELECT action, supersedes, requested_by FROM command_requests WHERE request_id = %s", (reconnect.request_id,)
    ).fetchone()
    assert stored == ("reconnect", disconnect[0][0], "payment:wechat")
    pending = conn.execute("SELECT pending_command->>'action', version > 1 FROM prepaid_accounts").fetchone()
    assert pending == ("reconnect", True)
    duplicate = pay(conn, catalog, TopUp("wechat", "WX-1", "a1", 10_000, NOW), now=NOW, received_by="test")
    assert duplicate.decided is None
    assert count(conn, "SELECT count(*) FROM command_requests") == 2


def test_a_declared_holiday_year_replaces_the_unknown_calendar(conn: Conn) -> None:
    """Past the calendar package's last year every day is unknown; a year entered by an operator makes it known."""
    weekend_policy = replace(
        STRICT_POLICY,
        name="weekends",
        friendly=FriendlyCreditWindows(None, None, weekends=True, public_holidays=True, eve_of_public_holidays=False),
    )
    catalog = seed_catalog(conn)
    put_policy(conn, weekend_policy, stored_by="test")
    register(conn, ["m1"])
    monday = datetime(2031, 3, 3, tzinfo=SHANGHAI).astimezone(UTC)  # a year no package release knows yet
    put_tariff(conn, replace(TARIFF, code="T2031"), stored_by="test", now=DAY_START)
    open_account(
        conn,
        catalog,
        "a1",
        meter_id="m1",
        tariff_code="T2031",
        policy_code="weekends",
        opened_at=monday,
        opening_register_wh=0,
        zone=SHANGHAI,
    )
    at = monday + timedelta(hours=13)
    assert store_readings(conn, series("m1", monday + timedelta(hours=10), 8, STEP, 1_000, 1_000), now=at) == 8

    def sweep() -> charging.BatchStats:
        return EngineRunner(conn, 0, 50, clock=lambda: at, catalog=catalog).sweep()

    assert sweep().decided == 1
    # credit exhausted, but the day is unknown to the calendar: no disconnect, and no known time to try again
    assert count(conn, "SELECT count(*) FROM command_requests") == 0
    assert count(conn, "SELECT count(*) FROM prepaid_accounts WHERE in_episode AND wake_at IS NULL") == 1

    year = DeclaredYear(2031, "test notice", {date(2031, 1, 1): "元旦"}, {})
    at += timedelta(minutes=1)
    assert put_calendar_year(conn, year, stored_by="test", now=at) is True
    assert put_calendar_year(conn, year, stored_by="test", now=at) is False
    assert sweep().decided == 1
    assert [r[0] for r in conn.execute("SELECT action FROM command_requests").fetchall()] == ["disconnect"]
