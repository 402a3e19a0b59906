"""Re-reads of polled meters against the simulated DL/T 645 gateway and Modbus meters on 127.0.0.1: the missing
midnights come back from the meters' daily freezes, the current load point from a poll, the first pass of the days
is kept, and what each meter recovered is counted from the readings stored."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from typer.testing import CliRunner

from headend.cli.app import app
from headend.mqtt.embedded_broker import free_port
from headend.poll.poller import Poller
from headend.poll.service import on_database, poll_config
from headend.registry.meter_import import import_meters, read_registry_file
from headend.reread.runner import RereadConfig, RereadRunner, RereadStore, catch_up_freezes
from headend.reread.states import MeterState, RereadPath, Scope, TaskState
from headend.reread.tasks import RereadError, RereadTask, create_task
from headend.settings import Settings
from simulators.dlt645_gateway import Dlt645Gateway
from simulators.modbus_sim import ModbusMeterFleet
from tests.integration.engine_support import store_readings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
ZONE = ZoneInfo("Asia/Shanghai")
# the meters' true time, standing still: 11:07:30 local yesterday (inside the window readings are accepted in)
TODAY = datetime.now(ZONE).date() - timedelta(days=1)
NOW = datetime.combine(TODAY, time(11, 7, 30), ZONE).astimezone(UTC)


def midnight(local_day: date) -> datetime:
    return datetime.combine(local_day, time(0), ZONE)


def day(offset: int) -> date:
    """The local day `offset` days from the meters' today."""
    return TODAY + timedelta(days=offset)


@pytest.fixture
def gateway() -> Iterator[Dlt645Gateway]:
    running = Dlt645Gateway("127.0.0.1", free_port(), 3, seed=5, clock=lambda: NOW, baud=115200, latency_s=0.001)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, poll_timeout_s=0.3, poll_retries=1, poll_retry_backoff_s=0.01)


def _import(db: psycopg.Connection[Any], path: Path) -> None:
    parsed = read_registry_file(path)
    assert parsed.errors == []
    import_meters(db, parsed.rows)


def _run(settings: Settings, database_url: str, task_id: str, clock: Callable[[], datetime]) -> RereadTask | None:
    async def main() -> RereadTask | None:
        store = RereadStore(database_url, settings)
        poller = Poller(poll_config(settings), clock)
        with ThreadPoolExecutor(max_workers=1) as executor:
            runner = RereadRunner(
                store,
                poller,
                None,
                RereadConfig(ZONE, wait=timedelta(seconds=1)),
                partial(on_database, executor, threading.Event()),
                clock,
            )
            try:
                return await runner.run(task_id)
            finally:
                await poller.close()
                store.close()

    return asyncio.run(main())


def test_a_dlt645_reread_recovers_the_missed_midnights_from_daily_freezes_and_the_current_load_point(
    db: psycopg.Connection[Any], database_url: str, gateway: Dlt645Gateway, settings: Settings, tmp_path: Path
) -> None:
    gateway.write_registry_csv(tmp_path / "meters.csv")
    _import(db, tmp_path / "meters.csv")
    good, _, silent = gateway.addresses
    gateway.set_fault(silent, "no_answer")
    ids = [gateway.meter_id(a) for a in gateway.addresses]
    # the first pass read one meter at 10:00 on the 4th: that day's figures are kept before the re-read
    assert store_readings(db, [(ids[0], midnight(day(-2)) + timedelta(hours=10), 1000)], now=NOW) == 1
    from_at = midnight(day(-3))
    task = create_task(db, Scope.LIST, ids, from_at, NOW + timedelta(hours=1), by="test", now=NOW)
    assert task.state is TaskState.PENDING
    assert {m.path for m in task.meters} == {RereadPath.DLT645_FROZEN}

    done = _run(settings, database_url, task.task_id, lambda: NOW)
    assert done is not None
    assert done.state is TaskState.DONE
    by_meter = {m.meter_id: m for m in done.meters}
    # three days ago at 00:00 to today 11:07: 3 whole days and 45 load points (the current one, 11:00, included)
    slots = 3 * 96 + 45
    for meter_id in ids[:2]:
        meter = by_meter[meter_id]
        missing = slots - (1 if meter_id == ids[0] else 0)
        # the midnights of the four days from the freezes, and the current load point from a poll
        assert (meter.state, meter.intervals_missing, meter.intervals_recovered) == (MeterState.PARTIAL, missing, 5)
        assert meter.detail is not None
        assert "only midnights" in meter.detail
    silent_meter = by_meter[gateway.meter_id(silent)]
    assert (silent_meter.state, silent_meter.intervals_recovered) == (MeterState.FAILED, 0)
    assert silent_meter.detail is not None
    assert silent_meter.detail.startswith("timeout: no answer from")
    assert (done.intervals_missing, done.intervals_recovered) == (3 * slots - 1, 10)

    # each midnight reading is what the meter froze then (the freeze of day d is its registers at d's midnight)
    truth = gateway.snapshot(good)
    for freeze in truth.freezes[:4]:
        stored = db.execute(
            "SELECT energy_import_wh FROM readings WHERE meter_id = %s AND ts = %s",
            (truth.meter_id, midnight(freeze.at.date())),
        ).fetchone()
        assert stored == (freeze.registers.forward_block().total_wh,)
    current = db.execute(
        "SELECT energy_import_wh FROM readings WHERE meter_id = %s AND ts = %s",
        (truth.meter_id, NOW),  # read 7.5 minutes after its load point: stamped when read, in the slot of 11:00
    ).fetchone()
    assert current == (truth.energy_wh,)
    # why the silent meter was not read is kept
    assert db.execute(
        "SELECT count(*) FROM poll_failures WHERE meter_id = %s", (silent_meter.meter_id,)
    ).fetchone() == (1,)
    # the first pass of the three days before was kept before anything was asked; not that of today
    frozen = db.execute("SELECT day, task_id FROM collection_first_pass_days ORDER BY day").fetchall()
    assert frozen == [(day(d), task.task_id) for d in (-3, -2, -1)]
    first_pass = db.execute("SELECT day, meter_id, intervals_read FROM collection_first_pass").fetchall()
    assert first_pass == [(day(-2), ids[0], 1)]

    # asked again: what came back is not missing any more, nothing is counted twice
    again = create_task(db, Scope.METER, [ids[1]], from_at, NOW, by="test", now=NOW)
    second = _run(settings, database_url, again.task_id, lambda: NOW)
    assert second is not None
    assert (second.meters[0].intervals_missing, second.meters[0].intervals_recovered) == (slots - 5, 0)
    assert second.meters[0].state is MeterState.FAILED
    # a task runs once
    assert _run(settings, database_url, again.task_id, lambda: NOW) is None


def test_after_midnight_the_poller_catches_up_the_daily_freezes_it_has_no_reading_for(
    db: psycopg.Connection[Any], database_url: str, gateway: Dlt645Gateway, settings: Settings, tmp_path: Path
) -> None:
    gateway.write_registry_csv(tmp_path / "meters.csv")
    _import(db, tmp_path / "meters.csv")
    first = gateway.meter_id(gateway.addresses[0])
    # yesterday's midnight was read live; those of the day before and of today were missed
    assert store_readings(db, [(first, midnight(day(-1)), 7)], now=NOW) == 1

    async def main() -> int:
        store = RereadStore(database_url, settings)
        poller = Poller(poll_config(settings), lambda: NOW)
        with ThreadPoolExecutor(max_workers=1) as executor:
            try:
                meters = store.polled_meters([gateway.meter_id(a) for a in gateway.addresses])
                db_call = partial(on_database, executor, threading.Event())
                return await catch_up_freezes(poller, store, db_call, meters, NOW, ZONE, 3, 8)
            finally:
                await poller.close()
                store.close()

    assert asyncio.run(main()) == 3 * 3 - 1
    midnights = db.execute(
        "SELECT ts, energy_import_wh FROM readings WHERE meter_id = %s ORDER BY ts", (first,)
    ).fetchall()
    assert [ts.astimezone(ZONE).date() for ts, _ in midnights] == [day(d) for d in (-2, -1, 0)]
    assert midnights[1][1] == 7  # the reading it had is kept: a freeze never replaces a stored reading


def test_a_modbus_meter_gives_back_only_its_current_load_point(
    db: psycopg.Connection[Any], database_url: str, settings: Settings, tmp_path: Path
) -> None:
    with ModbusMeterFleet("127.0.0.1", 0, ["eastron_sdm120"], 2, clock=lambda: NOW) as fleet:
        fleet.write_registry_csv(tmp_path / "modbus.csv")
        _import(db, tmp_path / "modbus.csv")
        ids = [row["meter_id"] for row in fleet.registry_rows()]
        task = create_task(db, Scope.LIST, ids, NOW - timedelta(hours=2), NOW, by="test", now=NOW)
        done = _run(settings, database_url, task.task_id, lambda: NOW)
    assert done is not None
    for meter in done.meters:
        assert meter.path is RereadPath.POLL
        # 09:00 … 11:00 local: 9 load points, the current one comes back
        assert (meter.state, meter.intervals_missing, meter.intervals_recovered) == (MeterState.PARTIAL, 9, 1)
        assert meter.detail == "a Modbus meter holds no past readings: only the current load point can be read again"


def test_a_reread_that_cannot_be_asked_for_is_refused_with_the_reason(db: psycopg.Connection[Any]) -> None:
    now = datetime.now(UTC)
    with pytest.raises(RereadError, match="unknown meter"):
        create_task(db, Scope.METER, ["nope"], now - timedelta(days=1), now, by="t", now=now)
    with pytest.raises(RereadError, match="unknown concentrator"):
        create_task(db, Scope.CONCENTRATOR, ["dcu-x"], now - timedelta(days=1), now, by="t", now=now)
    with pytest.raises(RereadError, match="longer than 31 days"):
        create_task(db, Scope.METER, ["nope"], now - timedelta(days=40), now, by="t", now=now)
    with pytest.raises(RereadError, match="before or when it starts"):
        create_task(db, Scope.METER, ["nope"], now, now - timedelta(days=1), by="t", now=now)
    assert db.execute("SELECT count(*) FROM reread_tasks").fetchone() == (0,)


def test_headend_reread_runs_the_task_and_prints_what_each_meter_recovered(
    db: psycopg.Connection[Any], database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Dlt645Gateway("127.0.0.1", free_port(), 2, seed=9, baud=115200, latency_s=0.001) as gateway:
        gateway.write_registry_csv(tmp_path / "meters.csv")
        _import(db, tmp_path / "meters.csv")
        listed = tmp_path / "list.txt"
        listed.write_text("# meters to re-read\n" + "\n".join(gateway.meter_id(a) for a in gateway.addresses) + "\n")
        monkeypatch.setenv("HEADEND_DATABASE_URL", database_url)
        yesterday = (datetime.now(ZONE) - timedelta(days=1)).date().isoformat()
        result = CliRunner().invoke(app, ["reread", "--file", str(listed), "--from", yesterday, "--json"])
    assert result.exit_code == 0, result.output
    task = json.loads(result.stdout)
    assert task["state"] == "done"
    assert [m["state"] for m in task["meters"]] == ["partial", "partial"]
    # yesterday's and today's midnights, and the current load point (unless it is today's midnight)
    assert all(m["intervals_recovered"] in (2, 3) for m in task["meters"])
    assert task["intervals_recovered"] == sum(m["intervals_recovered"] for m in task["meters"])
    refused = CliRunner().invoke(app, ["reread", "--meter", "nope", "--from", yesterday])
    assert refused.exit_code == 1
    assert "unknown meter(s): nope" in refused.output
