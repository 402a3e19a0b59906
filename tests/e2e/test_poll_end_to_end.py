"""Polled meters through the real commands: `headend simulate --protocol modbus|dlt645` serves them on 127.0.0.1
(Modbus TCP, or RTU behind a transparent gateway with `--framing rtu`), `headend meters import` registers what it
wrote, `headend poll --once` reads every one into the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from headend.mqtt.embedded_broker import free_port
from tests.e2e.test_collection_end_to_end import database_url, headend
from tests.integration.conftest import count, wait_for

pytestmark = pytest.mark.e2e
__all__ = ["database_url"]  # the fixture, shared


@pytest.mark.parametrize(
    ("protocol", "meters", "framing"), [("modbus", 5, None), ("modbus", 5, "rtu"), ("dlt645", 4, None)]
)
def test_simulated_polled_meters_are_read_by_the_poller(
    database_url: str, tmp_path: Path, protocol: str, meters: int, framing: str | None
) -> None:
    env = {"HEADEND_DATABASE_URL": database_url}
    registry = tmp_path / "registry.csv"
    listen = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "headend", "--log-level", "warning", "simulate", "--protocol", protocol]
    command += ["--listen", listen, "--meters", str(meters), "--registry-csv", str(registry), "--id-prefix", "E2E"]
    command += [] if framing is None else ["--framing", framing]
    gateway = " (RTU through a transparent gateway)" if framing == "rtu" else ""
    log = (tmp_path / "simulate.log").open("w")
    server = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline() for _ in range(2)]
        assert lines == [
            f"wrote {meters} meters to {registry}\n",
            f"serving {meters} simulated {protocol} meters{gateway} on {listen} until stopped\n",
        ], lines
        if framing is not None:
            assert all(line.endswith(f",{framing}") for line in registry.read_text().splitlines()[1:])
        assert headend("migrate", env=env).returncode == 0
        imported = headend("meters", "import", str(registry), env=env)
        assert imported.returncode == 0, imported.stderr
        polled = headend("poll", "--once", env=env)
        assert polled.returncode == 0, polled.stdout + polled.stderr
        assert f"{meters} meter(s) read, 0 failed, {meters} readings stored" in polled.stdout
        with psycopg.connect(database_url) as db:
            stored = count(db, "SELECT count(*) FROM readings WHERE source LIKE %s", f"{protocol}:{listen}%")
            assert stored == meters
            assert count(db, "SELECT count(*) FROM poll_failures") == 0
    finally:
        server.send_signal(signal.SIGTERM)
        wait_for(lambda: server.poll() is not None, 15, "the simulator to stop")
        assert server.stdout is not None
        server.stdout.close()
        log.close()
    assert server.returncode == 0, (tmp_path / "simulate.log").read_text()


def test_an_address_that_is_not_host_port_is_refused(tmp_path: Path) -> None:
    result = headend("simulate", "--protocol", "modbus", "--listen", "localhost", env={})
    assert result.returncode == 2
    assert "'localhost' is not HOST:PORT with a port 1-65535" in result.stderr


@pytest.mark.parametrize(
    ("protocol", "framing", "why"),
    [("modbus", "ascii", "'ascii' is not one of tcp, rtu"), ("dlt645", "rtu", "framing is for --protocol modbus")],
)
def test_a_framing_other_than_modbus_tcp_or_rtu_is_refused(protocol: str, framing: str, why: str) -> None:
    result = headend("simulate", "--protocol", protocol, "--framing", framing, env={})
    assert result.returncode == 2
    assert why in result.stderr
