"""The collection API on the real PostgreSQL, as the API's own database role: the daily series by group, first pass
and after re-read, the drill-down lists with their reasons, a meter's readings and gaps, CSV, roles, and the summary
counted again when a day changes. On whichever storage the test server gives (both in CI)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx2
import psycopg
import pytest
from fastapi.testclient import TestClient

from headend.api import store
from headend.api.app import create_app
from headend.api.credentials import Role, new_token
from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions
from headend.db.grants import DbRole
from headend.ingest.messages import Decoded, SourcedReading
from headend.ingest.writer import ReadingWriter
from headend.poll.failures import FailureKind, PollFailure
from headend.poll.store import PollStore
from headend.registry.meter_import import MeterRow, import_meters
from headend.reports.collection_summary import ensure_summaries
from headend.reread.first_pass import freeze_first_pass
from headend.reread.states import Scope
from headend.reread.tasks import create_task
from headend.settings import Settings
from protocols.readings import MeterReading
from tests.integration.conftest import MigratedDatabase, count

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
SHANGHAI = ZoneInfo("Asia/Shanghai")
D0, D1, D2 = date(2026, 11, 18), date(2026, 11, 19), date(2026, 11, 20)
LONG_AGO = datetime(2026, 11, 1, tzinfo=SHANGHAI)
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=SHANGHAI)
ALL_SLOTS = range(96)


def start_of(day: date) -> datetime:
    """Local midnight of `day`."""
    return datetime(day.year, day.month, day.day, tzinfo=SHANGHAI)


def slots(day: date, numbers: range | list[int]) -> list[datetime]:
    """The starts of the local 15-minute load points `numbers` of `day`."""
    return [start_of(day) + timedelta(minutes=15 * n) for n in numbers]


def row(meter_id: str, protocol: str, dcu: str | None, region: str, area: str | None, **more: Any) -> MeterRow:
    """A registry row; polled meters get a place of their own."""
    if protocol == "modbus":
        more = {"endpoint": "127.0.0.1:1502", "unit_id": 1, **more}
        return MeterRow(meter_id, protocol, dcu, region, "eastron_sdm120", 1, "active", None, area=area, **more)
    status = more.pop("status", "active")
    return MeterRow(meter_id, protocol, dcu, region, None, 1, status, None, area=area, **more)


# north: a1 (complete both days), a2 (half of D1; half of D2 at the first pass, the rest re-read), a3 (never read);
# south: b1 and p1 (read on D0 only; p1 a Modbus meter with failed polls), q1 (direct MQTT: D1 without 10:00-11:00,
# D2 nothing at the first pass and one load point re-read, a dead letter), n1 (installed on D2, never read), x1
# (inactive: never expected)
FLEET = [
    row("a1", "mqtt", "dcu-1", "north", "T1"),
    row("a2", "mqtt", "dcu-1", "north", "T1"),
    row("a3", "mqtt", "dcu-1", "north", "T2"),
    row("b1", "mqtt", "dcu-2", "south", "T2"),
    row("q1", "mqtt", None, "south", None),
    row("p1", "modbus", None, "south", "T3"),
    row("n1", "mqtt", "dcu-2", "south", None, installed_on=D2),
    row("x1", "mqtt", "dcu-2", "south", "T2", status="inactive"),
]
FIRST_PASS = {
    "a1": slots(D1, ALL_SLOTS) + slots(D2, ALL_SLOTS),
    "a2": slots(D1, range(48)) + slots(D2, range(48)),
    "b1": slots(D0, range(4)),
    "q1": slots(D1, [n for n in ALL_SLOTS if not 40 <= n < 44]),
    "p1": slots(D0, range(4)),
}
REREAD = {"a2": slots(D2, range(48, 96)), "q1": slots(D2, [1])}
P1_FAILURES = [
    PollFailure("p1", start_of(D1) + timedelta(hours=10), FailureKind.TIMEOUT, "no answer within 1.0 s", 3),
    PollFailure("p1", start_of(D2) + timedelta(hours=10), FailureKind.NO_CONNECTION, "connection refused", 1),
    PollFailure("p1", start_of(D2) + timedelta(days=1, hours=1), FailureKind.BAD_FRAME, "CRC mismatch", 2),
]
Q1_DEAD_LETTER_AT = start_of(D2) + timedelta(hours=9)


@dataclass
class Api:
    """A client of the API (as the `api` database role) at NOW, principals' tokens, a look behind, the writer."""

    client: TestClient
    db: Conn
    admin: Conn
    tokens: dict[str, str]
    writer: ReadingWriter
    ingest: Conn
    api_conn: Conn

    def get(self, url: str, who: str | None = "ops", **headers: str) -> httpx2.Response:
        """GET as a principal (None: no token)."""
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return self.client.get(url, headers=headers)

    def ok(self, url: str, who: str = "ops") -> Any:
        """The JSON of a 200 answer."""
        answer = self.get(url, who)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("application/json")
        return answer.json()

    def store(self, readings: dict[str, list[datetime]], start_wh: int = 10_000) -> None:
        """Store readings through the ingest writer, as ingest does, registers rising."""
        decoded = Decoded()
        for meter_id, times in readings.items():
            for i, ts in enumerate(sorted(times)):
                wh = start_wh + 10 * i + (10_000 if ts >= start_of(D2) else 0)
                decoded.readings.append(SourcedReading(MeterReading(meter_id, ts, wh), "test", "test", NOW, None))
        result = self.writer.write(decoded, NOW)
        assert (result.inserted, result.dead_letters) == (len(decoded.readings), 0)

    def freeze(self, day: date) -> None:
        """Freeze `day`'s first pass as a re-read task's runner does, as the poll worker's role."""
        task = create_task(
            self.db, Scope.METER, ["q1"], start_of(day), start_of(day) + timedelta(days=1), by="t", now=NOW
        )
        options = SchemaOptions.from_rows(self.ingest.execute(SCHEMA_OPTIONS_SQL).fetchall())
        assert freeze_first_pass(self.ingest, options, [day], task.task_id, NOW) == [day]


@pytest.fixture
def api(migrated: MigratedDatabase, db: Conn) -> Iterator[Api]:
    """The fleet with its first pass stored, p1's failed polls, q1's dead letter, a principal of every role."""
    import_meters(db, FLEET)
    db.execute("UPDATE meters SET created_at = %s", (LONG_AGO,))
    tokens = {}
    for name, role in (
        ("ops", Role.OPERATOR),
        ("field", Role.FIELD_STAFF),
        ("watcher", Role.VIEWER),
        ("root", Role.ADMIN),
        ("wechat", Role.CHANNEL),
    ):
        tokens[name] = new_token()
        store.create_principal(db, name, role, tokens[name], created_by="test")
    polls = PollStore(migrated.role_url(DbRole.INGEST), Settings())
    try:
        polls.write([], P1_FAILURES)
    finally:
        polls.close()
    with (
        psycopg.connect(migrated.role_url(DbRole.INGEST), autocommit=True) as ingest,
        psycopg.connect(migrated.role_url(DbRole.API), autocommit=True) as api_conn,
        psycopg.connect(migrated.admin_url, autocommit=True) as admin,
    ):
        ingest.execute(
            "INSERT INTO dead_letters (received_at, source, topic, payload, reason, payload_sha256) "
            "VALUES (%s, 'mqtt', 'meters/q1/readings', 'x', 'payload is not JSON', 'h1'), "
            "(%s, 'mqtt', 'meters/q1/readings', 'y', 'after the day', 'h2')",
            (Q1_DEAD_LETTER_AT, start_of(D2) + timedelta(days=1, hours=2)),
        )
        options = SchemaOptions.from_rows(ingest.execute(SCHEMA_OPTIONS_SQL).fetchall())
        writer = ReadingWriter(ingest, options, timedelta(minutes=5), max_age=timedelta(days=3660))
        app = create_app(Settings(database_url=migrated.role_url(DbRole.API), api_pool_size=2), clock=lambda: NOW)
        with TestClient(app) as client:
            api = Api(client, db, admin, tokens, writer, ingest, api_conn)
            api.store(FIRST_PASS)
            yield api


def entry(day: date, key: str | None, expected: int, first: tuple[int, int], now: tuple[int, int], reread: bool) -> Any:
    """A series entry as answered, `as_of` left out: (read, complete) at the first pass and now."""

    def rate(read: int) -> float | None:
        return None if expected == 0 else round(read / expected, 6)

    return {
        "day": day.isoformat(),
        "key": key,
        "expected": expected,
        "read": first[0],
        "complete": first[1],
        "rate": rate(first[0]),
        "read_after_reread": now[0],
        "complete_after_reread": now[1],
        "rate_after_reread": rate(now[0]),
        "reread": reread,
        "final": True,
    }


def entries(series: Any) -> list[Any]:
    """The series' entries without their `as_of`."""
    return [{k: v for k, v in e.items() if k != "as_of"} for e in series["entries"]]


def reread_d2(api: Api) -> None:
    """Freeze D2's first pass, then store what its re-read brought back."""
    api.freeze(D2)
    api.store(REREAD, start_wh=20_000)


def test_the_daily_series_counts_the_first_pass_and_after_reread(api: Api) -> None:
    before = api.ok("/v1/collection/daily?from=2026-11-19&to=2026-11-20")
    assert {k: v for k, v in before.items() if k != "entries"} == {
        "from": "2026-11-19",
        "to": "2026-11-20",
        "by": None,
        "timezone": "Asia/Shanghai",
    }
    assert entries(before) == [
        entry(D1, None, 6, (3, 1), (3, 1), reread=False),
        entry(D2, None, 7, (2, 1), (2, 1), reread=False),
    ]
    reread_d2(api)
    after = api.ok("/v1/collection/daily?from=2026-11-19&to=2026-11-20")
    assert entries(after) == [
        entry(D1, None, 6, (3, 1), (3, 1), reread=False),
        entry(D2, None, 7, (2, 1), (3, 2), reread=True),
    ]
    as_of = datetime.fromisoformat(after["entries"][1]["as_of"])
    assert as_of.tzinfo is not None
    assert after["entries"][1]["as_of"].endswith("Z")


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        (
            "region",
            [("north", 3, (2, 1), (2, 2)), ("south", 4, (0, 0), (1, 0))],
        ),
        (
            "area",
            [
                (None, 2, (0, 0), (1, 0)),
                ("T1", 2, (2, 1), (2, 2)),
                ("T2", 2, (0, 0), (0, 0)),
                ("T3", 1, (0, 0), (0, 0)),
            ],
        ),
        (
            "concentrator",
            [(None, 2, (0, 0), (1, 0)), ("dcu-1", 3, (2, 1), (2, 2)), ("dcu-2", 2, (0, 0), (0, 0))],
        ),
        ("protocol", [("modbus", 1, (0, 0), (0, 0)), ("mqtt", 6, (2, 1), (3, 2))]),
    ],
)
def test_the_series_by_group(
    api: Api, by: str, expected: list[tuple[str | None, int, tuple[int, int], tuple[int, int]]]
) -> None:
    reread_d2(api)
    series = api.ok(f"/v1/collection/daily?from=2026-11-20&to=2026-11-20&by={by}")
    assert series["by"] == by
    assert entries(series) == [entry(D2, key, n, first, now, reread=True) for key, n, first, now in expected]


def test_a_reading_stored_later_for_a_past_day_is_counted(api: Api) -> None:
    url = "/v1/collection/daily?from=2026-11-19&to=2026-11-19&by=concentrator"
    first = api.ok(url)
    assert [(e["key"], e["read"]) for e in first["entries"]] == [(None, 1), ("dcu-1", 2), ("dcu-2", 0)]
    # asked again with nothing changed: the summary is read as it is
    again = api.ok(url)
    assert again == first
    assert count(api.db, "SELECT count(*) FROM collection_day_changes WHERE day = %s", D1) == 0
    # a concentrator's backlog: b1's D1 arrives now
    api.store({"b1": slots(D1, range(96))}, start_wh=30_000)
    assert count(api.db, "SELECT count(*) FROM collection_day_changes WHERE day = %s", D1) == 1
    later = api.ok(url)
    assert [(e["key"], e["read"], e["complete"]) for e in later["entries"]] == [
        (None, 1, 0),
        ("dcu-1", 2, 1),
        ("dcu-2", 1, 1),
    ]
    assert later["entries"][0]["as_of"] != first["entries"][0]["as_of"]
    assert count(api.db, "SELECT count(*) FROM collection_day_changes WHERE day = %s", D1) == 0


def summary_of(conn: Conn, day: date) -> tuple[list[Any], ...]:
    """A day's summary as stored: its group counts, listed meters and series entries (without when counted)."""
    return (
        conn.execute(
            "SELECT grouping, key, expected, read, complete, read_first, complete_first FROM collection_summary "
            "WHERE day = %s ORDER BY 1, 2",
            (day,),
        ).fetchall(),
        conn.execute(
            "SELECT meter_id, protocol, region, area, concentrator_id, intervals_read, slots::text "
            "FROM collection_summary_meters WHERE day = %s ORDER BY 1",
            (day,),
        ).fetchall(),
        conn.execute(
            "SELECT grouping, regexp_replace(entries_json, '\"as_of\" : \"[^\"]*\"', '', 'g'), "
            "regexp_replace(entries_csv, ',[^,\n]*Z(\n|$)', '\\1', 'g') "
            "FROM collection_summary_entries WHERE day = %s ORDER BY 1",
            (day,),
        ).fetchall(),
    )


@pytest.mark.parametrize("day", [D1, D2], ids=["never re-read", "re-read"])
def test_late_readings_move_only_their_meters_as_a_full_count_would(api: Api, day: date) -> None:
    reread_d2(api)
    assert len(ensure_summaries(api.api_conn, D1, D2)) == 2
    other = D2 if day == D1 else D1
    counted_at = api.db.execute("SELECT computed_at FROM collection_summary_days WHERE day = %s", (other,)).fetchone()
    # a3 read at last (partly), b1 completely, q1 its missing load points, a1 a reading it had (nothing new)
    late = {"a3": slots(day, range(10)), "b1": slots(day, ALL_SLOTS), "q1": slots(day, range(40, 44))}
    api.store(late, start_wh=50_000)
    api.store({"a1": [slots(day, [60])[0] + timedelta(minutes=5)]}, start_wh=90_000)
    [moved] = ensure_summaries(api.api_conn, D1, D2)
    assert (moved.day, moved.recounted) == (day, 4)
    incremental = summary_of(api.db, day)
    api.admin.execute("DELETE FROM collection_summary_days WHERE day = %s", (day,))
    [full] = ensure_summaries(api.api_conn, D1, D2)
    assert (full.day, full.recounted) == (day, None)
    assert summary_of(api.db, day) == incremental
    # the other day untouched
    assert (
        api.db.execute("SELECT computed_at FROM collection_summary_days WHERE day = %s", (other,)).fetchone()
        == counted_at
    )


def test_a_registry_change_is_counted(api: Api) -> None:
    url = "/v1/collection/daily?from=2026-11-19&to=2026-11-19&by=area"
    assert [(e["key"], e["expected"]) for e in api.ok(url)["entries"]] == [
        (None, 1),
        ("T1", 2),
        ("T2", 2),
        ("T3", 1),
    ]
    import_meters(api.db, [row("q1", "mqtt", None, "south", "T3")])
    assert [(e["key"], e["expected"]) for e in api.ok(url)["entries"]] == [("T1", 2), ("T2", 2), ("T3", 2)]
    # an import that changes nothing leaves the summary as it was
    version = count(api.db, "SELECT registry_version FROM collection_summary_state")
    import_meters(api.db, [row("q1", "mqtt", None, "south", "T3")])
    assert count(api.db, "SELECT registry_version FROM collection_summary_state") == version


def test_new_meters_leave_the_days_before_them_as_they_were(api: Api) -> None:
    assert len(ensure_summaries(api.api_conn, D1, D2)) == 2
    import_meters(api.db, [row("new-1", "mqtt", "dcu-2", "south", "T2")])  # registered now: expected from today
    assert ensure_summaries(api.api_conn, D1, D2) == []
    import_meters(api.db, [row("new-2", "mqtt", "dcu-2", "south", "T2", installed_on=D2)])
    [recounted] = ensure_summaries(api.api_conn, D1, D2)
    assert (recounted.day, recounted.recounted) == (D2, None)
    assert count(api.api_conn, "SELECT expected FROM collection_summary WHERE day = %s AND grouping = 'all'", D2) == 8
    # moved to another group: every day
    import_meters(api.db, [row("new-2", "mqtt", "dcu-1", "south", "T2", installed_on=D2)])
    assert [d.day for d in ensure_summaries(api.api_conn, D1, D2)] == [D1, D2]
    # the installation day moved later: from the earlier of the two
    import_meters(api.db, [row("new-2", "mqtt", "dcu-1", "south", "T2", installed_on=D2 + timedelta(days=1))])
    assert [d.day for d in ensure_summaries(api.api_conn, D1, D2)] == [D2]
    assert count(api.api_conn, "SELECT expected FROM collection_summary WHERE day = %s AND grouping = 'all'", D2) == 7


def test_a_day_not_over_is_counted_again_after_a_minute(api: Api) -> None:
    # the database's today: not final however the API's clock is set
    today = datetime.now(SHANGHAI).date()
    recent = datetime.now(UTC) - timedelta(minutes=1)
    stored = ReadingWriter(
        api.ingest,
        SchemaOptions.from_rows(api.ingest.execute(SCHEMA_OPTIONS_SQL).fetchall()),
        timedelta(minutes=5),
    )

    def store_now(meter_id: str) -> None:
        now = datetime.now(UTC)
        decoded = Decoded(readings=[SourcedReading(MeterReading(meter_id, recent, 90_000), "test", "t", now, None)])
        assert stored.write(decoded, now).inserted == 1

    def read_today() -> int:
        return count(api.api_conn, "SELECT read FROM collection_summary WHERE day = %s AND grouping = 'all'", today)

    store_now("a1")
    [done] = ensure_summaries(api.api_conn, today, today)
    assert not done.final
    assert read_today() == 1
    store_now("a3")
    assert ensure_summaries(api.api_conn, today, today) == []  # less than a minute old: served as it is
    assert read_today() == 1
    api.admin.execute("UPDATE collection_summary_days SET computed_at = computed_at - interval '2 minutes'")
    assert len(ensure_summaries(api.api_conn, today, today)) == 1
    assert read_today() == 2


def listed(api: Api, url: str) -> list[tuple[Any, ...]]:
    """(meter_id, missing, last failure kind) of a list's page."""
    page = api.ok(url)
    return [
        (m["meter_id"], m["missing"], None if m["last_failure"] is None else m["last_failure"]["kind"])
        for m in page["meters"]
    ]


def test_the_drill_down_lists(api: Api) -> None:
    reread_d2(api)
    whole_day = ["00:00-24:00"]
    assert listed(api, "/v1/collection/never-read?day=2026-11-20") == [
        ("a3", whole_day, None),
        ("n1", whole_day, None),
    ]
    assert listed(api, "/v1/collection/incomplete?day=2026-11-19") == [
        ("a2", ["12:00-24:00"], None),
        ("q1", ["10:00-11:00"], None),
    ]
    # after re-read: a2 is complete, q1 has the one load point re-read; q1's last dead letter before the day's end
    assert listed(api, "/v1/collection/incomplete?day=2026-11-20") == [
        ("q1", ["00:00-00:15", "00:30-24:00"], "dead_letter")
    ]
    assert listed(api, "/v1/collection/failing?day=2026-11-20") == [
        ("a3", whole_day, None),
        ("b1", whole_day, None),
        ("n1", whole_day, None),
        ("p1", whole_day, "no_connection"),
    ]
    # n1 was not expected on D1: not failing two days in a row
    assert listed(api, "/v1/collection/failing?day=2026-11-20&days=2") == [
        ("a3", whole_day, None),
        ("b1", whole_day, None),
        ("p1", whole_day, "no_connection"),
    ]
    assert listed(api, "/v1/collection/failing?day=2026-11-19&days=1&by=concentrator") == [("p1", whole_day, "timeout")]
    assert listed(api, "/v1/collection/failing?day=2026-11-20&by=concentrator&key=dcu-2") == [
        ("b1", whole_day, None),
        ("n1", whole_day, None),
    ]
    assert listed(api, "/v1/collection/failing?day=2026-11-20&by=area&key=T2") == [
        ("a3", whole_day, None),
        ("b1", whole_day, None),
    ]


def test_a_listed_meter_in_full(api: Api) -> None:
    page = api.ok("/v1/collection/failing?day=2026-11-20&by=protocol&key=modbus")
    assert page == {
        "list": "failing",
        "day": "2026-11-20",
        "timezone": "Asia/Shanghai",
        "by": "protocol",
        "key": "modbus",
        "days": 1,
        "meters": [
            {
                "meter_id": "p1",
                "protocol": "modbus",
                "region": "south",
                "area": "T3",
                "concentrator_id": None,
                "intervals_read": 0,
                "missing": ["00:00-24:00"],
                "last_reading_at": "2026-11-17T16:45:00Z",
                "last_failure": {
                    "at": "2026-11-20T02:00:00Z",
                    "kind": "no_connection",
                    "reason": "connection refused",
                    "attempts": 1,
                },
            }
        ],
        "next_after": None,
    }
    q1 = api.ok("/v1/collection/incomplete?day=2026-11-19")["meters"][1]
    assert q1["meter_id"] == "q1"
    assert q1["last_failure"] is None  # its dead letter came after D1


def test_lists_are_paged_by_meter_id(api: Api) -> None:
    reread_d2(api)
    first = api.ok("/v1/collection/failing?day=2026-11-20&limit=3")
    assert [m["meter_id"] for m in first["meters"]] == ["a3", "b1", "n1"]
    assert first["next_after"] == "n1"
    second = api.ok("/v1/collection/failing?day=2026-11-20&limit=3&after=n1")
    assert [m["meter_id"] for m in second["meters"]] == ["p1"]
    assert second["next_after"] is None


def test_a_meters_readings_and_gaps(api: Api) -> None:
    found = api.ok("/v1/meters/a2/readings?from=2026-11-19&to=2026-11-20")
    assert found["from"] == "2026-11-18T16:00:00Z"
    assert found["to"] == "2026-11-19T16:00:00Z"
    assert (found["intervals"], found["intervals_read"], found["truncated"]) == (96, 48, False)
    assert found["gaps"] == [{"from": "2026-11-19T04:00:00Z", "to": "2026-11-19T16:00:00Z", "intervals": 48}]
    assert len(found["readings"]) == 48
    assert found["readings"][0] == {
        "ts": "2026-11-18T16:00:00Z",
        "energy_import_wh": 10_000,
        "energy_export_wh": None,
        "power_w": None,
        "voltage_v": None,
        "relay_state": None,
        "quality_flags": 0,
        "source": "test",
        "received_at": "2026-11-22T04:00:00Z",
    }
    # a range by instants, not on the quarter hour: the load points that begin in it
    q1 = api.ok("/v1/meters/q1/readings?from=2026-11-19T09:50:00%2B08:00&to=2026-11-19T11:20:00%2B08:00")
    assert (q1["intervals"], q1["intervals_read"]) == (6, 2)
    assert q1["gaps"] == [{"from": "2026-11-19T02:00:00Z", "to": "2026-11-19T03:00:00Z", "intervals": 4}]
    assert api.ok("/v1/meters/a3/readings?from=2026-11-19&to=2026-11-20")["gaps"] == [
        {"from": "2026-11-18T16:00:00Z", "to": "2026-11-19T16:00:00Z", "intervals": 96}
    ]
    unknown = api.get("/v1/meters/nobody/readings?from=2026-11-19&to=2026-11-20")
    assert unknown.status_code == 404
    assert unknown.json()["type"] == "urn:headend:problem:unknown_meter"


def csv_rows(answer: httpx2.Response) -> list[dict[str, str]]:
    """The rows of a CSV answer."""
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(answer.text)))


def test_csv_exports(api: Api) -> None:
    reread_d2(api)
    by_accept = csv_rows(api.get("/v1/collection/daily?from=2026-11-19&to=2026-11-20&by=region", Accept="text/csv"))
    by_format = csv_rows(api.get("/v1/collection/daily?from=2026-11-19&to=2026-11-20&by=region&format=csv"))
    assert by_accept == by_format
    assert [(r["day"], r["key"], r["expected"], r["rate"], r["rate_after_reread"], r["reread"]) for r in by_accept] == [
        ("2026-11-19", "north", "3", "0.666667", "0.666667", "false"),
        ("2026-11-19", "south", "3", "0.333333", "0.333333", "false"),
        ("2026-11-20", "north", "3", "0.666667", "0.666667", "true"),
        ("2026-11-20", "south", "4", "0", "0.25", "true"),
    ]
    # JSON unless CSV is preferred
    assert (
        api.get("/v1/collection/daily?from=2026-11-19&to=2026-11-19", Accept="*/*")
        .headers["content-type"]
        .startswith("application/json")
    )
    assert (
        api.get("/v1/collection/daily?from=2026-11-19&to=2026-11-19", Accept="application/json, text/csv;q=0.5")
        .headers["content-type"]
        .startswith("application/json")
    )
    assert (
        api.get("/v1/collection/daily?from=2026-11-19&to=2026-11-19&format=json", Accept="text/csv")
        .headers["content-type"]
        .startswith("application/json")
    )

    page = api.get("/v1/collection/failing?day=2026-11-20&limit=3&format=csv")
    assert [(r["meter_id"], r["missing"], r["failure_kind"]) for r in csv_rows(page)] == [
        ("a3", "00:00-24:00", ""),
        ("b1", "00:00-24:00", ""),
        ("n1", "00:00-24:00", ""),
    ]
    assert page.headers["link"].endswith('after=n1>; rel="next"')
    [p1] = csv_rows(api.get("/v1/collection/failing?day=2026-11-20&after=n1", Accept="text/csv"))
    assert (p1["failure_at"], p1["failure_kind"], p1["failure_reason"], p1["failure_attempts"]) == (
        "2026-11-20T02:00:00Z",
        "no_connection",
        "connection refused",
        "1",
    )
    assert "link" not in api.get("/v1/collection/failing?day=2026-11-20&after=n1&format=csv").headers
    incomplete = csv_rows(api.get("/v1/collection/incomplete?day=2026-11-20&format=csv"))
    assert [(r["meter_id"], r["missing"], r["failure_kind"]) for r in incomplete] == [
        ("q1", "00:00-00:15 00:30-24:00", "dead_letter")
    ]
    readings = csv_rows(api.get("/v1/meters/a2/readings?from=2026-11-19&to=2026-11-20&format=csv"))
    assert len(readings) == 48
    assert readings[0]["ts"] == "2026-11-18T16:00:00Z"
    assert readings[0]["energy_import_wh"] == "10000"


@pytest.mark.parametrize(
    "url",
    [
        "/v1/collection/daily?from=2026-11-19&to=2026-11-20",
        "/v1/collection/never-read?day=2026-11-20",
        "/v1/collection/incomplete?day=2026-11-20",
        "/v1/collection/failing?day=2026-11-20&days=2",
        "/v1/meters/a1/readings?from=2026-11-19&to=2026-11-20",
    ],
)
def test_roles(api: Api, url: str) -> None:
    for who in ("ops", "watcher", "root"):
        assert api.get(url, who).status_code == 200, who
    for who in ("field", "wechat"):
        refused = api.get(url, who)
        assert refused.status_code == 403, who
        assert refused.headers["content-type"] == "application/problem+json"
    missing = api.get(url, None)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert api.client.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("/v1/collection/daily?from=2025-11-20&to=2026-11-21", "to"),  # 367 days
        ("/v1/collection/daily?from=2026-11-20&to=2026-11-19", "to"),
        ("/v1/collection/daily?from=2026-11-20&to=2026-11-23", "to"),  # after the API's today
        ("/v1/collection/daily?from=2026-02-30&to=2026-11-20", "from"),
        ("/v1/collection/daily?from=20261120&to=2026-11-20", "from"),
        ("/v1/collection/daily?from=1999-12-31&to=2000-01-01", "from"),
        ("/v1/collection/daily?to=2026-11-20", "from"),
        ("/v1/collection/daily?from=2026-11-20&to=2026-11-20&by=street", "by"),
        ("/v1/collection/daily?from=2026-11-20&to=2026-11-20&format=xml", "format"),
        ("/v1/collection/failing?day=2026-11-20&key=dcu-1", "key"),
        ("/v1/collection/failing?day=2026-11-20&days=32", "days"),
        ("/v1/collection/failing?day=2026-11-20&limit=1001", "limit"),
        ("/v1/collection/failing?day=2026-11-20&after=a%20b", "after"),
        ("/v1/meters/a1/readings?from=2026-11-19T00:00:00&to=2026-11-20", "from"),
        ("/v1/meters/a1/readings?from=2026-11-19&to=2026-12-21", "to"),
        ("/v1/meters/a1/readings?from=2026-11-20&to=2026-11-19", "to"),
        ("/v1/meters/a1/readings?from=yesterday&to=2026-11-20", "from"),
    ],
)
def test_refusals(api: Api, url: str, where: str) -> None:
    refused = api.get(url)
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert problem["type"] == "urn:headend:problem:unprocessable"
    assert ["query", where] in [e["loc"][:2] for e in problem["errors"]]


def test_the_routes_are_documented(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    daily = document["paths"]["/v1/collection/daily"]["get"]
    assert daily["tags"] == ["collection"]
    assert set(daily["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    assert {"401", "403", "422", "503"} <= set(daily["responses"])
    for path in ("/v1/collection/never-read", "/v1/collection/incomplete", "/v1/collection/failing"):
        assert document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/MeterListPage"
        }
    assert "404" in document["paths"]["/v1/meters/{meter_id}/readings"]["get"]["responses"]


def test_the_api_role_keeps_the_summary_and_nothing_else(api: Api, migrated: MigratedDatabase) -> None:
    api.ok("/v1/collection/daily?from=2026-11-19&to=2026-11-20&by=region")
    assert count(api.db, "SELECT count(*) FROM collection_summary_days") == 2
    # every grouping set of each day: the fleet, 2 regions, 4 areas, 3 concentrators, 2 protocols
    assert count(api.db, "SELECT count(*) FROM collection_summary WHERE day = %s", D2) == 1 + 2 + 4 + 3 + 2
    # the meters not read completely: D1 a2 a3 b1 q1 p1, D2 a2 a3 b1 q1 p1 n1
    assert count(api.db, "SELECT count(*) FROM collection_summary_meters") == 11
    with (
        psycopg.connect(migrated.role_url(DbRole.INGEST), autocommit=True) as ingest,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        ingest.execute("DELETE FROM collection_day_changes")
