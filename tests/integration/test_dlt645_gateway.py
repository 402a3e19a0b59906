"""The simulated DL/T 645-2007 gateway on 127.0.0.1, read by our client and by frames written by hand.

Every identifier is read and compared with the simulator's truth (its registers, freezes, measurements,
clock and relay), derived here on its own; relay commands are confirmed through status word 3; each fault
is seen as the client sees it; the bus carries one exchange at a time with its baud-rate timing. Frames
published with the standard's examples (and answers parsed by hand) check the gateway against
implementations other than ours.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Callable, Coroutine
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from headend.registry.meter_import import read_registry_file
from protocols.dlt645 import identifiers as di
from protocols.dlt645.client import Dlt645Connection, NoAnswer
from protocols.dlt645.errors import ChecksumError, ErrorFlags, MeterErrorResponse
from protocols.dlt645.frame import WILDCARD, Address
from protocols.dlt645.identifiers import (
    ActivePower,
    Current,
    DataIdentifier,
    Energy,
    EnergyBlock,
    FrozenTime,
    MeterDate,
    MeterTime,
    StatusWord3,
    Value,
    Voltage,
)
from protocols.dlt645.messages import RelayCommand
from protocols.readings import RelayState
from simulators.clock import INTERVAL
from simulators.dlt645_gateway import Dlt645Gateway, MeterSnapshot, transmission_s
from simulators.dlt645_meter import RATE_OF_HOUR, Dlt645Fault
from simulators.load_shapes import interval_energy_wh, meter_scale
from simulators.polled_registry import POLLED_REGISTRY_COLUMNS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SHANGHAI = timezone(timedelta(hours=8))
# a Monday afternoon: PV systems export, households draw little
START = datetime(2026, 11, 23, 14, 37, 12, tzinfo=SHANGHAI)
PASSWORD = "123456"
OPERATOR = "00000001"
FAST = 115_200  # baud for tests that are not about the bus's timing


class Clock:
    """An injectable clock the test moves by hand."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def gateway_of(meters: int, clock: Clock, *, baud: int = FAST, latency_s: float = 0.0, **options: Any) -> Dlt645Gateway:
    return Dlt645Gateway("127.0.0.1", 0, meters, clock=clock, baud=baud, latency_s=latency_s, **options)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def connect(gateway: Dlt645Gateway, timeout_s: float = 2.0) -> Dlt645Connection:
    return Dlt645Connection("127.0.0.1", gateway.port, timeout_s=timeout_s)


async def read(connection: Dlt645Connection, address: str, identifier: DataIdentifier) -> Value | ErrorFlags:
    """The value a meter answers, or the error bits of its abnormal answer."""
    try:
        return await connection.read_value(address, identifier)
    except MeterErrorResponse as refused:
        return refused.errors


async def status(connection: Dlt645Connection, address: str) -> StatusWord3:
    value = await connection.read_value(address, di.STATUS_WORD_3)
    assert isinstance(value, StatusWord3)
    return value


# --------------------------------------------------------------------------- the truth, derived here


def shown(wh: int) -> int:
    """A register as XXXXXX.XX kWh shows it."""
    return wh // 10 * 10


def expected(truth: MeterSnapshot, identifier: DataIdentifier) -> Value | ErrorFlags:
    """What a single-phase meter with four rates holding `truth` answers for `identifier`."""
    di3, di2, di1, di0 = identifier.parts
    if di3 == 0x00 and di2 in (0x01, 0x02) and di0 == 0x00:
        rates = truth.registers.forward_wh if di2 == 0x01 else truth.registers.reverse_wh
        if di1 == 0x00:
            return Energy(shown(sum(rates)))
        if di1 == 0xFF:
            return EnergyBlock(shown(sum(rates)), tuple(shown(wh) for wh in rates))
        return Energy(shown(rates[di1 - 1])) if di1 <= 4 else ErrorFlags.TARIFFS_EXCEEDED
    if di3 == 0x02:
        measured = truth.instant
        match di2, di1:
            case 0x01, 1:
                return Voltage(measured.voltage_mv)
            case 0x02, 1:
                return Current(measured.current_ma)
            case 0x03, 0 | 1:
                return ActivePower(measured.power_mw)
        return ErrorFlags.NO_DATA_REQUESTED  # phases B and C: a single-phase meter has none
    if di3 == 0x05:
        if di0 > len(truth.freezes):
            return ErrorFlags.NO_DATA_REQUESTED
        freeze = truth.freezes[di0 - 1]
        if di1 == 0x00:
            return FrozenTime(freeze.at)
        rates = freeze.registers.forward_wh if di1 == 0x01 else freeze.registers.reverse_wh
        return EnergyBlock(shown(sum(rates)), tuple(shown(wh) for wh in rates))
    if identifier == di.METER_DATE:
        return MeterDate(truth.wall_clock.date(), truth.wall_clock.isoweekday() % 7)
    if identifier == di.METER_TIME:
        return MeterTime(truth.wall_clock.time())
    assert identifier == di.STATUS_WORD_3
    return truth.status_word_3


# --------------------------------------------------------------------------- reads


def test_every_identifier_reads_as_the_meter_holds_it() -> None:
    clock = Clock()
    with gateway_of(4, clock) as gateway:
        with_pv = "000000000004"
        assert gateway.snapshot(with_pv).pv_peak_w > 0  # seed 0: the fourth meter has a PV system

        async def scenario() -> None:
            async with connect(gateway) as connection:
                for address in ("000000000001", with_pv):
                    truth = gateway.snapshot(address)
                    for identifier in di.known_identifiers():
                        answer = await read(connection, address, identifier)
                        assert answer == expected(truth, identifier), (address, identifier)

        run(scenario)
        truth = gateway.snapshot(with_pv)
        # the PV meter exports now: negative power and current, reverse energy
        assert truth.instant.power_mw < 0
        assert truth.instant.current_ma < 0
        assert truth.registers.reverse_total_wh > 0
        assert len(truth.freezes) == 62


def test_energy_follows_the_load_shape_on_the_rate_of_the_hour() -> None:
    clock = Clock()
    with gateway_of(1, clock, seed=7) as gateway:
        address = gateway.addresses[0]
        before = gateway.snapshot(address)
        assert before.pv_peak_w == 0
        clock.advance(timedelta(hours=6))
        after = gateway.snapshot(address)
        scale = meter_scale(before.meter_id, before.kind, 7)
        grown = [0, 0, 0, 0]
        end = START.replace(minute=45, second=0)  # the first 15-minute mark after START
        while end <= clock.now:
            rate = RATE_OF_HOUR[(end - INTERVAL / 2).hour]
            grown[rate - 1] += interval_energy_wh(before.meter_id, before.kind, end, 7, scale=scale)
            end += INTERVAL
        assert [a - b for a, b in zip(after.registers.forward_wh, before.registers.forward_wh, strict=True)] == grown
        assert gateway.energy_wh(address) == shown(before.registers.forward_total_wh + sum(grown))

        async def scenario() -> None:
            async with connect(gateway) as connection:
                assert await connection.read_value(address, di.FORWARD_ACTIVE_TOTAL) == Energy(
                    gateway.energy_wh(address)
                )

        run(scenario)


def test_a_follow_up_read_joins_frames_of_a_meter_that_splits_its_answers() -> None:
    clock = Clock()
    with gateway_of(1, clock, max_answer_bytes=8) as gateway:
        address = gateway.addresses[0]

        async def scenario() -> None:
            async with connect(gateway) as connection:
                answer = await connection.read_data(address, di.FORWARD_ACTIVE_BLOCK)
                assert answer.frames == 3  # 20 bytes: 8 in the first frame, 8 and 4 in two follow-up frames
                assert answer.value() == expected(gateway.snapshot(address), di.FORWARD_ACTIVE_BLOCK)
                frozen = await connection.read_data(address, di.daily_frozen_forward_active(2))
                assert frozen.frames == 3
                assert frozen.value() == expected(gateway.snapshot(address), di.daily_frozen_forward_active(2))

        run(scenario)


def test_daily_freezes_of_the_last_62_days_for_rereads() -> None:
    clock = Clock(datetime(2026, 11, 23, 10, 0, tzinfo=SHANGHAI))
    with gateway_of(2, clock) as gateway:
        address = gateway.addresses[1]

        async def frozen(connection: Dlt645Connection, n: int) -> tuple[datetime, EnergyBlock]:
            at = await connection.read_value(address, di.daily_frozen_time(n))
            block = await connection.read_value(address, di.daily_frozen_forward_active(n))
            assert isinstance(at, FrozenTime)
            assert isinstance(block, EnergyBlock)
            return at.at, block

        async def scenario() -> None:
            async with connect(gateway) as connection:
                days = [await frozen(connection, n) for n in range(1, 63)]
                # one freeze a local midnight, the latest today's, 62 of them, registers never going back
                assert [at.date() for at, _ in days] == [date(2026, 11, 23) - timedelta(days=n) for n in range(62)]
                assert all(at.time() == datetime.min.time() for at, _ in days)
                totals = [block.total_wh for _, block in days]
                assert totals == sorted(totals, reverse=True)
                assert all(block.total_wh >= sum(block.rates_wh) for _, block in days)
                # the 63rd is gone
                refused = await read(connection, address, DataIdentifier.parse("0506003F"))
                assert refused == ErrorFlags.NO_DATA_REQUESTED

                # at midnight the meter freezes what it shows then; yesterday's moves one place back
                clock.now = datetime(2026, 11, 24, 0, 0, tzinfo=SHANGHAI)
                truth = gateway.snapshot(address).registers
                at, block = await frozen(connection, 1)
                assert at == datetime(2026, 11, 24, 0, 0)  # noqa: DTZ001 - the meter's wall clock
                assert block == EnergyBlock(shown(truth.forward_total_wh), tuple(shown(wh) for wh in truth.forward_wh))
                assert await connection.read_value(address, di.FORWARD_ACTIVE_TOTAL) == Energy(block.total_wh)
                assert await frozen(connection, 2) == days[0]
                assert await frozen(connection, 62) == days[60]
                clock.advance(timedelta(minutes=20))
                assert await frozen(connection, 1) == (at, block)

        run(scenario)


def test_read_address_and_wildcard_reads_need_exactly_one_meter_on_the_bus() -> None:
    clock = Clock()
    with gateway_of(1, clock, first_address=12345678) as alone, gateway_of(2, clock) as two:

        async def scenario() -> None:
            async with connect(alone) as connection:
                assert await connection.read_address() == Address("000012345678")
                answer = await connection.read_data(WILDCARD, di.PHASE_A_VOLTAGE)
                assert answer.address == Address("000012345678")
            async with connect(two, timeout_s=0.3) as connection:
                with pytest.raises(NoAnswer):
                    await connection.read_address()
                with pytest.raises(NoAnswer):
                    await connection.read_data(WILDCARD, di.PHASE_A_VOLTAGE)
                # shortened addressing reaching one of them is answered by it
                answer = await connection.read_data("AAAAAAAAAA02", di.PHASE_A_VOLTAGE)
                assert answer.address == Address("000000000002")
                with pytest.raises(NoAnswer):  # nobody has this address
                    await connection.read_data("000000000003", di.PHASE_A_VOLTAGE)

        run(scenario)


# --------------------------------------------------------------------------- relay control


def test_trip_then_allow_close_waits_for_the_button() -> None:
    clock = Clock()
    with gateway_of(1, clock) as gateway:
        address = gateway.addresses[0]
        until = START + timedelta(minutes=30)

        async def scenario() -> None:
            async with connect(gateway) as connection:
                await connection.relay_control(address, RelayCommand.TRIP, PASSWORD, OPERATOR, until)
                tripped = await status(connection, address)
                assert (tripped.relay, tripped.relay_command_open) == (RelayState.OPEN, True)
                assert gateway.relay(address) is RelayState.OPEN
                # an open relay meters nothing, and a button pressed without allow-close does nothing
                energy = gateway.energy_wh(address)
                clock.advance(timedelta(hours=2))
                assert gateway.energy_wh(address) == energy
                assert gateway.press_button(address) is RelayState.OPEN

                await connection.relay_control(
                    address, RelayCommand.ALLOW_CLOSE, PASSWORD, OPERATOR, until + timedelta(hours=2)
                )
                allowed = await status(connection, address)
                # reconnect allowed is not reconnected: the command says closed, the relay is still open
                assert (allowed.relay, allowed.relay_command_open) == (RelayState.OPEN, False)
                assert gateway.snapshot(address).armed
                assert gateway.press_button(address) is RelayState.CLOSED
                closed = await status(connection, address)
                assert (closed.relay, closed.relay_command_open) == (RelayState.CLOSED, False)
                clock.advance(timedelta(hours=2))
                assert gateway.energy_wh(address) > energy

        run(scenario)


def test_trip_then_direct_close() -> None:
    clock = Clock()
    with gateway_of(1, clock) as gateway:
        address = gateway.addresses[0]
        until = START + timedelta(minutes=5)

        async def scenario() -> None:
            async with connect(gateway) as connection:
                await connection.relay_control(address, RelayCommand.TRIP, PASSWORD, OPERATOR, until)
                assert (await status(connection, address)).relay is RelayState.OPEN
                await connection.relay_control(address, RelayCommand.CLOSE, PASSWORD, OPERATOR, until)
                closed = await status(connection, address)
                assert (closed.relay, closed.relay_command_open) == (RelayState.CLOSED, False)
                assert gateway.relay(address) is RelayState.CLOSED

        run(scenario)


def test_wrong_password_and_expired_commands_are_refused_and_change_nothing() -> None:
    clock = Clock()
    with gateway_of(1, clock, password="654321", password_level=4) as gateway:
        address = gateway.addresses[0]
        until = START + timedelta(minutes=5)

        async def refused(command: RelayCommand, password: str, level: int, valid_until: datetime) -> ErrorFlags:
            async with connect(gateway) as connection:
                with pytest.raises(MeterErrorResponse) as caught:
                    await connection.relay_control(
                        address, command, password, OPERATOR, valid_until, password_level=level
                    )
                return caught.value.errors

        async def scenario() -> None:
            password = ErrorFlags.PASSWORD_ERROR_OR_UNAUTHORISED
            assert await refused(RelayCommand.TRIP, "123456", 4, until) == password
            assert await refused(RelayCommand.TRIP, "654321", 2, until) == password
            # valid until a minute ago on the meter's clock: expired
            assert await refused(RelayCommand.TRIP, "654321", 4, START - timedelta(minutes=1)) == ErrorFlags.OTHER
            assert gateway.relay(address) is RelayState.CLOSED
            async with connect(gateway) as connection:
                await connection.relay_control(address, RelayCommand.TRIP, "654321", OPERATOR, until, password_level=4)
            assert gateway.relay(address) is RelayState.OPEN

        run(scenario)


def test_keep_supply_holds_off_a_trip_and_the_alarm_shows() -> None:
    clock = Clock()
    with gateway_of(1, clock) as gateway:
        address = gateway.addresses[0]
        until = START + timedelta(minutes=5)

        async def scenario() -> None:
            async with connect(gateway) as connection:
                await connection.relay_control(address, RelayCommand.KEEP_SUPPLY, PASSWORD, OPERATOR, until)
                await connection.relay_control(address, RelayCommand.ALARM, PASSWORD, OPERATOR, until)
                word = await status(connection, address)
                assert (word.keep_supply, word.pre_trip_alarm) == (True, True)
                with pytest.raises(MeterErrorResponse) as caught:
                    await connection.relay_control(address, RelayCommand.TRIP, PASSWORD, OPERATOR, until)
                assert caught.value.errors == ErrorFlags.OTHER
                assert gateway.relay(address) is RelayState.CLOSED
                await connection.relay_control(address, RelayCommand.KEEP_SUPPLY_RELEASED, PASSWORD, OPERATOR, until)
                await connection.relay_control(address, RelayCommand.ALARM_RELEASED, PASSWORD, OPERATOR, until)
                await connection.relay_control(address, RelayCommand.TRIP, PASSWORD, OPERATOR, until)
                word = await status(connection, address)
                assert (word.keep_supply, word.pre_trip_alarm, word.relay) == (False, False, RelayState.OPEN)

        run(scenario)


# --------------------------------------------------------------------------- faults


def test_each_fault_as_the_client_sees_it() -> None:
    clock = Clock()
    with gateway_of(6, clock) as gateway:
        silent, abnormal, corrupt, stuck, healthy = gateway.addresses[:5]
        gateway.set_fault(silent, Dlt645Fault.NO_ANSWER)
        gateway.set_fault(abnormal, "abnormal")
        gateway.set_fault(corrupt, Dlt645Fault.CORRUPT)
        gateway.set_fault(stuck, Dlt645Fault.STUCK_RELAY)
        until = START + timedelta(minutes=5)

        async def scenario() -> None:
            async with connect(gateway, timeout_s=0.3) as connection:
                with pytest.raises(NoAnswer):
                    await connection.read_data(silent, di.FORWARD_ACTIVE_TOTAL)
                with pytest.raises(NoAnswer):
                    await connection.relay_control(silent, RelayCommand.TRIP, PASSWORD, OPERATOR, until)
                with pytest.raises(MeterErrorResponse) as caught:
                    await connection.read_data(abnormal, di.FORWARD_ACTIVE_TOTAL)
                assert caught.value.errors == ErrorFlags.OTHER
                with pytest.raises(MeterErrorResponse):
                    await connection.relay_control(abnormal, RelayCommand.TRIP, PASSWORD, OPERATOR, until)
                with pytest.raises(ChecksumError):
                    await connection.read_data(corrupt, di.FORWARD_ACTIVE_TOTAL)
                # a stuck relay accepts the trip and does not move: status word 3 tells
                await connection.relay_control(stuck, RelayCommand.TRIP, PASSWORD, OPERATOR, until)
                word = await status(connection, stuck)
                assert (word.relay_command_open, word.relay) == (True, RelayState.CLOSED)
                assert gateway.relay(stuck) is RelayState.CLOSED
                # the others answer as ever, and a fault switched off is gone
                assert await read(connection, healthy, di.FORWARD_ACTIVE_TOTAL) == Energy(gateway.energy_wh(healthy))
                for address in (silent, abnormal, corrupt):
                    gateway.set_fault(address, Dlt645Fault.NONE)
                    assert await read(connection, address, di.FORWARD_ACTIVE_TOTAL) == Energy(
                        gateway.energy_wh(address)
                    )
                assert gateway.relay(abnormal) is RelayState.CLOSED  # its refused trip did nothing

        run(scenario)


def test_clock_drift_and_broadcast_time() -> None:
    clock = Clock()
    with gateway_of(3, clock) as gateway:
        drifting, silent, right = gateway.addresses

        async def meter_clock(connection: Dlt645Connection, address: str) -> datetime:
            day = await connection.read_value(address, di.METER_DATE)
            at = await connection.read_value(address, di.METER_TIME)
            assert isinstance(day, MeterDate)
            assert isinstance(at, MeterTime)
            assert day.weekday == day.day.isoweekday() % 7
            return datetime.combine(day.day, at.at)

        def local(moment: datetime) -> datetime:
            return moment.astimezone(SHANGHAI).replace(tzinfo=None)

        async def scenario() -> None:
            async with connect(gateway) as connection:
                assert await meter_clock(connection, right) == local(clock.now)
                gateway.set_fault(drifting, Dlt645Fault.CLOCK_DRIFT, clock_error_s=600, drift_s_per_day=86.4)
                gateway.set_fault(silent, Dlt645Fault.NO_ANSWER)
                assert await meter_clock(connection, drifting) == local(clock.now) + timedelta(seconds=600)
                clock.advance(timedelta(days=1))
                assert await meter_clock(connection, drifting) == local(clock.now) + timedelta(seconds=686)
                # broadcast time puts every listening meter right; no meter answers it
                clock.advance(timedelta(hours=1))
                await connection.broadcast_time(clock.now)
                assert await meter_clock(connection, drifting) == local(clock.now)
                assert await meter_clock(connection, right) == local(clock.now)
                gateway.set_fault(silent, Dlt645Fault.NONE)
                assert await meter_clock(connection, silent) == local(clock.now)  # it never drifted

        run(scenario)
        assert gateway.snapshot(drifting).wall_clock == local(clock.now)


def test_a_command_expired_on_true_time_is_valid_on_a_meter_clock_behind() -> None:
    clock = Clock()
    with gateway_of(1, clock) as gateway:
        address = gateway.addresses[0]
        gateway.set_fault(address, Dlt645Fault.CLOCK_DRIFT, clock_error_s=-600)

        async def scenario() -> None:
            async with connect(gateway) as connection:
                until = START - timedelta(minutes=5)  # past on true time, ahead of the meter's clock
                await connection.relay_control(address, RelayCommand.TRIP, PASSWORD, OPERATOR, until)

        run(scenario)
        assert gateway.relay(address) is RelayState.OPEN


# --------------------------------------------------------------------------- the bus


def test_the_bus_carries_one_exchange_at_a_time_at_its_baud_rate() -> None:
    clock = Clock()
    baud, latency_s = 2400, 0.03
    with gateway_of(4, clock, baud=baud, latency_s=latency_s) as gateway:
        first, second = gateway.addresses[:2]

        async def poll(address: str) -> None:
            async with connect(gateway) as connection:
                for _ in range(3):
                    await connection.read_data(address, di.FORWARD_ACTIVE_TOTAL)

        async def scenario() -> None:
            started = time.monotonic()
            await asyncio.gather(poll(first), poll(second))
            elapsed = time.monotonic() - started
            log = gateway.bus_log()
            assert len(log) == 6
            assert {entry.address for entry in log} == {first, second}
            # one at a time: each exchange ends before the next begins
            for earlier, later in itertools.pairwise(log):
                assert earlier.ended <= later.started
            # each takes its bytes' time on the wire: 20 bytes out (4 FE and 16), the meter's turnaround,
            # its answer (its wake-up bytes and 20)
            least = transmission_s(20, baud) + latency_s + transmission_s(20, baud)
            for entry in log:
                assert entry.ended - entry.started >= least - 0.002, entry
            assert elapsed >= sum(entry.ended - entry.started for entry in log)

        run(scenario)


def test_64_meters_on_one_gateway() -> None:
    clock = Clock()
    with gateway_of(64, clock, baud=9600, latency_s=0.005) as gateway:
        assert len(gateway.addresses) == 64

        async def scenario() -> None:
            async with connect(gateway) as connection:
                for address in gateway.addresses:
                    value = await connection.read_value(address, di.FORWARD_ACTIVE_TOTAL)
                    assert value == Energy(gateway.energy_wh(address)), address
                assert connection.opened == 1

        run(scenario)


def test_registry_rows_are_what_meters_import_reads(tmp_path: Path) -> None:
    clock = Clock()
    with gateway_of(64, clock, first_address=110_000_000_001, meter_id_prefix="GW1-") as gateway:
        path = tmp_path / "registry.csv"
        assert gateway.write_registry_csv(path) == 64
        parsed = read_registry_file(path)
        assert parsed.errors == []
        assert len({row.address for row in parsed.rows}) == 64
        row = parsed.rows[0]
        assert (row.meter_id, row.protocol, row.model, row.endpoint, row.address, row.bus, row.unit_id) == (
            "GW1-110000000001",
            "dlt645",
            "dlt645_2007",
            f"127.0.0.1:{gateway.port}",
            "110000000001",
            "rs485-1",
            None,
        )
        assert list(gateway.registry_rows()[0]) == list(POLLED_REGISTRY_COLUMNS)


# --------------------------------------------------------------------------- frames written by hand


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def framed(text: str) -> bytes:
    """`68 A0..A5 68 C L DATA` written by hand, with its checksum (the sum from the first 68) and 16 appended."""
    body = h(text)
    return body + bytes([sum(body) % 256, 0x16])


def exchange_raw(gateway: Dlt645Gateway, request: bytes, *, answers: int = 1, wait_s: float = 2.0) -> list[bytes]:
    """Send bytes over a plain socket; the answer frames that come back, each cut and checked by hand."""
    frames: list[bytes] = []
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=wait_s) as sock:
        sock.sendall(request)
        data = b""
        deadline = time.monotonic() + wait_s
        while len(frames) < answers and time.monotonic() < deadline:
            try:
                chunk = sock.recv(1024)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
            while True:
                data = data.lstrip(b"\xfe")
                if len(data) < 10 or len(data) < 12 + data[9]:
                    break
                frame, data = data[: 12 + data[9]], data[12 + data[9] :]
                assert (frame[0], frame[7], frame[-1]) == (0x68, 0x68, 0x16), frame.hex(" ")
                assert frame[-2] == sum(frame[:-2]) % 256, frame.hex(" ")
                frames.append(frame)
    return frames


def unshifted(frame: bytes) -> bytes:
    """The data field of a frame without its +33."""
    return bytes((byte - 0x33) % 256 for byte in frame[10:-2])


def test_published_read_and_read_address_frames_are_answered() -> None:
    clock = Clock()
    with gateway_of(1, clock, first_address=161) as gateway:
        # read of 00 01 00 00 from meter 000000000161, as the "DLT645-2007报文解析" document writes it
        (answer,) = exchange_raw(gateway, h("FE FE FE FE 68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16"))
        assert answer[:10] == h("68 61 01 00 00 00 00 68 91 08")
        data = unshifted(answer)
        assert data[:4] == h("00 00 01 00")  # the DI again, DI0 first
        # XXXXXX.XX kWh, BCD, least significant byte first
        hundredths = int(data[4:8][::-1].hex())
        assert hundredths * 10 == gateway.energy_wh("000000000161")
        # read address to AAAAAAAAAAAA (fdxxw/rs-dlt645): the one meter answers 93 with its address twice
        (answer,) = exchange_raw(gateway, h("fe fe fe fe 68 aa aa aa aa aa aa 68 13 00 df 16"))
        assert answer[:16] == h("68 61 01 00 00 00 00 68 93 06 94 34 33 33 33 33")
        # phase A voltage with the wildcard address (WKJay/DLT645): XXX.X V
        (answer,) = exchange_raw(gateway, h("68 AA AA AA AA AA AA 68 11 04 33 34 34 35 B1 16"))
        assert answer[:10] == h("68 61 01 00 00 00 00 68 91 06")
        tenths = int(unshifted(answer)[4:6][::-1].hex())
        assert tenths * 100 == gateway.snapshot("000000000161").instant.voltage_mv


def test_published_trip_and_broadcast_time_frames_are_obeyed() -> None:
    # the emcp trip is valid until 2018-05-12 15:41:24, with password 000000 of level 00
    clock = Clock(datetime(2018, 5, 12, 15, 0, tzinfo=SHANGHAI))
    with gateway_of(1, clock, first_address=111_111_111_111, password="000000", password_level=0) as gateway:
        trip = h("68 11 11 11 11 11 11 68 1C 10 33 33 33 33 33 33 33 33 4D 33 57 74 48 45 38 4B 55 16")
        assert exchange_raw(gateway, trip) == [h("68 11 11 11 11 11 11 68 9C 00 D2 16")]
        assert gateway.relay("111111111111") is RelayState.OPEN
        # broadcast time 2017-06-05 10:22:51 to 999999999999 (a concentrator firmware's example): no answer
        broadcast = h("68 99 99 99 99 99 99 68 08 06 84 55 43 38 39 4A 4B 16")
        assert exchange_raw(gateway, broadcast, wait_s=0.3) == []
        assert gateway.snapshot("111111111111").wall_clock == datetime(2017, 6, 5, 10, 22, 51)  # noqa: DTZ001
        # and the time sent to the meter's own address, same source: no answer either
        clock.advance(timedelta(seconds=30))
        assert exchange_raw(gateway, h("68 11 11 11 11 11 11 68 08 06 58 73 43 38 39 4A 0D 16"), wait_s=0.3) == []
        assert gateway.snapshot("111111111111").wall_clock == datetime(2017, 6, 5, 10, 40, 25)  # noqa: DTZ001


def test_noise_bad_checksums_and_several_requests_in_one_write() -> None:
    clock = Clock()
    with gateway_of(2, clock, first_address=161) as gateway:
        read_161 = h("FE FE FE FE 68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16")
        bad_checksum = h("68 61 01 00 00 00 00 68 11 04 33 33 34 33 15 16")
        read_162 = framed("68 62 01 00 00 00 00 68 11 04 33 33 34 33")
        noise = h("00 13 68 FF 16")
        answers = exchange_raw(gateway, noise + bad_checksum + read_161 + noise + read_162, answers=2)
        assert [answer[1:7] for answer in answers] == [h("61 01 00 00 00 00"), h("62 01 00 00 00 00")]


def test_a_request_for_data_the_meter_cannot_parse_gets_an_abnormal_answer() -> None:
    clock = Clock()
    with gateway_of(1, clock, first_address=161) as gateway:
        # a load-record read (DI, then a block count): not served by this meter
        (answer,) = exchange_raw(gateway, framed("68 61 01 00 00 00 00 68 11 05 33 33 34 33 34"))
        assert answer[8:10] == h("D1 01")
        assert unshifted(answer) == bytes([ErrorFlags.OTHER])


def test_a_port_taken_fails_start_in_the_callers_thread() -> None:
    with gateway_of(1, Clock()) as first:
        second = Dlt645Gateway("127.0.0.1", first.port, 1)
        with pytest.raises(OSError, match="address already in use"):
            second.start()
        second.stop()  # nothing to stop: harmless
