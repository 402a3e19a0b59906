"""Run a re-read task: freeze the first pass, ask every meter the way it can be asked, count what came back.

Polled meters are asked here (DL/T 645 meters for their daily freezes, every meter for its current load point), a bus
one request at a time, buses in parallel. MQTT meters and concentrators get a `read_readings` command and answer by
publishing again on their readings topics, which ingest stores: the runner waits for those readings up to a limit.
What a meter recovered is counted from the readings stored, before and after, not from what anyone claims.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import partial
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

import psycopg

from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions, libpq_dsn
from headend.poll.failures import FailureKind, PollFailure
from headend.poll.poller import Poller
from headend.poll.store import PollStore
from headend.poll.targets import PolledMeter, by_bus
from headend.reread import tasks
from headend.reread.first_pass import freeze_first_pass
from headend.reread.gaps import SLOT, missing_slots, slot_of
from headend.reread.states import MeterState, RereadPath, Scope, TaskState
from headend.reread.tasks import RereadTask, TaskMeter
from headend.settings import Settings
from protocols.readings import MeterReading

log = logging.getLogger(__name__)
T = TypeVar("T")
CONNECT_TIMEOUT_S = 10
POLLED = frozenset({RereadPath.POLL, RereadPath.DLT645_FROZEN})
# a meter that did not answer (after the poller's repeats), or whose bus could not be reached, is not asked for more
UNREACHED = frozenset({FailureKind.TIMEOUT, FailureKind.NO_CONNECTION})
Clock = Callable[[], datetime]


class RequestError(RuntimeError):
    """A `read_readings` command could not be handed to the broker."""


class ReadingsRequester(Protocol):
    """Sends `read_readings` commands to MQTT meters or their concentrators."""

    def request(
        self,
        command_id: str,
        meter_id: str | None,
        concentrator_id: str | None,
        from_at: datetime,
        to_at: datetime,
        issued_at: datetime,
        expires_at: datetime,
    ) -> None:
        """Hand one command to the broker (QoS 1, acknowledged), or raise RequestError."""
        ...


class OnDatabase(Protocol):
    """Runs a blocking database call off the event loop (retrying a database that is down)."""

    def __call__(self, call: Callable[..., T], *args: Any) -> Awaitable[T]:
        """The call's result."""
        ...


@dataclass(frozen=True, slots=True)
class RereadConfig:
    """How long MQTT answers are awaited, how often stored readings are checked meanwhile, in which zone days fall."""

    zone: ZoneInfo
    wait: timedelta = timedelta(seconds=60)
    check_every_s: float = 2.0
    bus_parallelism: int = 64


class RereadStore:
    """The runner's database work on one autocommit connection; polled readings go through PollStore's writer."""

    def __init__(self, database_url: str, settings: Settings) -> None:
        self._dsn = libpq_dsn(database_url)
        self.readings = PollStore(database_url, settings)
        self._conn: psycopg.Connection[Any] | None = None

    def conn(self) -> psycopg.Connection[Any]:
        """The connection, opened again after it was lost."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        return self._conn

    def close(self) -> None:
        """Close both connections."""
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self.readings.close()

    def claim(self, task_id: str, now: datetime) -> RereadTask | None:
        """The task, taken by this runner; None when it is not pending (another runner has it, or it ended)."""
        conn = self.conn()
        return tasks.load_task(conn, task_id) if tasks.claim(conn, task_id, now) else None

    def task(self, task_id: str) -> RereadTask:
        """The task with its meters."""
        task = tasks.load_task(self.conn(), task_id)
        assert task is not None, task_id
        return task

    def next_pending(self) -> str | None:
        """The oldest pending task's id."""
        return tasks.next_pending(self.conn())

    def freeze(self, days: list[date], task_id: str, now: datetime) -> list[date]:
        """Freeze the first pass of `days` not frozen yet."""
        conn = self.conn()
        options = SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall())
        return freeze_first_pass(conn, options, days, task_id, now)

    def missing(
        self, meter_ids: list[str], from_at: datetime, to_at: datetime, zone: ZoneInfo
    ) -> dict[str, list[datetime]]:
        """The load points of the range each meter has no reading for."""
        return missing_slots(self.conn(), meter_ids, from_at, to_at, zone)

    def record(self, task_id: str, meter_id: str, state: MeterState, now: datetime, **counts: Any) -> None:
        """Move one meter of the task."""
        tasks.record_meter(self.conn(), task_id, meter_id, state, now, **counts)

    def finish(self, task_id: str, state: TaskState, now: datetime, detail: str) -> RereadTask:
        """End the task; the task as stored."""
        conn = self.conn()
        tasks.finish(conn, task_id, state, now, detail)
        task = tasks.load_task(conn, task_id)
        assert task is not None
        return task

    def polled_meters(self, meter_ids: list[str]) -> list[PolledMeter]:
        """The polled meters among `meter_ids` that the poller can reach."""
        return self.readings.polled_meters(meter_ids)

    def store(self, readings: list[tuple[PolledMeter, MeterReading]], failures: list[PollFailure]) -> None:
        """Store polled readings and failures as the poller does."""
        self.readings.write(readings, failures)


def local_days(from_at: datetime, to_at: datetime, zone: ZoneInfo) -> list[date]:
    """The local days [from_at, to_at) touches."""
    first, last = from_at.astimezone(zone).date(), (to_at - timedelta(microseconds=1)).astimezone(zone).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def command_id(task_id: str, target: str) -> str:
    """The `read_readings` command id of a task's request to a meter or concentrator (≤ 96 characters)."""
    return f"reread:{task_id}:{target}"[:96]


class RereadRunner:
    """Runs re-read tasks with a poller (polled meters) and a requester (MQTT meters), storing what they return."""

    def __init__(
        self,
        store: RereadStore,
        poller: Poller,
        requester: ReadingsRequester | None,
        config: RereadConfig,
        on_database: OnDatabase,
        clock: Clock,
    ) -> None:
        self._store = store
        self._poller = poller
        self._requester = requester
        self._config = config
        self._db = on_database
        self._clock = clock

    async def run_pending(self) -> list[RereadTask]:
        """Run every pending task, oldest first; the tasks as they ended."""
        done = []
        while (task_id := await self._db(self._store.next_pending)) is not None:
            task = await self.run(task_id)
            if task is not None:
                done.append(task)
        return done

    async def run(self, task_id: str) -> RereadTask | None:
        """Take the task and run it to its end; None when it was not pending."""
        task = await self._db(self._store.claim, task_id, self._clock())
        if task is None:
            return None
        log.info("re-read %s: %d meter(s), %s to %s", task.task_id, task.meters_total, task.from_at, task.to_at)
        try:
            return await self._run(task)
        except Exception as exc:
            log.exception("re-read %s failed", task.task_id)
            return await self._db(self._store.finish, task.task_id, TaskState.FAILED, self._clock(), f"failed: {exc}")

    async def _run(self, task: RereadTask) -> RereadTask:
        zone = self._config.zone
        now = self._clock()
        to_at = min(task.to_at, now)
        if to_at <= task.from_at:
            return await self._db(self._store.finish, task.task_id, TaskState.DONE, now, "nothing to re-read yet")
        today = now.astimezone(zone).date()
        days = [day for day in local_days(task.from_at, to_at, zone) if day < today]
        await self._db(self._store.freeze, days, task.task_id, now)
        ids = [m.meter_id for m in task.meters]
        before = await self._db(self._store.missing, ids, task.from_at, to_at, zone)
        asked: list[TaskMeter] = []
        for meter in task.meters:
            if before[meter.meter_id]:
                asked.append(meter)
            else:
                await self._record(task, meter.meter_id, MeterState.NOTHING_MISSING, missing=0)
        polled = [m for m in asked if m.path in POLLED]
        mqtt = [m for m in asked if m.path not in POLLED]
        requested = await self._request(task, mqtt, before, to_at)
        problems = await self._poll(task, polled, before, to_at)
        await self._await_answers(task, requested, before, to_at)
        await self._settle(task, polled, before, to_at, problems)
        counts = Counter(str(m.state) for m in (await self._db(self._store.task, task.task_id)).meters)
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        return await self._db(self._store.finish, task.task_id, TaskState.DONE, self._clock(), summary)

    # --- MQTT meters -------------------------------------------------------------------------------------------------

    async def _request(
        self, task: RereadTask, meters: list[TaskMeter], before: dict[str, list[datetime]], to_at: datetime
    ) -> list[TaskMeter]:
        """Send the `read_readings` commands; the meters now awaiting their answers."""
        if not meters:
            return []
        now = self._clock()
        if self._requester is None:
            for meter in meters:
                await self._fail(task, meter, before, "no broker connection in this runner to ask MQTT meters")
            return []
        # one command a concentrator when the task covers whole concentrators, else one a meter
        groups: dict[tuple[str | None, str | None], list[TaskMeter]] = defaultdict(list)
        for meter in meters:
            whole = task.scope is Scope.CONCENTRATOR and meter.path is RereadPath.MQTT_CONCENTRATOR
            groups[(None if whole else meter.meter_id, meter.concentrator_id)].append(meter)
        requested = []
        expires_at = now + self._config.wait
        for (meter_id, concentrator_id), members in groups.items():
            slots = [slot for m in members for slot in before[m.meter_id]]
            from_at, until = min(slots), min(max(slots) + SLOT, to_at)
            target = meter_id or f"dcu-{concentrator_id}"
            try:
                await asyncio.to_thread(
                    self._requester.request,
                    command_id(task.task_id, target),
                    meter_id,
                    concentrator_id,
                    from_at,
                    until,
                    now,
                    expires_at,
                )
            except RequestError as exc:
                for meter in members:
                    await self._fail(task, meter, before, f"read_readings not sent: {exc}")
                continue
            via = f"concentrator {concentrator_id}" if concentrator_id else "its own topic"
            for meter in members:
                await self._record(
                    task,
                    meter.meter_id,
                    MeterState.REQUESTED,
                    missing=len(before[meter.meter_id]),
                    detail=f"read_readings sent via {via}",
                )
            requested.extend(members)
        return requested

    async def _await_answers(
        self, task: RereadTask, meters: list[TaskMeter], before: dict[str, list[datetime]], to_at: datetime
    ) -> None:
        if not meters:
            return
        deadline = self._clock() + self._config.wait
        ids = [m.meter_id for m in meters]
        while self._clock() < deadline:
            now_missing = await self._db(self._store.missing, ids, task.from_at, to_at, self._config.zone)
            if not any(set(before[i]) & set(now_missing[i]) for i in ids):
                break
            await asyncio.sleep(self._config.check_every_s)
        waited = self._config.wait.total_seconds()
        await self._settle(task, meters, before, to_at, {}, silent=f"no readings came back within {waited:g} s")

    # --- polled meters -----------------------------------------------------------------------------------------------

    async def _poll(
        self, task: RereadTask, meters: list[TaskMeter], before: dict[str, list[datetime]], to_at: datetime
    ) -> dict[str, str]:
        """Ask the polled meters; by meter, why what it did not give back could not be had."""
        if not meters:
            return {}
        targets = {t.meter_id: t for t in await self._db(self._store.polled_meters, [m.meter_id for m in meters])}
        problems = {m.meter_id: "no endpoint to poll it at" for m in meters if m.meter_id not in targets}
        limit = asyncio.Semaphore(self._config.bus_parallelism)

        async def one_bus(bus: list[PolledMeter]) -> None:
            async with limit:
                for meter in bus:
                    problems[meter.meter_id] = await self._poll_one(meter, before[meter.meter_id])

        async with asyncio.TaskGroup() as group:
            for bus in by_bus([targets[m.meter_id] for m in meters if m.meter_id in targets]).values():
                group.create_task(one_bus(bus))
        return problems

    async def _poll_one(self, meter: PolledMeter, missing: list[datetime]) -> str:
        """Ask one polled meter for what it can give of `missing`; why the rest could not be had."""
        readings, failures = await recover_polled(self._poller, meter, missing, self._clock(), self._config.zone)
        if readings or failures:
            await self._db(self._store.store, [(meter, r) for r in readings], failures)
        if failures:
            return f"{failures[0].kind}: {failures[0].reason}"
        if meter.protocol == "modbus":
            return "a Modbus meter holds no past readings: only the current load point can be read again"
        return "only midnights (daily freezes) and the current load point can be read again from a DL/T 645 meter"

    # --- outcome -----------------------------------------------------------------------------------------------------

    async def _settle(
        self,
        task: RereadTask,
        meters: list[TaskMeter],
        before: dict[str, list[datetime]],
        to_at: datetime,
        problems: dict[str, str],
        *,
        silent: str = "nothing came back",
    ) -> None:
        """Count what each meter recovered from the readings stored now, and record its state."""
        if not meters:
            return
        ids = [m.meter_id for m in meters]
        after = await self._db(self._store.missing, ids, task.from_at, to_at, self._config.zone)
        for meter_id in ids:
            missing = before[meter_id]
            recovered = len(set(missing) - set(after[meter_id]))
            if recovered == len(missing):
                state, detail = MeterState.RECOVERED, None
            elif recovered:
                state, detail = MeterState.PARTIAL, problems.get(meter_id)
            else:
                state, detail = MeterState.FAILED, problems.get(meter_id, silent)
            await self._record(task, meter_id, state, missing=len(missing), recovered=recovered, detail=detail)

    async def _record(
        self,
        task: RereadTask,
        meter_id: str,
        state: MeterState,
        *,
        missing: int | None = None,
        recovered: int | None = None,
        detail: str | None = None,
    ) -> None:
        record = partial(
            self._store.record,
            task.task_id,
            meter_id,
            state,
            self._clock(),
            missing=missing,
            recovered=recovered,
            detail=detail,
        )
        await self._db(record)

    async def _fail(self, task: RereadTask, meter: TaskMeter, before: dict[str, list[datetime]], why: str) -> None:
        await self._record(
            task, meter.meter_id, MeterState.FAILED, missing=len(before[meter.meter_id]), recovered=0, detail=why
        )


def midnights_of(slots: list[datetime], zone: ZoneInfo) -> list[date]:
    """The local days whose starting midnight is among `slots`."""
    return sorted({slot.astimezone(zone).date() for slot in slots if slot.astimezone(zone).time() == time(0)})


async def read_freezes(
    poller: Poller, meter: PolledMeter, days: list[date], zone: ZoneInfo
) -> tuple[list[MeterReading], list[PollFailure]]:
    """A DL/T 645 meter's daily freezes of `days`, and the reads that failed (the meter is not asked again after it
    did not answer, or its bus could not be reached)."""
    readings: list[MeterReading] = []
    failures: list[PollFailure] = []
    for day in days:
        outcome = await poller.read_freeze(meter, day, zone)
        if isinstance(outcome, PollFailure):
            failures.append(outcome)
            if outcome.kind in UNREACHED:
                break
        else:
            readings.append(outcome)
    return readings, failures


async def recover_polled(
    poller: Poller, meter: PolledMeter, missing: list[datetime], now: datetime, zone: ZoneInfo
) -> tuple[list[MeterReading], list[PollFailure]]:
    """What a polled meter can give of its `missing` load points: a DL/T 645 meter's daily freezes of the midnights
    among them, and any meter's current load point; with the polls that failed."""
    readings: list[MeterReading] = []
    failures: list[PollFailure] = []
    if meter.protocol == "dlt645":
        readings, failures = await read_freezes(poller, meter, midnights_of(missing, zone), zone)
        if any(f.kind in UNREACHED for f in failures):
            return readings, failures
    current = slot_of(now, zone)
    if current in missing:
        polled = await poller.poll_meter(meter, current)
        if isinstance(polled, PollFailure):
            failures.append(polled)
        else:
            readings.append(polled)
    return readings, failures


async def catch_up_freezes(
    poller: Poller,
    store: RereadStore,
    on_database: OnDatabase,
    meters: list[PolledMeter],
    now: datetime,
    zone: ZoneInfo,
    days: int,
    parallel_buses: int,
) -> int:
    """Read the daily freezes of the last `days` local midnights that DL/T 645 meters have no reading for, as a
    concentrator does after midnight; the number of freezes stored."""
    dlt645 = [m for m in meters if m.protocol == "dlt645"]
    if not dlt645 or days <= 0:
        return 0
    today = now.astimezone(zone).date()
    from_at = datetime.combine(today - timedelta(days=days - 1), time(0), zone)
    to_at = datetime.combine(today, time(0), zone) + SLOT
    missing = await on_database(store.missing, [m.meter_id for m in dlt645], from_at, to_at, zone)
    limit = asyncio.Semaphore(parallel_buses)
    stored = 0

    async def one_bus(bus: list[PolledMeter]) -> None:
        nonlocal stored
        async with limit:
            for meter in bus:
                days_missing = midnights_of(missing[meter.meter_id], zone)
                if days_missing:
                    readings, failures = await read_freezes(poller, meter, days_missing, zone)
                    await on_database(store.store, [(meter, r) for r in readings], failures)
                    stored += len(readings)

    async with asyncio.TaskGroup() as group:
        for bus in by_bus(dlt645).values():
            group.create_task(one_bus(bus))
    return stored
