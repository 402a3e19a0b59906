"""Pure validation rules of `headend.ingest.validation`: register flags, the 15-minute grid, the time window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headend.ingest.validation import QualityFlag, TimeWindow, future_reason, grid_flags, register_flags
from protocols.readings import MeterReading

CST = timezone(timedelta(hours=8))
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=CST)
TOLERANCE = timedelta(seconds=300)
NO_FLAGS = QualityFlag(0)
REGISTER_MAX = 999_999_990  # the schema's default register_max_wh


def _reading(ts: datetime) -> MeterReading:
    return MeterReading("m-1", ts, 1_000)


# --------------------------------------------------------------------------- register_flags


def test_first_reading_of_a_meter_is_not_flagged() -> None:
    assert register_flags(None, 0, REGISTER_MAX) == NO_FLAGS
    assert register_flags(None, REGISTER_MAX, REGISTER_MAX) == NO_FLAGS


def test_equal_and_increasing_registers_are_not_flagged() -> None:
    assert register_flags(5_000, 5_000, REGISTER_MAX) == NO_FLAGS
    assert register_flags(5_000, 5_001, REGISTER_MAX) == NO_FLAGS
    assert register_flags(0, REGISTER_MAX, REGISTER_MAX) == NO_FLAGS


def test_decrease_near_the_top_to_near_zero_is_a_rollover() -> None:
    assert register_flags(999_999_000, 400, REGISTER_MAX) is QualityFlag.ROLLOVER
    assert register_flags(REGISTER_MAX, 0, REGISTER_MAX) is QualityFlag.ROLLOVER


def test_decrease_elsewhere_is_a_register_decrease() -> None:
    # a meter reset or replaced: no plausible wrap
    assert register_flags(50_000, 10, REGISTER_MAX) is QualityFlag.REGISTER_DECREASE
    assert register_flags(5_001, 5_000, REGISTER_MAX) is QualityFlag.REGISTER_DECREASE
    # high previous value, but the new one is not near zero
    assert register_flags(999_999_000, 500_000_000, REGISTER_MAX) is QualityFlag.REGISTER_DECREASE


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        # max 1000: the rollover window is previous >= 900 and current <= 100, both inclusive
        (900, 100, QualityFlag.ROLLOVER),
        (899, 100, QualityFlag.REGISTER_DECREASE),
        (900, 101, QualityFlag.REGISTER_DECREASE),
        (899, 101, QualityFlag.REGISTER_DECREASE),
        (1000, 0, QualityFlag.ROLLOVER),
        (950, 50, QualityFlag.ROLLOVER),
    ],
)
def test_rollover_fraction_boundaries_small_register(previous: int, current: int, expected: QualityFlag) -> None:
    assert register_flags(previous, current, 1000) == expected


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        # max 999_999_990: 90 % is exactly 899_999_991, 10 % exactly 99_999_999
        (899_999_991, 99_999_999, QualityFlag.ROLLOVER),
        (899_999_990, 99_999_999, QualityFlag.REGISTER_DECREASE),
        (899_999_991, 100_000_000, QualityFlag.REGISTER_DECREASE),
    ],
)
def test_rollover_fraction_boundaries_default_register(previous: int, current: int, expected: QualityFlag) -> None:
    assert register_flags(previous, current, REGISTER_MAX) == expected


def test_register_max_must_be_positive() -> None:
    with pytest.raises(AssertionError):
        register_flags(10, 5, 0)


_register_max = st.integers(min_value=1, max_value=10**12)


@given(_register_max, st.data())
def test_increases_are_never_flagged(register_max: int, data: st.DataObject) -> None:
    previous = data.draw(st.integers(min_value=0, max_value=register_max))
    current = data.draw(st.integers(min_value=previous, max_value=register_max))
    assert register_flags(previous, current, register_max) == NO_FLAGS


@given(_register_max, st.data())
def test_every_decrease_gets_exactly_the_flag_of_the_integer_rule(register_max: int, data: st.DataObject) -> None:
    previous = data.draw(st.integers(min_value=1, max_value=register_max))
    current = data.draw(st.integers(min_value=0, max_value=previous - 1))
    # reference model in exact integer arithmetic: previous >= 90 % of max and current <= 10 % of max
    wraps = 10 * previous >= 9 * register_max and 10 * current <= register_max
    expected = QualityFlag.ROLLOVER if wraps else QualityFlag.REGISTER_DECREASE
    assert register_flags(previous, current, register_max) is expected


# --------------------------------------------------------------------------- grid_flags


@pytest.mark.parametrize(
    "ts",
    [
        datetime(2026, 11, 20, 0, 0, tzinfo=CST),
        datetime(2026, 11, 20, 0, 15, tzinfo=CST),
        datetime(2026, 11, 20, 12, 30, tzinfo=CST),
        datetime(2026, 11, 20, 23, 45, tzinfo=CST),
        datetime(2026, 11, 20, 16, 0, tzinfo=UTC),
        datetime(2026, 11, 20, 6, 45, tzinfo=timezone(timedelta(hours=5, minutes=45))),
    ],
)
def test_on_grid_times_are_not_flagged(ts: datetime) -> None:
    assert grid_flags(ts) == NO_FLAGS


@pytest.mark.parametrize(
    "ts",
    [
        datetime(2026, 11, 20, 0, 15, 1, tzinfo=CST),  # off by a second
        datetime(2026, 11, 20, 0, 14, 59, tzinfo=CST),
        datetime(2026, 11, 20, 0, 16, tzinfo=CST),  # off by a minute
        datetime(2026, 11, 20, 0, 14, tzinfo=CST),
        datetime(2026, 11, 20, 0, 15, 0, 1, tzinfo=CST),  # off by a microsecond
        datetime(2026, 11, 20, 0, 14, 59, 999_999, tzinfo=CST),
        datetime(2026, 11, 20, 23, 59, tzinfo=CST),
    ],
)
def test_off_grid_times_are_flagged(ts: datetime) -> None:
    assert grid_flags(ts) is QualityFlag.OFF_GRID


_fixed_zones = st.sampled_from(
    [UTC, CST, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-3, minutes=-30))]
)


@given(
    st.integers(min_value=0, max_value=100 * 366 * 96),
    st.sampled_from([timedelta(0), timedelta(microseconds=1), timedelta(seconds=1), timedelta(minutes=7)]),
    st.sampled_from([1, -1]),
    _fixed_zones,
)
def test_grid_flag_matches_the_instant_modulo_15_minutes(
    slot: int, jitter: timedelta, sign: int, zone: timezone
) -> None:
    ts = (datetime(2000, 1, 1, tzinfo=UTC) + slot * timedelta(minutes=15) + sign * jitter).astimezone(zone)
    expected = NO_FLAGS if jitter == timedelta(0) else QualityFlag.OFF_GRID
    assert grid_flags(ts) == expected


def test_grid_is_judged_on_the_instant_not_on_the_offset_wall_clock() -> None:
    odd = timezone(timedelta(hours=8, seconds=30))
    # 12:00:00+08:00:30 is 03:59:30Z: not on any 15-minute boundary
    assert grid_flags(datetime(2026, 11, 20, 12, 0, tzinfo=odd)) is QualityFlag.OFF_GRID
    # 12:00:30+08:00:30 is 04:00:00Z: exactly on the grid
    assert grid_flags(datetime(2026, 11, 20, 12, 0, 30, tzinfo=odd)) == NO_FLAGS


# --------------------------------------------------------------------------- future_reason


def test_readings_in_the_past_or_now_are_accepted() -> None:
    assert future_reason(_reading(NOW - timedelta(days=3)), NOW, TOLERANCE) is None
    assert future_reason(_reading(NOW), NOW, TOLERANCE) is None


def test_reading_within_tolerance_is_accepted() -> None:
    assert future_reason(_reading(NOW + timedelta(seconds=299)), NOW, TOLERANCE) is None


def test_exact_tolerance_boundary_is_accepted() -> None:
    assert future_reason(_reading(NOW + TOLERANCE), NOW, TOLERANCE) is None
    # the same instant written in another zone
    assert future_reason(_reading((NOW + TOLERANCE).astimezone(UTC)), NOW, TOLERANCE) is None


def test_just_beyond_tolerance_is_refused_with_a_reason() -> None:
    ts = NOW + TOLERANCE + timedelta(microseconds=1)
    assert future_reason(_reading(ts), NOW, TOLERANCE) == (
        "ts 2026-11-20T12:05:00.000001+08:00 is more than 300 s in the future"
    )
    assert future_reason(_reading(NOW + timedelta(hours=2)), NOW, TOLERANCE) == (
        "ts 2026-11-20T14:00:00+08:00 is more than 300 s in the future"
    )


def test_zero_tolerance_refuses_anything_after_now() -> None:
    assert future_reason(_reading(NOW), NOW, timedelta(0)) is None
    assert future_reason(_reading(NOW + timedelta(microseconds=1)), NOW, timedelta(0)) is not None


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(AssertionError):
        future_reason(_reading(NOW), NOW.replace(tzinfo=None), TOLERANCE)


@given(st.integers(min_value=-(10**12), max_value=10**12), st.integers(min_value=0, max_value=10**9))
def test_future_reason_iff_beyond_tolerance(offset_us: int, tolerance_us: int) -> None:
    tolerance = timedelta(microseconds=tolerance_us)
    reason = future_reason(_reading(NOW + timedelta(microseconds=offset_us)), NOW, tolerance)
    if offset_us > tolerance_us:
        assert reason is not None
        assert reason.endswith(f"is more than {tolerance_us // 1_000_000} s in the future")
    else:
        assert reason is None


# --------------------------------------------------------------------------- TimeWindow

MAX_AGE = timedelta(days=92)
WINDOW = TimeWindow.around(NOW, MAX_AGE, TOLERANCE)


def test_the_window_runs_from_the_max_age_before_now_to_the_tolerance_after_it() -> None:
    assert (WINDOW.oldest, WINDOW.latest) == (NOW - MAX_AGE, NOW + TOLERANCE)
    for ts in (NOW - MAX_AGE, NOW - timedelta(days=30), NOW, NOW + TOLERANCE, (NOW - MAX_AGE).astimezone(UTC)):
        assert WINDOW.refusal(ts) is None


def test_a_reading_older_than_the_max_age_is_too_old() -> None:
    assert WINDOW.refusal(NOW - MAX_AGE - timedelta(microseconds=1)) == (
        "ts 2026-08-20T11:59:59.999999+08:00 is more than 92 days old"
    )


def test_a_reading_beyond_the_tolerance_is_in_the_future_as_before() -> None:
    ts = NOW + TOLERANCE + timedelta(microseconds=1)
    assert WINDOW.refusal(ts) == future_reason(_reading(ts), NOW, TOLERANCE)
    assert WINDOW.refusal(ts) == "ts 2026-11-20T12:05:00.000001+08:00 is more than 300 s in the future"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0001-01-01T00:00:00+14:00", "ts 0001-01-01T00:00:00+14:00 is more than 92 days old"),
        ("0001-01-01T00:00:00+23:59", "ts 0001-01-01T00:00:00+23:59 is more than 92 days old"),
        ("9999-12-31T23:59:59.999999-23:59", "ts 9999-12-31T23:59:59.999999-23:59 is more than 300 s in the future"),
    ],
)
def test_the_edges_of_the_representable_range_are_refused_without_overflow(text: str, reason: str) -> None:
    ts = datetime.fromisoformat(text)
    with pytest.raises(OverflowError):
        ts.astimezone(UTC)  # what the writer would have done with it next
    assert WINDOW.refusal(ts) == reason


offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))


@given(st.datetimes(timezones=offsets), st.integers(min_value=1, max_value=3660))
def test_a_time_in_the_window_converts_to_utc_and_one_outside_is_refused(ts: datetime, days: int) -> None:
    window = TimeWindow.around(NOW, timedelta(days=days), TOLERANCE)
    reason = window.refusal(ts)  # never raises, whatever the time

    if reason is None:
        assert NOW - timedelta(days=days) <= ts.astimezone(UTC) <= NOW + TOLERANCE
    else:
        assert reason.endswith((f"is more than {days} days old", "is more than 300 s in the future"))
