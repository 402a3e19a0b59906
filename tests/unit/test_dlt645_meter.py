"""The simulated DL/T 645-2007 meter (`simulators.dlt645_meter`) and the gateway's framing, without sockets."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.dlt645 import identifiers as di
from protocols.dlt645.errors import ErrorFlags, Function
from protocols.dlt645.frame import Address
from protocols.dlt645.messages import (
    BroadcastTime,
    ErrorResponse,
    ReadAddress,
    ReadAddressResponse,
    ReadData,
    ReadDataResponse,
    ReadFollowUp,
    ReadFollowUpResponse,
    RelayCommand,
    RelayControl,
    RelayControlResponse,
)
from protocols.readings import RelayState
from simulators.dlt645_gateway import take_frame, transmission_s
from simulators.dlt645_meter import FROZEN_DAYS, Dlt645Fault, Dlt645Meter, shown_wh

SHANGHAI = timezone(timedelta(hours=8))
CREATED = datetime(2026, 11, 23, 9, 7, 30, tzinfo=SHANGHAI)
ADDRESS = "000000000042"


def meter(**options: int) -> Dlt645Meter:
    return Dlt645Meter(
        ADDRESS, "DL000000000042", seed=1, created=CREATED, password="123456", password_level=2, **options
    )


def wall(moment: datetime) -> datetime:
    return moment.astimezone(SHANGHAI).replace(tzinfo=None)


def command(kind: RelayCommand, *, valid_until: datetime = CREATED + timedelta(hours=1)) -> RelayControl:
    return RelayControl(Address(ADDRESS), kind, wall(valid_until), 2, "123456", "00000001")


# --------------------------------------------------------------------------- registers and freezes


def test_a_new_meter_holds_62_daily_freezes_ending_today() -> None:
    freezes = meter().freezes(CREATED)
    assert len(freezes) == FROZEN_DAYS
    assert freezes[0].at == datetime(2026, 11, 23)  # noqa: DTZ001 - the meter's wall clock
    assert freezes[-1].at == datetime(2026, 9, 23)  # noqa: DTZ001
    totals = [freeze.registers.forward_total_wh for freeze in freezes]
    assert totals == sorted(totals, reverse=True)
    assert len(set(totals)) == FROZEN_DAYS  # something was used every day


def test_the_register_shows_hundredths_of_a_kwh_and_rolls_over_after_999999_99() -> None:
    assert shown_wh(12_345) == 12_340
    assert shown_wh(999_999_999) == 999_999_990
    assert shown_wh(1_000_000_015) == 10


def test_a_meter_freezes_at_its_own_midnight() -> None:
    right, behind = meter(), meter()
    behind.set_clock_error(CREATED, -600.0, 0.0)
    midnight = datetime(2026, 11, 24, 0, 0, tzinfo=SHANGHAI)
    after = midnight + timedelta(minutes=30)
    at_midnight = right.registers(midnight)
    at_quarter_past = right.registers(midnight + timedelta(minutes=15))
    assert right.freezes(after)[0].registers == at_midnight
    # ten minutes behind, the meter's midnight comes at 00:10: the first 15-minute mark after it is 00:15
    # (the same energy; its rates differ, switched by its own clock)
    frozen = behind.freezes(after)[0].registers
    assert frozen.forward_total_wh == at_quarter_past.forward_total_wh > at_midnight.forward_total_wh
    assert behind.freezes(after)[0].at == right.freezes(after)[0].at


@settings(max_examples=25, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 36 * 3600),
            st.sampled_from([None, RelayCommand.TRIP, RelayCommand.CLOSE, RelayCommand.ALLOW_CLOSE, "button"]),
            st.one_of(st.none(), st.integers(-7200, 7200)),
        ),
        max_size=12,
    )
)
def test_registers_never_go_back(steps: list[tuple[int, RelayCommand | str | None, int | None]]) -> None:
    subject = meter()
    now = CREATED
    last = subject.registers(now)
    for seconds, action, clock_error in steps:
        now += timedelta(seconds=seconds)
        if isinstance(action, RelayCommand):
            subject.handle(command(action, valid_until=now + timedelta(hours=1)), now)
        elif action == "button":
            subject.press_button(now)
        if clock_error is not None:
            subject.set_clock_error(now, float(clock_error), 0.0)
        registers = subject.registers(now)
        assert all(a >= b for a, b in zip(registers.forward_wh, last.forward_wh, strict=True))
        assert all(a >= b for a, b in zip(registers.reverse_wh, last.reverse_wh, strict=True))
        last = registers


# --------------------------------------------------------------------------- answers


def test_reads_follow_ups_and_their_refusals() -> None:
    subject = meter(max_answer_bytes=12)
    request = ReadData(Address(ADDRESS), di.FORWARD_ACTIVE_BLOCK)
    first = subject.handle(request, CREATED)
    assert isinstance(first, ReadDataResponse)
    assert (len(first.data), first.follow_up) == (12, True)
    last = subject.handle(ReadFollowUp(Address(ADDRESS), di.FORWARD_ACTIVE_BLOCK, 1), CREATED)
    assert isinstance(last, ReadFollowUpResponse)
    assert (len(last.data), last.seq, last.follow_up) == (8, 1, False)
    assert di.decode_value(di.FORWARD_ACTIVE_BLOCK, first.data + last.data) == subject.value(
        di.FORWARD_ACTIVE_BLOCK, CREATED
    )
    no_data = ErrorFlags.NO_DATA_REQUESTED
    beyond = subject.handle(ReadFollowUp(Address(ADDRESS), di.FORWARD_ACTIVE_BLOCK, 2), CREATED)
    assert beyond == ErrorResponse(Address(ADDRESS), Function.READ_FOLLOW_UP, no_data)
    other = subject.handle(ReadFollowUp(Address(ADDRESS), di.REVERSE_ACTIVE_BLOCK, 1), CREATED)
    assert other == ErrorResponse(Address(ADDRESS), Function.READ_FOLLOW_UP, no_data)
    rate_5 = subject.handle(ReadData(Address(ADDRESS), di.forward_active_rate(5)), CREATED)
    assert rate_5 == ErrorResponse(Address(ADDRESS), Function.READ_DATA, ErrorFlags.TARIFFS_EXCEEDED)
    phase_b = subject.handle(ReadData(Address(ADDRESS), di.phase_voltage(2)), CREATED)
    assert phase_b == ErrorResponse(Address(ADDRESS), Function.READ_DATA, no_data)
    assert subject.handle(ReadAddress(), CREATED) == ReadAddressResponse(Address(ADDRESS))


def test_broadcast_time_sets_the_clock_and_is_not_answered() -> None:
    subject = meter()
    later = CREATED + timedelta(hours=1)
    assert subject.handle(BroadcastTime(wall(CREATED)), later) is None
    assert subject.wall_clock(later) == wall(CREATED)
    assert subject.wall_clock(later + timedelta(minutes=1)) == wall(CREATED + timedelta(minutes=1))


def test_relay_commands_and_the_button() -> None:
    subject = meter()
    accepted = RelayControlResponse(Address(ADDRESS))
    assert subject.handle(command(RelayCommand.TRIP), CREATED) == accepted
    assert (subject.relay, subject.status_word_3.relay_command_open) == (RelayState.OPEN, True)
    assert subject.press_button(CREATED) is RelayState.OPEN  # not allowed to close: nothing moves
    assert subject.handle(command(RelayCommand.ALLOW_CLOSE), CREATED) == accepted
    assert (subject.relay, subject.armed, subject.status_word_3.relay_command_open) == (RelayState.OPEN, True, False)
    assert subject.press_button(CREATED) is RelayState.CLOSED
    assert not subject.armed
    # allow-close to a closed relay arms nothing: a later trip is not undone by the button
    assert subject.handle(command(RelayCommand.ALLOW_CLOSE), CREATED) == accepted
    assert subject.handle(command(RelayCommand.TRIP), CREATED) == accepted
    assert subject.press_button(CREATED) is RelayState.OPEN


def test_a_stuck_relay_accepts_commands_and_moves_for_nothing() -> None:
    subject = meter()
    subject.fault = Dlt645Fault.STUCK_RELAY
    assert subject.handle(command(RelayCommand.TRIP), CREATED) == RelayControlResponse(Address(ADDRESS))
    assert subject.relay is RelayState.CLOSED
    assert subject.status_word_3.bits == subject.status_word_3.RELAY_COMMAND_OPEN


@pytest.mark.parametrize(
    ("fault", "answer"),
    [
        (Dlt645Fault.NO_ANSWER, None),
        (Dlt645Fault.ABNORMAL, ErrorResponse(Address(ADDRESS), Function.READ_DATA, ErrorFlags.OTHER)),
    ],
)
def test_faults_in_the_meters_answers(fault: Dlt645Fault, answer: ErrorResponse | None) -> None:
    subject = meter()
    subject.fault = fault
    assert subject.handle(ReadData(Address(ADDRESS), di.FORWARD_ACTIVE_TOTAL), CREATED) == answer


# --------------------------------------------------------------------------- the gateway's framing


def test_take_frame_drops_noise_and_waits_for_the_rest() -> None:
    request = bytes.fromhex("FE FE FE FE 68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16")
    buffer = bytearray(bytes.fromhex("00 68 13 FF 68 00 01 02 03 04 05 06") + request[:9])
    assert take_frame(buffer) is None
    assert bytes(buffer) == request[:9]  # the noise is gone, the wake-up bytes kept with their frame
    buffer += request[9:] + request[4:10]
    assert take_frame(buffer) == request
    assert take_frame(buffer) is None
    assert bytes(buffer) == request[4:10]


def test_transmission_time_is_eleven_bits_a_byte() -> None:
    assert transmission_s(24, 2400) == pytest.approx(0.11)
