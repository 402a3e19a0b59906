"""The poll worker on a simulated clock moved a load point at a time, far faster than real time (as `headend demo`
runs it): a round at every load point the clock reaches, each reported to `on_round` once over, every reading stamped
at its point. A clock that stands on a load point has not passed it: a poller started then reads it at once, and a
clock moved on to the next load point the moment a round is over gets that round too."""

from __future__ import annotations

import asyncio
import queue
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from headend.poll.poller import RoundTotals
from headend.poll.schedule import load_point_at_or_before
from headend.poll.service import PollTotals, run_poller
from headend.registry.meter_import import import_meters, read_registry_file
from headend.settings import Settings
from simulators.dlt645_gateway import Dlt645Gateway
from simulators.modbus_sim import ModbusMeterFleet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

INTERVAL = timedelta(minutes=15)
POINTS = 8
MODBUS, DLT645 = 3, 2


def test_a_clock_moved_a_load_point_at_a_time_gets_a_round_at_each_one(
    db: psycopg.Connection[Any], database_url: str, tmp_path: Path, unique: str
) -> None:
    settings = Settings(database_url=database_url, poll_timeout_s=0.5, poll_retries=1, poll_retry_backoff_s=0.05)
    start = load_point_at_or_before(datetime.now(UTC) - timedelta(days=1), INTERVAL, settings.zone)
    points = [start + k * INTERVAL for k in range(POINTS)]
    now = [start]

    def clock() -> datetime:
        return now[0]

    fleet = ModbusMeterFleet(
        "127.0.0.1", 0, ["eastron_sdm120", "hiking_dds238_2_znsr"], MODBUS, meter_id_prefix=f"f{unique}", clock=clock
    )
    gateway = Dlt645Gateway(
        "127.0.0.1", 0, DLT645, meter_id_prefix=f"g{unique}", clock=clock, baud=115_200, latency_s=0.002
    )
    rounds: queue.Queue[tuple[datetime, int, int]] = queue.Queue()
    truth: dict[tuple[str, datetime], int] = {}

    def on_round(load_point: datetime, totals: RoundTotals) -> None:
        for unit in fleet.unit_ids:
            truth[fleet.spec(unit).meter_id, load_point] = fleet.energy_wh(unit)
        for address in gateway.addresses:
            truth[gateway.meter_id(address), load_point] = gateway.energy_wh(address)
        rounds.put((load_point, totals.read, totals.failed))
        if load_point < points[-1]:
            # the worst moment to move on: the poller has just finished with this load point
            now[0] = load_point + INTERVAL

    with fleet, gateway:
        for name, simulated in (("modbus", fleet), ("dlt645", gateway)):
            simulated.write_registry_csv(tmp_path / f"{name}.csv")
            parsed = read_registry_file(tmp_path / f"{name}.csv")
            assert parsed.errors == []
            import_meters(db, parsed.rows)
        stop = threading.Event()
        outcome: list[PollTotals] = []
        worker = threading.Thread(
            target=lambda: outcome.append(
                asyncio.run(
                    run_poller(settings, database_url, stop, clock=clock, clock_check_s=0.01, on_round=on_round)
                )
            )
        )
        worker.start()
        try:
            # the clock stands on `start`: its round first, then each on_round moves the clock on a whole interval
            for point in points:
                assert rounds.get(timeout=10) == (point, MODBUS + DLT645, 0)
        finally:
            stop.set()
            worker.join(10)
        assert not worker.is_alive()
    [totals] = outcome
    meters = MODBUS + DLT645
    assert (totals.rounds, totals.read, totals.failed) == (POINTS, meters * POINTS, 0)
    assert rounds.empty()
    stored = db.execute(
        "SELECT meter_id, ts, energy_import_wh FROM readings WHERE ts >= %s ORDER BY meter_id, ts", (start,)
    ).fetchall()
    assert sorted({(m, ts) for m, ts, _ in stored}) == sorted(truth)
    assert len(stored) == len(truth)
    for meter_id, ts, energy_wh in stored:
        # each load point's reading is the meter's register at that point (the Hiking's and DL/T 645's to 10 Wh)
        exact = truth[meter_id, ts]
        assert exact - 10 < energy_wh <= exact, (meter_id, ts)
