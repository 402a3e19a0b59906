"""Simulated Modbus TCP meters served by a real pymodbus server on 127.0.0.1, read by pymodbus's own client (and by a
bare socket where the bytes matter): every model decodes into the simulator's truth, relay writes and read-back,
every fault as a client sees it, 200 meters on one server; and the same meters behind a simulated transparent gateway
(RTU framing): one request at a time on its bus, faults as RTU frames show them."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from protocols.readings import RelayState
from protocols.register_map import (
    RELAY_STATE,
    DataType,
    RegisterMap,
    Value,
    available_models,
    decode_relay_state,
    decode_values,
    load_register_map,
    parse_register_map,
    plan_reads,
    relay_status_read,
    relay_write,
)
from simulators.modbus_faults import (
    CorruptAnswer,
    ExceptionAnswer,
    ExceptionCode,
    NoAnswer,
    SlowAnswer,
    StuckRelay,
)
from simulators.modbus_sim import ModbusMeterFleet
from tests.unit.test_modbus_rtu_wire import crc16, receive
from tests.unit.test_modbus_sim import COIL_MAP

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MODELS = available_models()
DDS238 = "hiking_dds238_2_znsr"
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
TIMEOUT_S = 0.5
T = TypeVar("T")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(autouse=True)
def _quiet_pymodbus() -> Iterator[None]:
    # the client logs every request left unanswered at error level with a frame dump; here that is the point
    logger = logging.getLogger("pymodbus")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fleet(clock: Clock) -> Iterator[ModbusMeterFleet]:
    """Two meters of every shipped model, units 1..10, on a port the OS picks."""
    with ModbusMeterFleet("127.0.0.1", 0, MODELS, 2 * len(MODELS), seed=5, clock=clock) as running:
        yield running


def run(
    fleet: ModbusMeterFleet, body: Callable[[AsyncModbusTcpClient], Awaitable[T]], timeout_s: float = TIMEOUT_S
) -> T:
    """Run `body` with a connected pymodbus client of the fleet (no retries, framed as the fleet), on a loop of its
    own."""
    framer = FramerType.RTU if fleet.framing == "rtu" else FramerType.SOCKET

    async def main() -> T:
        client = AsyncModbusTcpClient(
            "127.0.0.1", port=fleet.port, framer=framer, timeout=timeout_s, retries=0, reconnect_delay=0
        )
        try:
            assert await client.connect()
            return await body(client)
        finally:
            client.close()

    return asyncio.run(main())


async def read(client: AsyncModbusTcpClient, unit_id: int, function: int, address: int, count: int) -> ModbusPDU:
    """One read of holding (3) or input (4) registers."""
    if function == 3:
        return await client.read_holding_registers(address, count=count, device_id=unit_id)
    return await client.read_input_registers(address, count=count, device_id=unit_id)


async def read_values(client: AsyncModbusTcpClient, unit_id: int, register_map: RegisterMap) -> dict[str, Value]:
    """Every register of the map, read with its plan as a poller does and decoded by protocols.register_map."""
    plan = plan_reads(register_map)
    responses = []
    for request in plan:
        response = await read(client, unit_id, request.function, request.address, request.count)
        assert not response.isError(), response
        responses.append(list(response.registers))
    return decode_values(register_map, plan, responses)


def shown_wh(register_map: RegisterMap, truth_wh: int) -> int:
    """The truth as the model's energy register shows it: every Wh on float32 kWh, whole counts of an integer."""
    register = register_map.register("energy_import")
    step = 1 if register.data_type is DataType.FLOAT32 else int(register.scale)
    return truth_wh - truth_wh % step


def number(values: dict[str, Value], name: str) -> float:
    """A measured value (not the relay) of `values`."""
    value = values[name]
    assert isinstance(value, int | float)
    return value


def exception_code(response: ModbusPDU) -> int:
    """The exception code of an exception response (failing the test on a normal answer)."""
    assert response.isError(), response
    return int(response.exception_code)


# ---------------------------------------------------------------------------------------------------------------
# registers


def test_every_models_registers_decode_into_the_simulators_truth(fleet: ModbusMeterFleet, clock: Clock) -> None:
    async def body(client: AsyncModbusTcpClient) -> None:
        for hours in (0, 7):
            clock.now = T0 + timedelta(hours=hours, seconds=17)
            for unit_id in fleet.unit_ids:
                register_map = load_register_map(fleet.spec(unit_id).model)
                values = await read_values(client, unit_id, register_map)
                truth_wh = fleet.energy_wh(unit_id)
                assert values["energy_import"] == shown_wh(register_map, truth_wh), (unit_id, register_map.model)
                if "energy_total" in values:
                    assert values["energy_total"] == values["energy_import"]
                assert values.get("energy_export", 0) == 0
                assert values == fleet.values(unit_id)
                assert 0 < number(values, "power") < 100_000
                assert 200 < number(values, "voltage") < 240
                if RELAY_STATE in values:
                    assert values[RELAY_STATE] is RelayState.CLOSED

    run(fleet, body)
    assert {fleet.spec(u).model for u in fleet.unit_ids} == set(MODELS)


def test_energy_grows_between_reads_and_never_goes_back(fleet: ModbusMeterFleet, clock: Clock) -> None:
    async def body(client: AsyncModbusTcpClient) -> list[list[float]]:
        seen: list[list[float]] = []
        for minutes in (0, 10, 10, 5, 45, 240):
            clock.now += timedelta(minutes=minutes)
            row = []
            for unit_id in fleet.unit_ids:
                values = await read_values(client, unit_id, load_register_map(fleet.spec(unit_id).model))
                row.append(number(values, "energy_import"))
            seen.append(row)
        return seen

    seen = run(fleet, body)
    for unit_index in range(len(fleet.unit_ids)):
        energies = [row[unit_index] for row in seen]
        assert energies == sorted(energies)
        assert energies[-1] > energies[0]


def test_addresses_the_map_does_not_cover_are_illegal_and_reads_keep_the_models_limit(fleet: ModbusMeterFleet) -> None:
    sdm120, sdm630, dtsu666 = (MODELS.index(m) + 1 for m in ("eastron_sdm120", "eastron_sdm630", "chint_dtsu666"))

    async def body(client: AsyncModbusTcpClient) -> list[int]:
        return [
            exception_code(await read(client, sdm120, 3, 0x0000, 2)),  # Eastron has input registers only
            exception_code(await read(client, sdm120, 4, 0x0156, 4)),  # past total energy
            exception_code(await read(client, dtsu666, 3, 0x0000, 2)),
            exception_code(await read(client, sdm630, 4, 0x0000, 81)),  # the SDM630 answers 80 registers at most
            len((await read(client, sdm630, 4, 0x0000, 80)).registers),
            exception_code(await client.read_coils(0, count=1, device_id=sdm120)),
            exception_code(await client.read_discrete_inputs(0, count=1, device_id=sdm120)),
        ]

    assert run(fleet, body) == [2, 2, 2, 3, 80, 2, 2]


# ---------------------------------------------------------------------------------------------------------------
# relay


def test_a_relay_write_opens_the_relay_and_the_status_register_reads_it_back(
    fleet: ModbusMeterFleet, clock: Clock
) -> None:
    unit_id = MODELS.index(DDS238) + 1
    register_map = load_register_map(DDS238)
    status = relay_status_read(register_map)

    async def status_of(client: AsyncModbusTcpClient) -> RelayState:
        response = await read(client, unit_id, status.function, status.address, status.count)
        return decode_relay_state(register_map, list(response.registers))

    async def write(client: AsyncModbusTcpClient, target: RelayState) -> ModbusPDU:
        write = relay_write(register_map, target)
        assert write.function == 16
        return await client.write_registers(write.address, list(write.words), device_id=unit_id)

    async def body(client: AsyncModbusTcpClient) -> None:
        assert await status_of(client) is RelayState.CLOSED
        assert not (await write(client, RelayState.OPEN)).isError()
        assert await status_of(client) is RelayState.OPEN
        assert fleet.relay(unit_id) is RelayState.OPEN
        opened_wh = fleet.energy_wh(unit_id)
        clock.now += timedelta(hours=2)
        values = await read_values(client, unit_id, register_map)
        assert values["power"] == 0
        assert values[RELAY_STATE] is RelayState.OPEN
        assert fleet.energy_wh(unit_id) == opened_wh
        assert values["energy_import"] == shown_wh(register_map, opened_wh)
        other = unit_id + len(MODELS)  # the second DDS238 was not switched
        assert fleet.relay(other) is RelayState.CLOSED
        assert not (await write(client, RelayState.CLOSED)).isError()
        assert await status_of(client) is RelayState.CLOSED
        clock.now += timedelta(hours=1)
        assert fleet.energy_wh(unit_id) > opened_wh

    run(fleet, body)


def test_writes_a_meter_does_not_take_are_refused_with_their_exception_codes(fleet: ModbusMeterFleet) -> None:
    dds238 = MODELS.index(DDS238) + 1
    sdm120 = MODELS.index("eastron_sdm120") + 1

    async def body(client: AsyncModbusTcpClient) -> list[int]:
        return [
            # the DDS238-2 takes its relay with function 16 only
            exception_code(await client.write_register(0x001A, 0, device_id=dds238)),
            exception_code(await client.write_registers(0x001A, [7], device_id=dds238)),
            exception_code(await client.write_registers(0x000A, [0, 0], device_id=dds238)),  # its energy register
            exception_code(await client.write_registers(0x0019, [0, 0], device_id=dds238)),
            exception_code(await client.write_coil(0x001A, False, device_id=dds238)),
            exception_code(await client.write_registers(0x0000, [0], device_id=sdm120)),  # no relay at all
        ]

    assert run(fleet, body) == [1, 3, 2, 2, 2, 2]
    assert fleet.relay(dds238) is RelayState.CLOSED


def test_a_coil_switched_relay(clock: Clock) -> None:
    register_map = parse_register_map(COIL_MAP, origin="t.toml")
    status = relay_status_read(register_map)

    async def body(client: AsyncModbusTcpClient) -> list[object]:
        seen: list[object] = []
        write = relay_write(register_map, RelayState.OPEN)
        assert (write.function, write.value) == (5, 0xFF00)
        seen.append((await client.write_coil(write.address, True, device_id=1)).bits[0])
        seen.append((await client.read_coils(write.address, count=1, device_id=1)).bits[0])
        response = await read(client, 1, status.function, status.address, status.count)
        seen.append(decode_relay_state(register_map, list(response.registers)))
        seen.append(exception_code(await client.write_register(write.address, 0xFF00, device_id=1)))
        await client.write_coil(write.address, False, device_id=1)
        seen.append((await client.read_coils(write.address, count=1, device_id=1)).bits[0])
        return seen

    with ModbusMeterFleet("127.0.0.1", 0, [register_map], 1, clock=clock) as fleet:
        assert run(fleet, body) == [True, True, RelayState.OPEN, 2, False]
        assert fleet.relay(1) is RelayState.CLOSED


# ---------------------------------------------------------------------------------------------------------------
# faults


def test_a_stuck_relay_acknowledges_the_write_and_reads_back_unmoved(fleet: ModbusMeterFleet) -> None:
    unit_id = MODELS.index(DDS238) + 1
    register_map = load_register_map(DDS238)
    fleet.set_fault(unit_id, StuckRelay())
    status = relay_status_read(register_map)

    async def body(client: AsyncModbusTcpClient) -> tuple[bool, RelayState]:
        write = relay_write(register_map, RelayState.OPEN)
        response = await client.write_registers(write.address, list(write.words), device_id=unit_id)
        words = (await read(client, unit_id, status.function, status.address, status.count)).registers
        return response.isError(), decode_relay_state(register_map, list(words))

    assert run(fleet, body) == (False, RelayState.CLOSED)
    assert fleet.relay(unit_id) is RelayState.CLOSED
    fleet.set_fault(unit_id, None)
    assert run(fleet, body) == (False, RelayState.OPEN)


def test_a_unit_that_does_not_answer_times_out_while_the_others_answer(fleet: ModbusMeterFleet) -> None:
    fleet.set_fault(1, NoAnswer())
    register_map = load_register_map(fleet.spec(1).model)
    request = plan_reads(register_map)[0]

    async def body(client: AsyncModbusTcpClient) -> tuple[float, bool]:
        started = time.monotonic()
        with pytest.raises(ModbusIOException, match="No response"):
            await read(client, 1, request.function, request.address, request.count)
        waited = time.monotonic() - started
        other = fleet.spec(2)
        values = await read_values(client, 2, load_register_map(other.model))
        return waited, values["energy_import"] == shown_wh(load_register_map(other.model), fleet.energy_wh(2))

    waited, others_answer = run(fleet, body)
    assert waited >= TIMEOUT_S * 0.9
    assert others_answer
    fleet.set_fault(1, None)
    assert run(fleet, lambda client: read(client, 1, request.function, request.address, request.count)).registers


def test_a_unit_id_with_no_meter_is_silent(fleet: ModbusMeterFleet) -> None:
    async def body(client: AsyncModbusTcpClient) -> None:
        with pytest.raises(ModbusIOException, match="No response"):
            await read(client, 99, 3, 0x0000, 2)

    run(fleet, body)


def test_exception_answers_as_the_client_sees_them(fleet: ModbusMeterFleet) -> None:
    dds238 = MODELS.index(DDS238) + 1
    register_map = load_register_map(DDS238)
    request = plan_reads(register_map)[0]
    write = relay_write(register_map, RelayState.OPEN)

    async def body(client: AsyncModbusTcpClient) -> list[object]:
        seen: list[object] = []
        fleet.set_fault(dds238, ExceptionAnswer(ExceptionCode.ILLEGAL_DATA_ADDRESS))
        seen.append(exception_code(await read(client, dds238, request.function, request.address, request.count)))
        fleet.set_fault(dds238, ExceptionAnswer(ExceptionCode.SERVER_DEVICE_FAILURE))
        seen.append(exception_code(await read(client, dds238, request.function, request.address, request.count)))
        seen.append(exception_code(await client.write_registers(write.address, list(write.words), device_id=dds238)))
        # the relay write refused, the registers still read
        fleet.set_fault(dds238, ExceptionAnswer(ExceptionCode.SERVER_DEVICE_BUSY, frozenset({16})))
        seen.append(exception_code(await client.write_registers(write.address, list(write.words), device_id=dds238)))
        seen.append((await read(client, dds238, request.function, request.address, request.count)).isError())
        return seen

    assert run(fleet, body) == [2, 4, 4, 6, False]
    assert fleet.relay(dds238) is RelayState.CLOSED


def test_a_slow_answer_comes_after_its_delay_or_the_client_times_out(fleet: ModbusMeterFleet) -> None:
    fleet.set_fault(1, SlowAnswer(0.4))
    register_map = load_register_map(fleet.spec(1).model)
    request = plan_reads(register_map)[0]

    async def patient(client: AsyncModbusTcpClient) -> tuple[float, bool]:
        started = time.monotonic()
        response = await read(client, 1, request.function, request.address, request.count)
        return time.monotonic() - started, response.isError()

    waited, failed = run(fleet, patient, timeout_s=2.0)
    assert 0.4 <= waited < 1.5
    assert not failed

    async def impatient(client: AsyncModbusTcpClient) -> None:
        with pytest.raises(ModbusIOException, match="No response"):
            await read(client, 1, request.function, request.address, request.count)

    run(fleet, impatient, timeout_s=0.1)


def test_a_corrupt_answer_is_a_read_one_register_short_or_no_frame_at_all(fleet: ModbusMeterFleet) -> None:
    dds238 = MODELS.index(DDS238) + 1
    register_map = load_register_map(DDS238)
    request = plan_reads(register_map)[0]
    write = relay_write(register_map, RelayState.OPEN)
    fleet.set_fault(dds238, CorruptAnswer())

    async def body(client: AsyncModbusTcpClient) -> int:
        response = await read(client, dds238, request.function, request.address, request.count)
        with pytest.raises(ModbusIOException):
            await client.write_registers(write.address, list(write.words), device_id=dds238)
        return len(response.registers)

    assert run(fleet, body) == request.count - 1
    # the write was carried out; only its answer was lost
    assert fleet.relay(dds238) is RelayState.OPEN
    with socket.create_connection(("127.0.0.1", fleet.port), timeout=5) as connection:
        connection.sendall(mbap_read(0x0303, dds238, request.function, request.address, request.count))
        transaction_id, unit_id, pdu = receive_frame(connection)
    assert (transaction_id, unit_id) == (0x0303, dds238)
    assert pdu[:2] == bytes([request.function, 2 * (request.count - 1)])
    assert len(pdu) == 2 + 2 * (request.count - 1)


def mbap_read(transaction_id: int, unit_id: int, function: int, address: int, count: int) -> bytes:
    """A Modbus TCP read request: MBAP header (transaction, protocol 0, length, unit) and the PDU."""
    return struct.pack(">HHHBBHH", transaction_id, 0, 6, unit_id, function, address, count)


def receive_frame(connection: socket.socket) -> tuple[int, int, bytes]:
    """One Modbus TCP frame: transaction id, unit id and PDU."""
    header = b""
    while len(header) < 7:
        chunk = connection.recv(7 - len(header))
        assert chunk, "connection closed"
        header += chunk
    transaction_id, protocol, length, unit_id = struct.unpack(">HHHB", header)
    assert protocol == 0
    pdu = b""
    while len(pdu) < length - 1:
        pdu += connection.recv(length - 1 - len(pdu))
    return transaction_id, unit_id, pdu


def test_a_late_answer_keeps_its_own_transaction_id(fleet: ModbusMeterFleet) -> None:
    """Requests pipelined on one connection: the quick one is answered first, the slow one later, each as itself."""
    fleet.set_fault(1, SlowAnswer(0.3))
    slow, quick = (plan_reads(load_register_map(fleet.spec(u).model))[0] for u in (1, 2))
    with socket.create_connection(("127.0.0.1", fleet.port), timeout=5) as connection:
        connection.sendall(mbap_read(0x0101, 1, slow.function, slow.address, slow.count))
        time.sleep(0.05)
        connection.sendall(mbap_read(0x0202, 2, quick.function, quick.address, quick.count))
        first = receive_frame(connection)
        second = receive_frame(connection)
    assert first[:2] == (0x0202, 2)
    assert first[2][:2] == bytes([quick.function, 2 * quick.count])
    assert second[:2] == (0x0101, 1)
    assert second[2][:2] == bytes([slow.function, 2 * slow.count])


# ---------------------------------------------------------------------------------------------------------------
# the fleet as a whole


def test_200_meters_on_one_server_answer(clock: Clock) -> None:
    clock.now = T0 + timedelta(hours=3)
    with ModbusMeterFleet("127.0.0.1", 0, MODELS, 200, seed=11, clock=clock) as fleet:

        async def main() -> dict[int, Value]:
            clients = [AsyncModbusTcpClient("127.0.0.1", port=fleet.port, timeout=2.0, retries=0) for _ in range(8)]
            try:
                for client in clients:
                    assert await client.connect()

                async def read_all(client: AsyncModbusTcpClient, units: list[int]) -> dict[int, Value]:
                    energies = {}
                    for unit_id in units:
                        values = await read_values(client, unit_id, load_register_map(fleet.spec(unit_id).model))
                        energies[unit_id] = values["energy_import"]
                    return energies

                units = list(fleet.unit_ids)
                parts = await asyncio.gather(*(read_all(c, units[i :: len(clients)]) for i, c in enumerate(clients)))
                return {unit_id: energy for part in parts for unit_id, energy in part.items()}
            finally:
                for client in clients:
                    client.close()

        started = time.monotonic()
        energies = asyncio.run(main())
        elapsed = time.monotonic() - started
        assert sorted(energies) == list(range(1, 201))
        for unit_id, energy in energies.items():
            register_map = load_register_map(fleet.spec(unit_id).model)
            assert energy == shown_wh(register_map, fleet.energy_wh(unit_id)), unit_id
        assert len({row["endpoint"] for row in fleet.registry_rows()}) == 1
    assert elapsed < 60


def test_serve_runs_in_the_callers_loop_until_cancelled(clock: Clock) -> None:
    fleet = ModbusMeterFleet("127.0.0.1", 0, ["eastron_sdm120"], 3, clock=clock)

    async def main() -> Any:
        listening = asyncio.Event()
        serving = asyncio.create_task(fleet.serve(listening=listening.set))
        await asyncio.wait_for(listening.wait(), 10)
        client = AsyncModbusTcpClient("127.0.0.1", port=fleet.port, timeout=TIMEOUT_S, retries=0)
        try:
            assert await client.connect()
            values = await read_values(client, 3, load_register_map("eastron_sdm120"))
        finally:
            client.close()
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        return values["energy_import"]

    assert asyncio.run(main()) == fleet.energy_wh(3)
    assert fleet.endpoint == f"127.0.0.1:{fleet.port}"


def test_many_fleets_are_served_in_one_loop(clock: Clock) -> None:
    """Gateways of a benchmark: each fleet its own port, all served by the tasks of one event loop."""
    fleets = [ModbusMeterFleet("127.0.0.1", 0, [DDS238], 4, seed=n, clock=clock) for n in range(5)]

    async def main() -> list[float]:
        listening = [asyncio.Event() for _ in fleets]
        serving = [asyncio.create_task(f.serve(listening=e.set)) for f, e in zip(fleets, listening, strict=True)]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in listening)), 10)
            energies = []
            for fleet in fleets:
                client = AsyncModbusTcpClient("127.0.0.1", port=fleet.port, timeout=TIMEOUT_S, retries=0)
                try:
                    assert await client.connect()
                    values = await read_values(client, 4, load_register_map(DDS238))
                finally:
                    client.close()
                energies.append(number(values, "energy_import"))
            return energies
        finally:
            for task in serving:
                task.cancel()
            await asyncio.gather(*serving, return_exceptions=True)

    energies = asyncio.run(main())
    assert len({fleet.port for fleet in fleets}) == len(fleets)
    assert energies == [shown_wh(load_register_map(DDS238), fleet.energy_wh(4)) for fleet in fleets]


def test_a_port_in_use_is_an_error_and_stop_is_idempotent(fleet: ModbusMeterFleet, clock: Clock) -> None:
    other = ModbusMeterFleet("127.0.0.1", fleet.port, ["eastron_sdm120"], 1, clock=clock)
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{fleet.port}"):
        other.start()
    other.stop()
    with pytest.raises(RuntimeError, match="already started"):
        fleet.start()
    fleet.stop()
    fleet.stop()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", fleet.port)) != 0  # nothing listens any more


# ---------------------------------------------------------------------------------------------------------------
# RTU framing: the meters on the RS-485 bus of a transparent serial-to-TCP gateway


@pytest.fixture
def rtu_fleet(clock: Clock) -> Iterator[ModbusMeterFleet]:
    """Two meters of every shipped model behind one simulated transparent gateway, on a port the OS picks."""
    with ModbusMeterFleet("127.0.0.1", 0, MODELS, 2 * len(MODELS), seed=5, clock=clock, framing="rtu") as running:
        yield running


def rtu_read(unit_id: int, function: int, address: int, count: int) -> bytes:
    """An RTU read request: unit, PDU and CRC-16."""
    body = struct.pack(">BBHH", unit_id, function, address, count)
    return body + crc16(body)


def test_every_model_reads_through_the_gateway_as_pymodbus_frames_rtu(rtu_fleet: ModbusMeterFleet) -> None:
    async def body(client: AsyncModbusTcpClient) -> dict[int, dict[str, Value]]:
        return {u: await read_values(client, u, load_register_map(rtu_fleet.spec(u).model)) for u in rtu_fleet.unit_ids}

    for unit_id, values in run(rtu_fleet, body).items():
        register_map = load_register_map(rtu_fleet.spec(unit_id).model)
        assert values["energy_import"] == shown_wh(register_map, rtu_fleet.energy_wh(unit_id)), unit_id
        assert values == rtu_fleet.values(unit_id), unit_id


def test_the_gateway_answers_one_request_at_a_time_whichever_connection_asks(rtu_fleet: ModbusMeterFleet) -> None:
    """A slow meter holds the bus: a request to its neighbour, on another connection, is answered after it."""
    rtu_fleet.set_fault(1, SlowAnswer(0.4))
    slow, quick = (plan_reads(load_register_map(rtu_fleet.spec(u).model))[0] for u in (1, 2))
    with (
        socket.create_connection(("127.0.0.1", rtu_fleet.port), timeout=5) as first,
        socket.create_connection(("127.0.0.1", rtu_fleet.port), timeout=5) as second,
    ):
        started = time.monotonic()
        first.sendall(rtu_read(1, slow.function, slow.address, slow.count))
        time.sleep(0.05)
        second.sendall(rtu_read(2, quick.function, quick.address, quick.count))
        quick_answer = receive(second, 5 + 2 * quick.count)
        quick_at = time.monotonic() - started
        slow_answer = receive(first, 5 + 2 * slow.count)
    assert quick_answer[:3] == bytes([2, quick.function, 2 * quick.count])
    assert slow_answer[:3] == bytes([1, slow.function, 2 * slow.count])
    assert all(frame[-2:] == crc16(frame[:-2]) for frame in (quick_answer, slow_answer))
    assert quick_at >= 0.4  # it waited for the slow meter's exchange to end


def test_faults_behind_the_gateway_as_the_wire_shows_them(rtu_fleet: ModbusMeterFleet) -> None:
    dds238 = MODELS.index(DDS238) + 1
    request = plan_reads(load_register_map(DDS238))[0]
    answer_size = 5 + 2 * request.count
    with socket.create_connection(("127.0.0.1", rtu_fleet.port), timeout=5) as connection:
        # corrupt: the whole answer, its CRC not that of its bytes
        rtu_fleet.set_fault(dds238, CorruptAnswer())
        connection.sendall(rtu_read(dds238, request.function, request.address, request.count))
        corrupt = receive(connection, answer_size)
        assert corrupt[:3] == bytes([dds238, request.function, 2 * request.count])
        assert corrupt[-2:] != crc16(corrupt[:-2])
        # an exception code, sealed
        rtu_fleet.set_fault(dds238, ExceptionAnswer(ExceptionCode.SERVER_DEVICE_BUSY))
        connection.sendall(rtu_read(dds238, request.function, request.address, request.count))
        refused = receive(connection, 5)
        assert refused[:3] == bytes([dds238, 0x80 | request.function, ExceptionCode.SERVER_DEVICE_BUSY])
        assert refused[-2:] == crc16(refused[:-2])
        # silence, then the unit healed answers on the same connection
        rtu_fleet.set_fault(dds238, NoAnswer())
        connection.sendall(rtu_read(dds238, request.function, request.address, request.count))
        connection.settimeout(0.3)
        with pytest.raises(TimeoutError):
            connection.recv(1)
        connection.settimeout(5)
        rtu_fleet.set_fault(dds238, None)
        connection.sendall(rtu_read(dds238, request.function, request.address, request.count))
        healed = receive(connection, answer_size)
        assert healed[-2:] == crc16(healed[:-2])
        # a unit id with no meter is silent, as on the line
        connection.sendall(rtu_read(99, request.function, request.address, request.count))
        connection.settimeout(0.3)
        with pytest.raises(TimeoutError):
            connection.recv(1)

    async def body(client: AsyncModbusTcpClient) -> None:
        # pymodbus's own RTU client drops the damaged answer and times out: the poller does better (tests/unit)
        rtu_fleet.set_fault(dds238, CorruptAnswer())
        with pytest.raises(ModbusIOException):
            await read(client, dds238, request.function, request.address, request.count)

    run(rtu_fleet, body)
