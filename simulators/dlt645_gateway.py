"""A simulated serial-to-TCP gateway with DL/T 645-2007 meters on its RS-485 bus.

An asyncio TCP server passes the bytes of every connection onto one simulated bus: each request frame is
answered by the meter it addresses (none for an unknown address, none for broadcast time, read address
only when exactly one meter is on the bus), one exchange at a time, with the bus's timing (11 bits a byte
at the baud rate, and the meter's turnaround). `start()` / `stop()` run it in a thread for synchronous
tests; `serve()` runs it on the caller's loop. Meters are `simulators.dlt645_meter.Dlt645Meter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike

from protocols.dlt645.client import address_matches
from protocols.dlt645.errors import FrameError, Function, MessageError
from protocols.dlt645.frame import START, WAKEUP, Address, decode_frame, frame_length
from protocols.dlt645.identifiers import StatusWord3
from protocols.dlt645.messages import BroadcastTime, Response, encode_message, from_frame
from protocols.readings import RelayState, is_valid_id
from simulators.dlt645_meter import (
    READ_ANSWER_DATA,
    Dlt645Fault,
    Dlt645Meter,
    Freeze,
    Instant,
    Registers,
    shown_wh,
)
from simulators.load_shapes import MeterKind
from simulators.polled_registry import write_polled_registry_csv

BITS_PER_BYTE = 11  # start bit, eight data bits, even parity, stop bit (8E1), as DL/T 645 buses run
DEFAULT_BAUD = 2400
DEFAULT_LATENCY_S = 0.03  # the meter's turnaround: the standard allows 20 to 500 ms
DEFAULT_PASSWORD = "123456"  # noqa: S105 - a simulated meter's factory password, not a secret
DEFAULT_PASSWORD_LEVEL = 0x02
MODEL = "dlt645_2007"
LAST_ADDRESS = 999_999_999_998  # 999999999999 is the broadcast address
READ_CHUNK = 4096
BUS_LOG_SIZE = 10_000
_PASSWORD_PATTERN = re.compile(r"[0-9A-Fa-f]{6}")


def utc_now() -> datetime:
    """The true time now, aware."""
    return datetime.now(UTC)


def transmission_s(byte_count: int, baud: int) -> float:
    """Seconds `byte_count` bytes take on the bus at `baud` (11 bits a byte)."""
    return byte_count * BITS_PER_BYTE / baud


@dataclass(frozen=True, slots=True)
class MeterSnapshot:
    """What one simulated meter holds at one moment: the truth a test compares the wire with."""

    address: str
    meter_id: str
    kind: MeterKind
    pv_peak_w: int  # 0: no PV system, no reverse energy
    now: datetime  # true time, aware
    wall_clock: datetime  # the meter's clock, naive
    registers: Registers
    freezes: tuple[Freeze, ...]  # newest first
    instant: Instant
    relay: RelayState
    armed: bool
    status_word_3: StatusWord3
    fault: Dlt645Fault

    @property
    def energy_wh(self) -> int:
        """Forward active energy, total, as the meter shows it (to 0.01 kWh)."""
        return shown_wh(self.registers.forward_total_wh)


@dataclass(frozen=True, slots=True)
class BusExchange:
    """One use of the bus: when the request's first byte went out and the bus was free again (monotonic)."""

    started: float
    ended: float
    address: str
    answered: bool


def take_frame(buffer: bytearray) -> bytes | None:
    """The first whole frame of `buffer` with its wake-up bytes, taken out, noise before it dropped; else None."""
    while buffer:
        start = buffer.find(START)
        if start < 0:
            buffer.clear()
            return None
        wakeup = 0
        while wakeup < start and buffer[start - 1 - wakeup] == WAKEUP:
            wakeup += 1
        del buffer[: start - wakeup]
        try:
            length = frame_length(bytes(buffer))
        except FrameError:
            del buffer[: wakeup + 1]  # that 68 began no frame
            continue
        if length is None:
            return None
        frame = bytes(buffer[:length])
        del buffer[:length]
        return frame
    return None


def _address_key(address: str | int | Address) -> str:
    if isinstance(address, int):
        return f"{address:012d}"
    return str(address)


class Dlt645Gateway:
    """A serial-to-TCP gateway on (host, port) with `meters` DL/T 645-2007 meters on one RS-485 bus."""

    def __init__(
        self,
        host: str,
        port: int,
        meters: int,
        *,
        first_address: int = 1,
        seed: int = 0,
        clock: Callable[[], datetime] = utc_now,
        baud: int = DEFAULT_BAUD,
        password: str = DEFAULT_PASSWORD,
        meter_id_prefix: str = "DL",
        password_level: int = DEFAULT_PASSWORD_LEVEL,
        latency_s: float = DEFAULT_LATENCY_S,
        bus: str = "rs485-1",
        region: str = "sim",
        max_answer_bytes: int = READ_ANSWER_DATA,
    ) -> None:
        if meters < 1:
            raise ValueError(f"meters must be at least 1, got {meters}")
        if not 0 <= first_address <= LAST_ADDRESS - meters + 1:
            raise ValueError(f"addresses {first_address}..{first_address + meters - 1} exceed 12 digits")
        if baud <= 0:
            raise ValueError(f"baud must be positive, got {baud}")
        if latency_s < 0:
            raise ValueError(f"latency_s must not be negative, got {latency_s}")
        if not _PASSWORD_PATTERN.fullmatch(password):
            raise ValueError(f"password must be 6 hex digits as printed (P2 P1 P0), got {password!r}")
        if not 0 <= password_level <= 0xFF:
            raise ValueError(f"password_level must be a byte, got {password_level}")
        if not 1 <= max_answer_bytes <= READ_ANSWER_DATA:
            raise ValueError(f"max_answer_bytes must be within 1..{READ_ANSWER_DATA}, got {max_answer_bytes}")
        sample_id = f"{meter_id_prefix}{first_address:012d}"
        if not is_valid_id(sample_id):
            raise ValueError(f"meter id {sample_id!r} from prefix {meter_id_prefix!r} is not a valid id")
        self.host = host
        self.port = port
        self.baud = baud
        self.latency_s = latency_s
        self.bus = bus
        self.region = region
        self._clock = clock
        created = self._now()
        self._meters: dict[str, Dlt645Meter] = {}
        for number in range(first_address, first_address + meters):
            address = f"{number:012d}"
            self._meters[address] = Dlt645Meter(
                address,
                f"{meter_id_prefix}{address}",
                seed=seed,
                created=created,
                password=password,
                password_level=password_level,
                max_answer_bytes=max_answer_bytes,
            )
        self._lock = threading.Lock()  # meters' state: the bus (the server's thread) and the caller's thread
        self._bus_lock: asyncio.Lock | None = None
        self._bus_log: deque[BusExchange] = deque(maxlen=BUS_LOG_SIZE)
        self._connections: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._listening = threading.Event()
        self._failures: list[BaseException] = []  # why the thread could not serve

    # --- time and meters -----------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        assert now.utcoffset() is not None, "the clock must return an aware datetime"
        return now

    def _meter(self, address: str | int | Address) -> Dlt645Meter:
        key = _address_key(address)
        try:
            return self._meters[key]
        except KeyError:
            raise KeyError(f"no meter {key} on this gateway") from None

    @property
    def addresses(self) -> tuple[str, ...]:
        """The meters' addresses, 12 digits each, in order."""
        return tuple(self._meters)

    @property
    def endpoint(self) -> str:
        """host:port where the gateway listens (the port it was given, or the one it got for port 0)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def meter_id(self, address: str | int | Address) -> str:
        """The registry id of the meter at `address`."""
        return self._meter(address).meter_id

    def snapshot(self, address: str | int | Address) -> MeterSnapshot:
        """The meter's registers, freezes, measurements, clock and relay now: the truth behind its answers."""
        meter = self._meter(address)
        with self._lock:
            now = self._now()
            return MeterSnapshot(
                address=str(meter.address),
                meter_id=meter.meter_id,
                kind=meter.kind,
                pv_peak_w=meter.pv_peak_w,
                now=now,
                wall_clock=meter.wall_clock(now),
                registers=meter.registers(now),
                freezes=meter.freezes(now),
                instant=meter.instant(now),
                relay=meter.relay,
                armed=meter.armed,
                status_word_3=meter.status_word_3,
                fault=meter.fault,
            )

    def energy_wh(self, address: str | int | Address) -> int:
        """Forward active energy, total, of the meter now, as it shows it (whole Wh, to 0.01 kWh)."""
        meter = self._meter(address)
        with self._lock:
            return shown_wh(meter.registers(self._now()).forward_total_wh)

    def relay(self, address: str | int | Address) -> RelayState:
        """The position of the meter's load relay."""
        meter = self._meter(address)
        with self._lock:
            return meter.relay

    def press_button(self, address: str | int | Address) -> RelayState:
        """The customer presses the meter's button: a relay allowed to close (合闸允许) closes; returns its position."""
        meter = self._meter(address)
        with self._lock:
            return meter.press_button(self._now())

    def set_fault(
        self,
        address: str | int | Address,
        fault: Dlt645Fault | str,
        *,
        clock_error_s: float = 600.0,
        drift_s_per_day: float = 0.0,
    ) -> None:
        """Make the meter misbehave from now on (`none` to stop); a clock drift sets the error and its rate."""
        meter = self._meter(address)
        fault = Dlt645Fault(fault)
        with self._lock:
            now = self._now()
            if fault is Dlt645Fault.CLOCK_DRIFT:
                meter.set_clock_error(now, clock_error_s, drift_s_per_day)
            elif meter.fault is Dlt645Fault.CLOCK_DRIFT:
                meter.set_clock_error(now, 0.0, 0.0)  # the clock put right
            meter.fault = fault

    def bus_log(self) -> tuple[BusExchange, ...]:
        """The latest uses of the bus, oldest first (at most 10,000)."""
        with self._lock:
            return tuple(self._bus_log)

    # --- registry ------------------------------------------------------------------------

    def registry_rows(self) -> list[dict[str, str]]:
        """The meters' rows for `headend meters import`, one per meter, with POLLED_REGISTRY_COLUMNS."""
        return [
            {
                "meter_id": meter.meter_id,
                "protocol": "dlt645",
                "concentrator_id": "",
                "region": self.region,
                "model": MODEL,
                "endpoint": self.endpoint,
                "unit_id": "",
                "address": address,
                "bus": self.bus,
            }
            for address, meter in self._meters.items()
        ]

    def write_registry_csv(self, path: str | PathLike[str]) -> int:
        """Write the registry CSV of the meters to `path`; return the number of meters."""
        return write_polled_registry_csv(path, self.registry_rows())

    # --- the bus -------------------------------------------------------------------------

    def _answer(self, request: bytes) -> tuple[str, bytes | None]:
        """The address a request reached and the answer on the bus to it, if any; meters' state updated."""
        try:
            frame = decode_frame(request)
        except FrameError:
            return "", None  # noise or a bad checksum: no meter takes it
        if frame.control.from_meter:
            return str(frame.address), None  # an answer is no request
        now = self._now()
        reached = self._reached(frame.address)
        try:
            message = from_frame(frame)
        except MessageError:
            if len(reached) != 1:
                return str(frame.address), None
            try:
                function = Function(frame.control.function)
            except ValueError:
                return str(frame.address), None
            return self._encode(reached[0], reached[0].refuse(function))
        if isinstance(message, BroadcastTime) and frame.address.is_broadcast:
            for meter in self._meters.values():
                meter.handle(message, now)
            return str(frame.address), None
        if frame.address.is_broadcast or len(reached) != 1:
            # nobody there, or several meters answering at once: nothing readable comes back
            return str(frame.address), None
        meter = reached[0]
        return self._encode(meter, meter.handle(message, now))

    def _reached(self, address: Address) -> list[Dlt645Meter]:
        """The meters a request to `address` reaches: one by its address, or all that an AA wildcard matches."""
        if not address.is_wildcard:
            meter = self._meters.get(str(address))
            return [] if meter is None else [meter]
        return [meter for meter in self._meters.values() if address_matches(address, meter.address)]

    @staticmethod
    def _encode(meter: Dlt645Meter, answer: Response | None) -> tuple[str, bytes | None]:
        if answer is None:
            return str(meter.address), None
        data = bytearray(encode_message(answer, wakeup=meter.wakeup))
        if meter.fault is Dlt645Fault.CORRUPT:
            data[-2] = (data[-2] + 1) & 0xFF  # the checksum byte, one off
        return str(meter.address), bytes(data)

    async def _on_bus(self, request: bytes) -> bytes | None:
        """Carry one request over the bus and return the answer, after the time both take on the wire."""
        assert self._bus_lock is not None
        async with self._bus_lock:
            started = time.monotonic()
            await asyncio.sleep(transmission_s(len(request), self.baud))
            with self._lock:
                address, answer = self._answer(request)
            if answer is not None:
                await asyncio.sleep(self.latency_s + transmission_s(len(answer), self.baud))
            with self._lock:
                self._bus_log.append(BusExchange(started, time.monotonic(), address, answer is not None))
            return answer

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        buffer = bytearray()
        try:
            while chunk := await reader.read(READ_CHUNK):
                buffer += chunk
                while (request := take_frame(buffer)) is not None:
                    answer = await self._on_bus(request)
                    if answer is not None:
                        writer.write(answer)
                        await writer.drain()
        except OSError:
            pass  # the master went away
        except asyncio.CancelledError:
            # the gateway stops (serve() cancels its connections): end quietly, as a finished task, because
            # asyncio's stream protocol asks a cancelled handler for its exception and logs the answer
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # --- running -------------------------------------------------------------------------

    async def serve(self) -> None:
        """Listen on (host, port) and serve until cancelled."""
        self._bus_lock = asyncio.Lock()
        with self._lock:
            now = self._now()
            for meter in self._meters.values():
                meter.advance(now)  # the meters' history, metered before the first request rather than during it
        server = await asyncio.start_server(self._serve_connection, self.host, self.port)
        self.port = int(server.sockets[0].getsockname()[1])
        try:
            async with server:
                self._listening.set()
                await asyncio.Event().wait()
        finally:
            connections = list(self._connections)
            for task in connections:
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

    def start(self) -> None:
        """Serve in a background thread with its own event loop; returns once the gateway listens."""
        assert self._thread is None, "started already"
        self._listening.clear()
        self._failures.clear()
        self._thread = threading.Thread(target=self._run, name=f"dlt645-gateway-{self.port}", daemon=True)
        self._thread.start()
        self._listening.wait()
        if self._failures:
            self._thread.join()
            self._thread = None
            raise self._failures.pop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to start(), which raises it in the caller's thread
            self._failures.append(exc)
        finally:
            self._listening.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        with contextlib.suppress(asyncio.CancelledError):
            await self.serve()

    def stop(self) -> None:
        """Stop serving: close every connection and the listening socket, end the thread."""
        thread, loop, task = self._thread, self._loop, self._task
        if thread is None:
            return
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                loop.call_soon_threadsafe(task.cancel)
        thread.join()
        self._thread = self._loop = self._task = None

    def __enter__(self) -> Dlt645Gateway:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
