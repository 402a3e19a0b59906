"""The collection API's pure parts: missing load points as local ranges, the quarter-hour grid and its gaps, whether
an Accept header prefers CSV, the registry's transformer area."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request

from headend.api.collection import Format, wants_csv
from headend.registry.meter_import import AREA_MAX_CHARS, parse_registry, parse_row
from headend.reports.collection_lists import SLOT, gaps_of, load_points
from headend.reports.collection_summary import missing_ranges


def bits(read: set[int]) -> str:
    """A day's slots as the database writes bit(96): character i for the load point from i × 15 minutes."""
    return "".join("1" if i in read else "0" for i in range(96))


@pytest.mark.parametrize(
    ("read", "ranges"),
    [
        (set(range(96)), []),
        (set(), ["00:00-24:00"]),
        (set(range(48)), ["12:00-24:00"]),
        (set(range(96)) - set(range(40, 44)), ["10:00-11:00"]),
        ({1}, ["00:00-00:15", "00:30-24:00"]),
        (set(range(1, 95)), ["00:00-00:15", "23:45-24:00"]),
    ],
)
def test_missing_load_points_are_local_ranges(read: set[int], ranges: list[str]) -> None:
    assert missing_ranges(bits(read)) == ranges


def test_no_slots_means_the_whole_day() -> None:
    assert missing_ranges(None) == ["00:00-24:00"]


@given(st.sets(st.integers(0, 95)))
def test_the_ranges_cover_exactly_the_missing_load_points(read: set[int]) -> None:
    covered: set[int] = set()
    for r in missing_ranges(bits(read)):
        start, end = r.split("-")
        first = int(start[:2]) * 4 + int(start[3:]) // 15
        last = int(end[:2]) * 4 + int(end[3:]) // 15
        assert first < last
        assert not covered & set(range(first, last))
        covered |= set(range(first, last))
    assert covered == set(range(96)) - read


def test_load_points_are_the_quarter_hours_that_begin_in_the_range() -> None:
    start = datetime(2026, 11, 19, 1, 50, tzinfo=UTC)
    points = list(load_points(start, datetime(2026, 11, 19, 3, 20, tzinfo=UTC)))
    assert points[0] == datetime(2026, 11, 19, 2, 0, tzinfo=UTC)
    assert points[-1] == datetime(2026, 11, 19, 3, 15, tzinfo=UTC)
    assert len(points) == 6
    assert list(load_points(points[0], points[0] + SLOT)) == [points[0]]
    assert list(load_points(start, start + timedelta(minutes=5))) == []


def test_gaps_are_the_runs_without_a_reading() -> None:
    grid = list(load_points(datetime(2026, 11, 19, tzinfo=UTC), datetime(2026, 11, 19, 2, tzinfo=UTC)))
    read = {grid[2], grid[3], grid[7]}
    gaps = [(g.start.hour, g.start.minute, g.end.hour, g.end.minute, g.intervals) for g in gaps_of(grid, read)]
    assert gaps == [(0, 0, 0, 30, 2), (1, 0, 1, 45, 3)]
    assert gaps_of(grid, set(grid)) == []


def request_accepting(accept: str | None) -> Request:
    """A GET request with this Accept header (None: without one)."""
    headers = [] if accept is None else [(b"accept", accept.encode("latin-1"))]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "query_string": b""})


@pytest.mark.parametrize(
    ("accept", "csv"),
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("text/csv", True),
        ("text/csv, application/json", False),
        ("text/csv;q=1, application/json;q=0.9", True),
        ("application/json, text/csv;q=0.5", False),
        ("text/*", True),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
        ("TEXT/CSV ; q=0.8, */*;q=0.1", True),
        ("text/csv;q=oops", True),
        (";;;,,,", False),
    ],
)
def test_csv_when_the_accept_header_prefers_it(accept: str | None, csv: bool) -> None:
    assert wants_csv(request_accepting(accept), None) is csv


def test_format_overrides_the_accept_header() -> None:
    assert wants_csv(request_accepting("application/json"), Format.CSV)
    assert not wants_csv(request_accepting("text/csv"), Format.JSON)


@given(st.text(max_size=200))
def test_any_accept_header_is_answered(accept: str) -> None:
    try:
        accept.encode("latin-1")
    except UnicodeEncodeError:
        return
    assert wants_csv(request_accepting(accept), None) in (True, False)


def test_the_registry_takes_an_optional_area() -> None:
    base = {"meter_id": "m1", "protocol": "mqtt", "concentrator_id": "", "region": "north"}
    assert parse_row(base).area is None
    assert parse_row({**base, "area": " 城东 3 号台区 "}).area == "城东 3 号台区"
    with pytest.raises(ValueError, match="area"):
        parse_row({**base, "area": "x" * (AREA_MAX_CHARS + 1)})
    with pytest.raises(ValueError, match="area"):
        parse_row({**base, "area": "a\tb"})
    parsed = parse_registry(["meter_id,protocol,concentrator_id,region,area", "m1,mqtt,dcu-1,north,T1", "m2,mqtt,,s,"])
    assert [r.area for r in parsed.rows] == ["T1", None]
    assert parsed.errors == []
