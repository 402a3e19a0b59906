"""The system through its real interfaces: the `headend` command, a simulated fleet, the broker, the database."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest

from tests.integration.conftest import ADMIN_URL, MQTT_HOST, MQTT_PORT, count, wait_for

pytestmark = pytest.mark.e2e
SHANGHAI = ZoneInfo("Asia/Shanghai")


def headend(*args: str, env: dict[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `headend ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "headend", "--log-level", "warning", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.fixture
def database_url() -> Iterator[str]:
    """An empty database, migrated by the command under test."""
    name = f"headend_e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_demo_runs_on_a_machine_with_no_services(tmp_path: Path) -> None:
    """The README's run command: embedded PostgreSQL, embedded broker, ingest, a fleet, the report."""
    env = {"HEADEND_DATA_DIR": str(tmp_path / "data")}
    for name in ("HEADEND_DATABASE_URL", "HEADEND_MQTT_HOST"):
        env[name] = ""
    result = headend(
        "demo",
        "--meters",
        "60",
        "--concentrators",
        "3",
        "--speed",
        "0",
        "--offline-fraction",
        "0.05",
        "--drop-rate",
        "0",
        env=env,
        timeout_s=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "embedded PostgreSQL" in out
    assert "(embedded)" in out
    # the 60 MQTT meters and the demo's 4 Modbus and 3 DL/T 645 meters
    assert "meters expected : 67" in out
    # 5 % of the 60 MQTT meters are offline; with no drops every other meter has all 96 intervals, and the poll worker
    # reads the polled meters at every load point
    assert "read (≥1 value) : 64  rate 95.52%" in out
    assert "complete (all 96 intervals): 64" in out
    assert re.search(r"mqtt +57/60 +95\.00% +complete 57", out), out
    assert re.search(r"modbus +4/4 +100\.00% +complete 4", out), out
    assert re.search(r"dlt645 +3/3 +100\.00% +complete 3", out), out
    assert "last never" in out


def test_simulated_fleet_through_mosquitto_into_postgresql(database_url: str, tmp_path: Path) -> None:
    """Register a fleet from its CSV, ingest a day of it from the broker, and read the collection report."""
    token = uuid.uuid4().hex[:6]
    env = {
        "HEADEND_DATABASE_URL": database_url,
        "HEADEND_MQTT_HOST": MQTT_HOST,
        "HEADEND_MQTT_PORT": str(MQTT_PORT),
        "HEADEND_MQTT_CLIENT_ID": f"e2e-{token}",
        "HEADEND_MQTT_SHARED_GROUP": f"e2e{token}",
    }
    assert headend("migrate", env=env).returncode == 0
    registry = tmp_path / "fleet.csv"
    fleet = ["--meters", "80", "--concentrators", "2", "--seed", "7", "--id-prefix", f"E{token}"]
    day = datetime.now(SHANGHAI).date() - timedelta(days=1)
    made = headend(
        "simulate",
        *fleet,
        "--registry-csv",
        str(registry),
        "--registry-only",
        "--installed-on",
        day.isoformat(),
        env=env,
    )
    assert made.returncode == 0, made.stderr
    imported = headend("meters", "import", str(registry), env=env)
    assert imported.returncode == 0, imported.stderr
    assert "80 meter(s) created" in imported.stdout

    worker = subprocess.Popen(
        [sys.executable, "-m", "headend", "--log-level", "info", "ingest"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    subscribed = threading.Event()

    def read_output() -> None:
        assert worker.stdout is not None
        for line in worker.stdout:
            output.append(line)
            if "subscribed to" in line:
                subscribed.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        start = datetime(day.year, day.month, day.day, tzinfo=SHANGHAI).isoformat()
        with psycopg.connect(database_url, autocommit=True) as conn:
            # the shared subscription must exist before anything is published, or the broker drops what comes first
            assert subscribed.wait(30), f"the worker did not subscribe: {''.join(output)}"
            published = headend(
                "simulate",
                *fleet,
                "--start",
                start,
                "--intervals",
                "96",
                "--speed",
                "max",
                "--offline-fraction",
                "0.1",
                env=env,
                timeout_s=180,
            )
            assert published.returncode == 0, published.stderr
            sent = int(published.stdout.split("readings_published: ")[1].split()[0])
            assert sent == 72 * 96
            wait_for(lambda: count(conn, "SELECT count(*) FROM readings") == sent, 60, f"{sent} readings stored")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        reader.join(5)
        assert worker.stdout is not None
        worker.stdout.close()
    report = headend("collection-report", "--date", day.isoformat(), "--json", "--by", "concentrator", env=env)
    assert report.returncode == 0, report.stderr
    body = json.loads(report.stdout)
    assert (body["expected"], body["read"], body["complete"]) == (80, 72, 72)
    assert body["rate"] == 0.9
    assert sum(g["expected"] for g in body["groups"]) == 80
    assert body["unread_total"] == 8
    assert all(m["never_read"] for m in body["unread_meters"])
