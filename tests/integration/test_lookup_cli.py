"""Operators' look-ups on the real PostgreSQL: `meters list|show`, `command list`, `alarm list`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from typer.testing import CliRunner, Result

from headend.cli.app import app
from headend.cli.common import yuan
from headend.dispatch import operations, store
from headend.dispatch.lifecycle import AlarmKind
from headend.engine.accounts import open_account
from headend.engine.catalog import Catalog
from headend.engine.runner import EngineRunner
from prepay_engine.tariffs import SHANGHAI
from protocols.readings import RelayState
from tests.integration.conftest import register
from tests.integration.engine_support import DAY_START, STRICT_POLICY, TARIFF, seed_catalog, series, store_readings

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
STEP = timedelta(minutes=15)
TTL = timedelta(minutes=10)


def _run(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"HEADEND_DATABASE_URL": database_url})


def _ok(database_url: str, *args: str) -> str:
    result = _run(database_url, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def _first_column(text: str) -> list[str]:
    """The first cell of each table row (the header and a paging note left out)."""
    lines = text.splitlines()
    return [line.split()[0] for line in lines[1:] if "shown" not in line]


def _raise_alarm(conn: Conn, meter_id: str, at: datetime, command_id: str | None = None) -> int:
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        return store.raise_alarm(cur, meter_id, command_id, AlarmKind.RELAY_MISMATCH, RelayState.CLOSED, "stuck", at)


def _note_relay(conn: Conn, meter_id: str, relay: RelayState, armed: bool, at: datetime, source: str) -> None:
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        store.note_relay(cur, meter_id, relay, armed, at, at, source)


def test_meters_are_listed_by_id_filtered_and_paged(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, ["m05", "m01", "m02", "m03", "m04"], concentrator="dcuA", region="north")
        register(conn, ["m06", "m07"], concentrator="dcuB", region="south", status="inactive")
        register(conn, ["d1"], region="south")
        store_readings(conn, [("m01", DAY_START, 1000), ("m01", DAY_START + STEP, 1200)])
        _note_relay(conn, "m02", RelayState.OPEN, True, DAY_START, "relay:A2:1:disconnect")

    listed = _ok(database_url, "meters", "list")
    lines = listed.splitlines()
    assert lines[0].split()[:5] == ["meter", "protocol", "concentrator", "region", "status"]
    assert "last reading (Asia/Shanghai)" in lines[0]
    assert _first_column(listed) == ["d1", "m01", "m02", "m03", "m04", "m05", "m06", "m07"]
    # DAY_START + 15 minutes in Asia/Shanghai; nothing read yet is "never"; a relay open and armed
    assert lines[2].split() == ["m01", "mqtt", "dcuA", "north", "active", "2026-11-20", "00:15:00", "-"]
    assert lines[3].split() == ["m02", "mqtt", "dcuA", "north", "active", "never", "open,", "armed"]
    assert lines[1].split() == ["d1", "mqtt", "-", "south", "active", "never", "-"]
    assert "shown" not in listed

    assert _first_column(_ok(database_url, "meters", "list", "--concentrator", "dcuB")) == ["m06", "m07"]
    assert _first_column(_ok(database_url, "meters", "list", "--region", "south")) == ["d1", "m06", "m07"]
    assert _first_column(_ok(database_url, "meters", "list", "--status", "inactive")) == ["m06", "m07"]
    assert _first_column(_ok(database_url, "meters", "list", "--region", "north", "--status", "active")) == [
        "m01",
        "m02",
        "m03",
        "m04",
        "m05",
    ]
    assert _ok(database_url, "meters", "list", "--concentrator", "nowhere").strip() == "no meters"

    first = _ok(database_url, "meters", "list", "--limit", "3")
    assert _first_column(first) == ["d1", "m01", "m02"]
    assert first.splitlines()[-1] == "3 shown, more follow: --after m02"
    second = _ok(database_url, "meters", "list", "--limit", "3", "--after", "m02")
    assert _first_column(second) == ["m03", "m04", "m05"]
    assert second.splitlines()[-1] == "3 shown, more follow: --after m05"
    last = _ok(database_url, "meters", "list", "--limit", "3", "--after", "m05")
    assert _first_column(last) == ["m06", "m07"]
    assert "shown" not in last

    page = json.loads(_ok(database_url, "meters", "list", "--limit", "2", "--json"))
    assert page["next_after"] == "m01"
    assert page["meters"][1] == {
        "meter_id": "m01",
        "protocol": "mqtt",
        "concentrator_id": "dcuA",
        "region": "north",
        "status": "active",
        "last_reading_at": "2026-11-20T00:15:00+08:00",
        "relay": None,
        "ready_for_reconnection": None,
    }
    tail = json.loads(_ok(database_url, "meters", "list", "--after", "m06", "--json"))
    assert tail == {"meters": [tail["meters"][0]], "next_after": None}
    assert tail["meters"][0]["meter_id"] == "m07"

    for args in (("--status", "broken"), ("--limit", "0")):
        refused = _run(database_url, "meters", "list", *args)
        assert refused.exit_code == 2, (args, refused.output)
        assert args[0] in refused.output


def test_a_meter_is_shown_with_its_reading_relay_account_commands_and_alarms(database_url: str) -> None:
    now = DAY_START + timedelta(days=1, hours=2)
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, ["m1"], concentrator="dcu1", region="north")
        catalog = seed_catalog(conn)
        open_account(
            conn,
            catalog,
            "A1",
            meter_id="m1",
            tariff_code=TARIFF.code,
            policy_code=STRICT_POLICY.name,
            opened_at=DAY_START,
            opening_register_wh=1_000_000,
            zone=SHANGHAI,
        )
        store_readings(conn, series("m1", DAY_START + STEP, 16, STEP, 1_000_500, 500))
        # off the 15-minute grid: stored with the OFF_GRID flag
        store_readings(conn, [("m1", DAY_START + 17 * STEP + timedelta(minutes=7), 1_009_000)])
        EngineRunner(conn, 600.0, 100, clock=lambda: now, catalog=catalog).sweep()
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            [disconnect] = store.take_requests(cur, now, TTL, None)
        read = operations.request_relay_read(conn, "m1", by="ops.li", now=now + timedelta(minutes=1), ttl=TTL)
        finished = operations.request_relay_read(conn, "m1", by="ops.li", now=now, ttl=TTL)
        operations.cancel(conn, Catalog(), finished.command_id, by="ops.li", reason="test", now=now)
        _note_relay(conn, "m1", RelayState.CLOSED, False, now, "spontaneous")
        alarm = _raise_alarm(conn, "m1", now, disconnect)
        resolved = _raise_alarm(conn, "m1", now)
        assert store.resolve_alarm(conn, resolved, "ops.li", now)
        [(balance,)] = conn.execute(
            "SELECT balance_fen FROM ledger_accounts WHERE account_id = 'customer:A1:prepaid'"
        ).fetchall()
    assert balance < 0

    shown = _ok(database_url, "meters", "show", "m1")
    lines = shown.splitlines()
    assert lines[0].split() == ["meter", "m1", "(active)"]
    assert "concentrator   dcu1  region north" in shown
    assert "register       multiplier 1  maximum 999999990 Wh" in shown
    assert "last reading   2026-11-20 04:22:00  register 1009000 Wh  flags OFF_GRID" in shown
    assert "relay          closed  reported 2026-11-21 02:00:00 (spontaneous)" in shown
    assert f"account        A1  balance {yuan(balance)}  supply connected" in shown
    assert "open commands  2" in shown
    command_lines = [line.split() for line in lines if line.startswith("  ") and "issued" in line]
    # newest first; the cancelled read is not open
    assert [(c[0], c[1], c[2]) for c in command_lines] == [
        (read.command_id, "read_relay", "created"),
        (disconnect, "disconnect", "created"),
    ]
    assert finished.command_id not in shown
    assert "open alarms    1" in shown
    assert f"  #{alarm}  relay_mismatch  relay closed  raised 2026-11-21 02:00:00  command {disconnect}  stuck" in shown
    assert f"#{resolved}" not in shown

    detail = json.loads(_ok(database_url, "meters", "show", "m1", "--json"))
    assert detail["meter"]["meter_id"] == "m1"
    assert detail["meter"]["reconnect_mode"] == "direct"
    assert detail["last_reading"]["ts"] == "2026-11-20T04:22:00+08:00"
    assert detail["last_reading"]["energy_import_wh"] == 1_009_000
    assert detail["last_reading"]["flags"] == ["OFF_GRID"]
    assert detail["relay"]["relay"] == "closed"
    assert detail["account"] == {
        "account_id": "A1",
        "balance_fen": balance,
        "supply": "connected",
        "protected": False,
        "keep_supply": False,
    }
    assert [c["command_id"] for c in detail["open_commands"]] == [read.command_id, disconnect]
    assert detail["open_commands"][1]["account_id"] == "A1"
    assert [a["alarm_id"] for a in detail["open_alarms"]] == [alarm]
    assert (detail["more_open_commands"], detail["more_open_alarms"]) == (False, False)


def test_a_bare_meter_and_an_unknown_one(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, ["bare"])
    shown = _ok(database_url, "meters", "show", "bare")
    for line in (
        "last reading   never",
        "relay          never reported",
        "account        none",
        "open commands  none",
        "open alarms    none",
    ):
        assert line in shown.splitlines()
    detail = json.loads(_ok(database_url, "meters", "show", "bare", "--json"))
    assert (detail["last_reading"], detail["relay"], detail["account"]) == (None, None, None)
    assert (detail["open_commands"], detail["open_alarms"]) == ([], [])

    for args in (("nope",), ("nope", "--json")):
        unknown = _run(database_url, "meters", "show", *args)
        assert unknown.exit_code == 1
        assert unknown.stdout == ""
        assert unknown.stderr.strip() == "error: no meter 'nope'"


def test_commands_are_listed_newest_first_filtered_and_paged(database_url: str) -> None:
    start = datetime(2026, 11, 21, 1, 0, tzinfo=UTC)
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, ["m1", "m2"])
        ids = [
            operations.request_relay_read(
                conn, meter, by="ops.li", now=start + i * timedelta(minutes=1), ttl=TTL
            ).command_id
            for i, meter in enumerate(["m1", "m2", "m1", "m2"])
        ]
        operations.cancel(conn, Catalog(), ids[2], by="ops.li", reason="wrong meter", now=start + timedelta(hours=1))
    newest_first = ids[::-1]

    listed = _ok(database_url, "command", "list")
    lines = listed.splitlines()
    headers = ["issued", "(Asia/Shanghai)", "command", "action", "meter", "account", "state", "attempts", "detail"]
    assert lines[0].split() == headers
    # local time first (two cells), then the id
    assert [line.split()[2] for line in lines[1:]] == newest_first
    assert lines[1].split()[:8] == ["2026-11-21", "09:03:00", ids[3], "read_relay", "m2", "-", "created", "0"]
    assert lines[2].split()[6] == "cancelled"
    assert "cancelled by ops.li: wrong meter" in lines[2]

    def ids_of(*args: str) -> list[str]:
        return [line.split()[2] for line in _ok(database_url, "command", "list", *args).splitlines()[1:]]

    assert ids_of("--meter", "m1") == [ids[2], ids[0]]
    assert ids_of("--state", "cancelled") == [ids[2]]
    assert ids_of("--state", "created", "--meter", "m2") == [ids[3], ids[1]]
    assert _ok(database_url, "command", "list", "--state", "held").strip() == "no commands"
    assert _ok(database_url, "command", "list", "--account", "A1").strip() == "no commands"

    first = _ok(database_url, "command", "list", "--limit", "3")
    assert first.splitlines()[-1] == f"3 shown, older ones follow: --before {ids[1]}"
    rest = _ok(database_url, "command", "list", "--limit", "3", "--before", ids[1])
    assert [line.split()[2] for line in rest.splitlines()[1:]] == [ids[0]]

    page = json.loads(_ok(database_url, "command", "list", "--limit", "1", "--json"))
    assert page["next_before"] == ids[3]
    [command] = page["commands"]
    assert command["command_id"] == ids[3]
    assert (command["action"], command["state"], command["meter_id"]) == ("read_relay", "created", "m2")
    assert command["issued_at"] == "2026-11-21T09:03:00+08:00"
    assert command["finished_at"] is None
    cancelled = json.loads(_ok(database_url, "command", "list", "--state", "cancelled", "--json"))
    assert cancelled["commands"][0]["finished_at"] == "2026-11-21T10:00:00+08:00"
    assert cancelled["next_before"] is None

    unknown = _run(database_url, "command", "list", "--before", "nope")
    assert unknown.exit_code == 2
    assert "no command 'nope'" in unknown.output
    bad_state = _run(database_url, "command", "list", "--state", "stuck")
    assert bad_state.exit_code == 2
    assert "--state" in bad_state.output


def test_alarms_are_listed_open_or_all_by_meter_and_paged(database_url: str) -> None:
    raised = datetime(2026, 11, 21, 1, 0, tzinfo=UTC)
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, ["m1", "m2"])
        ids = [
            _raise_alarm(conn, meter, raised + i * timedelta(minutes=1))
            for i, meter in enumerate(["m1", "m2", "m1", "m2"])
        ]
        assert store.resolve_alarm(conn, ids[1], "ops.wang", raised + timedelta(hours=2))

    listed = _ok(database_url, "alarm", "list")
    lines = listed.splitlines()
    assert lines[0].split()[:4] == ["alarm", "raised", "(Asia/Shanghai)", "meter"]
    assert _first_column(listed) == [str(ids[3]), str(ids[2]), str(ids[0])]
    newest = [str(ids[3]), "2026-11-21", "09:03:00", "m2", "relay_mismatch", "closed", "-", "open", "stuck"]
    assert lines[1].split() == newest

    every = _ok(database_url, "alarm", "list", "--all")
    assert _first_column(every) == [str(i) for i in ids[::-1]]
    assert "2026-11-21 11:00:00 by ops.wang" in every
    assert _first_column(_ok(database_url, "alarm", "list", "--meter", "m1")) == [str(ids[2]), str(ids[0])]
    assert _first_column(_ok(database_url, "alarm", "list", "--all", "--meter", "m2")) == [str(ids[3]), str(ids[1])]
    assert _ok(database_url, "alarm", "list", "--meter", "m3").strip() == "no open alarms"

    first = _ok(database_url, "alarm", "list", "--all", "--limit", "2")
    assert _first_column(first) == [str(ids[3]), str(ids[2])]
    assert first.splitlines()[-1] == f"2 shown, older ones follow: --before {ids[2]}"
    rest = _ok(database_url, "alarm", "list", "--all", "--limit", "2", "--before", str(ids[2]))
    assert _first_column(rest) == [str(ids[1]), str(ids[0])]
    assert "shown" not in rest

    page = json.loads(_ok(database_url, "alarm", "list", "--all", "--meter", "m2", "--json"))
    assert page["next_before"] is None
    assert [a["alarm_id"] for a in page["alarms"]] == [ids[3], ids[1]]
    assert page["alarms"][1] == {
        "alarm_id": ids[1],
        "meter_id": "m2",
        "command_id": None,
        "kind": "relay_mismatch",
        "detail": "stuck",
        "relay": "closed",
        "raised_at": "2026-11-21T09:01:00+08:00",
        "resolved_at": "2026-11-21T11:00:00+08:00",
        "resolved_by": "ops.wang",
    }
