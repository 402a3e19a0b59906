"""The prepay engine's operator commands on the real PostgreSQL: tariff, policy, account, pay, engine, settle."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from typer.testing import CliRunner, Result

from headend.cli.app import app
from prepay_engine.ledger import prepaid_account_id
from tests.integration.conftest import count, register
from tests.integration.engine_support import DAY_START, TARIFF, series, store_readings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(database_url: str, *args: str) -> Result:
    env = {"HEADEND_DATABASE_URL": database_url, "HEADEND_ENGINE_LATENESS_S": "60"}
    return CliRunner().invoke(app, list(args), env=env)


def test_an_operator_runs_an_account_from_opening_to_settlement(database_url: str, tmp_path: Path) -> None:
    tariff_file = str(EXAMPLES / "tariffs" / "jiangsu_residential.json")
    first = _run(database_url, "tariff", "put", tariff_file)
    assert first.exit_code == 0, first.output
    assert "stored as revision 1" in first.output
    assert "unchanged at revision 1" in _run(database_url, "tariff", "put", tariff_file).output
    policy = _run(database_url, "policy", "put", str(EXAMPLES / "policies" / "default.json"))
    assert policy.exit_code == 0, policy.output

    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, ["m1"])
        readings = series("m1", DAY_START + timedelta(minutes=15), 96, timedelta(minutes=15), 2_000_000, 250)
        store_readings(conn, [("m1", DAY_START, 2_000_000), *readings])

    opened = _run(
        database_url,
        "account",
        "open",
        "A1",
        "--meter",
        "m1",
        "--tariff",
        TARIFF.code,
        "--policy",
        "default",
        "--opened-at",
        DAY_START.isoformat(),
    )
    assert opened.exit_code == 0, opened.output
    assert "register 2000000 Wh" in opened.output
    taken = _run(database_url, "account", "open", "A2", "--meter", "m1", "--tariff", TARIFF.code, "--policy", "default")
    assert taken.exit_code == 1
    assert "already serves account 'A1'" in taken.output

    paid = _run(database_url, "pay", "--account", "A1", "--amount-fen", "5000", "--channel", "wechat", "--txn", "WX1")
    assert paid.exit_code == 0, paid.output
    assert "credited; balance after it ¥50.00" in paid.output
    again = _run(database_url, "pay", "--account", "A1", "--amount-fen", "5000", "--channel", "wechat", "--txn", "WX1")
    assert "duplicate, already credited; balance after it ¥50.00" in again.output
    conflict = _run(
        database_url, "pay", "--account", "A1", "--amount-fen", "4000", "--channel", "wechat", "--txn", "WX1"
    )
    assert conflict.exit_code == 1
    assert "refused" in conflict.output

    charged = _run(database_url, "engine", "--once")
    assert charged.exit_code == 0, charged.output
    # 96 readings 15 minutes apart after the opening one: 96 intervals closed
    assert "1 accounts, 96 interval charges" in charged.output

    settled = _run(database_url, "settle", "--date", "2026-11-20", "--json")
    assert settled.exit_code == 0, settled.output
    report = json.loads(settled.output)
    assert report["accounts"] == 1
    assert report["incomplete_accounts"] == 0
    assert report["run_charges"] == 0  # the runner had charged the whole day already
    assert (report["charges"], report["energy_wh"]) == (96, 95 * 250)  # the day's own intervals; the first used nothing

    shown = _run(database_url, "account", "show", "A1", "--entries", "3")
    assert shown.exit_code == 0, shown.output
    assert "supply connected" in shown.output
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert count(conn, "SELECT count(*) FROM payments") == 1
        row: Any = conn.execute(
            "SELECT balance_fen FROM ledger_accounts WHERE account_id = %s", (prepaid_account_id("A1"),)
        ).fetchone()
        usage = count(conn, "SELECT coalesce(sum(amount_fen), 0) FROM ledger_postings WHERE kind = 'usage'")
        assert row[0] == 5000 - usage
        assert usage > 0

    reversed_ = _run(
        database_url,
        "pay",
        "--account",
        "A1",
        "--amount-fen",
        "5000",
        "--channel",
        "wechat",
        "--txn",
        "WX1",
        "--reverse",
    )
    assert reversed_.exit_code == 0, reversed_.output
    assert "reversed" in reversed_.output


def test_bad_files_and_unknown_accounts_are_clear_errors(database_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "tariff.json"
    bad.write_text('{"code": "X", "code": "Y"}', encoding="utf-8")
    refused = _run(database_url, "tariff", "put", str(bad))
    assert refused.exit_code == 2
    assert "appears twice" in refused.output
    float_price = json.loads((EXAMPLES / "tariffs" / "jiangsu_residential.json").read_text(encoding="utf-8"))
    float_price["versions"][0]["energy_price"]["periods"][0]["price_yuan_per_kwh"] = 0.5583
    bad.write_text(json.dumps(float_price), encoding="utf-8")
    refused = _run(database_url, "tariff", "put", str(bad))
    assert refused.exit_code == 2
    assert "versions[0].energy_price.periods[0].price_yuan_per_kwh" in refused.output
    missing = _run(database_url, "pay", "--account", "NOPE", "--amount-fen", "100", "--channel", "wechat", "--txn", "1")
    assert missing.exit_code == 1
    assert "no prepaid account 'NOPE'" in missing.output
    too_early = _run(database_url, "settle", "--date", "2999-01-01")
    assert too_early.exit_code == 1
    assert "settle after that" in too_early.output
