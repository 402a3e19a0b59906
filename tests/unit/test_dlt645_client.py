"""The DL/T 645-2007 asyncio client (`protocols.dlt645.client`) against scripted streams and a scripted gateway.

Answers are written by hand (bytes as the standard lays them out, checksums summed here), most of them the
published frames the codec's tests cite, so the client is not only checked against our own encoder.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.dlt645 import identifiers as di
from protocols.dlt645.client import (
    MAX_FOLLOW_UP_FRAMES,
    DataAnswer,
    Dlt645Client,
    Dlt645Connection,
    NoAnswer,
    NoConnection,
    UnexpectedAnswer,
    WrongAddress,
    address_matches,
    wall_clock,
)
from protocols.dlt645.errors import ChecksumError, ErrorFlags, FrameError, Function, MeterErrorResponse
from protocols.dlt645.frame import WILDCARD, Address, frame_length
from protocols.dlt645.identifiers import Energy, EnergyBlock, Voltage
from protocols.dlt645.messages import RelayCommand

SHANGHAI = timezone(timedelta(hours=8))
METER = "000000000161"
# read forward active total energy of meter 000000000161, and its answer 000000.26 kWh, as published in the
# worked example of the "DLT645-2007报文解析" document (see tests/unit/test_dlt645_messages.py)
READ_ENERGY = "FE FE FE FE 68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16"
ENERGY_ANSWER = "68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33 8A 16"
VOLTAGE_ANSWER = "68 61 01 00 00 00 00 68 91 06 33 34 34 35 34 43 10 16"  # 100.1 V, same document
# remote trip of meter 111111111111 and its answer: packDisconnect, ProtocolMeter645_2007Util.java (Holley, emcp)
TRIP = "68 11 11 11 11 11 11 68 1C 10 33 33 33 33 33 33 33 33 4D 33 57 74 48 45 38 4B 55 16"
TRIP_ACCEPTED = "68 11 11 11 11 11 11 68 9C 00 D2 16"
# broadcast time 2017-06-05 10:22:51: a public concentrator firmware's "645-07广播校时" comment
BROADCAST_TIME = "68 99 99 99 99 99 99 68 08 06 84 55 43 38 39 4A 4B 16"
# read address with four wake-up bytes: fdxxw/rs-dlt645
READ_ADDRESS = "fe fe fe fe 68 aa aa aa aa aa aa 68 13 00 df 16"


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def framed(text: str) -> bytes:
    """`68 A0..A5 68 C L DATA` written by hand, with its checksum (the sum from the first 68) and 16 appended."""
    body = h(text)
    return body + bytes([sum(body) & 0xFF, 0x16])


Chunks = Sequence[tuple[float, bytes]]


class ScriptedGateway:
    """Stands in for the gateway's stream: each request written gets the next scripted answer, chunk by chunk."""

    def __init__(self, answers: Sequence[Chunks | bytes | None]) -> None:
        self.reader = asyncio.StreamReader()
        self.requests: list[bytes] = []
        self._answers = list(answers)
        self._playing: set[asyncio.Task[None]] = set()

    def write(self, data: bytes) -> None:
        self.requests.append(bytes(data))
        answer = self._answers.pop(0) if self._answers else None
        if answer is None:
            return
        chunks = [(0.0, answer)] if isinstance(answer, bytes) else answer
        task = asyncio.get_running_loop().create_task(self._play(chunks))
        self._playing.add(task)
        task.add_done_callback(self._playing.discard)

    async def drain(self) -> None:
        return None

    async def _play(self, chunks: Chunks) -> None:
        for delay, chunk in chunks:
            if delay:
                await asyncio.sleep(delay)
            self.reader.feed_data(chunk)

    def client(self, *, timeout_s: float = 2.0, wakeup: int = 4) -> Dlt645Client:
        return Dlt645Client(self.reader, self, timeout_s=timeout_s, wakeup=wakeup)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


# --------------------------------------------------------------------------- one exchange


def test_read_sends_the_published_request_and_decodes_the_published_answer() -> None:
    async def scenario() -> None:
        gateway = ScriptedGateway([h(ENERGY_ANSWER)])
        answer = await gateway.client().read_data(METER, di.FORWARD_ACTIVE_TOTAL)
        assert gateway.requests == [h(READ_ENERGY)]
        assert answer == DataAnswer(Address(METER), di.FORWARD_ACTIVE_TOTAL, h("26 00 00 00"))
        assert answer.value() == Energy(260)

    run(scenario)


def test_an_answer_in_fragments_is_joined() -> None:
    async def scenario() -> None:
        data = h(VOLTAGE_ANSWER)
        gateway = ScriptedGateway([[(0.005, data[i : i + 1]) for i in range(len(data))]])
        assert await gateway.client().read_value(METER, di.PHASE_A_VOLTAGE) == Voltage(100_100)

    run(scenario)


def test_wakeup_bytes_and_noise_before_the_answer_are_skipped() -> None:
    async def scenario() -> None:
        # line noise, a 68 that begins no frame, then four wake-up bytes and the answer, in three pieces
        noise = h("00 13 FF 68 00 01 02 03 04 05 06 07")
        data = noise + h("FE FE FE FE") + h(ENERGY_ANSWER)
        gateway = ScriptedGateway([[(0.0, data[:5]), (0.01, data[5:17]), (0.01, data[17:])]])
        client = gateway.client()
        assert (await client.read_data(METER, di.FORWARD_ACTIVE_TOTAL)).value() == Energy(260)
        assert client.noise_bytes == len(noise)  # wake-up bytes are not noise

    run(scenario)


def test_an_echo_of_the_request_is_not_taken_for_the_answer() -> None:
    async def scenario() -> None:
        gateway = ScriptedGateway([h(READ_ENERGY) + h(ENERGY_ANSWER)])
        assert (await gateway.client().read_data(METER, di.FORWARD_ACTIVE_TOTAL)).value() == Energy(260)

    run(scenario)


def test_no_answer_within_the_timeout() -> None:
    async def scenario() -> None:
        client = ScriptedGateway([None]).client(timeout_s=0.1)
        started = time.monotonic()
        with pytest.raises(NoAnswer, match=r"no answer from 000000000161 within 0.1 s$"):
            await client.read_data(METER, di.FORWARD_ACTIVE_TOTAL)
        assert 0.1 <= time.monotonic() - started < 1.0

    run(scenario)


def test_half_an_answer_then_silence_is_no_answer() -> None:
    async def scenario() -> None:
        client = ScriptedGateway([h(ENERGY_ANSWER)[:12]]).client(timeout_s=0.1)
        with pytest.raises(NoAnswer, match=r"12 bytes of an unfinished frame"):
            await client.read_data(METER, di.FORWARD_ACTIVE_TOTAL)

    run(scenario)


def test_a_timeout_per_request_overrides_the_clients() -> None:
    async def scenario() -> None:
        client = ScriptedGateway([[(0.3, h(ENERGY_ANSWER))], [(0.3, h(ENERGY_ANSWER))]]).client(timeout_s=0.1)
        with pytest.raises(NoAnswer):
            await client.read_data(METER, di.FORWARD_ACTIVE_TOTAL)
        # the next request's own timeout lets the (late) answer arrive
        answer = await client.read_data(METER, di.FORWARD_ACTIVE_TOTAL, timeout_s=1.0)
        assert answer.value() == Energy(260)

    run(scenario)


@pytest.mark.parametrize(
    ("answer", "error", "match"),
    [
        (ENERGY_ANSWER[:-5] + "8B 16", ChecksumError, "checksum 0x8B, the bytes sum to 0x8A"),
        (ENERGY_ANSWER[:-2] + "17", FrameError, "ends with 0x17"),
    ],
    ids=["bad checksum", "bad end byte"],
)
def test_a_corrupt_answer_is_the_codecs_error(answer: str, error: type[Exception], match: str) -> None:
    async def scenario() -> None:
        with pytest.raises(error, match=match):
            await ScriptedGateway([h(answer)]).client().read_data(METER, di.FORWARD_ACTIVE_TOTAL)

    run(scenario)


def test_an_abnormal_answer_raises_meter_error_response() -> None:
    async def scenario() -> None:
        # D1, error byte 02 (+33): no data requested
        gateway = ScriptedGateway([framed("68 61 01 00 00 00 00 68 D1 01 35")])
        with pytest.raises(MeterErrorResponse, match="no data requested") as caught:
            await gateway.client().read_data(METER, di.FORWARD_ACTIVE_TOTAL)
        assert caught.value.errors == ErrorFlags.NO_DATA_REQUESTED
        assert caught.value.function is Function.READ_DATA

    run(scenario)


def test_an_answer_from_another_meter_is_refused() -> None:
    async def scenario() -> None:
        # meter 000000000162 answers with the document's energy answer
        other = framed("68 62 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33")
        with pytest.raises(WrongAddress, match="meter 000000000162 answered a request to 000000000161"):
            await ScriptedGateway([other]).client().read_data(METER, di.FORWARD_ACTIVE_TOTAL)

    run(scenario)


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (h(VOLTAGE_ANSWER), "answered identifier 02010100 to a read of 00010000"),
        (framed("68 61 01 00 00 00 00 68 93 06 94 34 33 33 33 33"), "ReadAddressResponse .* does not answer read_data"),
    ],
    ids=["another identifier", "another function"],
)
def test_an_answer_to_another_question_is_refused(answer: bytes, match: str) -> None:
    async def scenario() -> None:
        with pytest.raises(UnexpectedAnswer, match=match):
            await ScriptedGateway([answer]).client().read_data(METER, di.FORWARD_ACTIVE_TOTAL)

    run(scenario)


def test_a_wildcard_read_takes_the_answer_of_the_one_meter_there() -> None:
    async def scenario() -> None:
        gateway = ScriptedGateway([h(ENERGY_ANSWER), h(ENERGY_ANSWER)])
        client = gateway.client()
        assert (await client.read_data(WILDCARD, di.FORWARD_ACTIVE_TOTAL)).address == Address(METER)
        # shortened addressing: the AA bytes stand for the high-order digits only
        assert (await client.read_data("AAAAAAAA0161", di.FORWARD_ACTIVE_TOTAL)).address == Address(METER)
        assert address_matches(Address("AAAAAAAA0161"), Address(METER))
        assert not address_matches(Address("AAAAAAAA0162"), Address(METER))

    run(scenario)


def test_the_connection_closed_by_the_gateway_is_no_connection() -> None:
    async def scenario() -> None:
        gateway = ScriptedGateway([None])
        gateway.reader.feed_eof()
        with pytest.raises(NoConnection, match="closed the connection"):
            await gateway.client().read_data(METER, di.FORWARD_ACTIVE_TOTAL)

    run(scenario)


def test_concurrent_use_is_refused() -> None:
    async def scenario() -> None:
        client = ScriptedGateway([[(0.05, h(ENERGY_ANSWER))]]).client()
        first = asyncio.create_task(client.read_data(METER, di.FORWARD_ACTIVE_TOTAL))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="one request at a time"):
            await client.read_data(METER, di.PHASE_A_VOLTAGE)
        assert (await first).value() == Energy(260)

    run(scenario)


# --------------------------------------------------------------------------- follow-up frames


def test_follow_up_frames_are_read_to_the_last() -> None:
    async def scenario() -> None:
        # forward active energy block 00 01 FF 00 in three frames: total 0.26 kWh (B1), rate 1 1.00 kWh (B2, SEQ 1),
        # rate 2 1.60 kWh (92, SEQ 2); DI on the wire 00 FF 01 00, +33 each
        gateway = ScriptedGateway(
            [
                framed("68 61 01 00 00 00 00 68 B1 08 33 32 34 33 59 33 33 33"),
                framed("68 61 01 00 00 00 00 68 B2 09 33 32 34 33 33 34 33 33 34"),
                framed("68 61 01 00 00 00 00 68 92 09 33 32 34 33 93 34 33 33 35"),
            ]
        )
        answer = await gateway.client().read_data(WILDCARD, di.FORWARD_ACTIVE_BLOCK)
        assert answer.frames == 3
        assert answer.value() == EnergyBlock(260, (1_000, 1_600))
        # the follow-up requests (12, DI and SEQ) go to the meter that answered
        assert gateway.requests[1:] == [
            h("FE FE FE FE") + framed("68 61 01 00 00 00 00 68 12 05 33 32 34 33 34"),
            h("FE FE FE FE") + framed("68 61 01 00 00 00 00 68 12 05 33 32 34 33 35"),
        ]

    run(scenario)


def test_a_follow_up_frame_out_of_sequence_is_refused() -> None:
    async def scenario() -> None:
        gateway = ScriptedGateway(
            [
                framed("68 61 01 00 00 00 00 68 B1 08 33 32 34 33 59 33 33 33"),
                framed("68 61 01 00 00 00 00 68 92 09 33 32 34 33 33 34 33 33 35"),  # SEQ 2 for 1
            ]
        )
        with pytest.raises(UnexpectedAnswer, match="frame 2 to a follow-up read of 0001FF00 frame 1"):
            await gateway.client().read_data(METER, di.FORWARD_ACTIVE_BLOCK)

    run(scenario)


def test_a_meter_that_never_stops_following_up_is_refused() -> None:
    async def scenario() -> None:
        def frame(seq: int) -> bytes:
            return framed(f"68 61 01 00 00 00 00 68 B2 09 33 32 34 33 33 33 33 33 {seq + 0x33:02X}")

        first = framed("68 61 01 00 00 00 00 68 B1 08 33 32 34 33 59 33 33 33")
        gateway = ScriptedGateway([first, *(frame(seq) for seq in range(1, MAX_FOLLOW_UP_FRAMES + 2))])
        with pytest.raises(UnexpectedAnswer, match=f"more than {MAX_FOLLOW_UP_FRAMES} follow-up frames"):
            await gateway.client().read_data(METER, di.FORWARD_ACTIVE_BLOCK)

    run(scenario)


# --------------------------------------------------------------------------- the other functions


def test_read_address() -> None:
    async def scenario() -> None:
        # 93, the address again in the data (+33)
        gateway = ScriptedGateway([framed("68 61 01 00 00 00 00 68 93 06 94 34 33 33 33 33")])
        assert await gateway.client().read_address() == Address(METER)
        assert gateway.requests == [h(READ_ADDRESS)]

    run(scenario)


def test_broadcast_time_sends_the_published_frame_and_waits_for_nothing() -> None:
    async def scenario() -> None:
        gateway = ScriptedGateway([])
        client = gateway.client(wakeup=0)
        await client.broadcast_time(datetime(2017, 6, 5, 2, 22, 51, 999_000, tzinfo=UTC))  # 10:22:51 in Shanghai
        assert gateway.requests == [h(BROADCAST_TIME)]

    run(scenario)


def test_relay_control_sends_the_published_trip_and_takes_its_answer() -> None:
    async def scenario() -> None:
        gateway = ScriptedGateway([h(TRIP_ACCEPTED)])
        client = gateway.client(wakeup=0)
        until = datetime(2018, 5, 12, 15, 41, 24, tzinfo=SHANGHAI)
        await client.relay_control("111111111111", RelayCommand.TRIP, "000000", "00000000", until, password_level=0)
        assert gateway.requests == [h(TRIP)]

    run(scenario)


def test_relay_control_refused_for_its_password() -> None:
    async def scenario() -> None:
        # DC, error byte 04 (+33): password error or unauthorised
        gateway = ScriptedGateway([framed("68 11 11 11 11 11 11 68 DC 01 37")])
        until = datetime(2030, 1, 1, tzinfo=UTC)
        with pytest.raises(MeterErrorResponse, match="password error") as caught:
            await gateway.client().relay_control("111111111111", RelayCommand.CLOSE, "123456", "00000001", until)
        assert caught.value.errors == ErrorFlags.PASSWORD_ERROR_OR_UNAUTHORISED
        assert caught.value.function is Function.RELAY_CONTROL

    run(scenario)


def test_wall_clock_is_the_meters_zone_to_the_second() -> None:
    moment = datetime(2026, 12, 31, 16, 30, 5, 700_000, tzinfo=UTC)
    assert wall_clock(moment, SHANGHAI) == datetime(2027, 1, 1, 0, 30, 5)  # noqa: DTZ001 - the meter's wall clock
    with pytest.raises(AssertionError):
        wall_clock(moment.replace(tzinfo=None), SHANGHAI)


# --------------------------------------------------------------------------- any fragmentation


@settings(max_examples=100, deadline=None)
@given(
    noise=st.binary(max_size=20).filter(lambda data: 0x68 not in data),
    wakeup=st.integers(0, 4),
    cuts=st.lists(st.integers(1, 40), max_size=8),
)
def test_any_fragmentation_after_any_noise_gives_the_answer(noise: bytes, wakeup: int, cuts: list[int]) -> None:
    data = noise + b"\xfe" * wakeup + h(ENERGY_ANSWER)
    chunks: list[tuple[float, bytes]] = []
    position = 0
    for cut in cuts:
        if position >= len(data):
            break
        chunks.append((0.0, data[position : position + cut]))
        position += cut
    chunks.append((0.0, data[position:]))

    async def scenario() -> None:
        answer = await ScriptedGateway([chunks]).client().read_data(METER, di.FORWARD_ACTIVE_TOTAL)
        assert answer.value() == Energy(260)

    run(scenario)


# --------------------------------------------------------------------------- the connection


class ScriptedServer:
    """A TCP server on 127.0.0.1 that answers each whole request frame with the next scripted bytes (None: silence)."""

    def __init__(self, answers: Sequence[bytes | None]) -> None:
        self._answers = list(answers)
        self.connections = 0
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        for writer in self._writers:
            writer.close()
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        buffer = b""
        try:
            while chunk := await reader.read(1024):
                buffer += chunk
                while (length := frame_length(buffer)) is not None:
                    buffer = buffer[length:]
                    self.requests += 1
                    answer = self._answers.pop(0) if self._answers else None
                    if answer is not None:
                        writer.write(answer)
                        await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def test_the_connection_is_opened_once_and_reused() -> None:
    async def scenario() -> None:
        server = ScriptedServer([h(ENERGY_ANSWER), h(VOLTAGE_ANSWER)])
        async with server as port, Dlt645Connection("127.0.0.1", port, timeout_s=1.0) as connection:
            assert await connection.read_value(METER, di.FORWARD_ACTIVE_TOTAL) == Energy(260)
            assert await connection.read_value(METER, di.PHASE_A_VOLTAGE) == Voltage(100_100)
            assert (connection.opened, server.connections, connection.is_open) == (1, 1, True)
        assert not connection.is_open

    run(scenario)


def test_the_connection_is_opened_again_after_an_error_but_not_after_an_abnormal_answer() -> None:
    async def scenario() -> None:
        refused = framed("68 61 01 00 00 00 00 68 D1 01 35")
        server = ScriptedServer([None, h(ENERGY_ANSWER), refused, h(ENERGY_ANSWER)])
        async with server as port, Dlt645Connection("127.0.0.1", port, timeout_s=0.2) as connection:
            with pytest.raises(NoAnswer):
                await connection.read_data(METER, di.FORWARD_ACTIVE_TOTAL)
            assert not connection.is_open
            assert await connection.read_value(METER, di.FORWARD_ACTIVE_TOTAL) == Energy(260)
            assert connection.opened == 2
            with pytest.raises(MeterErrorResponse):
                await connection.read_data(METER, di.FORWARD_ACTIVE_TOTAL)
            assert await connection.read_value(METER, di.FORWARD_ACTIVE_TOTAL) == Energy(260)
            assert (connection.opened, server.connections, server.requests) == (2, 2, 4)

    run(scenario)


def test_a_gateway_nobody_listens_on_is_no_connection() -> None:
    async def scenario() -> None:
        async with ScriptedServer([]) as port:
            pass  # closed again: nothing listens on the port now
        async with Dlt645Connection("127.0.0.1", port, timeout_s=0.5) as connection:
            with pytest.raises(NoConnection, match=f"cannot connect to 127.0.0.1:{port}"):
                await connection.read_address()
            assert connection.opened == 0

    run(scenario)


def test_relay_control_broadcast_time_and_read_address_over_a_connection() -> None:
    async def scenario() -> None:
        server = ScriptedServer([None, h(TRIP_ACCEPTED), framed("68 61 01 00 00 00 00 68 93 06 94 34 33 33 33 33")])
        async with server as port, Dlt645Connection("127.0.0.1", port, timeout_s=1.0, wakeup=0) as connection:
            await connection.broadcast_time(datetime(2017, 6, 5, 10, 22, 51, tzinfo=SHANGHAI))
            until = datetime(2018, 5, 12, 15, 41, 24, tzinfo=SHANGHAI)
            await connection.relay_control(
                "111111111111", RelayCommand.TRIP, "000000", "00000000", until, password_level=0
            )
            assert await connection.read_address() == Address(METER)
            assert (connection.opened, server.requests) == (1, 3)

    run(scenario)
