"""A re-read task for MQTT meters, run as `headend reread` and the poll worker run it: `read_readings` sent through
the broker, the simulated concentrator and meters answer, ingest stores the readings, and the task counts what came
back from the readings stored."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from headend.reread.mqtt_requester import LazyMqttRequester
from headend.reread.service import run_task_here
from headend.reread.states import MeterState, RereadPath, Scope, TaskState
from headend.reread.tasks import RereadTask, create_task
from headend.settings import Settings
from simulators.command_responder import CommandResponder
from simulators.fleet import build_fleet
from tests.integration.conftest import register
from tests.integration.ingest_support import RunningWorker
from tests.integration.test_reread_mqtt import END, INTERVALS, LOAD_POINTS, START, broker, run_with_drops, stored

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture
def settings(settings_for: Callable[..., Settings], database_url: str) -> Settings:
    return settings_for(database_url).model_copy(update={"reread_wait_s": 10.0})


@pytest.fixture
def worker(settings: Settings, database_url: str) -> Iterator[RunningWorker]:
    running = RunningWorker(settings, database_url)
    yield running
    running.stop()


def run(settings: Settings, database_url: str, task: RereadTask) -> RereadTask:
    with LazyMqttRequester(settings) as requester:
        done = asyncio.run(run_task_here(settings, database_url, task.task_id, requester, threading.Event()))
    assert done is not None
    return done


def test_a_concentrator_re_read_recovers_what_its_meters_missed_and_counts_it(
    db: psycopg.Connection[Any], database_url: str, settings: Settings, worker: RunningWorker, unique: str
) -> None:
    prefix = f"T{unique[:9]}"
    fleet = build_fleet(8, 1, ["north"], seed=2, direct_share=0.0, id_prefix=prefix)
    dcu = fleet.concentrators[0].dcu_id
    ids = [m.meter_id for m in fleet.meters]
    register(db, ids, concentrator=dcu)
    simulation = run_with_drops(db, fleet, prefix, 0.4)
    missing = {m: len(LOAD_POINTS - stored(db, m)) for m in ids}
    assert sum(missing.values()) > 0

    task = create_task(db, Scope.CONCENTRATOR, [dcu], START, END, by="test", now=datetime.now(UTC))
    assert {m.path for m in task.meters} == {RereadPath.MQTT_CONCENTRATOR}
    with CommandResponder(fleet, broker(), history=simulation.history) as responder:
        done = run(settings, database_url, task)
        assert responder.counts.rereads_received == 1  # one command for the whole concentrator
    assert done.state is TaskState.DONE
    for meter in done.meters:
        assert stored(db, meter.meter_id) == LOAD_POINTS
        expected = MeterState.RECOVERED if missing[meter.meter_id] else MeterState.NOTHING_MISSING
        assert (meter.state, meter.intervals_missing, meter.intervals_recovered) == (
            expected,
            missing[meter.meter_id],
            missing[meter.meter_id],
        )
    assert (done.intervals_missing, done.intervals_recovered) == (sum(missing.values()), sum(missing.values()))


def test_a_meter_that_does_not_answer_fails_after_the_wait_with_the_reason(
    db: psycopg.Connection[Any], database_url: str, settings: Settings, worker: RunningWorker, unique: str
) -> None:
    prefix = f"U{unique[:9]}"
    fleet = build_fleet(4, 0, ["north"], seed=21, id_prefix=prefix)
    ids = [m.meter_id for m in fleet.meters]
    register(db, ids)
    run_with_drops(db, fleet, prefix, 0.3)
    target = min(ids, key=lambda m: len(stored(db, m)))
    task = create_task(db, Scope.METER, [target], START, END, by="test", now=datetime.now(UTC))
    # no device answers: the command reaches the broker, nothing comes back
    done = run(settings.model_copy(update={"reread_wait_s": 1.0}), database_url, task)
    meter = done.meters[0]
    assert meter.path is RereadPath.MQTT_METER
    assert (meter.state, meter.intervals_recovered) == (MeterState.FAILED, 0)
    assert meter.intervals_missing == INTERVALS - len(stored(db, target))
    assert meter.detail == "no readings came back within 1 s"
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.finished_at - done.started_at < timedelta(seconds=10)
