"""`headend poll` through transparent serial-to-TCP gateways: Modbus RTU frames to the simulated meters of a real
pymodbus RTU-over-TCP server on 127.0.0.1, into the real database through the same store as Modbus TCP readings,
stored exactly once; a damaged CRC kept as a bad frame; Modbus TCP and RTU endpoints polled in one round."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from headend.poll.service import PollTotals, run_poller
from headend.poll.targets import load_polled_meters
from headend.registry.meter_import import import_meters, read_registry_file
from headend.settings import Settings
from protocols.register_map import DataType, available_models, load_register_map
from simulators.modbus_faults import CorruptAnswer
from simulators.modbus_sim import ModbusMeterFleet
from tests.integration.conftest import count

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MODELS = available_models()
# the simulated meters' time, standing still: what they show does not change between the poll and the check
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def _fleet(framing: str, meters: int, prefix: str) -> ModbusMeterFleet:
    return ModbusMeterFleet(
        "127.0.0.1", 0, MODELS, meters, seed=7, clock=lambda: T0, framing=framing, meter_id_prefix=prefix
    )


@pytest.fixture
def gateway() -> Iterator[ModbusMeterFleet]:
    """One meter of every shipped model on the RS-485 bus of a simulated transparent gateway."""
    with _fleet("rtu", len(MODELS), "RTU") as running:
        yield running


@pytest.fixture
def tcp_fleet() -> Iterator[ModbusMeterFleet]:
    """Modbus TCP meters, one of every model, on a server of their own."""
    with _fleet("tcp", len(MODELS), "TCP") as running:
        yield running


def _register(db: psycopg.Connection[Any], tmp_path: Path, *fleets: ModbusMeterFleet) -> None:
    """Register the fleets as an operator does: the registry CSV they write, through the import."""
    for n, fleet in enumerate(fleets):
        path = tmp_path / f"fleet-{n}.csv"
        fleet.write_registry_csv(path)
        parsed = read_registry_file(path)
        assert parsed.errors == []
        import_meters(db, parsed.rows)


def _poll_once(database_url: str, clock: Callable[[], datetime]) -> PollTotals:
    settings = Settings(database_url=database_url, poll_timeout_s=0.3, poll_retries=1, poll_retry_backoff_s=0.05)
    return asyncio.run(run_poller(settings, database_url, threading.Event(), once=True, clock=clock))


def _fixed_clock() -> Callable[[], datetime]:
    """The poller's time, standing still a little before now: two rounds stamp their readings alike."""
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    return lambda: now


def _shown_wh(fleet: ModbusMeterFleet, unit_id: int) -> int:
    """The meter's energy as its register shows it (whole counts on an integer register)."""
    register = load_register_map(fleet.spec(unit_id).model).register("energy_import")
    step = 1 if register.data_type is DataType.FLOAT32 else int(register.scale)
    truth = fleet.energy_wh(unit_id)
    return truth - truth % step


def _stored(db: psycopg.Connection[Any], prefix: str) -> dict[str, tuple[int, str]]:
    rows = db.execute(
        "SELECT meter_id, energy_import_wh, source FROM readings WHERE meter_id LIKE %s", (f"{prefix}%",)
    ).fetchall()
    return {str(m): (int(e), str(s)) for m, e, s in rows}


def test_meters_behind_a_transparent_gateway_are_read_into_the_store_exactly_once(
    db: psycopg.Connection[Any], database_url: str, gateway: ModbusMeterFleet, tmp_path: Path
) -> None:
    _register(db, tmp_path, gateway)
    assert {m.framing for m in load_polled_meters(db)} == {"rtu"}
    clock = _fixed_clock()
    totals = _poll_once(database_url, clock)
    assert (totals.read, totals.failed, totals.stored, totals.duplicates) == (len(MODELS), 0, len(MODELS), 0)
    assert _stored(db, "RTU") == {
        spec.meter_id: (_shown_wh(gateway, spec.unit_id), f"modbus:{gateway.endpoint} unit {spec.unit_id}")
        for spec in gateway.specs
    }
    assert count(db, "SELECT count(*) FROM poll_failures") == 0
    # the same path as every reading: the engine's signal follows
    assert count(db, "SELECT count(*) FROM meter_register_state WHERE meter_id LIKE 'RTU%'") == len(MODELS)

    # read again at the same stamp: duplicates, not new rows
    totals = _poll_once(database_url, clock)
    assert (totals.read, totals.stored, totals.duplicates) == (len(MODELS), 0, len(MODELS))
    assert count(db, "SELECT count(*) FROM readings") == len(MODELS)
    assert count(db, "SELECT count(*) FROM dead_letters") == 0


def test_an_answer_with_a_damaged_crc_is_kept_as_a_bad_frame(
    db: psycopg.Connection[Any], database_url: str, gateway: ModbusMeterFleet, tmp_path: Path
) -> None:
    _register(db, tmp_path, gateway)
    damaged = gateway.specs[1]
    gateway.set_fault(damaged.unit_id, CorruptAnswer())
    totals = _poll_once(database_url, _fixed_clock())
    assert (totals.read, totals.failed, totals.stored) == (len(MODELS) - 1, 1, len(MODELS) - 1)
    assert dict(totals.last_round.by_kind) == {"bad_frame": 1}
    [(meter_id, kind, reason, attempts)] = db.execute(
        "SELECT meter_id, kind, reason, attempts FROM poll_failures"
    ).fetchall()
    # asked again once (HEADEND_POLL_RETRIES=1): a damaged answer may come through whole next time
    assert (meter_id, kind, attempts) == (damaged.meter_id, "bad_frame", 2)
    assert reason.startswith(f"unit {damaged.unit_id}: an answer whose CRC does not match its bytes (")
    assert damaged.meter_id not in _stored(db, "RTU")

    # healed, it is read in the next round; the others are duplicates
    gateway.set_fault(damaged.unit_id, None)
    totals = _poll_once(database_url, _fixed_clock())
    assert totals.failed == 0
    assert _stored(db, "RTU")[damaged.meter_id][0] == _shown_wh(gateway, damaged.unit_id)


def test_tcp_and_rtu_endpoints_are_polled_in_one_round(
    db: psycopg.Connection[Any],
    database_url: str,
    gateway: ModbusMeterFleet,
    tcp_fleet: ModbusMeterFleet,
    tmp_path: Path,
) -> None:
    _register(db, tmp_path, gateway, tcp_fleet)
    # a meter registered before framing was a column (NULL) is Modbus TCP
    db.execute("UPDATE meters SET framing = NULL WHERE meter_id = %s", (tcp_fleet.specs[0].meter_id,))
    framings = {m.meter_id: m.framing for m in load_polled_meters(db)}
    assert framings == {spec.meter_id: "rtu" for spec in gateway.specs} | {
        spec.meter_id: "tcp" for spec in tcp_fleet.specs
    }
    totals = _poll_once(database_url, _fixed_clock())
    assert (totals.rounds, totals.read, totals.failed, totals.stored) == (1, 2 * len(MODELS), 0, 2 * len(MODELS))
    for fleet, prefix in ((gateway, "RTU"), (tcp_fleet, "TCP")):
        assert _stored(db, prefix) == {
            spec.meter_id: (_shown_wh(fleet, spec.unit_id), f"modbus:{fleet.endpoint} unit {spec.unit_id}")
            for spec in fleet.specs
        }
    assert count(db, "SELECT count(*) FROM poll_failures") == 0


def test_a_gateway_registered_with_the_wrong_framing_is_not_read(
    db: psycopg.Connection[Any], database_url: str, gateway: ModbusMeterFleet, tmp_path: Path
) -> None:
    # Modbus TCP frames to a transparent gateway: its meters never see a request they can take
    _register(db, tmp_path, gateway)
    db.execute("UPDATE meters SET framing = 'tcp'")
    totals = _poll_once(database_url, _fixed_clock())
    assert (totals.read, totals.stored) == (0, 0)
    assert totals.failed == len(MODELS)
    assert count(db, "SELECT count(*) FROM readings") == 0
