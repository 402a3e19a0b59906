"""`headend demo` tells the whole prepaid loop on embedded services: warnings, a disconnect, a payment, a reconnect;
and the polled meters' part: Modbus and DL/T 645 meters read at every load point and charged, one DL/T 645 meter
tripped over DL/T 645, paid for, armed (合闸允许) and closed by its button."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
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


def mqtt_story(out: str) -> str:
    """The demo's output without the lines of the polled meters' accounts (whose story steps read alike)."""
    return "\n".join(line for line in out.splitlines() if not re.search(r"\bPP-(DL|MB)\d", line))


def test_the_story_is_told_in_order(demo_run: tuple[str, Path]) -> None:
    out = mqtt_story(demo_run[0])
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
    accounts = rows(
        db,
        "SELECT a.account_id FROM prepaid_accounts a JOIN meters m USING (meter_id) "
        "WHERE a.account_id LIKE 'PP-%%' AND m.protocol = 'mqtt'",
    )
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


POLLED = {"modbus": 4, "dlt645": 3}  # the demo's default polled meters
LOAD_POINTS = 96


def test_the_polled_meters_story_is_told_in_order(demo_run: tuple[str, Path]) -> None:
    out = demo_run[0]
    steps = [
        "registered 7 polled meters (the same CSV import, protocol modbus and dlt645)",
        "poll: the first round at 00:00 read 7 of 7 polled meters",
        "prepaid: 3 accounts on polled meters, charged by the same engine from the polled readings",
        "disconnect sent to meter DL000000000001 (attempt 1 via dlt645 at 127.0.0.1:",
        "disconnect confirmed by the meter (relay open): status word 3 read back over DL/T 645",
        "meter DL000000000001 reading at",
        "credited (simulated, channel counter) → balance ¥",
        "reconnect requested by payment:counter",
        "reconnect sent to meter DL000000000001 (attempt 1 via dlt645 at 127.0.0.1:",
        "reconnect confirmed by the meter: relay open and armed (合闸允许), the customer closes it with the button",
        "the customer presses the button on meter DL000000000001 (simulated, on site): relay closed",
        "the dispatcher's check of armed meters reads the relay closed: button pressed, supply connected",
        "Polled meters",
        f"poll rounds           : {LOAD_POINTS}, one at each load point ({LOAD_POINTS * 7} meters read, 0 failed)",
        "button (合闸允许)     : pressed, and read back by the dispatcher's check of armed meters",
        "Collection report for",
        "by protocol:",
    ]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions, strict=True) if p < 0]
    assert positions == sorted(positions), out
    for protocol, n in POLLED.items():
        assert re.search(rf"    {protocol} +{n}/{n} +100\.00%  complete {n}\n", out), out


def test_the_polled_meters_are_read_at_every_load_point_and_charged(db: psycopg.Connection[Any]) -> None:
    polled = rows(db, "SELECT meter_id, protocol FROM meters WHERE protocol <> 'mqtt' ORDER BY meter_id")
    assert {p: sum(1 for _, q in polled if q == p) for _, p in polled} == POLLED
    [(start,)] = rows(db, "SELECT min(r.ts) FROM readings r JOIN meters m USING (meter_id) WHERE m.protocol = 'mqtt'")
    points = [start + k * timedelta(minutes=15) for k in range(LOAD_POINTS)]
    for meter_id, _ in polled:
        read = rows(db, "SELECT ts, source FROM readings WHERE meter_id = %s AND ts >= %s ORDER BY ts", meter_id, start)
        # one reading at each load point of the simulated day, stamped at it, by the poll worker
        assert [ts for ts, _ in read] == points, meter_id
        assert all(source.startswith(("modbus:127.0.0.1:", "dlt645:127.0.0.1:")) for _, source in read)
    assert rows(db, "SELECT count(*) FROM poll_failures") == [(0,)]
    accounts = rows(
        db,
        "SELECT a.account_id, m.meter_id FROM prepaid_accounts a JOIN meters m USING (meter_id) "
        "WHERE m.protocol <> 'mqtt' ORDER BY a.account_id",
    )
    assert {dict(polled)[m] for _, m in accounts} == {"modbus", "dlt645"}
    for account_id, meter_id in accounts:
        # charged by the engine as the MQTT meters are: up to the last load point, every Wh between the first reading
        # (the account's opening register) and the last once
        [(charged_until,)] = rows(db, "SELECT charged_until FROM prepaid_accounts WHERE account_id = %s", account_id)
        assert charged_until == points[-1], account_id
        usage = rows(
            db, "SELECT amount_fen, reference FROM ledger_postings WHERE posting_id LIKE %s", f"usage:{account_id}:%"
        )
        charged_wh = sum(int(reference.split(", ")[1].removesuffix(" Wh")) for _, reference in usage)
        [(first, last)] = rows(
            db,
            "SELECT min(energy_import_wh) FILTER (WHERE ts = %s), min(energy_import_wh) FILTER (WHERE ts = %s) "
            "FROM readings WHERE meter_id = %s",
            points[0],
            points[-1],
            meter_id,
        )
        assert charged_wh == last - first > 0, account_id
        assert sum(amount for amount, _ in usage) > 0, account_id


def test_the_dlt645_meter_is_tripped_and_reconnected_over_dlt645_each_command_confirmed(
    db: psycopg.Connection[Any],
) -> None:
    [(account_id, meter_id, protocol, mode, supply)] = rows(
        db,
        "SELECT a.account_id, m.meter_id, m.protocol, m.reconnect_mode, a.supply FROM payments p "
        "JOIN prepaid_accounts a USING (account_id) JOIN meters m ON m.meter_id = a.meter_id "
        "WHERE p.channel = 'counter' AND p.channel_txn_id LIKE %s",
        "pay-%",
    )
    assert (protocol, mode) == ("dlt645", "allowed")
    commands = rows(
        db, "SELECT command_id, action, state, relay FROM commands WHERE account_id = %s ORDER BY sequence", account_id
    )
    assert [c[1:] for c in commands[:2]] == [("disconnect", "confirmed", "open"), ("reconnect", "confirmed", "open")]
    for (command_id, action, _, _), last in zip(
        commands[:2],
        ("relay read back open", "relay open and armed: the customer closes it with the button"),
        strict=True,
    ):
        trail = rows(
            db, "SELECT to_state, actor, detail FROM command_audit WHERE command_id = %s ORDER BY seq", command_id
        )
        assert [t[0] for t in trail] == ["created", "sent", "acknowledged", "confirmed"], (action, trail)
        assert trail[1][2].startswith("sending attempt 1 via dlt645 at 127.0.0.1:"), trail
        assert trail[3][1:] == (f"meter:{meter_id}", last)
    # the customer's button closed the armed relay, and the dispatcher's check read it back
    assert rows(db, "SELECT relay, ready_for_reconnection, source FROM meter_relays WHERE meter_id = %s", meter_id) == [
        ("closed", False, "button_pressed")
    ]
    if len(commands) == 2:
        assert supply == "connected"
    # the polled readings: the relay open and nothing metered while cut off, closed and metering again after
    readings = rows(
        db,
        "SELECT relay_state, power_w, energy_import_wh FROM readings WHERE meter_id = %s ORDER BY ts",
        meter_id,
    )
    relays = [r[0] for r in readings]
    cut = relays.index("open")
    back = relays.index("closed", cut)
    assert back - cut >= 2  # the payment waited for a reading two intervals after the disconnect was confirmed
    assert all(r[2] == readings[cut][2] for r in readings[cut:back])
    # the first open reading's five DL/T 645 exchanges may have straddled the trip: its power was read before it
    assert all(r[1] == 0 for r in readings[cut + 1 : back])
    assert readings[-1][2] > readings[back - 1][2]


# last: the second demo starts the embedded server in the same data dir again, and the `db` fixture's connection ends
def test_a_second_demo_in_the_same_data_dir_tells_the_whole_loop_again(demo_run: tuple[str, Path]) -> None:
    again = headend("demo", "--speed", "3600", env={**NO_SERVICES, "HEADEND_DATA_DIR": str(demo_run[1])}, timeout_s=240)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "disconnect confirmed by the meter (relay open)" in mqtt_story(again.stdout)
    assert "reconnect confirmed by the meter (relay closed)" in mqtt_story(again.stdout)
    assert "reconnect confirmed by the meter: relay open and armed (合闸允许)" in again.stdout
