"""The executor of polled meters: relay commands to Modbus and DL/T 645-2007 meters, answered by reading the relay back.

A command goes to its meter over a link reused between commands (one a bus, as the poller's, but the dispatcher's
own connection), from an event loop in a thread the executor owns. `send` returns once the request is on its way —
the relay's status read (Modbus: the connection works and the unit answers) or the gateway connected (DL/T 645) —
and raises SendError when nothing was written. The rest — the write, then reading the relay back until it is where
the command put it or the settle time is over — goes on in the loop, and its outcome is queued as the meter's answer:
a MeterEvent on the meter's events topic, which the dispatch service applies with `Dispatcher.handle_event` as it
does an MQTT answer, so the lifecycle, the audit, the alarms and the account's outcome are the same. A request
written without an answer gives no event: the dispatcher sends the command again until it expires (writing the same
relay position twice is harmless).

A reconnect of a DL/T 645 meter whose reconnect mode is `allowed` is 合闸允许: the meter answers armed, and only the
customer's button closes the relay. Nothing on the bus announces the press, so the executor reads the relay of every
armed polled meter every `armed_check_s` and reports the press (or another change) as a spontaneous event.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg

from headend.db.engine import connect_utc
from headend.dispatch.mqtt_transport import InboundEvent, SendError
from headend.dispatch.states import ReconnectMode
from headend.poll.dlt645_reader import Dlt645Link
from headend.poll.failures import FailureKind, PollError
from headend.poll.modbus_reader import ModbusLink
from headend.poll.targets import POLLED_PROTOCOLS, Endpoint, PolledMeter, load_polled_meters
from protocols.dlt645.identifiers import STATUS_WORD_3, StatusWord3
from protocols.dlt645.messages import RelayCommand
from protocols.errors import ProtocolError
from protocols.mqtt_topics import meter_events_topic
from protocols.readings import RelayState
from protocols.register_map import RegisterMap, load_register_map
from protocols.relay_codec import (
    DETAIL_MAX_LEN,
    CommandResult,
    EventCause,
    MeterEvent,
    RelayAction,
    RelayCommandMessage,
    encode_event,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# how long `send` waits for the bus, in request timeouts beyond the settle time: the command before on the bus may
# take a status read, a write and reads back (each up to 1.5 timeouts on Modbus), then this one connects or reads
HANDOFF_TIMEOUTS = 10
SETTLE_PAUSE_S = 0.2  # between reads of a relay that is not where the command put it yet
CONNECT_TIMEOUT_S = 10  # the executor's database connection
CLOSE_TIMEOUT_S = 10.0
MAX_ARMED_PER_CHECK = 5000  # armed meters read in one check, the longest armed first in line


def utc_now() -> datetime:
    """The time now, aware."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PolledConfig:
    """Timeouts of the executor's requests and the DL/T 645 relay control's credentials."""

    timeout_s: float = 2.0  # one request
    settle_s: float = 2.0  # how long a relay read back short of the command's position is read again
    armed_check_s: float = 60.0  # between reads of the armed (合闸允许) meters' relays
    dlt645_password: str = field(default="123456", repr=False)  # P2 P1 P0, as printed
    dlt645_password_level: int = 2
    dlt645_operator_code: str = "00000000"  # C3 C2 C1 C0, as printed

    def __post_init__(self) -> None:
        assert self.timeout_s > 0
        assert self.settle_s >= 0
        assert self.armed_check_s > 0


class NotSentError(Exception):
    """Nothing was written to the meter: the command may be sent again as new."""


def _clip(text: str) -> str:
    return text if len(text) <= DETAIL_MAX_LEN else text[: DETAIL_MAX_LEN - 1] + "…"


class PolledExecutor:
    """Sends relay commands to Modbus and DL/T 645 meters; their answers wait in `answers` for the dispatcher.

    `wake` is called (from the executor's thread) whenever an answer is queued: the dispatch service's wait for
    events ends at once. Use it as a context manager: the loop starts on entry; on exit, work in progress is
    cancelled (its commands are sent again by the next dispatcher) and the links are closed.
    """

    def __init__(
        self,
        url: str,
        config: PolledConfig,
        *,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._url = url
        self._config = config
        self._wake = wake
        self._clock = clock
        self._handoff_s = HANDOFF_TIMEOUTS * config.timeout_s + config.settle_s
        self._db: psycopg.Connection[Any] | None = None
        self._db_lock = threading.Lock()  # the dispatcher's thread looks meters up, the armed check too
        self._answers: queue.Queue[InboundEvent] = queue.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._work: set[concurrent.futures.Future[None]] = set()
        self._work_lock = threading.Lock()
        # used only in the loop's thread
        self._modbus: dict[Endpoint, ModbusLink] = {}
        self._dlt645: dict[Endpoint, Dlt645Link] = {}
        self._buses: dict[Endpoint, asyncio.Lock] = {}

    # --- lifetime ------------------------------------------------------------------------

    def __enter__(self) -> PolledExecutor:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._serve, args=(loop,), name="dispatch-polled", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        asyncio.run_coroutine_threadsafe(self._watch_armed(), loop)
        return self

    def __exit__(self, *exc: object) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None and thread is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(CLOSE_TIMEOUT_S)
            except (TimeoutError, RuntimeError):
                log.warning("the polled meters' links did not close within %s s", CLOSE_TIMEOUT_S)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(CLOSE_TIMEOUT_S)
            if not thread.is_alive():
                loop.close()
        with self._db_lock:
            self._close_db()

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    async def _shutdown(self) -> None:
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        for modbus in self._modbus.values():
            modbus.close()
        for dlt645 in self._dlt645.values():
            await dlt645.close()
        self._modbus.clear()
        self._dlt645.clear()

    # --- the dispatcher's side -----------------------------------------------------------

    def send(self, message: RelayCommandMessage, concentrator_id: str | None) -> str:
        """Start the command on the meter's bus; where it went, or SendError when nothing was written."""
        meter, mode = self._lookup(message.meter_id)
        loop = self._loop
        if loop is None:
            raise SendError("the executor of polled meters is not running")
        handed: concurrent.futures.Future[str] = concurrent.futures.Future()
        execution = self._execute(meter, mode, message, handed)
        try:
            work = asyncio.run_coroutine_threadsafe(execution, loop)
        except RuntimeError as exc:  # the loop is closed
            execution.close()
            raise SendError(f"the executor of polled meters is not running: {exc}") from None
        with self._work_lock:
            self._work.add(work)
        work.add_done_callback(self._done)
        try:
            return handed.result(self._handoff_s)
        except TimeoutError:
            if handed.cancel():
                # still waiting for the bus: it will not write now
                raise SendError(
                    f"{meter.endpoint} was busy: the request did not get onto the bus within {self._handoff_s:g} s"
                ) from None
        # it got the bus as the wait ended: connecting or reading, each bounded by the request timeout
        try:
            return handed.result(self._handoff_s)
        except TimeoutError:
            raise SendError(f"no word from the request to {meter.source}") from None

    def _done(self, work: concurrent.futures.Future[None]) -> None:
        with self._work_lock:
            self._work.discard(work)

    def answers(self) -> list[InboundEvent]:
        """The meters' answers and reports queued so far, as QoS 0 events: nothing to acknowledge."""
        batch = []
        while True:
            try:
                batch.append(self._answers.get_nowait())
            except queue.Empty:
                return batch

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every command started has its outcome (at most `timeout_s`); whether they all have."""
        with self._work_lock:
            work = set(self._work)
        _, pending = concurrent.futures.wait(work, timeout_s)
        return not pending

    # --- the registry --------------------------------------------------------------------

    def _lookup(self, meter_id: str) -> tuple[PolledMeter, ReconnectMode]:
        try:
            with self._db_lock:
                found = self._polled_meters([meter_id])
        except psycopg.Error as exc:
            raise SendError(f"cannot look meter {meter_id} up: {_first_line(exc)}") from None
        if not found:
            raise SendError(f"meter {meter_id} is not an active polled meter with an endpoint")
        return found[0]

    def _armed_meters(self) -> list[tuple[PolledMeter, ReconnectMode]]:
        with self._db_lock:
            try:
                conn = self._connection()
                rows = conn.execute(
                    "SELECT r.meter_id FROM meter_relays r JOIN meters m USING (meter_id) "
                    "WHERE r.ready_for_reconnection AND r.relay = 'open' AND m.protocol = ANY(%s) "
                    "ORDER BY r.received_at LIMIT %s",
                    (list(POLLED_PROTOCOLS), MAX_ARMED_PER_CHECK),
                ).fetchall()
            except psycopg.Error:
                self._close_db()
                raise
            return self._polled_meters([str(row[0]) for row in rows]) if rows else []

    def _polled_meters(self, meter_ids: list[str]) -> list[tuple[PolledMeter, ReconnectMode]]:
        """The active polled meters of `meter_ids` and their reconnect modes (the caller holds the lock)."""
        try:
            conn = self._connection()
            meters = load_polled_meters(conn, meter_ids)
            modes = dict(
                conn.execute(
                    "SELECT meter_id, reconnect_mode FROM meters WHERE meter_id = ANY(%s)", (meter_ids,)
                ).fetchall()
            )
        except psycopg.Error:
            self._close_db()
            raise
        return [(meter, ReconnectMode(modes[meter.meter_id])) for meter in meters]

    def _connection(self) -> psycopg.Connection[Any]:
        if self._db is None:
            self._db = connect_utc(self._url, timeout_s=CONNECT_TIMEOUT_S)
        return self._db

    def _close_db(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except psycopg.Error:
                log.debug("closing a lost connection failed", exc_info=True)

    # --- the buses -----------------------------------------------------------------------

    def _bus(self, endpoint: Endpoint) -> asyncio.Lock:
        if endpoint not in self._buses:
            self._buses[endpoint] = asyncio.Lock()
        return self._buses[endpoint]

    def _modbus_link(self, endpoint: Endpoint) -> ModbusLink:
        if endpoint not in self._modbus:
            self._modbus[endpoint] = ModbusLink(endpoint, self._config.timeout_s)
        return self._modbus[endpoint]

    def _dlt645_link(self, endpoint: Endpoint) -> Dlt645Link:
        if endpoint not in self._dlt645:
            self._dlt645[endpoint] = Dlt645Link(endpoint, self._config.timeout_s)
        return self._dlt645[endpoint]

    async def _execute(
        self,
        meter: PolledMeter,
        mode: ReconnectMode,
        message: RelayCommandMessage,
        handed: concurrent.futures.Future[str],
    ) -> None:
        """Run one command on the meter's bus: `handed` gets its address once the request is on its way."""
        event: MeterEvent | None = None
        async with self._bus(meter.endpoint):
            if not handed.set_running_or_notify_cancel():
                return  # `send` stopped waiting: nothing was written, and nothing will be
            try:
                if meter.protocol == "modbus":
                    event = await self._modbus_command(meter, message, handed)
                else:
                    event = await self._dlt645_command(meter, mode, message, handed)
            except NotSentError as exc:
                handed.set_exception(SendError(str(exc)))
            except Exception:
                log.exception("%s to %s failed in the executor", message.command_id, meter.source)
            finally:
                if not handed.done():
                    handed.set_exception(SendError(f"the executor stopped before the request to {meter.source} left"))
        if event is not None:
            self._deliver(event)

    def _answer(
        self,
        message: RelayCommandMessage,
        result: CommandResult,
        relay: RelayState,
        *,
        armed: bool = False,
        detail: str | None = None,
    ) -> MeterEvent:
        return MeterEvent(
            message.meter_id,
            relay,
            self._clock(),
            command_id=message.command_id,
            result=result,
            ready_for_reconnection=armed,
            detail=None if detail is None else _clip(detail),
        )

    def _deliver(self, event: MeterEvent) -> None:
        topic = meter_events_topic(event.meter_id)
        self._answers.put(InboundEvent(topic, encode_event(event), mid=0, qos=0, connection=0))
        self._wake()

    async def _settled(self, read: Callable[[], Awaitable[T]], reached: Callable[[T], bool]) -> T:
        """Read until `reached` or the settle time is over: a relay takes a moment to move after the write."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.settle_s
        while True:
            value = await read()
            left = deadline - loop.time()
            if reached(value) or left <= 0:
                return value
            await asyncio.sleep(min(SETTLE_PAUSE_S, left))

    # --- Modbus --------------------------------------------------------------------------

    async def _modbus_command(
        self, meter: PolledMeter, message: RelayCommandMessage, handed: concurrent.futures.Future[str]
    ) -> MeterEvent | None:
        model = meter.model or ""
        try:
            register_map: RegisterMap = load_register_map(model)
        except ProtocolError as exc:
            raise NotSentError(f"no register map for model {model!r}: {exc.reason}") from None
        if register_map.relay is None:
            handed.set_result(meter.source)
            # a meter without a relay never cuts the supply: it is connected, whatever anyone asks
            return self._answer(
                message,
                CommandResult.REJECTED,
                RelayState.CLOSED,
                detail=f"model {model} has no relay: nothing written",
            )
        link = self._modbus_link(meter.endpoint)
        try:
            # the status read first: a unit that does not answer is not written to
            before = await link.read_relay(meter)
        except PollError as exc:
            raise NotSentError(f"relay status of {meter.source} not read, nothing written: {exc.reason}") from None
        handed.set_result(meter.source)
        if message.action is RelayAction.READ_RELAY:
            return self._answer(message, CommandResult.EXECUTED, before)
        if register_map.relay.control is None:
            return self._answer(
                message,
                CommandResult.REJECTED,
                before,
                detail=f"model {model} has no remote relay control: nothing written",
            )
        target = RelayState.OPEN if message.action is RelayAction.DISCONNECT else RelayState.CLOSED
        try:
            await link.write_relay(meter, target)
        except PollError as exc:
            if exc.kind is not FailureKind.EXCEPTION_RESPONSE:
                log.warning("%s: no answer from %s: %s", message.command_id, meter.source, exc.reason)
                return None
            try:
                after = await link.read_relay(meter)
            except PollError:
                after = before  # refused: the relay is where it was a moment ago
            return self._answer(message, CommandResult.REJECTED, after, detail=exc.reason)
        try:
            relay = await self._settled(lambda: link.read_relay(meter), lambda position: position is target)
        except PollError as exc:
            log.warning("%s: the relay of %s not read back: %s", message.command_id, meter.source, exc.reason)
            return None
        return self._answer(message, CommandResult.EXECUTED, relay)

    # --- DL/T 645 ------------------------------------------------------------------------

    async def _status(self, link: Dlt645Link, meter: PolledMeter) -> StatusWord3:
        value = await link.value(meter, STATUS_WORD_3)
        if not isinstance(value, StatusWord3):
            raise PollError(FailureKind.BAD_VALUE, f"status word 3 of {meter.address} is {value!r}")
        return value

    @staticmethod
    def _armed(status: StatusWord3, mode: ReconnectMode) -> bool:
        # after 合闸允许 the relay is open while the last command (bit 6) was not to open it
        return mode is ReconnectMode.ALLOWED and status.relay_open and not status.relay_command_open

    async def _dlt645_command(
        self,
        meter: PolledMeter,
        mode: ReconnectMode,
        message: RelayCommandMessage,
        handed: concurrent.futures.Future[str],
    ) -> MeterEvent | None:
        address = meter.address
        assert address is not None
        link = self._dlt645_link(meter.endpoint)
        try:
            await link.connect()
        except PollError as exc:
            raise NotSentError(exc.reason) from None
        handed.set_result(meter.source)
        config = self._config
        try:
            if message.action is RelayAction.READ_RELAY:
                status = await self._status(link, meter)
                return self._answer(message, CommandResult.EXECUTED, status.relay, armed=self._armed(status, mode))
            if message.action is RelayAction.DISCONNECT:
                command = RelayCommand.TRIP
            else:
                command = RelayCommand.ALLOW_CLOSE if mode is ReconnectMode.ALLOWED else RelayCommand.CLOSE
            try:
                await link.ask(
                    meter,
                    lambda client: client.relay_control(
                        address,
                        command,
                        config.dlt645_password,
                        config.dlt645_operator_code,
                        message.expires_at,
                        password_level=config.dlt645_password_level,
                    ),
                    f"relay control {command.name.lower()}",
                )
            except PollError as exc:
                if exc.kind is not FailureKind.METER_ERROR:
                    raise
                status = await self._status(link, meter)
                return self._answer(
                    message, CommandResult.REJECTED, status.relay, armed=self._armed(status, mode), detail=exc.reason
                )

            def reached(status: StatusWord3) -> bool:
                if command is RelayCommand.TRIP:
                    return status.relay is RelayState.OPEN
                if command is RelayCommand.CLOSE:
                    return status.relay is RelayState.CLOSED
                return True  # allowed to close: open and armed, or closed already

            status = await self._settled(lambda: self._status(link, meter), reached)
        except PollError as exc:
            log.warning("%s: no answer from %s: %s", message.command_id, meter.source, exc.reason)
            return None
        return self._answer(message, CommandResult.EXECUTED, status.relay, armed=self._armed(status, mode))

    # --- armed meters --------------------------------------------------------------------

    async def _watch_armed(self) -> None:
        """Every `armed_check_s`, read the relays of the armed polled meters and report those that changed."""
        while True:
            await asyncio.sleep(self._config.armed_check_s)
            try:
                armed = await asyncio.to_thread(self._armed_meters)
            except psycopg.Error as exc:
                log.warning("cannot list the armed polled meters: %s", _first_line(exc))
                continue
            except Exception:
                log.exception("cannot list the armed polled meters")
                continue
            buses: dict[Endpoint, list[PolledMeter]] = defaultdict(list)
            for meter, _ in armed:
                buses[meter.endpoint].append(meter)
            # the buses at once, the meters of each one after the other
            await asyncio.gather(*(self._check_bus(meters) for meters in buses.values()))

    async def _check_bus(self, meters: list[PolledMeter]) -> None:
        for meter in meters:
            try:
                async with self._bus(meter.endpoint):
                    relay, armed = await self._position(meter)
            except PollError as exc:
                log.info("armed meter %s not read: %s", meter.meter_id, exc.reason)
                continue
            except Exception:
                log.exception("armed meter %s not read", meter.meter_id)
                continue
            if relay is RelayState.CLOSED:
                cause = EventCause.BUTTON_PRESSED  # an armed relay closes only by the customer's hand
            elif not armed:
                cause = EventCause.LOCAL_OPERATION
            else:
                continue
            self._deliver(MeterEvent(meter.meter_id, relay, self._clock(), ready_for_reconnection=armed, cause=cause))

    async def _position(self, meter: PolledMeter) -> tuple[RelayState, bool]:
        if meter.protocol == "modbus":
            return await self._modbus_link(meter.endpoint).read_relay(meter), False
        status = await self._status(self._dlt645_link(meter.endpoint), meter)
        # the meter answered armed: it stays a reconnect-allowed meter until its button, whatever the registry says now
        return status.relay, self._armed(status, ReconnectMode.ALLOWED)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
