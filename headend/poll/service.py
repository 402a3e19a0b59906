"""`headend poll`: rounds of polls at every load point (or one round), their readings and failures stored in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from functools import partial
from typing import TypeVar
from zoneinfo import ZoneInfo

import psycopg
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from headend.ingest.writer import WriteResult
from headend.poll.failures import PollFailure
from headend.poll.poller import Clock, PollConfig, Poller, RoundTotals
from headend.poll.schedule import load_point_at_or_before, next_load_point
from headend.poll.store import PollStore
from headend.poll.targets import PolledMeter
from headend.reread.runner import (
    OnDatabase,
    ReadingsRequester,
    RereadConfig,
    RereadRunner,
    RereadStore,
    catch_up_freezes,
)
from headend.settings import Settings
from protocols.readings import MeterReading

log = logging.getLogger(__name__)
FLUSH_READINGS = 500
FLUSH_EVERY_S = 1.0
DB_RETRY_MAX_S = 30.0
CLOCK_CHECK_S = 0.5  # the longest real pause between looks at the clock while a load point is awaited
T = TypeVar("T")
OnRound = Callable[[datetime, RoundTotals], None]


def poll_config(settings: Settings) -> PollConfig:
    """The poller's configuration from the settings."""
    return PollConfig(
        timeout_s=settings.poll_timeout_s,
        retries=settings.poll_retries,
        retry_backoff_s=settings.poll_retry_backoff_s,
        snap=timedelta(seconds=settings.poll_snap_s),
        connections=settings.poll_connections,
    )


@dataclass
class PollTotals:
    """What a poller did since it started."""

    rounds: int = 0
    read: int = 0
    failed: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    frozen: int = 0  # midnight readings from DL/T 645 daily freezes
    rereads: int = 0  # re-read tasks run
    last_round: RoundTotals = field(default_factory=RoundTotals)


class _Batcher:
    """Collects what polls deliver and stores it in batches, on one database thread, retrying a database that fails."""

    def __init__(self, store: PollStore, executor: ThreadPoolExecutor, totals: PollTotals, stop: threading.Event):
        self._store = store
        self._executor = executor
        self._totals = totals
        self._stop = stop
        self._readings: list[tuple[PolledMeter, MeterReading]] = []
        self._failures: list[PollFailure] = []
        self._lock = asyncio.Lock()
        self._last_flush = asyncio.get_running_loop().time()

    async def deliver(self, readings: list[tuple[PolledMeter, MeterReading]], failures: list[PollFailure]) -> None:
        self._readings.extend(readings)
        self._failures.extend(failures)
        now = asyncio.get_running_loop().time()
        if len(self._readings) + len(self._failures) >= FLUSH_READINGS or now - self._last_flush >= FLUSH_EVERY_S:
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            readings, failures = self._readings, self._failures
            self._readings, self._failures = [], []
            self._last_flush = asyncio.get_running_loop().time()
            if not readings and not failures:
                return
            result = await self._write(readings, failures)
        self._totals.stored += result.inserted
        self._totals.duplicates += result.duplicates
        self._totals.dead_letters += result.dead_letters

    async def _write(
        self, readings: list[tuple[PolledMeter, MeterReading]], failures: list[PollFailure]
    ) -> WriteResult:
        return await on_database(self._executor, self._stop, self._store.write, readings, failures)


async def on_database(executor: ThreadPoolExecutor, stop: threading.Event, call: Callable[..., T], *args: object) -> T:
    """Run `call` on the database thread; a database that is down is waited for (what polls read is held, not
    lost) until it is back, or until `stop` is set (then the last error is raised)."""
    loop = asyncio.get_running_loop()

    def warn(state: RetryCallState) -> None:
        log.warning("database unavailable (%s); holding the work in hand and retrying", _outcome(state))

    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(psycopg.OperationalError),
        wait=wait_exponential(multiplier=0.5, max=DB_RETRY_MAX_S),
        stop=lambda state: stop.is_set(),
        before_sleep=warn,
        reraise=True,
    ):
        with attempt:
            return await loop.run_in_executor(executor, call, *args)
    raise AssertionError("unreachable: AsyncRetrying returns or raises")


def _outcome(state: RetryCallState) -> str:
    return str(state.outcome.exception()) if state.outcome is not None else "?"


async def _round(
    poller: Poller, batcher: _Batcher, meters: list[PolledMeter], load_point: datetime | None
) -> RoundTotals:
    totals = await poller.poll_round(meters, load_point, batcher.deliver)
    await batcher.flush()
    return totals


async def run_poller(
    settings: Settings,
    database_url: str,
    stop: threading.Event,
    *,
    once: bool = False,
    meter_ids: list[str] | None = None,
    clock: Clock = lambda: datetime.now(UTC),
    requester: ReadingsRequester | None = None,
    clock_check_s: float = CLOCK_CHECK_S,
    on_round: OnRound | None = None,
    totals: PollTotals | None = None,  # counted into as the poller goes, for its metrics to read
) -> PollTotals:
    """Poll until `stop` is set: a round at every load point, DL/T 645 freezes caught up after each local midnight,
    re-reads run as they are asked for; with `once`, one round now and return.

    `clock_check_s` is the longest real pause between looks at `clock` while the next load point is awaited: a
    simulated clock that runs faster than real time needs a short one, or its load points pass unseen. `on_round`
    is called on the poller's event loop (it must not block) with each round's load point and totals once the
    round is over: its readings and failures stored, the freezes caught up, the next load point chosen (the first
    after the round's, unless the clock has passed it already). A clock that stands on a load point has not passed
    it: the round is due (when the poller starts, or after a round, as with a simulated clock moved in steps)."""
    assert clock_check_s > 0
    zone = ZoneInfo(settings.timezone)
    interval = timedelta(seconds=settings.poll_interval_s)
    totals = PollTotals() if totals is None else totals
    store = PollStore(database_url, settings)
    poller = Poller(poll_config(settings), clock)
    # re-reads ask on links of their own: a link is one request at a time, and the rounds go on meanwhile
    reread_poller = Poller(poll_config(settings), clock)
    reread_store = RereadStore(database_url, settings)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="poll-db") as executor:
        loop = asyncio.get_running_loop()
        batcher = _Batcher(store, executor, totals, stop)
        db: OnDatabase = partial(on_database, executor, stop)
        runner = RereadRunner(reread_store, reread_poller, requester, reread_config(settings), db, clock)
        rereads = None if once else asyncio.create_task(_run_rereads(runner, settings, stop, totals))
        caught_up = False
        due = None if once else _load_point_at_or_after(clock(), interval, zone)
        try:
            while not stop.is_set():
                if due is None:
                    load_point = load_point_at_or_before(clock(), interval, zone)
                else:
                    if not await sleep_until(due, clock, stop, clock_check_s):
                        break
                    load_point = due
                meters = await on_database(executor, stop, store.polled_meters, meter_ids)
                result = await _round(poller, batcher, meters, load_point)
                totals.rounds += 1
                totals.read += result.read
                totals.failed += result.failed
                totals.last_round = result
                log.info(
                    "poll round at %s: %d meter(s), %s",
                    load_point.astimezone(zone).isoformat(timespec="minutes"),
                    len(meters),
                    result.summary(),
                )
                if once:
                    if on_round is not None:
                        on_round(load_point, result)
                    break
                if not caught_up or load_point.astimezone(zone).time() == time(0):
                    caught_up = True
                    frozen = await catch_up_freezes(
                        poller,
                        reread_store,
                        db,
                        meters,
                        clock(),
                        zone,
                        settings.poll_frozen_days,
                        settings.poll_connections,
                    )
                    totals.frozen += frozen
                    if frozen:
                        log.info("daily freezes caught up: %d midnight reading(s) stored", frozen)
                due = next_load_point(load_point, interval, zone)
                now = clock()
                if now > due:
                    log.warning("the round at %s outlasted its interval: load points were missed", load_point)
                    due = _load_point_at_or_after(now, interval, zone)
                if on_round is not None:
                    on_round(load_point, result)
        finally:
            if rereads is not None:
                rereads.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await rereads
            await poller.close()
            await reread_poller.close()
            await loop.run_in_executor(executor, store.close)
            await loop.run_in_executor(executor, reread_store.close)
    return totals


def _load_point_at_or_after(now: datetime, interval: timedelta, zone: ZoneInfo) -> datetime:
    """The first load point at or after `now`: a clock standing on a load point (a simulated clock moved in steps,
    from one to the next) has not passed it, and its round is due now."""
    point = load_point_at_or_before(now, interval, zone)
    return point if point == now else next_load_point(now, interval, zone)


def reread_config(settings: Settings) -> RereadConfig:
    """How re-reads are run, from the settings."""
    return RereadConfig(
        zone=ZoneInfo(settings.timezone),
        wait=timedelta(seconds=settings.reread_wait_s),
        bus_parallelism=settings.poll_connections,
    )


async def _run_rereads(runner: RereadRunner, settings: Settings, stop: threading.Event, totals: PollTotals) -> None:
    """Run the re-reads asked for (through the API or `headend reread --queue`) until stopped."""
    while not stop.is_set():
        try:
            totals.rereads += len(await runner.run_pending())
        except psycopg.Error as exc:
            log.warning("re-reads not looked for: %s", exc)
        await asyncio.sleep(settings.reread_check_s)


async def sleep_until(due: datetime, clock: Clock, stop: threading.Event, check_s: float = CLOCK_CHECK_S) -> bool:
    """Wait until `clock` reaches `due`; False when stopped first. Looks at the clock and the stop event at least
    every `check_s` real seconds (the time left by `clock` is real time only if it runs at real speed)."""
    while not stop.is_set():
        remaining = (due - clock()).total_seconds()
        if remaining <= 0:
            return True
        await asyncio.sleep(min(remaining, check_s))
    return False
