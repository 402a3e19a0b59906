"""One round of polls: every bus in parallel (up to a limit), one request at a time on each, with retries."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TypeVar
from zoneinfo import ZoneInfo

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_none

from headend.poll.dlt645_frozen import read_freeze
from headend.poll.dlt645_reader import Dlt645Link
from headend.poll.failures import FailureKind, PollError, PollFailure
from headend.poll.modbus_reader import ModbusLink
from headend.poll.schedule import reading_stamp
from headend.poll.targets import Endpoint, PolledMeter, by_bus
from protocols.readings import MeterReading

log = logging.getLogger(__name__)
T = TypeVar("T")
# worth asking again: the answer may come next time; an exception code or a meter's refusal will not change
TRANSIENT = frozenset({FailureKind.TIMEOUT, FailureKind.NO_CONNECTION, FailureKind.BAD_FRAME})

Clock = Callable[[], datetime]
Deliver = Callable[[list[tuple[PolledMeter, MeterReading]], list[PollFailure]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PollConfig:
    """How requests are made: timeout, repeats, backoff, snapping to load points, parallel buses."""

    timeout_s: float = 2.0
    retries: int = 2
    retry_backoff_s: float = 0.5
    snap: timedelta = timedelta(seconds=300)
    connections: int = 256

    def __post_init__(self) -> None:
        assert self.timeout_s > 0
        assert self.retries >= 0
        assert self.retry_backoff_s >= 0
        assert self.connections >= 1


@dataclass
class RoundTotals:
    """What one round did."""

    read: int = 0
    failed: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> str:
        """One line: read, failed by kind, time taken."""
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.by_kind.items()))
        return (
            f"{self.read} read, {self.failed} failed" + (f" ({kinds})" if kinds else "") + f" in {self.seconds:.1f} s"
        )


class Poller:
    """Polls meters over links kept open between rounds (one per bus)."""

    def __init__(self, config: PollConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._modbus: dict[Endpoint, ModbusLink] = {}
        self._dlt645: dict[Endpoint, Dlt645Link] = {}

    async def close(self) -> None:
        """Close every link."""
        for modbus in self._modbus.values():
            modbus.close()
        for dlt645 in self._dlt645.values():
            await dlt645.close()
        self._modbus.clear()
        self._dlt645.clear()

    def _retrying(self) -> AsyncRetrying:
        backoff = self._config.retry_backoff_s
        return AsyncRetrying(
            stop=stop_after_attempt(self._config.retries + 1),
            wait=wait_exponential(multiplier=backoff, min=backoff, max=backoff * 64) if backoff else wait_none(),
            retry=retry_if_exception(lambda exc: isinstance(exc, PollError) and exc.kind in TRANSIENT),
            reraise=True,
        )

    def _link(self, meter: PolledMeter) -> ModbusLink | Dlt645Link:
        endpoint = meter.endpoint
        if meter.protocol == "dlt645":
            if endpoint not in self._dlt645:
                self._dlt645[endpoint] = Dlt645Link(endpoint, self._config.timeout_s)
            return self._dlt645[endpoint]
        assert meter.protocol == "modbus", meter
        if endpoint not in self._modbus:
            self._modbus[endpoint] = ModbusLink(endpoint, self._config.timeout_s)
        return self._modbus[endpoint]

    async def poll_meter(self, meter: PolledMeter, load_point: datetime | None) -> MeterReading | PollFailure:
        """Read one meter, repeating transient failures: its reading, or why it could not be read."""
        link = self._link(meter)
        reading = await self.retried(meter, lambda: link.read_meter(meter, self._clock()))
        if isinstance(reading, PollFailure):
            return reading
        stamp = reading_stamp(self._clock(), load_point, self._config.snap)
        return dataclasses.replace(reading, ts=stamp)

    async def retried(self, meter: PolledMeter, exchange: Callable[[], Awaitable[T]]) -> T | PollFailure:
        """Run `exchange` with `meter`, repeating transient failures: its result, or why it failed."""
        attempts = 0
        try:
            async for attempt in self._retrying():
                with attempt:
                    attempts += 1
                    result = await exchange()
        except PollError as exc:
            return PollFailure(meter.meter_id, self._clock(), exc.kind, exc.reason, attempts)
        return result

    async def read_freeze(self, meter: PolledMeter, day: date, zone: ZoneInfo) -> MeterReading | PollFailure:
        """A DL/T 645 meter's daily freeze of the midnight that starts local `day`, or why it could not be read."""
        link = self._link(meter)
        assert isinstance(link, Dlt645Link), meter
        today = self._clock().astimezone(zone).date()
        return await self.retried(meter, lambda: read_freeze(link, meter, day, today, zone))

    async def _poll_bus(
        self, meters: list[PolledMeter], load_point: datetime | None, deliver: Deliver, totals: RoundTotals
    ) -> None:
        unreachable: PollFailure | None = None
        for meter in meters:
            if unreachable is not None:
                # the bus's connection failed with every repeat: the others on it are not asked in this round
                outcome: MeterReading | PollFailure = PollFailure(
                    meter.meter_id,
                    self._clock(),
                    FailureKind.NO_CONNECTION,
                    f"not asked: {unreachable.reason} (for meter {unreachable.meter_id})",
                    0,
                )
            else:
                outcome = await self.poll_meter(meter, load_point)
                if isinstance(outcome, PollFailure) and outcome.kind is FailureKind.NO_CONNECTION:
                    unreachable = outcome
            if isinstance(outcome, PollFailure):
                totals.failed += 1
                totals.by_kind[outcome.kind] += 1
                await deliver([], [outcome])
            else:
                totals.read += 1
                await deliver([(meter, outcome)], [])

    async def poll_round(self, meters: list[PolledMeter], load_point: datetime | None, deliver: Deliver) -> RoundTotals:
        """Poll `meters` once: buses in parallel up to the connection limit, each bus one request at a time."""
        totals = RoundTotals()
        started = time.monotonic()
        limit = asyncio.Semaphore(self._config.connections)

        async def one_bus(bus: list[PolledMeter]) -> None:
            async with limit:
                await self._poll_bus(bus, load_point, deliver, totals)

        async with asyncio.TaskGroup() as group:
            for bus in by_bus(meters).values():
                group.create_task(one_bus(bus))
        totals.seconds = time.monotonic() - started
        return totals
