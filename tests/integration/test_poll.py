"""`headend poll` against real pymodbus servers on 127.0.0.1 and the real database: readings stored exactly once
through the MQTT path's writer, every failure kept with its reason, one bus reused between rounds."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusServerContext,
    ModbusSimulatorContext,
    ModbusSparseDataBlock,
)
from pymodbus.server import ModbusTcpServer
from typer.testing import CliRunner

from headend.cli.app import app
from headend.mqtt.embedded_broker import free_port
from headend.poll.schedule import load_point_at_or_before
from headend.poll.service import run_poller
from headend.registry.meter_import import MeterRow, import_meters
from headend.settings import Settings
from protocols.readings import MeterReading, RelayState
from protocols.register_map import encode_values, load_register_map, plan_reads, values_from_reading
from tests.integration.conftest import count

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# unit id → (model, what the meter's registers hold)
METERS = {
    1: ("eastron_sdm120", MeterReading("x", datetime.now(UTC), 1_234_560, 5_000, 1_800, 229.5)),
    2: ("chint_dtsu666", MeterReading("x", datetime.now(UTC), 98_765_430, 10, 4_321, 231.2)),
    3: ("hiking_dds238_2_znsr", MeterReading("x", datetime.now(UTC), 60_740, 12_670, 1_199, 242.3, RelayState.OPEN)),
}


def _device(model: str, reading: MeterReading) -> ModbusDeviceContext:
    register_map = load_register_map(model)
    # every address the poller reads (current, frequency, the gaps a read spans … as zeros), then the reading's values
    image: dict[int, dict[int, int]] = {}
    for request in plan_reads(register_map):
        image.setdefault(request.function, {}).update(dict.fromkeys(range(request.address, request.end), 0))
    for function, words in encode_values(register_map, values_from_reading(register_map, reading)).items():
        image[function].update(words)
    blocks = {
        "ir" if function == 4 else "hr": ModbusSparseDataBlock(words)  # type: ignore[no-untyped-call]
        for function, words in image.items()
    }
    return ModbusDeviceContext(**blocks)


class ModbusServer:
    """A pymodbus TCP server with the meters of METERS, in a thread of its own."""

    def __init__(self, port: int) -> None:
        devices: dict[int, ModbusDeviceContext | ModbusSimulatorContext] = {
            unit: _device(model, reading) for unit, (model, reading) in METERS.items()
        }
        self.context = ModbusServerContext(devices=devices, single=False)
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._server: ModbusTcpServer | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            # a unit that is not on the bus does not answer, as on a serial line
            self._server = ModbusTcpServer(self.context, address=("127.0.0.1", self.port), ignore_missing_devices=True)
            self._loop.call_later(0.2, self._started.set)
            await self._server.serve_forever()

        self._loop.run_until_complete(serve())
        self._loop.close()

    def stop(self) -> None:
        """Shut the server down and wait for its thread."""
        assert self._server is not None
        shutdown = self._server.shutdown()  # type: ignore[no-untyped-call]
        asyncio.run_coroutine_threadsafe(shutdown, self._loop).result(10)
        self._thread.join(10)


@pytest.fixture
def silent() -> Iterator[str]:
    """The endpoint of a gateway that takes connections and requests and never answers (its meter is silent)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    thread.join(5)
    for connection in accepted:
        connection.close()


@pytest.fixture
def server() -> Iterator[ModbusServer]:
    running = ModbusServer(free_port())
    yield running
    running.stop()


def _settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, poll_timeout_s=0.3, poll_retries=1, poll_retry_backoff_s=0.05)


def _register(db: psycopg.Connection[Any], port: int, dead_port: int, silent: str) -> None:
    endpoint = f"127.0.0.1:{port}"
    rows = [
        MeterRow(f"mb-{unit}", "modbus", None, "r", model, 1, "active", None, endpoint=endpoint, unit_id=unit)
        for unit, (model, _) in METERS.items()
    ]
    rows.append(MeterRow("mb-9", "modbus", None, "r", "eastron_sdm120", 1, "active", None, endpoint=silent, unit_id=9))
    # a gateway nobody listens on, with two meters on its bus
    for unit in (1, 2):
        rows.append(
            MeterRow(
                f"gone-{unit}", "modbus", None, "r", "eastron_sdm120", 1, "active", None,
                endpoint=f"127.0.0.1:{dead_port}", unit_id=unit,
            )
        )  # fmt: skip
    import_meters(db, rows)


def _poll_once(database_url: str, **kwargs: Any) -> Any:
    return asyncio.run(run_poller(_settings(database_url), database_url, threading.Event(), once=True, **kwargs))


def test_one_round_stores_every_answer_and_keeps_every_failure_with_its_reason(
    db: psycopg.Connection[Any], database_url: str, server: ModbusServer, silent: str
) -> None:
    _register(db, server.port, free_port(), silent)
    before = datetime.now(UTC)
    totals = _poll_once(database_url)
    failures = db.execute("SELECT meter_id, kind, reason, attempts FROM poll_failures ORDER BY meter_id").fetchall()
    assert (totals.rounds, totals.read, totals.failed, totals.stored) == (1, 3, 3, 3), failures

    rows = db.execute(
        "SELECT meter_id, ts, energy_import_wh, energy_export_wh, power_w, voltage_v, relay_state, source "
        "FROM readings ORDER BY meter_id"
    ).fetchall()
    assert [r[0] for r in rows] == ["mb-1", "mb-2", "mb-3"]
    for (meter_id, ts, import_wh, export_wh, power_w, voltage_v, relay, source), unit in zip(
        rows, (1, 2, 3), strict=True
    ):
        truth = METERS[unit][1]
        assert (import_wh, export_wh, power_w) == (truth.energy_import_wh, truth.energy_export_wh, truth.power_w)
        assert voltage_v == pytest.approx(truth.voltage_v, abs=0.01)
        assert relay == (None if truth.relay is None else truth.relay.value)
        assert source == f"modbus:127.0.0.1:{server.port} unit {unit}", meter_id
        # at the load point when read within HEADEND_POLL_SNAP_S (300 s) of it, else when read
        load_point = load_point_at_or_before(before, timedelta(minutes=15), ZoneInfo("Asia/Shanghai"))
        if datetime.now(UTC) - load_point <= timedelta(seconds=300):
            assert ts == load_point
        elif before - load_point > timedelta(seconds=300):
            assert before - timedelta(seconds=1) <= ts <= datetime.now(UTC)

    failures = db.execute("SELECT meter_id, kind, reason, attempts FROM poll_failures ORDER BY meter_id").fetchall()
    assert [(m, k, a) for m, k, _, a in failures] == [
        ("gone-1", "no_connection", 2),
        ("gone-2", "no_connection", 0),
        ("mb-9", "timeout", 2),
    ]
    reasons = {m: r for m, _, r, _ in failures}
    assert reasons["gone-1"].startswith("cannot connect to 127.0.0.1:")
    assert reasons["gone-2"] == f"not asked: {reasons['gone-1']} (for meter gone-1)"
    assert reasons["mb-9"] == "no answer from unit 9 within 0.3 s"
    # the same path as MQTT readings: the collection statistics and the engine's signal follow
    assert count(db, "SELECT count(*) FROM meter_register_state WHERE meter_id LIKE 'mb-%'") == 3

    # asked again: the same registers at a time already stored are duplicates, not new rows
    totals = _poll_once(database_url, meter_ids=["mb-1"])
    assert (totals.read, totals.failed) == (1, 0)
    assert count(db, "SELECT count(*) FROM readings") in (3, 4)  # 4 when the second round fell in a new second
    assert count(db, "SELECT count(*) FROM dead_letters") == 0


def test_an_exception_response_is_not_asked_again(
    db: psycopg.Connection[Any], database_url: str, server: ModbusServer
) -> None:
    # a model whose registers the meter does not have: the meter answers with exception code 2 (illegal address)
    endpoint = f"127.0.0.1:{server.port}"
    import_meters(
        db, [MeterRow("odd", "modbus", None, "r", "eastron_sdm630", 1, "active", None, endpoint=endpoint, unit_id=1)]
    )
    totals = _poll_once(database_url)
    assert (totals.read, totals.failed) == (0, 1)
    [(kind, reason, attempts)] = db.execute("SELECT kind, reason, attempts FROM poll_failures").fetchall()
    assert (kind, attempts) == ("exception_response", 1)
    assert reason.startswith("unit 1 answered function 4 at 0x")
    assert reason.endswith("with exception code 2")


def test_headend_poll_once_reports_what_it_did(
    db: psycopg.Connection[Any], database_url: str, server: ModbusServer, silent: str
) -> None:
    _register(db, server.port, free_port(), silent)
    env = {"HEADEND_DATABASE_URL": database_url, "HEADEND_POLL_TIMEOUT_S": "0.3", "HEADEND_POLL_RETRIES": "0"}
    result = CliRunner().invoke(app, ["poll", "--once"], env=env)
    assert result.exit_code == 0, result.output
    assert "polled once: 1 round(s), 3 meter(s) read, 3 failed, 3 readings stored, 0 duplicates" in result.output
    assert "(no_connection 2, timeout 1)" in result.output
    assert count(db, "SELECT count(*) FROM poll_failures WHERE attempts <= 1") == 3
