"""`headend.reports.collection`: the JSON and text forms of a collection report (no database)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from headend.reports.collection import (
    CollectionCounts,
    CollectionReport,
    FirstPass,
    GroupCounts,
    PollFailureSeen,
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
                "last_failure": None,
            },
            {
                "meter_id": "m-late",
                "concentrator_id": None,
                "region": "south",
                "last_reading_at": "2026-11-19T23:45:00+08:00",
                "never_read": False,
                "last_failure": None,
            },
        ],
        # never re-read: the first pass is what is stored
        "first_pass": {
            "read": 7,
            "complete": 3,
            "rate": 0.7,
            "groups": [
                {"key": "dcu-b", "read": 1, "complete": 0, "rate": 0.25},
                {"key": "dcu-a", "read": 3, "complete": 2, "rate": 1.0},
                {"key": "(direct)", "read": 3, "complete": 1, "rate": 1.0},
            ],
        },
        "reread": None,
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


FROZEN_AT = datetime(2026, 11, 21, 2, 30, tzinfo=UTC)
REREAD = replace(
    BASE,
    first_pass=FirstPass(
        FROZEN_AT,
        "rr-0123456789abcdef0123",
        CollectionCounts(10, 5, 1),
        [
            GroupCounts("dcu-b", CollectionCounts(4, 0, 0)),
            GroupCounts("dcu-a", CollectionCounts(3, 2, 1)),
            GroupCounts("(direct)", CollectionCounts(3, 3, 0)),
        ],
    ),
    unread=[
        UnreadMeter("m-never", "dcu-b", "north", None),
        UnreadMeter(
            "m-polled",
            None,
            "south",
            LAST,
            PollFailureSeen(datetime(2026, 11, 20, 3, 0, tzinfo=UTC), "timeout", "no answer\nin 1.0 s", 3),
        ),
    ],
)


def test_to_json_of_a_re_read_day_has_its_first_pass_beside_the_current_figures() -> None:
    out = REREAD.to_json()
    assert (out["expected"], out["read"], out["complete"], out["rate"]) == (10, 7, 3, 0.7)
    assert out["first_pass"] == {
        "read": 5,
        "complete": 1,
        "rate": 0.5,
        "groups": [
            {"key": "dcu-b", "read": 0, "complete": 0, "rate": 0.0},
            {"key": "dcu-a", "read": 2, "complete": 1, "rate": 0.666667},
            {"key": "(direct)", "read": 3, "complete": 0, "rate": 1.0},
        ],
    }
    assert out["groups"][1] == {"key": "dcu-a", "expected": 3, "read": 3, "complete": 2, "rate": 1.0}
    # instants in the report's zone
    assert out["reread"] == {"frozen_at": "2026-11-21T10:30:00+08:00", "task_id": "rr-0123456789abcdef0123"}
    assert [m["last_failure"] for m in out["unread_meters"]] == [
        None,
        {"at": "2026-11-20T11:00:00+08:00", "kind": "timeout", "reason": "no answer\nin 1.0 s", "attempts": 3},
    ]
    assert json.loads(json.dumps(out)) == out


def test_format_report_of_a_re_read_day_has_a_first_pass_line_and_failures() -> None:
    lines = format_report(REREAD).splitlines()
    assert lines[4] == (
        "  first pass      : read 5  rate 50.00%  complete 1  →  after re-read: read 7  rate 70.00%  complete 3"
        "  (frozen 2026-11-21T10:30:00+08:00 by rr-0123456789abcdef0123)"
    )
    group_lines = lines[lines.index("  by group (worst first):") + 1 : lines.index("  worst concentrators:")]
    assert [line.split()[1:] for line in group_lines] == [
        ["1/4", "25.00%", "complete", "0", "first", "pass", "0/4", "0.00%"],
        ["3/3", "100.00%", "complete", "2", "first", "pass", "2/3", "66.67%"],
        ["3/3", "100.00%", "complete", "1", "first", "pass", "3/3", "100.00%"],
    ]
    unread = lines[lines.index("  unread meters (3 in all, first 2):") + 1 :]
    assert unread[0].split() == ["m-never", "dcu", "dcu-b", "last", "never"]
    # the reason's line break does not break the meter's line
    assert unread[1].split() == [
        "m-polled",
        "dcu",
        "-",
        "last",
        "2026-11-19T23:45:00+08:00",
        "failed",
        "2026-11-20T11:00:00+08:00",
        "timeout:",
        "no",
        "answer",
        "in",
        "1.0",
        "s",
    ]
    assert len(unread) == 2


def test_format_report_of_a_day_never_re_read_has_no_first_pass_line() -> None:
    assert not any("first pass" in line for line in format_report(BASE).splitlines())
