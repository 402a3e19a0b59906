"""`headend.poll.schedule`: load points from local midnight, and the stamp a polled reading gets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headend.poll.schedule import load_point_at_or_before, next_load_point, reading_stamp
from headend.poll.targets import Endpoint, PolledMeter, by_bus, parse_endpoint

SHANGHAI = ZoneInfo("Asia/Shanghai")
QUARTER = timedelta(minutes=15)


def local(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


def test_load_points_are_quarter_hours_of_the_local_day() -> None:
    assert load_point_at_or_before(local("2026-12-06T10:07:59"), QUARTER, SHANGHAI) == local("2026-12-06T10:00")
    assert load_point_at_or_before(local("2026-12-06T10:15:00"), QUARTER, SHANGHAI) == local("2026-12-06T10:15")
    assert next_load_point(local("2026-12-06T10:15:00"), QUARTER, SHANGHAI) == local("2026-12-06T10:30")
    assert next_load_point(local("2026-12-06T23:59:00"), QUARTER, SHANGHAI) == local("2026-12-07T00:00")


def test_an_interval_that_does_not_divide_the_day_starts_again_at_midnight() -> None:
    seven_hours = timedelta(hours=7)
    assert next_load_point(local("2026-12-06T21:00"), seven_hours, SHANGHAI) == local("2026-12-07T00:00")
    assert load_point_at_or_before(local("2026-12-06T22:00"), seven_hours, SHANGHAI) == local("2026-12-06T21:00")


# hypothesis takes naive bounds; the times are made aware below
EARLIEST, LATEST = datetime(2000, 1, 1), datetime(2099, 1, 1)  # noqa: DTZ001


@given(st.datetimes(EARLIEST, LATEST).map(lambda naive: naive.replace(tzinfo=UTC)))
def test_a_load_point_is_at_or_before_now_and_the_next_one_after(now: datetime) -> None:
    point = load_point_at_or_before(now, QUARTER, SHANGHAI)
    upcoming = next_load_point(now, QUARTER, SHANGHAI)
    assert point <= now < upcoming == point + QUARTER
    assert point.astimezone(SHANGHAI).minute % 15 == 0
    assert point.astimezone(SHANGHAI).second == 0


@pytest.mark.parametrize(
    ("read_at", "stamp"),
    [
        ("2026-12-06T10:00:00", "2026-12-06T10:00:00"),
        ("2026-12-06T10:04:59.5", "2026-12-06T10:00:00"),
        ("2026-12-06T10:05:00", "2026-12-06T10:00:00"),
        ("2026-12-06T10:05:00.25", "2026-12-06T10:05:00"),
        ("2026-12-06T09:59:59", "2026-12-06T09:59:59"),  # before its load point (a clock step): as read
    ],
)
def test_a_reading_is_stamped_at_its_load_point_only_when_read_soon_after_it(read_at: str, stamp: str) -> None:
    snap = timedelta(minutes=5)
    assert reading_stamp(local(read_at), local("2026-12-06T10:00"), snap) == local(stamp)


def test_without_a_load_point_a_reading_is_stamped_when_read_to_the_second() -> None:
    assert reading_stamp(local("2026-12-06T10:00:07.9"), None, timedelta(minutes=5)) == local("2026-12-06T10:00:07")


def test_endpoints_and_buses() -> None:
    assert parse_endpoint("10.0.0.7:502", None) == Endpoint("10.0.0.7", 502)
    assert parse_endpoint("[fd00::1]:8899", "rs485-1") == Endpoint("fd00::1", 8899, "rs485-1")
    assert str(Endpoint("fd00::1", 8899, "rs485-1")) == "[fd00::1]:8899 bus rs485-1"
    meters = [
        PolledMeter("a", "modbus", Endpoint("h", 502), "eastron_sdm120", unit_id=1),
        PolledMeter("b", "modbus", Endpoint("h", 502, "b2"), "eastron_sdm120", unit_id=1),
        PolledMeter("c", "modbus", Endpoint("h", 502), "eastron_sdm120", unit_id=2),
    ]
    assert {str(e): [m.meter_id for m in ms] for e, ms in by_bus(meters).items()} == {
        "h:502": ["a", "c"],
        "h:502 bus b2": ["b"],
    }
    assert meters[0].source == "modbus:h:502 unit 1"
