"""Backlogs are charged: readings stored while no runner followed them — a concentrator forwarding what it held
during an outage, an engine restarted late — are charged by the next sweep, a fresh runner or the settlement, exactly
as if they had arrived live, however long after the runner has looked at the account.

Two accounts on two meters with the same readings: the control's meter reports live; the backlog's meter falls
silent at 02:00 (its concentrator offline) and its readings from 02:15 to 06:00 arrive in one batch after 08:00.
Both are out of credit from the first interval and on a policy with friendly nights, so the runner wakes both at
08:00 to disconnect them: it has looked at the backlog account after 06:00, and its `seen_until` is past the backlog.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import psycopg
import pytest

from headend.db.engine import connect_utc
from headend.engine.catalog import Catalog, put_policy
from headend.engine.runner import EngineRunner
from headend.engine.settlement import settle_day, tally_problems
from headend.money import ledger_store
from prepay_engine.ledger import prepaid_account_id
from prepay_engine.policy import FriendlyCreditWindows
from prepay_engine.tariffs import SHANGHAI
from tests.integration.conftest import admin_connection, count, register, wait_for
from tests.integration.engine_support import (
    DAY_START,
    STRICT_POLICY,
    open_test_account,
    seed_catalog,
    store_readings,
)

Conn = psycopg.Connection[Any]
STEP = timedelta(minutes=15)
LATENESS_S = 600.0
MINUTE = timedelta(minutes=1)
# no disconnect between 22:00 and 08:00: the accounts run out of credit at night and are woken at 08:00
NIGHTS = replace(
    STRICT_POLICY,
    name="nights",
    friendly=FriendlyCreditWindows(
        time(22), time(8), weekends=False, public_holidays=False, eve_of_public_holidays=False
    ),
)
SILENT_FROM = 8  # the backlog meter's readings from the ninth (02:15) on are its concentrator's backlog
READINGS = 24  # 00:15 to 06:00
MORNING = DAY_START + timedelta(hours=8)  # the end of the friendly night: both accounts are woken and disconnected
FORWARDED = MORNING + timedelta(minutes=30)  # the concentrator is back and forwards its backlog


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    """An autocommit connection to a fresh migrated database."""
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


def _readings(meter_id: str) -> list[tuple[str, datetime, int]]:
    """The day's readings up to 06:00: on the grid, a use that varies so that the fen rounding is carried."""
    register_wh, out = 1_000_000, []
    for i in range(READINGS):
        register_wh += 100 + i * 37 % 300
        out.append((meter_id, DAY_START + (i + 1) * STEP, register_wh))
    return out


def _runner(conn: Conn, now: datetime, **kwargs: Any) -> EngineRunner:
    return EngineRunner(conn, LATENESS_S, 50, clock=lambda: now, catalog=Catalog(), eager_on_grid=True, **kwargs)


def _live_until_the_morning(conn: Conn) -> list[tuple[str, datetime, int]]:
    """Open the control (ac on mc) and the backlog account (ab on mb); run the night live up to the 08:00 wake-up.

    Returns the backlog: mb's readings that its concentrator held.
    """
    catalog = seed_catalog(conn)
    put_policy(conn, NIGHTS, stored_by="test")
    register(conn, ["mc", "mb"])
    for account_id, meter_id in (("ac", "mc"), ("ab", "mb")):
        open_test_account(conn, catalog, account_id, meter_id, policy_code=NIGHTS.name)
    control, backlog = _readings("mc"), _readings("mb")
    for i in range(READINGS):
        at = control[i][1] + MINUTE
        store_readings(conn, [control[i]] + ([backlog[i]] if i < SILENT_FROM else []), now=at)
        _runner(conn, at).sweep()
    # out of credit since the first interval, the disconnect deferred to the end of the friendly night
    wake = conn.execute("SELECT account_id, wake_at FROM prepaid_accounts ORDER BY 1").fetchall()
    assert [tuple(r) for r in wake] == [("ab", MORNING), ("ac", MORNING)]
    assert _runner(conn, MORNING + MINUTE).sweep().accounts == 2
    assert count(conn, "SELECT count(*) FROM command_requests WHERE action = 'disconnect'") == 2
    # the runner has looked at the backlog account after the last reading its concentrator holds
    seen = conn.execute("SELECT seen_until FROM prepaid_accounts WHERE account_id = 'ab'").fetchone()
    assert seen is not None
    assert seen[0] > backlog[-1][1]
    assert _charge_count(conn, "ab") == SILENT_FROM
    # the night's batches were stored hours before the backlog is (in this test, moments before)
    _age_batches(conn, timedelta(hours=2))
    return backlog[SILENT_FROM:]


def _charge_count(conn: Conn, account_id: str) -> int:
    return count(conn, "SELECT count(*) FROM usage_charges WHERE account_id = %s", account_id)


def _charges(conn: Conn, account_id: str) -> dict[str, int]:
    """(charge id, fen) of the account's interval charges, the meter's id in the charge id written as `<meter>`."""
    rows = conn.execute(
        "SELECT charge_id, meter_id, amount_fen FROM usage_charges WHERE account_id = %s", (account_id,)
    ).fetchall()
    return {str(charge_id).replace(f":{meter_id}:", ":<meter>:", 1): int(fen) for charge_id, meter_id, fen in rows}


def _assert_charged_as_if_live(conn: Conn) -> None:
    """The backlog account charged exactly as the control, interval by interval; the ledger whole."""
    control = _charges(conn, "ac")
    assert len(control) == READINGS
    assert _charges(conn, "ab") == control
    assert ledger_store.balance_fen(conn, prepaid_account_id("ab")) == ledger_store.balance_fen(
        conn, prepaid_account_id("ac")
    )
    assert ledger_store.balance_fen(conn, prepaid_account_id("ab")) == -sum(control.values())
    assert ledger_store.check_invariants(conn) == ()
    assert tally_problems(conn) == []


def _age_batches(conn: Conn, by: timedelta) -> None:
    """Make the stored batches look `by` older, as the wall clock would after that long."""
    with admin_connection(conn) as admin:  # no role of the head-end may rewrite when a batch was stored
        admin.execute("UPDATE reading_batches SET stored_at = stored_at - %s", (by,))


def test_the_next_sweep_charges_a_backlog_stamped_before_what_the_runner_has_seen(conn: Conn) -> None:
    backlog = _live_until_the_morning(conn)
    assert store_readings(conn, backlog, now=FORWARDED) == len(backlog)

    stats = _runner(conn, FORWARDED + MINUTE).sweep()

    assert (stats.accounts, stats.charges) == (1, len(backlog))
    _assert_charged_as_if_live(conn)
    # looked at once: nothing new is stored, nothing to do
    assert _runner(conn, FORWARDED + 2 * MINUTE).sweep().accounts == 0
    # a reading older than the account's last consumed one is not a charge: the interval is charged already
    store_readings(conn, [("mb", DAY_START + timedelta(hours=5, minutes=50), backlog[-2][2] + 10)], now=FORWARDED)
    late = _runner(conn, FORWARDED + 3 * MINUTE).sweep()
    assert (late.accounts, late.charges) == (1, 0)
    _assert_charged_as_if_live(conn)


def test_a_fresh_runner_charges_a_backlog_stored_while_no_engine_ran(database_url: str, conn: Conn) -> None:
    backlog = _live_until_the_morning(conn)
    # the engine is stopped; the concentrator forwards its backlog; the engine is started half an hour later
    store_readings(conn, backlog, now=FORWARDED)
    _age_batches(conn, timedelta(minutes=30))
    started = FORWARDED + timedelta(minutes=30)
    stop = threading.Event()
    with connect_utc(database_url) as runner_conn:
        runner = _runner(runner_conn, started, full_sweep_s=3600)
        thread = threading.Thread(target=runner.run, args=(stop, 0.1))
        thread.start()
        try:
            wait_for(lambda: _charge_count(conn, "ab") == READINGS, 10, "the backlog charged by the fresh runner")
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()
    _assert_charged_as_if_live(conn)


def test_a_running_runner_charges_a_batch_stamped_outside_its_one_minute_window(database_url: str, conn: Conn) -> None:
    backlog = _live_until_the_morning(conn)
    stop = threading.Event()
    with connect_utc(database_url) as runner_conn:
        runner = _runner(runner_conn, FORWARDED + MINUTE, full_sweep_s=0.5)
        thread = threading.Thread(target=runner.run, args=(stop, 0.1))
        thread.start()
        try:
            # a batch whose transaction began two minutes before it committed (a long COPY, a wait for a lock): it is
            # stamped when it began, outside the window in which the runner follows the stored batches. The stamp is
            # rewritten in the batch's own transaction (another session would not see the batch before it commits),
            # on a superuser's connection: no role of the head-end may rewrite it
            with admin_connection(conn) as admin, admin.transaction():
                store_readings(admin, backlog, now=FORWARDED)
                admin.execute("UPDATE reading_batches SET stored_at = stored_at - interval '2 minutes'")
            wait_for(lambda: _charge_count(conn, "ab") == READINGS, 10, "the backlog charged by a full sweep")
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()
    _assert_charged_as_if_live(conn)


def test_the_settlement_charges_a_backlog_before_it_reports(conn: Conn) -> None:
    backlog = _live_until_the_morning(conn)
    store_readings(conn, backlog, now=FORWARDED)
    _age_batches(conn, timedelta(hours=16))
    now = DAY_START + timedelta(days=1, hours=1)  # the next morning: the day is over, no runner has run since 08:00

    settled = settle_day(
        conn, Catalog(), date(2026, 11, 20), SHANGHAI, now=now, lateness_s=LATENESS_S, batch_accounts=5
    )

    assert (settled.run.accounts, settled.run.charges) == (1, len(backlog))
    _assert_charged_as_if_live(conn)
    control = _charges(conn, "ac")
    assert (settled.day.charges, settled.day.charged_fen) == (2 * READINGS, 2 * sum(control.values()))
    # neither meter has read since 06:00: the rest of both days is unknown
    assert settled.incomplete_accounts == 2
    assert {a.account_id: a.balance_fen for a in settled.arrears} == {
        "ab": -sum(control.values()),
        "ac": -sum(control.values()),
    }
    assert datetime.now(UTC) > now


def test_the_ingest_writer_counts_each_batch_that_stores_readings_of_a_meter_older_ones_included(conn: Conn) -> None:
    register(conn, ["m1"])

    def state() -> tuple[Any, ...]:
        row = conn.execute(
            "SELECT stored_seq, last_ts, last_energy_import_wh FROM meter_register_state WHERE meter_id = 'm1'"
        ).fetchone()
        assert row is not None
        return tuple(row)

    at = DAY_START + timedelta(hours=2)
    store_readings(conn, [("m1", DAY_START + 4 * STEP, 1_000_400), ("m1", DAY_START + 5 * STEP, 1_000_500)], now=at)
    assert state() == (1, DAY_START + 5 * STEP, 1_000_500)
    store_readings(conn, [("m1", DAY_START + 6 * STEP, 1_000_600)], now=at)
    assert state() == (2, DAY_START + 6 * STEP, 1_000_600)
    # older than the newest: counted, the newest stays the newest
    store_readings(conn, [("m1", DAY_START + STEP, 1_000_100), ("m1", DAY_START + 2 * STEP, 1_000_200)], now=at)
    assert state() == (3, DAY_START + 6 * STEP, 1_000_600)
    # nothing new stored: not counted
    assert store_readings(conn, [("m1", DAY_START + STEP, 1_000_100)], now=at) == 0
    assert state() == (3, DAY_START + 6 * STEP, 1_000_600)
