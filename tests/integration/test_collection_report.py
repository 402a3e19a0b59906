"""Collection report on the real database, fed through the real reading writer, and its CLI command."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner, Result

from headend.cli.app import app
from headend.db.collection_days import DaySource, collection_day
from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions
from headend.ingest.messages import Decoded, SourcedReading
from headend.ingest.writer import ReadingWriter
from headend.registry.meter_import import MeterRow, import_meters
from headend.reports.collection import (
    CollectionCounts,
    CollectionReport,
    GroupCounts,
    UnreadMeter,
    collection_report,
)
from headend.reports.grouping import GroupBy
from protocols.readings import MeterReading
from tests.integration.conftest import ADMIN_URL, count, register

pytestmark = pytest.mark.integration

SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 20)
DAY_START = datetime(2026, 11, 20, tzinfo=SHANGHAI)
NEXT_DAY_START = datetime(2026, 11, 21, tzinfo=SHANGHAI)
LONG_AGO = datetime(2026, 11, 1, tzinfo=SHANGHAI)
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=SHANGHAI)
RECEIVED = NOW - timedelta(days=1)

M06_LAST = datetime(2026, 11, 19, 12, 0, tzinfo=SHANGHAI)
M10_LATE = datetime(2026, 11, 20, 23, 59, tzinfo=SHANGHAI)  # off the grid, last minute of the local day
M08_MIDNIGHT = NEXT_DAY_START  # first instant of the next local day (16:00 UTC on the 20th)
M12_NEXT_DAY = datetime(2026, 11, 21, 10, 0, tzinfo=SHANGHAI)


def slot(n: int, start: datetime = DAY_START) -> datetime:
    """The start of local 15-minute interval `n` of the day beginning at `start`."""
    return start + timedelta(minutes=15 * n)


@pytest.fixture
def writer(database_url: str) -> Iterator[ReadingWriter]:
    """The real reading writer on its own connection to the test database."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        options = SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall())
        yield ReadingWriter(conn, options, timedelta(minutes=5))


def write(writer: ReadingWriter, readings: dict[str, list[datetime]]) -> int:
    """Store the readings through the writer in one batch; return the rows inserted."""
    decoded = Decoded()
    for meter_id, times in readings.items():
        for i, ts in enumerate(sorted(times)):
            decoded.readings.append(
                SourcedReading(MeterReading(meter_id, ts, 10_000 + 10 * i), "test", "test", RECEIVED, None)
            )
    result = writer.write(decoded, NOW)
    assert result.dead_letters == 0
    return result.inserted


FLEET_READINGS: dict[str, list[datetime]] = {
    "m01": [slot(n) for n in range(96)],
    "m02": [slot(n) for n in range(96)],
    "m03": [slot(0), slot(40), slot(95)],
    # m04: nothing ever
    "m05": [slot(n) for n in range(1, 96)],  # all but the first interval
    "m06": [M06_LAST],  # the day before only
    # m07: nothing ever
    "m08": [M08_MIDNIGHT],  # the next day only
    "m09": [slot(n) for n in range(96)],
    "m10": [M10_LATE],
    "m11": [slot(n) for n in range(4)],  # read while active, then made inactive
    "m12": [M12_NEXT_DAY],
}


@pytest.fixture
def fleet(db: psycopg.Connection[Any], writer: ReadingWriter) -> psycopg.Connection[Any]:
    """10 expected meters: 4 + 4 behind two concentrators, 2 direct; regions a and b; plus two not expected."""
    register(db, ["m01", "m02", "m03", "m04", "m11"], concentrator="dcu-1", region="a")
    register(db, ["m05", "m06", "m07", "m08"], concentrator="dcu-2", region="b")
    register(db, ["m09"], region="a")
    register(db, ["m10", "m12"], region="b")
    assert write(writer, FLEET_READINGS) == sum(len(t) for t in FLEET_READINGS.values())
    register(db, ["m11"], concentrator="dcu-1", region="a", status="inactive")
    db.execute("UPDATE meters SET created_at = %s", (LONG_AGO,))
    # created at the very first instant after the reported day: not expected on it
    db.execute("UPDATE meters SET created_at = %s WHERE meter_id = 'm12'", (NEXT_DAY_START,))
    return db


def test_totals_of_the_day(fleet: psycopg.Connection[Any]) -> None:
    report = collection_report(fleet, DAY)
    assert report.day == DAY
    assert report.timezone == "Asia/Shanghai"
    assert report.totals == CollectionCounts(expected=10, read=6, complete=3)
    assert report.totals.rate == 0.6
    assert report.groups == []
    assert report.unread_total == 4


def test_groups_by_concentrator_worst_first(fleet: psycopg.Connection[Any]) -> None:
    report = collection_report(fleet, DAY, group_by=GroupBy.CONCENTRATOR)
    assert report.groups == [
        GroupCounts("dcu-2", CollectionCounts(4, 1, 0)),
        GroupCounts("dcu-1", CollectionCounts(4, 3, 2)),
        GroupCounts("(direct)", CollectionCounts(2, 2, 1)),
    ]


def test_groups_by_region_worst_first(fleet: psycopg.Connection[Any]) -> None:
    report = collection_report(fleet, DAY, group_by=GroupBy.REGION)
    assert report.groups == [
        GroupCounts("b", CollectionCounts(5, 2, 0)),
        GroupCounts("a", CollectionCounts(5, 4, 3)),
    ]


def test_worst_concentrators_leave_out_direct_meters(fleet: psycopg.Connection[Any]) -> None:
    assert collection_report(fleet, DAY).worst_concentrators == [
        GroupCounts("dcu-2", CollectionCounts(4, 1, 0)),
        GroupCounts("dcu-1", CollectionCounts(4, 3, 2)),
    ]
    assert collection_report(fleet, DAY, worst=1).worst_concentrators == [
        GroupCounts("dcu-2", CollectionCounts(4, 1, 0))
    ]


def test_unread_meters_never_read_first(fleet: psycopg.Connection[Any]) -> None:
    report = collection_report(fleet, DAY)
    assert report.unread == [
        UnreadMeter("m04", "dcu-1", "a", None),
        UnreadMeter("m07", "dcu-2", "b", None),
        UnreadMeter("m06", "dcu-2", "b", M06_LAST),
        # last_reading_at is the meter's latest reading of all, which may lie after the reported day
        UnreadMeter("m08", "dcu-2", "b", M08_MIDNIGHT),
    ]
    assert [m["never_read"] for m in report.to_json()["unread_meters"]] == [True, True, False, False]
    limited = collection_report(fleet, DAY, unread_limit=1)
    assert [m.meter_id for m in limited.unread] == ["m04"]
    assert limited.unread_total == 4


def test_local_day_boundaries_2359_and_0000(fleet: psycopg.Connection[Any]) -> None:
    days = {
        str(m): (d, n)
        for m, d, n in fleet.execute(
            "SELECT meter_id, day, intervals_read FROM meter_day_collection WHERE meter_id IN ('m08', 'm10')"
        )
    }
    assert days == {"m10": (DAY, 1), "m08": (date(2026, 11, 21), 1)}

    next_day = collection_report(fleet, date(2026, 11, 21), unread_limit=100)
    # m12 was created at the start of the 21st: expected from then on
    assert next_day.totals == CollectionCounts(expected=11, read=2, complete=0)
    unread_next = {m.meter_id for m in next_day.unread}
    assert "m10" in unread_next  # its 23:59 reading belongs to the 20th
    assert {"m08", "m12"}.isdisjoint(unread_next)

    day_before = collection_report(fleet, date(2026, 11, 19))
    assert day_before.totals == CollectionCounts(expected=10, read=1, complete=0)


def test_inactive_and_later_meters_are_nowhere_in_the_report(fleet: psycopg.Connection[Any]) -> None:
    report = collection_report(fleet, DAY, group_by=GroupBy.CONCENTRATOR, unread_limit=100)
    text = json.dumps(report.to_json())
    assert "m11" not in text
    assert "m12" not in text
    # m11's readings are stored all the same
    assert count(fleet, "SELECT count(*) FROM readings WHERE meter_id = 'm11'") == 4


def test_installed_on_decides_when_a_meter_is_expected(db: psycopg.Connection[Any]) -> None:
    rows = [
        MeterRow("early-created", "mqtt", None, "a", None, 1, "active", None, installed_on=date(2026, 11, 21)),
        MeterRow("late-created", "mqtt", None, "a", None, 1, "active", None, installed_on=DAY),
        MeterRow("created-in-day", "mqtt", None, "a", None, 1, "active", None),
        MeterRow("created-after", "mqtt", None, "a", None, 1, "active", None),
    ]
    import_meters(db, rows)
    db.execute("UPDATE meters SET created_at = %s WHERE meter_id = 'early-created'", (LONG_AGO,))
    db.execute("UPDATE meters SET created_at = %s WHERE meter_id = 'late-created'", (NOW,))
    db.execute(
        "UPDATE meters SET created_at = %s WHERE meter_id = 'created-in-day'", (NEXT_DAY_START - timedelta(seconds=1),)
    )
    db.execute("UPDATE meters SET created_at = %s WHERE meter_id = 'created-after'", (NEXT_DAY_START,))
    report = collection_report(db, DAY)
    assert sorted(m.meter_id for m in report.unread) == ["created-in-day", "late-created"]
    assert report.totals == CollectionCounts(expected=2, read=0, complete=0)
    assert collection_report(db, date(2026, 11, 21)).totals.expected == 4


def test_empty_fleet_has_rate_one(db: psycopg.Connection[Any]) -> None:
    report = collection_report(db, DAY, group_by=GroupBy.REGION)
    assert report == CollectionReport(DAY, "Asia/Shanghai", CollectionCounts(0, 0, 0), [], [], [], 0)
    assert report.to_json()["rate"] == 1.0


# --------------------------------------------------------------------------- headend collection-report


def _cli(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(app, ["collection-report", *args], env={"HEADEND_DATABASE_URL": database_url})


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text)).strip()


def test_cli_json_by_region(fleet: psycopg.Connection[Any], database_url: str) -> None:
    result = _cli(database_url, "--date", "2026-11-20", "--json", "--by", "region")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["date"], out["timezone"]) == ("2026-11-20", "Asia/Shanghai")
    assert (out["expected"], out["read"], out["complete"], out["rate"]) == (10, 6, 3, 0.6)
    assert out["groups"] == [
        {"key": "b", "expected": 5, "read": 2, "complete": 0, "rate": 0.4},
        {"key": "a", "expected": 5, "read": 4, "complete": 3, "rate": 0.8},
    ]
    assert [w["concentrator_id"] for w in out["worst_concentrators"]] == ["dcu-2", "dcu-1"]
    assert out["unread_total"] == 4
    assert [(m["meter_id"], m["never_read"]) for m in out["unread_meters"]] == [
        ("m04", True),
        ("m07", True),
        ("m06", False),
        ("m08", False),
    ]


def test_cli_text_by_concentrator_with_unread_limit(fleet: psycopg.Connection[Any], database_url: str) -> None:
    result = _cli(database_url, "--date", "2026-11-20", "--by", "concentrator", "--unread-limit", "1")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "Collection report for 2026-11-20 (Asia/Shanghai)"
    assert "  meters expected : 10" in lines
    assert "  read (≥1 value) : 6  rate 60.00%" in lines
    assert "  complete (all 96 intervals): 3" in lines
    assert "  unread meters (4 in all, first 1):" in lines
    assert lines[-1].split()[0] == "m04"


@pytest.mark.parametrize("bad", ["2026-13-01", "20.11.2026", "yesterday", ""])
def test_cli_bad_date_is_a_clear_usage_error(database_url: str, bad: str) -> None:
    result = _cli(database_url, "--date", bad)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for --date: {bad!r} is not a date in the form YYYY-MM-DD" in _flat(result.stderr)


def test_cli_unknown_grouping_is_a_usage_error(database_url: str) -> None:
    result = _cli(database_url, "--date", "2026-11-20", "--by", "nonsense")
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--by'" in _flat(result.stderr)
    assert "'nonsense' is not one of 'concentrator', 'region'" in _flat(result.stderr)


# --------------------------------------------------------------------------- regressions of fixed defects


def test_cli_report_in_a_zone_other_than_the_schema_is_consistent_or_refused(
    fleet: psycopg.Connection[Any], database_url: str
) -> None:
    result = CliRunner().invoke(
        app,
        ["collection-report", "--date", "2026-11-20", "--json"],
        env={"HEADEND_DATABASE_URL": database_url, "HEADEND_TIMEZONE": "UTC"},
    )
    if result.exit_code != 0:
        # refusing is a fix too, if it says why
        assert "Asia/Shanghai" in _flat(result.stderr), result.output
        return
    out = json.loads(result.stdout)
    unread = {m["meter_id"] for m in out["unread_meters"]}
    if out["timezone"] == "UTC":
        # m08's only reading, 2026-11-20T16:00Z, lies inside the UTC day 2026-11-20
        assert "m08" not in unread
    else:
        # reported in the schema's zone: m12, created 2026-11-21T00:00+08:00, is not expected
        assert (out["timezone"], out["expected"], out["read"]) == ("Asia/Shanghai", 10, 6)


def test_a_meter_read_on_the_day_is_expected_even_if_registered_later(
    db: psycopg.Connection[Any], writer: ReadingWriter
) -> None:
    register(db, ["late-1", "late-2"], region="a")
    write(writer, {"late-1": [slot(n) for n in range(96)]})
    db.execute("UPDATE meters SET created_at = %s", (NOW,))
    totals = collection_report(db, DAY).totals
    # late-2 was registered after the day and not read on it: not expected; late-1 was evidently there
    assert (totals.expected, totals.read, totals.complete) == (1, 1, 1)
    db.execute("UPDATE meters SET installed_on = %s", (DAY,))
    totals = collection_report(db, DAY).totals
    assert (totals.expected, totals.read, totals.complete) == (2, 1, 1)


# --------------------------------------------------------------------------- TimescaleDB: days already materialized


def _refresh_aggregate(db: psycopg.Connection[Any], start: datetime, end: datetime) -> None:
    db.execute("CALL refresh_continuous_aggregate('collection_daily_cagg', %s, %s)", (start, end))


def _intervals_read(db: psycopg.Connection[Any], meter_id: str, day: date) -> int | None:
    row = db.execute(
        "SELECT intervals_read FROM meter_day_collection WHERE meter_id = %s AND day = %s", (meter_id, day)
    ).fetchone()
    return None if row is None else int(row[0])


def _as_role(database_url: str, role: str) -> str:
    return make_url(database_url).set(username=role, password=None).render_as_string(hide_password=False)


@pytest.fixture
def aggregate_owner_url(db: psycopg.Connection[Any], database_url: str) -> str:
    """The test database as the owner of the continuous aggregate and of `readings`: it may refresh and compress."""
    row = db.execute("SELECT relowner::regrole::text FROM pg_class WHERE oid = 'collection_daily_cagg'::regclass")
    owner = row.fetchone()
    assert owner is not None
    return _as_role(database_url, str(owner[0]))


@pytest.fixture
def owner_db(aggregate_owner_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection as the owner of the continuous aggregate."""
    with psycopg.connect(aggregate_owner_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def select_only_url(database_url: str, unique: str) -> Iterator[str]:
    """The test database as a new role that may read every table and owns nothing: it may not refresh the aggregate."""
    role = f"headend_test_reader_{unique}"
    admin_url = make_url(ADMIN_URL).set(database=make_url(database_url).database).render_as_string(hide_password=False)
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
        yield _as_role(database_url, role)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP ROLE "{role}"')


@pytest.mark.usefixtures("timescaledb_storage")
@pytest.mark.parametrize("compressed", [False, True], ids=["recent", "compressed"])
@pytest.mark.parametrize(
    ("reporter", "source"),
    [("aggregate_owner_url", DaySource.REFRESHED), ("select_only_url", DaySource.READINGS)],
    ids=["owner", "select-only"],
)
def test_readings_stored_late_for_a_materialized_day_count_at_once(
    db: psycopg.Connection[Any],
    owner_db: psycopg.Connection[Any],
    writer: ReadingWriter,
    request: pytest.FixtureRequest,
    reporter: str,
    source: DaySource,
    compressed: bool,
) -> None:
    register(db, ["ts-full", "ts-half", "ts-backlog"], concentrator="dcu-t", region="t")
    db.execute("UPDATE meters SET created_at = %s", (LONG_AGO,))
    write(writer, {"ts-full": [slot(n) for n in range(96)], "ts-half": [slot(n) for n in range(48)]})
    _refresh_aggregate(owner_db, DAY_START, NEXT_DAY_START)
    if compressed:
        # a day older than the compression policy's 7 days: its chunk is compressed before the backlog comes
        owner_db.execute("SELECT compress_chunk(c) FROM show_chunks('readings') c")
    # a re-read of the other half of ts-half's day, and a concentrator's backlog for ts-backlog
    write(writer, {"ts-half": [slot(n) for n in range(48, 96)], "ts-backlog": [slot(n) for n in range(96)]})
    # the aggregate holds the day as it was materialized: the late readings are not in it yet
    assert (_intervals_read(db, "ts-half", DAY), _intervals_read(db, "ts-backlog", DAY)) == (48, None)

    with psycopg.connect(request.getfixturevalue(reporter), autocommit=True) as conn:
        options = SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall())
        report = collection_report(conn, DAY, group_by=GroupBy.CONCENTRATOR)
        assert collection_day(conn, options, DAY).source is source
    assert report.totals == CollectionCounts(expected=3, read=3, complete=3)
    assert report.groups == [GroupCounts("dcu-t", CollectionCounts(3, 3, 3))]
    assert report.unread == []
    # the owner refreshed the day; a role that may not left the aggregate as it was and counted from `readings`
    expected_view = (96, 96) if source is DaySource.REFRESHED else (48, None)
    assert (_intervals_read(db, "ts-half", DAY), _intervals_read(db, "ts-backlog", DAY)) == expected_view


@pytest.mark.usefixtures("timescaledb_storage")
def test_a_report_does_not_materialize_days_the_aggregate_reads_live(
    db: psycopg.Connection[Any], owner_db: psycopg.Connection[Any], writer: ReadingWriter
) -> None:
    register(db, ["ts-1"], region="t")
    db.execute("UPDATE meters SET created_at = %s", (LONG_AGO,))
    write(writer, {"ts-1": [slot(n, DAY_START + timedelta(days=d)) for d in (-1, 0, 1) for n in range(4)]})
    # the 19th is materialized; the 20th and 21st lie past the aggregate's watermark and are read from `readings`
    _refresh_aggregate(owner_db, DAY_START - timedelta(days=1), DAY_START)
    report = collection_report(owner_db, date(2026, 11, 21))
    assert report.totals == CollectionCounts(expected=1, read=1, complete=0)
    # refreshing the 21st would have moved the watermark past the 20th, which nothing materialized: read as empty
    assert _intervals_read(db, "ts-1", DAY) == 4
    write(writer, {"ts-1": [slot(n, NEXT_DAY_START) for n in range(4, 8)]})
    assert _intervals_read(db, "ts-1", date(2026, 11, 21)) == 8
