"""Modbus RTU on the wire, against frames published in public documents: the CRC-16 of the serial line, the bytes the
poller sends to a transparent gateway and the published answer it decodes, the simulated gateway's answers to frames
written by hand on a bare socket.

Published frames used:
- the Read Holding Registers example of the Modbus specification (Modicon PI-MBUS-300), slave 17 reading registers
  40108..40110, as an RTU frame with its CRC: `11 03 00 6B 00 03 76 87`, and the answer simplymodbus.ca gives for it,
  `11 03 06 AE 41 56 52 43 40 49 AD`;
- Eastron's SDM120 protocol document: the voltage read `01 04 00 00 00 02 71 CB` and its worked answer
  `01 04 04 43 66 33 34 1B 38` = 230.2 V (quoted in Tasmota's xnrg_08_sdm120.ino).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from headend.poll.failures import FailureKind, PollError
from headend.poll.modbus_reader import ModbusLink
from headend.poll.targets import Endpoint, PolledMeter
from protocols.readings import MeterReading
from simulators.modbus_sim import ModbusMeterFleet

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
SPEC_READ = bytes.fromhex("11 03 00 6B 00 03 76 87")
SPEC_ANSWER = bytes.fromhex("11 03 06 AE 41 56 52 43 40 49 AD")
EASTRON_READ = bytes.fromhex("01 04 00 00 00 02 71 CB")
EASTRON_ANSWER = bytes.fromhex("01 04 04 43 66 33 34 1B 38")  # 230.2 V


def crc16(data: bytes) -> bytes:
    """CRC-16/MODBUS of `data` as the serial line specification computes it (preset 0xFFFF, polynomial 0xA001
    reflected), low byte first as it is sent; written here, not taken from pymodbus, to check pymodbus's."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


def sealed(body: str) -> bytes:
    """An RTU frame written by hand (unit, PDU), with its CRC appended."""
    data = bytes.fromhex(body)
    return data + crc16(data)


@pytest.mark.parametrize("frame", [SPEC_READ, SPEC_ANSWER, EASTRON_READ, EASTRON_ANSWER])
def test_the_crc_here_is_the_published_one(frame: bytes) -> None:
    assert crc16(frame[:-2]) == frame[-2:]


# --------------------------------------------------------------------------- the poller's side


METER = PolledMeter("sdm-1", "modbus", Endpoint("127.0.0.1", 0), "eastron_sdm120", unit_id=1, framing="rtu")


async def with_gateway(answer: Callable[[bytes], bytes], body: Callable[[ModbusLink], Awaitable[None]]) -> list[bytes]:
    """Run `body` with a ModbusLink to a bare-socket gateway that answers each 8-byte request as `answer` says;
    return the requests it received."""
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readexactly(8)
                requests.append(request)
                writer.write(answer(request))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = ModbusLink(Endpoint("127.0.0.1", port), 0.5)
    try:
        await body(link)
    finally:
        link.close()
        server.close()
        await server.wait_closed()
    return requests


def zeros_or_published(request: bytes) -> bytes:
    """The published answer to the published request; zeros, sealed, to any other read."""
    if request == EASTRON_READ:
        return EASTRON_ANSWER
    unit, function, _, count = struct.unpack(">BBHH", request[:6])
    return sealed(bytes([unit, function, 2 * count]).hex() + "00" * (2 * count))


def test_the_poller_sends_the_published_read_and_decodes_the_published_answer() -> None:
    readings: list[MeterReading] = []

    async def read(link: ModbusLink) -> None:
        readings.append(await link.read_meter(METER, T0))

    requests = asyncio.run(with_gateway(zeros_or_published, read))
    # the map's first read is the document's, to the byte; every request is sealed with its CRC
    assert requests[0] == EASTRON_READ
    assert len(requests) == 5
    assert all(crc16(r[:-2]) == r[-2:] and r[0] == 1 and r[1] == 4 for r in requests)
    [reading] = readings
    assert reading.voltage_v == pytest.approx(230.2, abs=1e-4)
    assert (reading.energy_import_wh, reading.power_w) == (0, 0)


def test_an_answer_with_a_damaged_crc_is_a_bad_frame_at_once() -> None:
    damaged = EASTRON_ANSWER[:-1] + bytes([EASTRON_ANSWER[-1] ^ 0x01])
    failures: list[PollError] = []
    took: list[float] = []

    async def read(link: ModbusLink) -> None:
        started = time.monotonic()
        with pytest.raises(PollError) as raised:
            await link.read_meter(METER, T0)
        took.append(time.monotonic() - started)
        failures.append(raised.value)

    requests = asyncio.run(with_gateway(lambda _: damaged, read))
    assert requests == [EASTRON_READ]
    [failure] = failures
    assert failure.kind is FailureKind.BAD_FRAME
    assert failure.reason == f"unit 1: an answer whose CRC does not match its bytes ({damaged.hex(' ')})"
    assert took[0] < 0.4  # not left to time out (0.5 s)


# --------------------------------------------------------------------------- the simulated gateway's side


def receive(connection: socket.socket, size: int) -> bytes:
    """Exactly `size` bytes from `connection`."""
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


def test_the_simulated_gateway_answers_frames_written_by_hand() -> None:
    # 17 units: odd ones Eastron SDM120 (input registers only), so unit 17 has no holding register 40108
    with (
        ModbusMeterFleet(
            "127.0.0.1", 0, ["eastron_sdm120", "hiking_dds238_2_znsr"], 17, clock=lambda: T0, framing="rtu"
        ) as fleet,
        socket.create_connection(("127.0.0.1", fleet.port), timeout=5) as connection,
    ):
        connection.sendall(EASTRON_READ)
        answer = receive(connection, 9)
        assert answer[:3] == bytes.fromhex("01 04 04")
        assert answer[-2:] == crc16(answer[:-2])
        (voltage,) = struct.unpack(">f", answer[3:7])
        assert voltage == pytest.approx(fleet.values(1)["voltage"], abs=1e-4)

        # the specification's read of slave 17: illegal data address (2) on this meter, sealed with its CRC
        connection.sendall(SPEC_READ)
        assert receive(connection, 5) == sealed("11 83 02") == bytes.fromhex("11 83 02 C1 34")

        # a request whose CRC does not match is not answered, as a meter on the line ignores it
        connection.sendall(EASTRON_READ[:-1] + b"\x00")
        connection.settimeout(0.3)
        with pytest.raises(TimeoutError):
            connection.recv(1)
        connection.settimeout(5)
        connection.sendall(EASTRON_READ)
        assert receive(connection, 9)[:3] == bytes.fromhex("01 04 04")
