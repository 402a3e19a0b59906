"""`headend demo` tells the whole prepaid loop on embedded services: warnings, a disconnect, a payment, a reconnect."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from headend.db.connection import connect_database
from headend.db.embedded import embedded_postgres
from headend.demo.run import DEMO_DATABASE
from headend.money import ledger_store
from tests.e2e.test_collection_end_to_end import headend

pytestmark = pytest.mark.e2e

NO_SERVICES = {"HEADEND_DATABASE_URL": "", "HEADEND_MQTT_HOST": ""}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One demo of the default fleet at twice its default speed, on embedded PostgreSQL and broker; its output."""
    data_dir = tmp_path_factory.mktemp("demo") / "data"
    result = headend("demo", "--speed", "3600", env={**NO_SERVICES, "HEADEND_DATA_DIR": str(data_dir)}, timeout_s=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, data_dir


@pytest.fixture(scope="module")
def db(demo_run: tuple[str, Path]) -> Iterator[psycopg.Connection[Any]]:
    """The demo's embedded database, started again after the demo stopped it."""
    with embedded_postgres(demo_run[1]) as server, connect_database(demo_database(server)) as conn:
        yield conn


def demo_database(server_url: str) -> str:
    """The URL of the demo's own database on the embedded server."""
    return make_url(server_url).set(database=DEMO_DATABASE).render_as_string(hide_password=False)


def rows(conn: psycopg.Connection[Any], sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Every row of a query."""
    return conn.execute(sql, params or None).fetchall()


def test_the_story_is_told_in_order(demo_run: tuple[str, Path]) -> None:
    out = demo_run[0]
    steps = [
        "no friendly-credit hours",
        "prepaid: 5 accounts on the heaviest users, each topped up with ¥4.00 (channel demo)",
        "low-balance warning sent: balance ¥",
        "zero-balance notice sent",
        "disconnect requested by engine",
        "disconnect sent to meter",
        "disconnect confirmed by the meter (relay open)",
        "credited (simulated, channel demo) → balance ¥",
        "reconnect requested by payment:demo",
        "reconnect sent to meter",
        "reconnect confirmed by the meter (relay closed)",
        "Prepaid loop",
        "ledger                : every invariant holds",
        "Collection report for",
    ]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions, strict=True) if p < 0]
    assert positions == sorted(positions), out
    assert "payments              : 1 (" in out
    assert "reconnects confirmed  : 0" not in out
    assert "disconnects confirmed : 0" not in out


def test_the_database_holds_the_story(db: psycopg.Connection[Any]) -> None:
    accounts = [r[0] for r in rows(db, "SELECT account_id FROM prepaid_accounts WHERE account_id LIKE 'PP-%'")]
    assert len(accounts) == 5
    kinds = dict(rows(db, "SELECT kind, count(*) FROM notification_outbox GROUP BY kind"))
    assert kinds.get("low_balance_warning", 0) >= 1
    assert kinds.get("zero_balance", 0) >= 1
    [(payee, amount)] = rows(
        db, "SELECT account_id, amount_fen FROM payments WHERE channel = 'demo' AND channel_txn_id LIKE %s", "pay-%"
    )
    assert amount >= 1_000
    actions = rows(db, "SELECT action, state FROM commands WHERE account_id = %s ORDER BY sequence", payee)
    assert actions[:2] == [("disconnect", "confirmed"), ("reconnect", "confirmed")]
    assert ledger_store.check_invariants(db) == ()


def test_a_disconnected_meter_reports_an_open_relay_and_meters_nothing(db: psycopg.Connection[Any]) -> None:
    [(meter_id,)] = rows(
        db,
        "SELECT a.meter_id FROM payments p JOIN prepaid_accounts a USING (account_id) "
        "WHERE p.channel = 'demo' AND p.channel_txn_id LIKE %s",
        "pay-%",
    )
    readings = rows(
        db, "SELECT ts, relay_state, power_w, energy_import_wh FROM readings WHERE meter_id = %s ORDER BY ts", meter_id
    )
    open_relay = [i for i, r in enumerate(readings) if r[1] == "open"]
    assert open_relay, "the paid-for meter (a direct one) never reported its relay open"
    for i in open_relay:
        assert readings[i][2] == 0
        if i > 0 and readings[i - 1][1] == "open":
            assert readings[i][3] == readings[i - 1][3], "an open relay let energy through"
    # reconnected: the relay closed again and the register moved on
    after = [r for r in readings[open_relay[0] :] if r[1] == "closed"]
    assert after
    assert after[-1][3] > readings[open_relay[0]][3]


def test_the_demo_runs_as_the_operator_role_on_a_schema_the_owner_role_owns(
    demo_run: tuple[str, Path], db: psycopg.Connection[Any]
) -> None:
    # the embedded database is refused what production is: nothing of the loop ran as the superuser
    assert "as role headend_operator" in demo_run[0]
    owners = rows(
        db,
        "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')",
    )
    assert owners == [("headend_owner",)]
    assert rows(db, "SELECT has_table_privilege('headend_operator', 'ledger_postings', 'UPDATE')") == [(False,)]


def test_a_second_demo_in_the_same_data_dir_tells_the_whole_loop_again(demo_run: tuple[str, Path]) -> None:
    again = headend("demo", "--speed", "3600", env={**NO_SERVICES, "HEADEND_DATA_DIR": str(demo_run[1])}, timeout_s=240)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "disconnect confirmed by the meter (relay open)" in again.stdout
    assert "reconnect confirmed by the meter (relay closed)" in again.stdout
