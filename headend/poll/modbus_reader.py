"""Read a Modbus meter's registers over one reused TCP connection per endpoint, into the typed readings MQTT gives.

A connection speaks Modbus TCP (MBAP header) or, to a transparent serial-to-TCP gateway, Modbus RTU: the serial line's
frames (unit, PDU, CRC-16) as they are, over the socket. pymodbus's RTU framer drops an answer whose CRC does not match
without a word, which would leave the request to time out; ours fails the request at once as a corrupt answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU, FramerType
from pymodbus.pdu import DecodePDU

from headend.poll.failures import FailureKind, PollError
from headend.poll.targets import Endpoint, PolledMeter
from protocols.errors import ProtocolError
from protocols.readings import MeterReading, RelayState
from protocols.register_map import (
    ReadRequest,
    RegisterMap,
    decode_reading,
    decode_relay_state,
    load_register_map,
    plan_reads,
    relay_status_read,
    relay_write,
)

log = logging.getLogger(__name__)
# pymodbus logs every failed request at error level with a traceback; the poller records each failure itself
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
# the most of a damaged answer a failure's reason shows
SHOWN_BYTES = 32


class CrcMismatchError(ModbusException):
    """An RTU answer whose CRC-16 is not that of its bytes: damaged on the serial line."""

    def __init__(self, frame: bytes) -> None:
        shown = frame[:SHOWN_BYTES].hex(" ") + (" …" if len(frame) > SHOWN_BYTES else "")
        super().__init__(f"an answer whose CRC does not match its bytes ({shown})")
        self.reason = self.string


class _CrcCheckingFramer(FramerRTU):
    """pymodbus's RTU framer, telling `on_mismatch` of each frame it drops for a CRC that does not match."""

    def __init__(self, decoder: DecodePDU, on_mismatch: Callable[[bytes], None]) -> None:
        super().__init__(decoder)
        self._on_mismatch = on_mismatch

    def decode(self, data: bytes) -> tuple[int, int, int, bytes]:
        """Decode one frame as pymodbus does; a frame dropped whole is one whose CRC did not match."""
        used, dev_id, tid, frame = super().decode(data)
        # pymodbus 3.16 consumes bytes without a frame in one case only: the CRC check failed
        if used and not frame:
            self._on_mismatch(data[:used])
        return used, dev_id, tid, frame


def _rtu_client(endpoint: Endpoint, timeout_s: float) -> AsyncModbusTcpClient:
    """A client sending RTU frames over TCP that fails the request waiting when an answer's CRC does not match."""
    client = AsyncModbusTcpClient(
        endpoint.host,
        port=endpoint.port,
        framer=FramerType.RTU,
        timeout=timeout_s,
        retries=0,
        reconnect_delay=0,
    )
    manager = client.ctx

    def mismatch(frame: bytes) -> None:
        waiting = manager.response_future
        if not waiting.done():  # an answer nobody waits for any more is dropped, as pymodbus drops it
            waiting.set_exception(CrcMismatchError(frame))

    manager.framer = _CrcCheckingFramer(manager.framer.decoder, mismatch)
    return client


class ModbusLink:
    """One TCP connection to a Modbus endpoint, framed as its meters are (Modbus TCP, or RTU through a transparent
    gateway), opened on first use and again after a failure."""

    def __init__(self, endpoint: Endpoint, timeout_s: float) -> None:
        self.endpoint = endpoint
        self._timeout_s = timeout_s
        self._client: AsyncModbusTcpClient | None = None
        self._framing: str | None = None  # the open client's
        self._maps: dict[str, tuple[RegisterMap, tuple[ReadRequest, ...]]] = {}

    async def _connected(self, framing: str) -> AsyncModbusTcpClient:
        # the meters of one bus share a framing (the registry import's rule): a change is a registry that changed
        if self._client is not None and self._client.connected and self._framing == framing:
            return self._client
        self.close()
        # retries and reconnection are the poller's: one attempt a request, a connection opened when needed
        if framing == "rtu":
            client = _rtu_client(self.endpoint, self._timeout_s)
        else:
            client = AsyncModbusTcpClient(
                self.endpoint.host, port=self.endpoint.port, timeout=self._timeout_s, retries=0, reconnect_delay=0
            )
        try:
            connected = await asyncio.wait_for(client.connect(), self._timeout_s)
        except (TimeoutError, OSError) as exc:
            client.close()
            why = str(exc) or "timed out"
            raise PollError(FailureKind.NO_CONNECTION, f"cannot connect to {self.endpoint}: {why}") from None
        if not connected:
            client.close()
            raise PollError(FailureKind.NO_CONNECTION, f"cannot connect to {self.endpoint}")
        self._client, self._framing = client, framing
        return client

    def close(self) -> None:
        """Close the connection, if open."""
        if self._client is not None:
            self._client.close()
            self._client = self._framing = None

    def _map(self, meter: PolledMeter) -> tuple[RegisterMap, tuple[ReadRequest, ...]]:
        model = meter.model or ""
        if model not in self._maps:
            try:
                register_map = load_register_map(model)
            except ProtocolError as exc:
                raise PollError(FailureKind.BAD_VALUE, f"no register map for model {model!r}: {exc.reason}") from None
            self._maps[model] = (register_map, plan_reads(register_map))
        return self._maps[model]

    async def _ask(
        self, meter: PolledMeter, request: Callable[[AsyncModbusTcpClient], Awaitable[Any]], what: str
    ) -> Any:
        """Send one request and wait for its answer; PollError for no answer, a lost link or an exception code."""
        assert meter.framing is not None, meter
        client = await self._connected(meter.framing)
        try:
            # a bound over pymodbus's own timeout; asyncio.timeout, not wait_for, which in Python 3.11 runs the
            # request in a task of its own: one more task and loop hop a request, ~5 µs each (bench/poll.py)
            async with asyncio.timeout(self._timeout_s * 1.5):
                response = await request(client)
        except (TimeoutError, ModbusIOException) as exc:
            # a late answer would be taken for the next request's: start again on a new connection
            self.close()
            raise PollError(
                FailureKind.TIMEOUT, f"no answer from unit {meter.unit_id} within {self._timeout_s} s"
            ) from exc
        except ConnectionException as exc:
            self.close()
            raise PollError(FailureKind.NO_CONNECTION, f"connection to {self.endpoint} lost: {exc}") from exc
        except CrcMismatchError as exc:
            # the gateway may still pass on the rest of the damaged answer: start again on a new connection
            self.close()
            raise PollError(FailureKind.BAD_FRAME, f"unit {meter.unit_id}: {exc.reason}") from exc
        except ModbusException as exc:
            self.close()
            raise PollError(FailureKind.BAD_FRAME, f"unit {meter.unit_id}: {exc}") from exc
        if response.isError():
            code = getattr(response, "exception_code", None)
            raise PollError(
                FailureKind.EXCEPTION_RESPONSE, f"unit {meter.unit_id} answered {what} with exception code {code}"
            )
        return response

    async def _read(self, meter: PolledMeter, request: ReadRequest) -> list[int]:
        unit = meter.unit_id
        assert unit is not None

        def read(client: AsyncModbusTcpClient) -> Awaitable[Any]:
            call = client.read_holding_registers if request.function == 3 else client.read_input_registers
            return call(request.address, count=request.count, device_id=unit)

        response = await self._ask(meter, read, f"function {request.function} at 0x{request.address:04X}")
        registers: Sequence[int] = response.registers
        if len(registers) != request.count:
            raise PollError(FailureKind.BAD_FRAME, f"{len(registers)} registers for {request.count} asked")
        return list(registers)

    async def read_meter(self, meter: PolledMeter, stamp: datetime) -> MeterReading:
        """Read every register of the meter's map and decode them, stamped `stamp`."""
        register_map, plan = self._map(meter)
        responses = [await self._read(meter, request) for request in plan]
        try:
            return decode_reading(register_map, plan, responses, meter_id=meter.meter_id, ts=stamp)
        except ProtocolError as exc:
            raise PollError(FailureKind.BAD_VALUE, exc.reason) from None

    async def read_relay(self, meter: PolledMeter) -> RelayState:
        """The position of the meter's relay, read from its status register."""
        register_map, _ = self._map(meter)
        try:
            request = relay_status_read(register_map)
        except ProtocolError as exc:
            raise PollError(FailureKind.BAD_VALUE, exc.reason) from None
        words = await self._read(meter, request)
        try:
            return decode_relay_state(register_map, words)
        except ProtocolError as exc:
            raise PollError(FailureKind.BAD_VALUE, exc.reason) from None

    async def write_relay(self, meter: PolledMeter, target: RelayState) -> None:
        """Write the meter's relay control to move its relay to `target`."""
        register_map, _ = self._map(meter)
        try:
            write = relay_write(register_map, target)
        except ProtocolError as exc:
            raise PollError(FailureKind.BAD_VALUE, exc.reason) from None
        unit = meter.unit_id
        assert unit is not None

        def send(client: AsyncModbusTcpClient) -> Awaitable[Any]:
            if write.function == 5:
                return client.write_coil(write.address, bool(write.value), device_id=unit)
            if write.function == 6:
                return client.write_register(write.address, write.value, device_id=unit)
            return client.write_registers(write.address, list(write.words), device_id=unit)

        await self._ask(meter, send, f"the relay write (function {write.function} at 0x{write.address:04X})")
