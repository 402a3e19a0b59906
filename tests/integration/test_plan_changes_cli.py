"""`headend account change` and `cancel-change` on the real PostgreSQL, and the history `account show` prints."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import psycopg
from typer.testing import CliRunner, Result

from headend.cli.app import app
from headend.engine.catalog import put_policy
from prepay_engine.config_codec import tariff_to_json
from tests.integration.conftest import register
from tests.integration.engine_support import DAY_START, STRICT_POLICY, series, store_readings
from tests.integration.test_plan_changes import FLAT

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOON = DAY_START + timedelta(hours=12)


def _run(database_url: str, *args: str) -> Result:
    env = {"HEADEND_DATABASE_URL": database_url, "HEADEND_ENGINE_LATENESS_S": "60", "HEADEND_TIMEZONE": "Asia/Shanghai"}
    return CliRunner().invoke(app, list(args), env=env)


def _ok(database_url: str, *args: str) -> str:
    result = _run(database_url, *args)
    assert result.exit_code == 0, result.output
    return result.output


def test_an_operator_changes_an_accounts_tariff_and_policy_and_sees_the_history(
    database_url: str, tmp_path: Path
) -> None:
    flat_file = tmp_path / "flat.json"
    flat_file.write_text(json.dumps(tariff_to_json(FLAT)), encoding="utf-8")
    _ok(database_url, "tariff", "put", str(EXAMPLES / "tariffs" / "jiangsu_residential.json"))
    _ok(database_url, "tariff", "put", str(flat_file))
    _ok(database_url, "policy", "put", str(EXAMPLES / "policies" / "default.json"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        put_policy(conn, STRICT_POLICY, stored_by="test")
        register(conn, ["m1"])
        store_readings(
            conn,
            [
                ("m1", DAY_START, 2_000_000),
                *series("m1", DAY_START + timedelta(minutes=15), 96, timedelta(minutes=15), 2_000_400, 400),
            ],
        )
    tariff = "EXAMPLE-JS-RES-TIERED-TOU"
    _ok(
        database_url,
        "account",
        "open",
        "A1",
        "--meter",
        "m1",
        "--tariff",
        tariff,
        "--policy",
        "default",
        "--opened-at",
        DAY_START.isoformat(),
    )

    changed = _ok(
        database_url, "account", "change", "A1", "--tariff", FLAT.code, "--from", "2026-11-20T12:00", "--by", "ops-li"
    )
    assert f"account A1: tariff {tariff} → {FLAT.code} from 2026-11-20T12:00:00+08:00 (change #1)" in changed
    both = _run(database_url, "account", "change", "A1", "--tariff", FLAT.code, "--policy", "strict")
    assert both.exit_code == 2
    assert "either --tariff or --policy" in both.output
    off_grid = _run(database_url, "account", "change", "A1", "--tariff", tariff, "--from", "2026-11-20T13:05")
    assert off_grid.exit_code == 1
    assert "not on the 15-minute grid" in off_grid.output
    # from the next grid instant: the policy decides from then on
    policy = _ok(database_url, "account", "change", "A1", "--policy", "strict")
    assert "policy default → strict from" in policy
    assert "(change #2)" in policy

    assert "96 interval charges" in _ok(database_url, "engine", "--once")
    with psycopg.connect(database_url, autocommit=True) as conn:
        fen = [
            int(r[0])
            for r in conn.execute(
                "SELECT amount_fen FROM usage_charges WHERE interval_start >= %s ORDER BY interval_start", (NOON,)
            )
        ]
    assert fen == [40] * 48  # 400 Wh at one yuan a kWh from noon
    late = _run(database_url, "account", "change", "A1", "--tariff", tariff, "--from", "2026-11-20T23:00")
    assert late.exit_code == 1
    assert "charged up to 2026-11-21T00:00:00+08:00" in late.output
    assert "would reprice intervals already charged" in late.output

    shown = _ok(database_url, "account", "show", "A1")
    assert f"tariff {FLAT.code}  policy default" in shown  # the policy change is not due yet
    assert "plan changes (Asia/Shanghai):" in shown
    assert f"#1  tariff  from 2026-11-20 12:00  {tariff} → {FLAT.code}  applied  requested " in shown
    assert " by ops-li" in shown
    assert "#2  policy  from " in shown
    assert "default → strict  pending  requested " in shown
    assert " by cli:" in shown

    assert "change #2 (policy default → strict from " in _ok(database_url, "account", "cancel-change", "A1", "2")
    assert "can't be cancelled" in _run(database_url, "account", "cancel-change", "A1", "1").output
    shown = _ok(database_url, "account", "show", "A1")
    assert "default → strict  cancelled  requested " in shown
    assert "; cancelled " in shown
    assert "tariff FLAT-1  policy default" in shown
