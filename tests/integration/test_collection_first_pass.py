"""The collection report of a re-read day: its first pass as frozen before the re-read, beside what is stored now;
unread polled meters with their last failed poll. On whichever storage the test server gives (both in CI)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from typer.testing import CliRunner

from headend.cli.app import app
from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions
from headend.db.grants import DbRole
from headend.ingest.messages import Decoded, SourcedReading
from headend.ingest.writer import ReadingWriter
from headend.poll.failures import FailureKind, PollFailure
from headend.poll.store import PollStore
from headend.registry.meter_import import MeterRow, import_meters
from headend.reports.collection import (
    CollectionCounts,
    CollectionReport,
    FirstPass,
    GroupCounts,
    PollFailureSeen,
    UnreadMeter,
    collection_report,
    format_report,
)
from headend.reports.grouping import GroupBy
from headend.reread.first_pass import freeze_first_pass
from headend.reread.states import Scope
from headend.reread.tasks import create_task
from headend.settings import Settings
from protocols.readings import MeterReading
from tests.integration.conftest import MigratedDatabase, register

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 20)
DAY_START = datetime(2026, 11, 20, tzinfo=SHANGHAI)
NEXT_DAY_START = DAY_START + timedelta(days=1)
LONG_AGO = datetime(2026, 11, 1, tzinfo=SHANGHAI)
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=SHANGHAI)
FROZEN_AT = datetime(2026, 11, 22, 9, 30, tzinfo=SHANGHAI)
# p1's failed polls: before the day, on it (the last one that counts), and after it (not the day's reason)
P1_FAILURES = [
    PollFailure("p1", DAY_START - timedelta(days=1), FailureKind.NO_CONNECTION, "connection refused", 1),
    PollFailure("p1", DAY_START + timedelta(hours=10), FailureKind.TIMEOUT, "no answer within 1.0 s", 3),
    PollFailure("p1", NEXT_DAY_START + timedelta(hours=1), FailureKind.BAD_FRAME, "CRC mismatch", 2),
]


def slot(n: int, start: datetime = DAY_START) -> datetime:
    """The start of local 15-minute interval `n` of the day beginning at `start`."""
    return start + timedelta(minutes=15 * n)


@pytest.fixture
def connect_as(migrated: MigratedDatabase) -> Iterator[Callable[[DbRole], Conn]]:
    """Autocommit connections as the head-end's roles (the poll worker is `ingest`, the report `reporting`)."""
    opened: list[Conn] = []

    def connect(role: DbRole) -> Conn:
        conn = psycopg.connect(migrated.role_url(role), autocommit=True)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


@pytest.fixture
def writer(connect_as: Callable[[DbRole], Conn]) -> ReadingWriter:
    """The real reading writer, as ingest writes."""
    conn = connect_as(DbRole.INGEST)
    options = SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall())
    return ReadingWriter(conn, options, timedelta(minutes=5))


def write(writer: ReadingWriter, readings: dict[str, list[datetime]], start: int = 0) -> None:
    """Store the readings in one batch, registers rising from `start` (a re-read's come after the first pass's)."""
    decoded = Decoded()
    for meter_id, times in readings.items():
        for i, ts in enumerate(sorted(times)):
            reading = MeterReading(meter_id, ts, 10_000 + 10 * (start + i))
            decoded.readings.append(SourcedReading(reading, "test", "test", NOW, None))
    result = writer.write(decoded, NOW)
    assert (result.inserted, result.dead_letters) == (len(decoded.readings), 0)


@pytest.fixture
def fleet(db: Conn, writer: ReadingWriter, migrated: MigratedDatabase) -> Conn:
    """a1 (all 96) and a2 (half) behind dcu-1, b1 (nothing) behind dcu-2; direct: p1 Modbus and p2 DL/T 645, both
    unread, p1 with failed polls; q1 an MQTT meter, unread, that has failures from when it was polled."""
    register(db, ["a1", "a2"], concentrator="dcu-1", region="a")
    register(db, ["b1"], concentrator="dcu-2", region="b")
    register(db, ["q1"], region="b")
    import_meters(
        db,
        [
            MeterRow(
                "p1", "modbus", None, "b", "eastron_sdm120", 1, "active", None, endpoint="127.0.0.1:1502", unit_id=1
            ),
            MeterRow("p2", "dlt645", None, "b", None, 1, "active", None, endpoint="127.0.0.1:1503", address="1" * 12),
        ],
    )
    db.execute("UPDATE meters SET created_at = %s", (LONG_AGO,))
    write(writer, {"a1": [slot(n) for n in range(96)], "a2": [slot(n) for n in range(48)]})
    # failures stored as the poller stores them
    store = PollStore(migrated.role_url(DbRole.INGEST), Settings())
    try:
        store.write([], [*P1_FAILURES, PollFailure("q1", DAY_START, FailureKind.TIMEOUT, "polled once", 1)])
    finally:
        store.close()
    return db


def report_as_reporting(connect_as: Callable[[DbRole], Conn], day: date = DAY) -> CollectionReport:
    """The report by concentrator, as the reporting role computes it."""
    return collection_report(connect_as(DbRole.REPORTING), day, group_by=GroupBy.CONCENTRATOR)


def freeze(connect_as: Callable[[DbRole], Conn], db: Conn, day: date = DAY) -> tuple[str, list[date]]:
    """A re-read task asked for the day, and its first freeze as the poll worker (ingest) does it; the task's id."""
    task = create_task(db, Scope.LIST, ["a2", "b1", "p1"], DAY_START, NEXT_DAY_START, by="test", now=NOW)
    conn = connect_as(DbRole.INGEST)
    options = SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall())
    return task.task_id, freeze_first_pass(conn, options, [day], task.task_id, FROZEN_AT)


UNREAD_FIRST = [
    UnreadMeter("b1", "dcu-2", "b", None),
    UnreadMeter("p1", None, "b", None, PollFailureSeen(P1_FAILURES[1].at, "timeout", "no answer within 1.0 s", 3)),
    UnreadMeter("p2", None, "b", None),  # polled, never failed
    UnreadMeter("q1", None, "b", None),  # MQTT now: its old poll failure is not why it is unread
]


def test_a_day_never_re_read_has_its_first_pass_as_what_is_stored(
    fleet: Conn, connect_as: Callable[[DbRole], Conn]
) -> None:
    report = report_as_reporting(connect_as)
    assert report.first_pass is None
    assert report.totals == CollectionCounts(expected=6, read=2, complete=1)
    assert report.first_pass_counts() == (report.totals, report.groups)
    assert report.unread == UNREAD_FIRST
    out = report.to_json()
    assert out["reread"] is None
    assert out["first_pass"] == {
        "read": 2,
        "complete": 1,
        "rate": round(2 / 6, 6),
        "groups": [
            {"key": g["key"], "read": g["read"], "complete": g["complete"], "rate": g["rate"]} for g in out["groups"]
        ],
    }
    assert [m["last_failure"] for m in out["unread_meters"]] == [
        None,
        {"at": "2026-11-20T10:00:00+08:00", "kind": "timeout", "reason": "no answer within 1.0 s", "attempts": 3},
        None,
        None,
    ]
    assert "first pass" not in format_report(report)


def test_a_re_read_day_keeps_its_first_pass_beside_what_the_re_read_brought(
    fleet: Conn, writer: ReadingWriter, connect_as: Callable[[DbRole], Conn]
) -> None:
    before = report_as_reporting(connect_as)
    task_id, frozen = freeze(connect_as, fleet)
    assert frozen == [DAY]
    # frozen, nothing re-read yet: the first pass is what is stored
    just_frozen = report_as_reporting(connect_as)
    assert just_frozen.first_pass == FirstPass(FROZEN_AT, task_id, before.totals, before.groups)
    assert (just_frozen.totals, just_frozen.groups) == (before.totals, before.groups)

    # the re-read: a2's other half and some of b1's day come back; p1 still does not answer
    write(writer, {"a2": [slot(n) for n in range(48, 96)]}, start=48)
    write(writer, {"b1": [slot(n) for n in range(10)]})
    after = report_as_reporting(connect_as)
    assert after.totals == CollectionCounts(expected=6, read=3, complete=2)
    assert after.first_pass == FirstPass(
        FROZEN_AT,
        task_id,
        CollectionCounts(expected=6, read=2, complete=1),
        [
            GroupCounts("(direct)", CollectionCounts(3, 0, 0)),
            GroupCounts("dcu-1", CollectionCounts(2, 2, 1)),
            GroupCounts("dcu-2", CollectionCounts(1, 0, 0)),
        ],
    )
    assert after.groups == [
        GroupCounts("(direct)", CollectionCounts(3, 0, 0)),
        GroupCounts("dcu-1", CollectionCounts(2, 2, 2)),
        GroupCounts("dcu-2", CollectionCounts(1, 1, 0)),
    ]
    assert after.unread == UNREAD_FIRST[1:]
    assert after.unread_total == 3

    out = after.to_json()
    assert (out["read"], out["complete"], out["rate"]) == (3, 2, 0.5)
    assert out["first_pass"] == {
        "read": 2,
        "complete": 1,
        "rate": round(2 / 6, 6),
        "groups": [
            {"key": "(direct)", "read": 0, "complete": 0, "rate": 0.0},
            {"key": "dcu-1", "read": 2, "complete": 1, "rate": 1.0},
            {"key": "dcu-2", "read": 0, "complete": 0, "rate": 0.0},
        ],
    }
    assert out["reread"] == {"frozen_at": "2026-11-22T09:30:00+08:00", "task_id": task_id}

    # a later re-read of the day freezes nothing: the first pass stays the one before the first re-read
    second_task, frozen_again = freeze(connect_as, fleet)
    assert (frozen_again, second_task != task_id) == ([], True)
    assert report_as_reporting(connect_as).first_pass == after.first_pass
    # the next day was not re-read: one figure, and no re-read
    assert report_as_reporting(connect_as, DAY + timedelta(days=1)).first_pass is None


def test_the_command_shows_first_pass_and_after_re_read_and_why_polled_meters_were_not_read(
    fleet: Conn, writer: ReadingWriter, connect_as: Callable[[DbRole], Conn], migrated: MigratedDatabase
) -> None:
    task_id, _ = freeze(connect_as, fleet)
    write(writer, {"a2": [slot(n) for n in range(48, 96)]}, start=48)
    env = {"HEADEND_DATABASE_URL": migrated.role_url(DbRole.REPORTING)}
    text = CliRunner().invoke(app, ["collection-report", "--date", "2026-11-20", "--by", "concentrator"], env=env)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert (
        "  first pass      : read 2  rate 33.33%  complete 1  →  after re-read: read 2  rate 33.33%  complete 2"
        f"  (frozen 2026-11-22T09:30:00+08:00 by {task_id})"
    ) in lines
    dcu1 = next(line for line in lines if line.split()[0] == "dcu-1")
    assert dcu1.split()[1:] == ["2/2", "100.00%", "complete", "2", "first", "pass", "2/2", "100.00%"]
    p1 = next(line for line in lines if line.split()[0] == "p1")
    assert p1.split()[5:] == ["failed", "2026-11-20T10:00:00+08:00", "timeout:", "no", "answer", "within", "1.0", "s"]
    p2 = next(line for line in lines if line.split()[0] == "p2")
    assert "failed" not in p2

    as_json = CliRunner().invoke(app, ["collection-report", "--date", "2026-11-20", "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    out = json.loads(as_json.stdout)
    assert (out["read"], out["complete"]) == (2, 2)
    assert (out["first_pass"]["read"], out["first_pass"]["complete"], out["first_pass"]["groups"]) == (2, 1, [])
    assert out["reread"] == {"frozen_at": "2026-11-22T09:30:00+08:00", "task_id": task_id}
    assert {m["meter_id"]: m["last_failure"] and m["last_failure"]["kind"] for m in out["unread_meters"]} == {
        "b1": None,
        "p1": "timeout",
        "p2": None,
        "q1": None,
    }


def _refresh_aggregate(owner: Conn, start: datetime, end: datetime) -> None:
    owner.execute("CALL refresh_continuous_aggregate('collection_daily_cagg', %s, %s)", (start, end))


@pytest.mark.usefixtures("timescaledb_storage")
def test_a_materialized_day_re_read_counts_the_re_read_and_keeps_the_first_pass(
    fleet: Conn, writer: ReadingWriter, connect_as: Callable[[DbRole], Conn]
) -> None:
    # the day materialized (as the refresh policy does) before it is frozen and re-read
    _refresh_aggregate(connect_as(DbRole.OWNER), DAY_START, NEXT_DAY_START)
    task_id, _ = freeze(connect_as, fleet)
    write(writer, {"a2": [slot(n) for n in range(48, 96)]}, start=48)
    write(writer, {"b1": [slot(n) for n in range(10)]})
    for role in (DbRole.REPORTING, DbRole.OWNER):  # aggregated from readings, or refreshed first
        report = collection_report(connect_as(role), DAY)
        assert report.totals == CollectionCounts(expected=6, read=3, complete=2), role
        assert report.first_pass is not None
        assert (report.first_pass.totals, report.first_pass.task_id) == (CollectionCounts(6, 2, 1), task_id), role
