"""A fleet of simulated Modbus meters on one address: unit ids 1..N of one pymodbus server, faults on demand.

    fleet = ModbusMeterFleet("127.0.0.1", 5020, ["eastron_sdm120", "hiking_dds238_2_znsr"], 10)  # framing="rtu"
    fleet.write_registry_csv("meters.csv")       # for `headend meters import`
    fleet.start()                                # in a thread of its own; or `await fleet.serve()` until cancelled
    fleet.set_fault(3, NoAnswer())
    fleet.energy_wh(1)                           # the truth, to compare with what a poller collected
    fleet.stop()

Meter i (unit id i) is of model models[(i - 1) % len(models)]. Its registers are computed, at every read, from the
meter's cumulative energy under a load shape (residential for single-phase models, commercial for three-phase ones)
at the time the injected clock gives; a write to its map's relay control moves its relay (power 0 and energy
standing still while it is open), and its relay status register shows where the relay is.

The server speaks Modbus TCP (framing "tcp"), or is a transparent serial-to-TCP gateway with the meters on its RS-485
bus (framing "rtu"): RTU frames with their CRC over the socket, one request answered at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from os import PathLike
from typing import Final

from protocols.readings import RelayState, is_valid_id
from protocols.register_map import (
    COIL_OFF,
    COIL_ON,
    RegisterMap,
    RelayControlError,
    RelayWrite,
    Value,
    load_register_map,
)
from simulators.load_shapes import MeterKind
from simulators.modbus_faults import (
    CorruptAnswer,
    ExceptionAnswer,
    ExceptionCode,
    ModbusFault,
    NoAnswer,
    SlowAnswer,
    StuckRelay,
)
from simulators.modbus_meter import (
    ModbusMeterSim,
    ModbusMeterSpec,
    RelayRefusedError,
    is_three_phase,
)
from simulators.modbus_server import (
    FRAMINGS,
    NORMAL,
    READ_COILS,
    READ_HOLDING_REGISTERS,
    READ_INPUT_REGISTERS,
    SILENT,
    WRITE_SINGLE_COIL,
    WRITE_SINGLE_REGISTER,
    Answer,
    FleetServer,
    coil_is_on,
    make_device,
)
from simulators.polled_registry import MODBUS_REGISTRY_COLUMNS, write_polled_registry_csv

MAX_UNITS: Final = 247  # Modbus unit ids 1..247 (0 is broadcast, 248..255 reserved)
# the register a meter already shows when the simulation starts; below 2^23 Wh, where a float32 kWh register
# still holds every Wh (docs/modbus.md), so what a poller decodes is the simulator's truth to the Wh
START_REGISTER_MAX_WH: Final = 5_000_000
START_TIMEOUT_S: Final = 10.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


def resolve_models(models: Sequence[str | RegisterMap]) -> tuple[RegisterMap, ...]:
    """The register maps of `models`: shipped model names, or maps given as they are (a model not shipped, in tests)."""
    if isinstance(models, str) or not models:
        raise ValueError("models must be a non-empty list of register map names")
    return tuple(model if isinstance(model, RegisterMap) else load_register_map(model) for model in models)


def plan_meters(
    models: Sequence[str | RegisterMap], meters: int, *, meter_id_prefix: str = "MB", seed: int = 0
) -> tuple[ModbusMeterSpec, ...]:
    """The meters of a fleet: unit ids 1..`meters`, models round-robin, start registers drawn from `seed`."""
    if isinstance(meters, bool) or not 1 <= meters <= MAX_UNITS:
        raise ValueError(f"a Modbus fleet on one address has 1..{MAX_UNITS} meters (unit ids), got {meters!r}")
    maps = resolve_models(models)
    width = max(6, len(str(meters)))
    rng = random.Random(f"modbus-fleet:{seed}")  # noqa: S311 - reproducible simulation, not security
    specs = []
    for unit_id in range(1, meters + 1):
        register_map = maps[(unit_id - 1) % len(maps)]
        meter_id = f"{meter_id_prefix}{unit_id:0{width}d}"
        if not is_valid_id(meter_id):
            raise ValueError(f"meter id {meter_id!r} (prefix {meter_id_prefix!r}) does not match [A-Za-z0-9_-]{{1,32}}")
        kind = MeterKind.COMMERCIAL if is_three_phase(register_map) else MeterKind.RESIDENTIAL
        specs.append(ModbusMeterSpec(meter_id, unit_id, register_map.model, kind, rng.randrange(START_REGISTER_MAX_WH)))
    return tuple(specs)


class _Unit:
    """A meter of the fleet with its fault, and what pymodbus's device calls on each request to it."""

    def __init__(self, meter: ModbusMeterSim, clock: Callable[[], datetime], lock: threading.Lock) -> None:
        self.meter = meter
        self.fault: ModbusFault | None = None
        self._clock = clock
        self._lock = lock

    @property
    def register_map(self) -> RegisterMap:
        return self.meter.register_map

    def access(
        self,
        function: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> int | None:
        """Serve one request to the device's blocks: refresh the words on a read, move the relay on a write."""
        now = self._clock()
        with self._lock:
            if values is None:
                return self._read(function, start_address, count, registers, now)
            return self._write(function, address, values, now)

    def _read(self, function: int, start_address: int, count: int, registers: list[int], now: datetime) -> int | None:
        register_map = self.register_map
        if function in (READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS):
            if count > register_map.max_registers_per_read:
                return ExceptionCode.ILLEGAL_DATA_VALUE
            for address, word in self.meter.words(now).get(function, {}).items():
                registers[address - start_address] = word
            return None
        control = register_map.relay.control if register_map.relay is not None else None
        coil = control is not None and control.function == WRITE_SINGLE_COIL
        if function == READ_COILS and coil:
            assert control is not None
            word, bit = divmod(control.address, 16)
            on = coil_is_on(register_map, self.meter.relay(now) is RelayState.CLOSED)
            mask = 1 << bit
            index = word - start_address
            registers[index] = registers[index] | mask if on else registers[index] & ~mask
            return None
        if function in (WRITE_SINGLE_COIL, WRITE_SINGLE_REGISTER):
            return None  # the read-back of a write, for its echo: the word as written
        return ExceptionCode.ILLEGAL_DATA_ADDRESS  # no discrete inputs, no coils on a register-switched model

    def _write(self, function: int, address: int, values: list[int] | list[bool], now: datetime) -> int | None:
        relay = self.register_map.relay
        control = relay.control if relay is not None else None
        if control is None or address != control.address:
            return ExceptionCode.ILLEGAL_DATA_ADDRESS
        if function != control.function:
            return ExceptionCode.ILLEGAL_FUNCTION  # e.g. the DDS238-2 refuses function 6 and takes 16 only
        if len(values) != 1:
            return ExceptionCode.ILLEGAL_DATA_VALUE
        value = (COIL_ON if values[0] else COIL_OFF) if function == WRITE_SINGLE_COIL else int(values[0])
        try:
            self.meter.write_relay(RelayWrite(function, address, value), now)
        except RelayControlError:
            return ExceptionCode.ILLEGAL_DATA_VALUE
        except RelayRefusedError:
            return ExceptionCode.SERVER_DEVICE_FAILURE
        return None

    def answer(self, function: int) -> Answer:
        """How the unit answers a request of `function`, given its fault."""
        fault = self.fault
        if isinstance(fault, NoAnswer):
            return SILENT
        if isinstance(fault, ExceptionAnswer) and fault.applies_to(function):
            return Answer(exception=fault.code)
        if isinstance(fault, SlowAnswer):
            return Answer(delay_s=fault.delay_s)
        if isinstance(fault, CorruptAnswer):
            return Answer(corrupt=True)
        return NORMAL


class ModbusMeterFleet:
    """N simulated Modbus meters (unit ids 1..N) behind one pymodbus server on (host, port).

    `framing` "tcp" serves them as Modbus TCP devices, "rtu" as meters on the RS-485 bus of a transparent
    serial-to-TCP gateway (RTU frames, one request at a time).

    `clock` gives the simulated time the meters' energy follows (a fast clock runs them faster; faults' delays are
    real seconds). `region` goes into the registry rows. `relay_delay_s` is how long, in simulated seconds, a relay
    takes to move after its write is acknowledged (drawn per write between the two bounds; 0 by default, so that a
    status read right after the write shows the new position). Port 0 lets the OS choose once the server listens.
    """

    def __init__(
        self,
        host: str,
        port: int,
        models: Sequence[str | RegisterMap],
        meters: int,
        *,
        meter_id_prefix: str = "MB",
        seed: int = 0,
        clock: Callable[[], datetime] = _utc_now,
        region: str = "modbus-sim",
        relay_delay_s: tuple[float, float] = (0.0, 0.0),
        framing: str = "tcp",
    ) -> None:
        if isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535 (0: any free port), got {port!r}")
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, got {framing!r}")
        if not region.strip():
            raise ValueError("region must not be blank")
        started_at = clock()
        if started_at.utcoffset() is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        self.host = host
        self._port = port
        self.region = region
        self.seed = seed
        self.framing = framing
        self._clock = clock
        self._lock = threading.Lock()
        self.specs = plan_meters(models, meters, meter_id_prefix=meter_id_prefix, seed=seed)
        maps = {register_map.model: register_map for register_map in resolve_models(models)}
        self._units = {
            spec.unit_id: _Unit(
                ModbusMeterSim(
                    spec,
                    maps[spec.model],
                    seed=seed,
                    started_at=started_at,
                    relay_delay_s=relay_delay_s,
                ),
                clock,
                self._lock,
            )
            for spec in self.specs
        }
        self._serving = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    # --- who is where ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port: the one given, or the one the OS chose for port 0 once the server listens."""
        return self._port

    @property
    def endpoint(self) -> str:
        """`host:port`, as the registry's endpoint column has it."""
        if self._port == 0:
            raise RuntimeError("port 0 is chosen by the OS when the server starts; start it first")
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address in brackets
        return f"{host}:{self._port}"

    @property
    def unit_ids(self) -> tuple[int, ...]:
        """The unit ids of the meters, 1..N."""
        return tuple(self._units)

    def spec(self, unit_id: int) -> ModbusMeterSpec:
        """Meter id, model, kind and start register of the meter at `unit_id`."""
        return self._unit(unit_id).meter.spec

    def _unit(self, unit_id: int) -> _Unit:
        try:
            return self._units[unit_id]
        except KeyError:
            raise KeyError(f"no meter at unit id {unit_id} (units 1..{len(self._units)})") from None

    def registry_rows(self) -> list[dict[str, str]]:
        """The fleet's rows of the registry CSV (MODBUS_REGISTRY_COLUMNS), as `headend meters import` reads them."""
        endpoint = self.endpoint
        return [
            {
                "meter_id": spec.meter_id,
                "protocol": "modbus",
                "concentrator_id": "",
                "region": self.region,
                "model": spec.model,
                "endpoint": endpoint,
                "unit_id": str(spec.unit_id),
                "address": "",
                "bus": "",
                "framing": self.framing,
            }
            for spec in self.specs
        ]

    def write_registry_csv(self, path: str | PathLike[str]) -> int:
        """Write the fleet's registry CSV (header and one row a meter) to `path`; return the number of meters."""
        return write_polled_registry_csv(path, self.registry_rows(), MODBUS_REGISTRY_COLUMNS)

    # --- faults and the truth --------------------------------------------------------------

    def set_fault(self, unit_id: int, fault: ModbusFault | None) -> None:
        """Give the unit a fault from now on (one at a time), or None to heal it."""
        if fault is not None and not isinstance(fault, ModbusFault):
            raise TypeError(f"{fault!r} is not a Modbus fault")
        unit = self._unit(unit_id)
        with self._lock:
            unit.meter.advance(self._clock())  # the relay is healthy or stuck from now on, not retroactively
            unit.fault = fault
            unit.meter.set_stuck(isinstance(fault, StuckRelay))

    def fault(self, unit_id: int) -> ModbusFault | None:
        """The unit's current fault, None when healthy."""
        return self._unit(unit_id).fault

    def relay(self, unit_id: int) -> RelayState:
        """Where the unit's relay is now."""
        unit = self._unit(unit_id)
        with self._lock:
            return unit.meter.relay(self._clock())

    def energy_wh(self, unit_id: int) -> int:
        """The energy the unit's meter has counted by now, in whole Wh: the truth its registers show."""
        unit = self._unit(unit_id)
        with self._lock:
            return unit.meter.energy_wh(self._clock())

    def values(self, unit_id: int) -> dict[str, Value]:
        """What every register of the unit's map shows now, in our units (as protocols.register_map decodes it)."""
        unit = self._unit(unit_id)
        with self._lock:
            return unit.meter.values(self._clock())

    def _answer(self, unit_id: int, function: int) -> Answer:
        unit = self._units.get(unit_id)
        # a unit id with no meter is silent, as on a serial line: no one is there to answer
        return SILENT if unit is None else unit.answer(function)

    # --- serving ---------------------------------------------------------------------------

    async def serve(self, *, listening: Callable[[], None] | None = None) -> None:
        """Serve the fleet on (host, port) until cancelled; `listening` is called once the server accepts clients."""
        if self._serving:
            raise RuntimeError("the fleet is already being served")
        self._serving = True
        try:
            devices = [make_device(unit_id, unit.register_map, unit.access) for unit_id, unit in self._units.items()]
            server = FleetServer(devices, (self.host, self._port), self._answer, self.framing)
            try:
                try:
                    await server.serve_forever(background=True)
                except RuntimeError:
                    raise OSError(f"cannot listen on {self.host}:{self._port}: in use, or not local") from None
                self._port = server.port
                if listening is not None:
                    listening()
                await asyncio.Event().wait()
            finally:
                await server.stop()
        finally:
            self._serving = False

    def start(self) -> None:
        """Serve the fleet in a background thread with its own event loop; return once it accepts clients."""
        if self._thread is not None:
            raise RuntimeError("the fleet is already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            async def main() -> None:
                self._loop = asyncio.get_running_loop()
                self._task = asyncio.current_task()
                await self.serve(listening=ready.set)

            try:
                asyncio.run(main())
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # handed to start(), which raises it in the caller's thread
                failure.append(exc)
            finally:
                ready.set()

        self._thread = threading.Thread(target=run, name=f"modbus-fleet-{self.host}:{self._port}", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_S):
            self.stop()
            raise TimeoutError(f"the Modbus fleet did not start listening within {START_TIMEOUT_S} s")
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]

    def stop(self) -> None:
        """Stop the background server started by start(): connections closed, thread ended."""
        thread, loop, task = self._thread, self._loop, self._task
        if thread is None:
            return
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between: nothing left to cancel
                loop.call_soon_threadsafe(task.cancel)
        thread.join(START_TIMEOUT_S)
        self._thread = self._loop = self._task = None

    def __enter__(self) -> ModbusMeterFleet:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
