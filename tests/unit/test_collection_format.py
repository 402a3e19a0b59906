"""`headend.reports.collection`: the JSON and text forms of a collection report (no database)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import pytest

from headend.reports.collection import (
    CollectionCounts,
    CollectionReport,
    GroupCounts,
    UnreadMeter,
    format_report,
)

CST = timezone(timedelta(hours=8))
LAST = datetime(2026, 11, 19, 23, 45, tzinfo=CST)


BASE = CollectionReport(
    day=date(2026, 11, 20),
    timezone="Asia/Shanghai",
    totals=CollectionCounts(expected=10, read=7, complete=3),
    groups=[
        GroupCounts("dcu-b", CollectionCounts(4, 1, 0)),
        GroupCounts("dcu-a", CollectionCounts(3, 3, 2)),
        GroupCounts("(direct)", CollectionCounts(3, 3, 1)),
    ],
    worst_concentrators=[GroupCounts("dcu-b", CollectionCounts(4, 1, 0))],
    unread=[
        UnreadMeter("m-never", "dcu-b", "north", None),
        UnreadMeter("m-late", None, "south", LAST),
    ],
    unread_total=3,
)


def _totals_only(totals: CollectionCounts, unread_total: int) -> CollectionReport:
    return replace(BASE, totals=totals, groups=[], worst_concentrators=[], unread=[], unread_total=unread_total)


@pytest.mark.parametrize(
    ("expected", "read", "rate"),
    [(10, 7, 0.7), (3, 2, 2 / 3), (4, 4, 1.0), (5, 0, 0.0), (0, 0, 1.0)],
)
def test_rate_is_read_over_expected_and_one_when_nothing_is_expected(expected: int, read: int, rate: float) -> None:
    assert CollectionCounts(expected, read, 0).rate == rate


def test_to_json_has_the_stable_keys_and_values() -> None:
    assert BASE.to_json() == {
        "date": "2026-11-20",
        "timezone": "Asia/Shanghai",
        "expected": 10,
        "read": 7,
        "complete": 3,
        "rate": 0.7,
        "groups": [
            {"key": "dcu-b", "expected": 4, "read": 1, "complete": 0, "rate": 0.25},
            {"key": "dcu-a", "expected": 3, "read": 3, "complete": 2, "rate": 1.0},
            {"key": "(direct)", "expected": 3, "read": 3, "complete": 1, "rate": 1.0},
        ],
        "worst_concentrators": [{"concentrator_id": "dcu-b", "expected": 4, "read": 1, "complete": 0, "rate": 0.25}],
        "unread_total": 3,
        "unread_meters": [
            {
                "meter_id": "m-never",
                "concentrator_id": "dcu-b",
                "region": "north",
                "last_reading_at": None,
                "never_read": True,
            },
            {
                "meter_id": "m-late",
                "concentrator_id": None,
                "region": "south",
                "last_reading_at": "2026-11-19T23:45:00+08:00",
                "never_read": False,
            },
        ],
    }


def test_to_json_rounds_the_rate_to_six_places_and_is_serialisable() -> None:
    report = _totals_only(CollectionCounts(3, 2, 0), unread_total=1)
    out = report.to_json()
    assert out["rate"] == 0.666667
    assert out["groups"] == []
    assert out["unread_meters"] == []
    assert json.loads(json.dumps(out)) == out


def test_to_json_of_an_empty_fleet_has_rate_one() -> None:
    report = _totals_only(CollectionCounts(0, 0, 0), unread_total=0)
    out = report.to_json()
    assert (out["expected"], out["read"], out["complete"], out["rate"]) == (0, 0, 0, 1.0)


def test_format_report_shows_totals_groups_worst_and_unread() -> None:
    text = format_report(BASE)
    lines = text.splitlines()
    assert lines[0] == "Collection report for 2026-11-20 (Asia/Shanghai)"
    assert "  meters expected : 10" in lines
    assert "  read (≥1 value) : 7  rate 70.00%" in lines
    assert "  complete (all 96 intervals): 3" in lines
    assert "  by group (worst first):" in lines
    group_lines = lines[lines.index("  by group (worst first):") + 1 : lines.index("  worst concentrators:")]
    assert [line.split()[0] for line in group_lines] == ["dcu-b", "dcu-a", "(direct)"]
    assert group_lines[0].split()[1:] == ["1/4", "25.00%", "complete", "0"]
    worst = lines[lines.index("  worst concentrators:") + 1]
    assert worst.split() == ["dcu-b", "1/4", "25.00%"]
    assert "  unread meters (3 in all, first 2):" in lines
    unread = lines[lines.index("  unread meters (3 in all, first 2):") + 1 :]
    assert [line.split() for line in unread] == [
        ["m-never", "dcu", "dcu-b", "last", "never"],
        ["m-late", "dcu", "-", "last", "2026-11-19T23:45:00+08:00"],
    ]


def test_format_report_leaves_out_empty_sections() -> None:
    report = _totals_only(CollectionCounts(2, 2, 2), unread_total=0)
    assert format_report(report).splitlines() == [
        "Collection report for 2026-11-20 (Asia/Shanghai)",
        "  meters expected : 2",
        "  read (≥1 value) : 2  rate 100.00%",
        "  complete (all 96 intervals): 2",
    ]
