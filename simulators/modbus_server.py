"""The pymodbus side of the simulated Modbus meters: one device a unit id, and a TCP server that answers as they would
(as Modbus TCP devices, or as RS-485 meters behind a transparent serial-to-TCP gateway: RTU framing).

Each meter is a pymodbus `SimDevice` whose register blocks follow its map (holding registers for function 3, input
registers for function 4, a coil for a coil-switched relay); its `action` refreshes the words from the meter on
every read and hands relay writes to it. Addresses the map does not cover answer "illegal data address", measured
values are read-only.

The server is pymodbus's `ModbusTcpServer` with its per-connection handler changed in one respect: each request is
answered from its own PDU, in a task of its own, after the unit's delay (or not at all). pymodbus answers from the
connection's last received PDU, which a later request replaces while a slow answer waits, so the slow answer would
go out under the later request's transaction id; and its device store answers an unknown unit with "device failure"
(ignore_missing_devices does not reach it), where a unit that is not on the line is silent.

With RTU framing the server is the gateway: requests and answers are RTU frames (unit, PDU, CRC-16) over TCP, and
its units share one serial bus, so it answers one request at a time, in the order they came, whichever connection
they came on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Protocol

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from protocols.register_map import COIL_ON, RegisterMap
from simulators.modbus_faults import ExceptionCode

log = logging.getLogger(__name__)

READ_COILS: Final = 1
READ_DISCRETE_INPUTS: Final = 2
READ_HOLDING_REGISTERS: Final = 3
READ_INPUT_REGISTERS: Final = 4
WRITE_SINGLE_COIL: Final = 5
WRITE_SINGLE_REGISTER: Final = 6
WRITE_MULTIPLE_REGISTERS: Final = 16
_HOLDING_WRITES: Final = frozenset({WRITE_SINGLE_REGISTER, WRITE_MULTIPLE_REGISTERS})
# a Modbus TCP header with protocol id 0xFFFF (not Modbus) and a length that promises more than follows
GARBLED_FRAME: Final = bytes.fromhex("0000ffff00ff01")
# how the server frames requests and answers: Modbus TCP (MBAP), or RTU frames through a transparent gateway
FRAMINGS: Final = ("tcp", "rtu")

# what a device's action is given: function code, first address of the block, request address and count, the
# block's words (changed in place), the values a write carries (None for a read); it returns an exception code
Access = Callable[[int, int, int, int, list[int], list[int] | list[bool] | None], int | None]


@dataclass(frozen=True, slots=True)
class Answer:
    """How a unit answers one request: not at all, or after `delay_s` seconds, with an exception code or its data
    (`corrupt`: over Modbus TCP a read one register short, anything else as bytes that are no Modbus frame; over RTU
    the answer with a CRC that does not match)."""

    silent: bool = False
    delay_s: float = 0.0
    exception: int | None = None
    corrupt: bool = False


SILENT: Final = Answer(silent=True)
NORMAL: Final = Answer()


class AnswerPolicy(Protocol):
    """Decides, per request, how a unit answers (faults, or silence for a unit that is not there)."""

    def __call__(self, unit_id: int, function: int) -> Answer:
        """The answer of `unit_id` to a request of `function`."""
        ...


def _register_ranges(first: int, end: int, writable: set[int]) -> list[SimData]:
    """Registers first..end-1, read-only except the `writable` addresses, as SimData entries."""
    entries: list[SimData] = []
    start = first
    for address in sorted(a for a in writable if first <= a < end):
        if address > start:
            entries.append(SimData(start, count=address - start, values=0, datatype=DataType.REGISTERS, readonly=True))
        entries.append(SimData(address, values=0, datatype=DataType.REGISTERS))
        start = address + 1
    if end > start:
        entries.append(SimData(start, count=end - start, values=0, datatype=DataType.REGISTERS, readonly=True))
    return entries


def register_blocks(register_map: RegisterMap) -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
    """The four blocks of a meter (coils, discrete inputs, holding, input registers) its map defines.

    Each register table spans the lowest to the highest address of the map's registers of its function (gaps read
    zero, as the reserved registers of real meters do); the relay control register is the one writable word. A
    table the map does not use has a single invalid address, so that every read of it is an illegal data address.
    """
    control = register_map.relay.control if register_map.relay is not None else None
    spans: dict[int, tuple[int, int]] = {}
    for register in register_map.registers:
        low, high = spans.get(register.function, (register.address, register.end))
        spans[register.function] = (min(low, register.address), max(high, register.end))
    writable: set[int] = set()
    if control is not None and control.function in _HOLDING_WRITES:
        low, high = spans.get(READ_HOLDING_REGISTERS, (control.address, control.address + 1))
        spans[READ_HOLDING_REGISTERS] = (min(low, control.address), max(high, control.address + 1))
        writable.add(control.address)
    blocks: dict[int, list[SimData]] = {}
    for function in (READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS):
        if function in spans:
            first, end = spans[function]
            blocks[function] = _register_ranges(first, end, writable if function == READ_HOLDING_REGISTERS else set())
        else:
            blocks[function] = [SimData(0, datatype=DataType.INVALID)]
    coil_address = control.address if control is not None and control.function == WRITE_SINGLE_COIL else 0
    coils = [SimData(coil_address, values=[False], datatype=DataType.BITS)]
    discrete_inputs = [SimData(0, values=[False], datatype=DataType.BITS)]
    return coils, discrete_inputs, blocks[READ_HOLDING_REGISTERS], blocks[READ_INPUT_REGISTERS]


def coil_is_on(register_map: RegisterMap, closed: bool) -> bool:
    """Whether the relay coil of a coil-switched model reads ON for a relay that is `closed` (or open)."""
    control = register_map.relay.control if register_map.relay is not None else None
    assert control is not None
    assert control.function == WRITE_SINGLE_COIL
    return (control.close_value == COIL_ON) == closed


def make_device(unit_id: int, register_map: RegisterMap, access: Access) -> SimDevice:
    """The pymodbus device of one meter: its blocks, and an action that calls `access` on every request."""

    async def action(
        function: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        code = access(function, start_address, address, count, registers, values)
        return None if code is None else ExcCodes(code)

    return SimDevice(unit_id, simdata=register_blocks(register_map), action=action)


class _RequestHandler(ServerRequestHandler):
    """pymodbus's connection handler, answering every request from its own PDU as the fleet's policy says."""

    def __init__(self, owner: FleetServer) -> None:
        super().__init__(owner, None, None, None)  # type: ignore[no-untyped-call]
        self._owner = owner
        self._received: deque[tuple[ModbusPDU, tuple[Any, ...] | None]] = deque()

    def callback_data(self, data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        """Take received bytes; remember each complete request for the answer pymodbus schedules right after."""
        used: int = super().callback_data(data, addr)
        if self.last_pdu is not None:
            self._received.append((self.last_pdu, self.last_addr))
        return used

    def handle_later(self) -> None:
        """Answer the oldest request received, in a task of its own."""
        pdu, addr = self._received.popleft()
        self._owner.spawn(self._answer(pdu, addr))

    async def _answer(self, pdu: ModbusPDU, addr: tuple[Any, ...] | None) -> None:
        bus = self._owner.bus
        if bus is None:
            await self._respond(pdu, addr)
            return
        async with bus:  # the gateway's serial line: one exchange at a time, a slow meter holding it
            await self._respond(pdu, addr)

    async def _respond(self, pdu: ModbusPDU, addr: tuple[Any, ...] | None) -> None:
        answer = self._owner.policy(pdu.dev_id, pdu.function_code)
        if answer.silent:
            return
        if answer.delay_s > 0:
            await asyncio.sleep(answer.delay_s)
        response: ModbusPDU
        if answer.exception is not None:
            response = ExceptionResponse(pdu.function_code, answer.exception)
        else:
            try:
                # pymodbus annotates the old context, yet serves SimDevices through SimCore, which this is
                response = await pdu.datastore_update(self._owner.context, pdu.dev_id)  # type: ignore[arg-type]
            except Exception:  # a request pymodbus cannot serve is the device's failure, as pymodbus answers it
                log.debug("unit %s could not answer function %s", pdu.dev_id, pdu.function_code, exc_info=True)
                response = ExceptionResponse(pdu.function_code, ExceptionCode.SERVER_DEVICE_FAILURE)
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        if not self.is_active():  # the client may have gone while the answer waited
            return
        if answer.corrupt and self._owner.framing == "rtu":
            frame = bytearray(self.framer.buildFrame(response))
            frame[-1] ^= 0xFF  # as a disturbed serial line damages a byte
            self.send(bytes(frame), addr)
            return
        if answer.corrupt:
            if response.isError() or pdu.function_code not in (READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS):
                self.send(GARBLED_FRAME, addr)
                return
            response.registers = list(response.registers)[:-1]  # the byte count, too, one register short
        self.server_send(response, addr)  # type: ignore[no-untyped-call]


class FleetServer(ModbusTcpServer):
    """A pymodbus TCP server for the devices of a fleet; `policy` decides how each unit answers each request.

    `framing` "tcp": Modbus TCP, every request answered in a task of its own; "rtu": a transparent gateway to one
    serial bus, RTU frames, one request answered at a time.
    """

    def __init__(
        self, devices: list[SimDevice], address: tuple[str, int], policy: AnswerPolicy, framing: str = "tcp"
    ) -> None:
        if framing not in FRAMINGS:
            raise ValueError(f"framing is one of {', '.join(FRAMINGS)}, got {framing!r}")
        framer = FramerType.RTU if framing == "rtu" else FramerType.SOCKET
        super().__init__(devices, address=address, ignore_missing_devices=True, framer=framer)
        self.policy = policy
        self.framing = framing
        self.bus: asyncio.Lock | None = asyncio.Lock() if framing == "rtu" else None
        self._tasks: set[asyncio.Task[None]] = set()

    def callback_new_connection(self) -> _RequestHandler:
        """The handler of a new client connection."""
        return _RequestHandler(self)

    def spawn(self, answer: Coroutine[Any, Any, None]) -> None:
        """Run one answer in a task, kept until it ends (and cancelled when the server stops)."""
        task = asyncio.get_running_loop().create_task(answer)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def port(self) -> int:
        """The TCP port the server listens on (the one the OS chose when asked for port 0)."""
        listener = self.transport  # an asyncio.Server while listening
        assert isinstance(listener, asyncio.Server)
        return int(listener.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, close every connection and cancel the answers still waiting."""
        await self.shutdown()  # type: ignore[no-untyped-call]
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
