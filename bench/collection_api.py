"""Collection API benchmark: the latency of each collection endpoint on a big fleet, against the bare SQL of its answer.

Run `uv run python -m bench.collection_api [--meters N] [--days D] [--repeat R]`. It prints, in one run:

(1) the seeding: N meters (default 1,000,000; 90 % MQTT behind concentrators of 225, 5 % Modbus and 5 % DL/T 645
    polled directly; 20 regions, a transformer area per concentrator and per 225 direct meters) with D past local days
    (default 30) of `collection_daily` rows written set-based in the server (`INSERT … SELECT`, not through ingest):
    each day 98 % of the meters read, nine in ten of those completely, the rest with a random half of the load points;
    0.5 % of the fleet never read, 1 % unread for the last 7 days; the oldest day frozen for a re-read with a first
    pass 2 points lower; the last reading of every meter read; a failed poll a day for each unread polled meter;
    the readings of 1,000 meters over the D days (96 a day) for the readings endpoint;
(2) the summary built cold: every day counted once (`ensure_summaries`), its time per day;
(3) each endpoint's median latency over R requests (default 15) through the application in process (auth, the
    staleness check, the answer), and beside it the raw limit measured in the same run: the bare SQL that reads the
    same answer from the same tables (the entries' JSON, the list's page, the readings and their load points);
(4) a late reading stored for one past day: the next series answer counts that day again (one day cold);
(5) what the summary saves: the same 30-day series by concentrator aggregated from `collection_daily` directly.

The database is `bench_<random>` on the PostgreSQL at 127.0.0.1:5432 (plain partitions), dropped on exit.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from fastapi.testclient import TestClient

from bench._common import (
    BenchError,
    check_measured_code,
    code_digest,
    code_fingerprint,
    format_table,
    machine_ticks,
    median,
    run_bench,
    scalar,
    throwaway_database,
)
from headend.api import store
from headend.api.app import create_app
from headend.api.credentials import Role, new_token
from headend.db.partitions import ensure_partitions
from headend.reports import collection_lists, collection_summary
from headend.reports.collection_summary import Grouping
from headend.settings import Settings

MEASURED = [
    "headend/api/collection.py",
    "headend/reports/collection_summary.py",
    "headend/reports/collection_lists.py",
    "headend/db/collection_days.py",
    "headend/migrations/versions/0026_collection_summary.py",
]
ZONE = ZoneInfo("Asia/Shanghai")
PER_CONCENTRATOR = 225
READINGS_METERS = 1_000
TARGET_MS = 300.0

_CONCENTRATORS = """
INSERT INTO concentrators (concentrator_id, region)
SELECT format('dcu-%%s', lpad(c::text, 5, '0')), format('region-%%s', c %% 20)
FROM generate_series(0, %(dcus)s - 1) c
"""
_METERS = """
INSERT INTO meters (meter_id, protocol, concentrator_id, region, area, endpoint, unit_id, address, framing, created_at)
SELECT format('m%%s', lpad(i::text, 7, '0')),
       CASE WHEN i < %(mqtt)s THEN 'mqtt' WHEN i %% 2 = 0 THEN 'modbus' ELSE 'dlt645' END,
       CASE WHEN i < %(mqtt)s THEN format('dcu-%%s', lpad((i / 225)::text, 5, '0')) END,
       format('region-%%s', (i / 225) %% 20),
       format('area-%%s', lpad((i / 225)::text, 5, '0')),
       CASE WHEN i >= %(mqtt)s THEN format('10.%%s.%%s.%%s:502', (i / 65536) %% 256, (i / 256) %% 256, i %% 256) END,
       CASE WHEN i >= %(mqtt)s AND i %% 2 = 0 THEN 1 END,
       CASE WHEN i >= %(mqtt)s AND i %% 2 = 1 THEN lpad(i::text, 12, '0') END,
       CASE WHEN i >= %(mqtt)s AND i %% 2 = 0 THEN 'tcp' END,
       now() - interval '400 days'
FROM generate_series(0, %(meters)s - 1) i
"""
# per (meter, day): never read (0.5 %), unread the last 7 days (1 %), else read with 98 %; complete 90 % of those
_DAYS = """
INSERT INTO collection_daily (day, meter_id, readings_count, slots)
SELECT d.day, format('m%%s', lpad(i::text, 7, '0')),
       CASE WHEN h %% 10 = 0 THEN 48 ELSE 96 END,
       CASE WHEN h %% 10 = 0 THEN (repeat('1', 48) || repeat('0', 48))::bit(96) >> (h %% 48)::int
            ELSE ~B'0'::bit(96) END
FROM (SELECT g::date AS day FROM generate_series(%(first)s::date, %(last)s::date, interval '1 day') g) AS d
CROSS JOIN LATERAL generate_series(0, %(meters)s - 1) AS i
CROSS JOIN LATERAL (SELECT abs(hashint8(i::bigint * 100003 + (d.day - date '2000-01-01'))) AS h) AS r
WHERE i %% 200 <> 7                                                 -- never read
  AND NOT (i %% 100 = 3 AND d.day > %(last)s::date - 7)             -- failing for the last 7 days
  AND h %% 50 <> 1                                                  -- unread that day
"""
_STATE = """
INSERT INTO meter_register_state (meter_id, last_ts, last_energy_import_wh)
SELECT meter_id, ((max(day) + 1)::timestamp AT TIME ZONE %(zone)s) - interval '15 minutes', 1000
FROM collection_daily GROUP BY meter_id
"""
_FAILURES = """
INSERT INTO poll_failures (meter_id, at, kind, reason, attempts)
SELECT m.meter_id, (d.day::timestamp AT TIME ZONE %(zone)s) + interval '10 hours', 'timeout',
       'no answer within 1.0 s', 3
FROM meters m
CROSS JOIN (SELECT g::date AS day FROM generate_series(%(first)s::date, %(last)s::date, interval '1 day') g) AS d
WHERE m.protocol <> 'mqtt'
  AND NOT EXISTS (SELECT FROM collection_daily c WHERE c.day = d.day AND c.meter_id = m.meter_id)
"""
_TASK = """
INSERT INTO reread_tasks (task_id, scope, scope_ids, from_at, to_at, state, requested_by, requested_at)
VALUES ('rr-bench', 'meter', ARRAY['m0000003'], %(first)s::date::timestamp AT TIME ZONE %(zone)s,
        (%(first)s::date + 1)::timestamp AT TIME ZONE %(zone)s, 'done', 'bench', now())
"""
_FROZEN = "INSERT INTO collection_first_pass_days (day, frozen_at, task_id) VALUES (%(first)s, now(), 'rr-bench')"
_FIRST_PASS = """
INSERT INTO collection_first_pass (day, meter_id, intervals_read)
SELECT day, meter_id, greatest(bit_count(slots)::int - 2, 1) FROM collection_daily
WHERE day = %(first)s AND meter_id NOT LIKE '%%3'
"""
# the readings of the first READINGS_METERS meters: 96 a day, a register rising
_READINGS = """
INSERT INTO readings (meter_id, ts, energy_import_wh, quality_flags, source, received_at)
SELECT format('m%%s', lpad(i::text, 7, '0')), t, n * 10, 0, 'bench', t
FROM generate_series(0, %(n)s - 1) AS i
CROSS JOIN LATERAL generate_series((%(first)s::date::timestamp AT TIME ZONE %(zone)s),
                                   (%(last)s::date + 1)::timestamp AT TIME ZONE %(zone)s - interval '15 minutes',
                                   interval '15 minutes') WITH ORDINALITY AS s(t, n)
"""
# a concentrator's backlog of one load point a meter, as the ingest writer would store it
_BACKLOG_READINGS = """
INSERT INTO readings (meter_id, ts, energy_import_wh, quality_flags, source, received_at)
SELECT meter_id, %(at)s, 1, 4, 'bench', now() FROM meters WHERE concentrator_id = %(dcu)s
"""
_BACKLOG_DAILY = """
INSERT INTO collection_daily AS d (day, meter_id, readings_count, slots)
SELECT %(day)s, meter_id, 1, B'1'::bit(96) >> 48 FROM meters WHERE concentrator_id = %(dcu)s
ON CONFLICT (day, meter_id) DO UPDATE SET readings_count = d.readings_count + 1, slots = d.slots | excluded.slots
"""
# what the series would cost without the summary: the 30 days by concentrator from the meter-days
_SERIES_WITHOUT_SUMMARY = """
SELECT c.day, m.concentrator_id, count(*), count(*) FILTER (WHERE bit_count(c.slots) = 96)
FROM collection_daily c JOIN meters m USING (meter_id)
WHERE c.day BETWEEN %(first)s AND %(last)s GROUP BY 1, 2
"""


def _timed(label: str, fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - started
    print(f"  {label}: {elapsed:.1f} s", flush=True)
    return elapsed, result


def _seed(url: str, meters: int, first: date, last: date) -> dict[str, float]:
    params = {
        "meters": meters,
        "mqtt": meters * 9 // 10,
        "dcus": (meters * 9 // 10 + PER_CONCENTRATOR - 1) // PER_CONCENTRATOR,
        "first": first,
        "last": last,
        "zone": ZONE.key,
        "n": min(READINGS_METERS, meters),
    }
    times: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_CONCENTRATORS, params)
        times["meters"], _ = _timed("meters", lambda: conn.execute(_METERS, params))
        # its primary key built once after the rows rather than row by row: the same table, sooner
        conn.execute("ALTER TABLE collection_daily DROP CONSTRAINT collection_daily_pkey")
        times["collection_daily"], _ = _timed("collection_daily", lambda: conn.execute(_DAYS, params))
        times["its key"], _ = _timed(
            "its primary key", lambda: conn.execute("ALTER TABLE collection_daily ADD PRIMARY KEY (day, meter_id)")
        )
        times["register state"], _ = _timed("meter_register_state", lambda: conn.execute(_STATE, params))
        times["poll failures"], _ = _timed("poll_failures", lambda: conn.execute(_FAILURES, params))
        conn.execute(_TASK, params)
        conn.execute(_FROZEN, params)
        times["first pass"], _ = _timed("first pass of the oldest day", lambda: conn.execute(_FIRST_PASS, params))
        utc_days = {first - timedelta(days=1) + timedelta(days=k) for k in range((last - first).days + 3)}
        ensure_partitions(conn, utc_days)
        times["readings"], _ = _timed(f"readings of {params['n']:,} meters", lambda: conn.execute(_READINGS, params))
        _timed("vacuum analyze", lambda: conn.execute("VACUUM ANALYZE"))
    return times


def _median_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm: the first answer may still count a day or load a plan
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return median(samples)


def run(args: argparse.Namespace) -> None:
    """Seed, build the summary, measure every endpoint and its raw limit, print the tables."""
    digest = code_digest(MEASURED)
    print(code_fingerprint(MEASURED, digest))
    today = datetime.now(ZONE).date()
    last = today - timedelta(days=1)
    first = last - timedelta(days=args.days - 1)
    busy0, total0 = machine_ticks()
    with throwaway_database() as url:
        print(f"seeding {args.meters:,} meters × {args.days} days ({first} … {last}) in {url.rsplit('/', 1)[-1]}")
        started = time.perf_counter()
        _seed(url, args.meters, first, last)
        print(f"  seeded in {time.perf_counter() - started:.0f} s")
        with psycopg.connect(url, autocommit=True) as conn:
            rows = scalar(conn, "SELECT count(*) FROM collection_daily")
            print(f"  {rows:,} rows of collection_daily")
            cold, done = _timed(
                f"summary of {args.days} days, cold", lambda: collection_summary.ensure_summaries(conn, first, last)
            )
            if len(done) != args.days or not all(d.final for d in done):
                raise BenchError(f"expected {args.days} final days summarized, got {done}")
            print(f"  {cold / args.days:.2f} s a day; {sum(d.listed for d in done):,} meters listed in all")
            token = new_token()
            store.create_principal(conn, "bench", Role.ADMIN, token, created_by="bench")
            dcu = "dcu-00007"
            failing_day = last
            check_measured_code(MEASURED, digest)
            app = create_app(Settings(database_url=url, api_pool_size=2))
            results: list[list[str]] = []
            with TestClient(app) as client:
                headers = {"Authorization": f"Bearer {token}"}

                def get(path: str, **extra: str) -> Callable[[], Any]:
                    def call() -> int:
                        answer = client.get(path, headers={**headers, **extra})
                        if answer.status_code != 200:
                            raise BenchError(f"{path}: {answer.status_code} {answer.text[:300]}")
                        return len(answer.content)

                    return call

                def bare(fn: Callable[[psycopg.Connection[Any]], Any]) -> Callable[[], Any]:
                    return lambda: fn(conn)

                span = f"from={first}&to={last}"
                lists = f"day={failing_day}&limit=100"
                meter_day = f"from={last}&to={today}"
                cases: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
                    (
                        f"daily {args.days} d",
                        get(f"/v1/collection/daily?{span}"),
                        bare(lambda c: collection_lists.series_json(c, first, last, Grouping.ALL)),
                    ),
                    (
                        f"daily {args.days} d by region",
                        get(f"/v1/collection/daily?{span}&by=region"),
                        bare(lambda c: collection_lists.series_json(c, first, last, Grouping.REGION)),
                    ),
                    (
                        f"daily {args.days} d by protocol",
                        get(f"/v1/collection/daily?{span}&by=protocol"),
                        bare(lambda c: collection_lists.series_json(c, first, last, Grouping.PROTOCOL)),
                    ),
                    (
                        f"daily {args.days} d by concentrator",
                        get(f"/v1/collection/daily?{span}&by=concentrator"),
                        bare(lambda c: collection_lists.series_json(c, first, last, Grouping.CONCENTRATOR)),
                    ),
                    (
                        f"daily {args.days} d by area, CSV",
                        get(f"/v1/collection/daily?{span}&by=area&format=csv"),
                        bare(lambda c: collection_lists.series_csv(c, first, last, Grouping.AREA)),
                    ),
                    (
                        "daily 7 d by concentrator",
                        get(f"/v1/collection/daily?from={last - timedelta(days=6)}&to={last}&by=concentrator"),
                        bare(
                            lambda c: collection_lists.series_json(
                                c, last - timedelta(days=6), last, Grouping.CONCENTRATOR
                            )
                        ),
                    ),
                ]
                day_end = datetime.combine(failing_day + timedelta(days=1), datetime.min.time(), ZONE)
                for which, path, extra in (
                    (collection_lists.MeterList.NEVER_READ, "never-read", ""),
                    (collection_lists.MeterList.INCOMPLETE, "incomplete", ""),
                    (collection_lists.MeterList.FAILING, "failing", ""),
                    (collection_lists.MeterList.FAILING, "failing", "&days=7"),
                    (collection_lists.MeterList.INCOMPLETE, "incomplete", f"&by=concentrator&key={dcu}"),
                ):
                    days = 7 if "days=7" in extra else 1
                    key = dcu if "key" in extra else None
                    grouping = Grouping.CONCENTRATOR if key else Grouping.ALL

                    def page(
                        c: psycopg.Connection[Any],
                        which: collection_lists.MeterList = which,
                        days: int = days,
                        key: str | None = key,
                        grouping: Grouping = grouping,
                    ) -> Any:
                        return collection_lists.list_meters(
                            c, which, failing_day, day_end, grouping=grouping, key=key, days=days, limit=100
                        )

                    cases.append(
                        (
                            f"{path}{extra.replace('&', ' ')} (100)",
                            get(f"/v1/collection/{path}?{lists}{extra}"),
                            bare(page),
                        )
                    )
                cases.append(
                    (
                        "readings of a meter, 1 d",
                        get(f"/v1/meters/m0000001/readings?{meter_day}"),
                        bare(lambda c: collection_lists.meter_readings(c, "m0000001", *(_bounds(last, today)))),
                    )
                )
                cases.append(
                    (
                        "readings of a meter, 30 d",
                        get(f"/v1/meters/m0000001/readings?from={today - timedelta(days=30)}&to={today}"),
                        bare(
                            lambda c: collection_lists.meter_readings(
                                c, "m0000001", *(_bounds(today - timedelta(days=30), today))
                            )
                        ),
                    )
                )
                for label, ours, limit in cases:
                    size = ours()
                    ours_ms = _median_ms(ours, args.repeat)
                    limit_ms = _median_ms(limit, args.repeat)
                    results.append(
                        [
                            label,
                            f"{ours_ms:.1f}",
                            f"{limit_ms:.1f}",
                            f"{ours_ms / limit_ms:.1f}" if limit_ms else "-",
                            f"{size / 1024:,.0f}",
                            "yes" if ours_ms < TARGET_MS else "NO",
                        ]
                    )
                    print(f"  {label}: {ours_ms:.1f} ms (limit {limit_ms:.1f} ms)", flush=True)
                    check_measured_code(MEASURED, digest)

                # a concentrator's backlog for a past day, stored as the writer stores it (readings, which the trigger
                # marks, and collection_daily): the next answer counts those meters again
                late_day = last - timedelta(days=3)
                late_at = datetime.combine(late_day, datetime.min.time(), ZONE) + timedelta(hours=12, minutes=7)
                recount: list[float] = []
                for k in range(3):
                    dcu_k = f"dcu-{20 + k:05d}"
                    with conn.transaction():
                        conn.execute(_BACKLOG_READINGS, {"dcu": dcu_k, "at": late_at})
                        conn.execute(_BACKLOG_DAILY, {"dcu": dcu_k, "day": late_day})
                    started = time.perf_counter()
                    get(f"/v1/collection/daily?{span}&by=concentrator")()
                    recount.append((time.perf_counter() - started) * 1000)
                    if scalar(conn, "SELECT count(*) FROM collection_day_changes") != 0:
                        raise BenchError("the backlog's marks were not cleared")
                results.append(
                    [
                        f"daily {args.days} d by concentrator, {PER_CONCENTRATOR} meters' backlog",
                        f"{median(recount):.0f}",
                        "-",
                        "-",
                        "-",
                        "yes" if median(recount) < TARGET_MS else "NO",
                    ]
                )
                # a meter registered: the days before it stay as they are
                conn.execute(
                    "INSERT INTO meters (meter_id, protocol, concentrator_id, region, area) "
                    "VALUES ('new-meter', 'mqtt', 'dcu-00001', 'region-1', 'area-00001')"
                )
                registered = _median_ms(get(f"/v1/collection/daily?{span}&by=concentrator"), 3)
                results.append(
                    [
                        f"daily {args.days} d by concentrator, a meter registered",
                        f"{registered:.0f}",
                        "-",
                        "-",
                        "-",
                        "yes" if registered < TARGET_MS else "NO",
                    ]
                )
            without, _ = _timed(
                f"the {args.days}-day series by concentrator from collection_daily (no summary)",
                lambda: conn.execute(_SERIES_WITHOUT_SUMMARY, {"first": first, "last": last}).fetchall(),
            )
    busy1, total1 = machine_ticks()
    print()
    print(
        format_table(["answer", "ours ms (median)", "raw limit ms", "ratio", "KiB", f"< {TARGET_MS:.0f} ms"], results)
    )
    print()
    print(f"summary cold: {cold:.1f} s for {args.days} days ({cold / args.days:.2f} s a day)")
    print(f"the {args.days}-day series by concentrator without the summary: {without * 1000:.0f} ms")
    print(f"machine busy during the run: {100 * (busy1 - busy0) / max(total1 - total0, 1):.0f} %")


def _bounds(first: date, end: date) -> tuple[datetime, datetime]:
    return (
        datetime.combine(first, datetime.min.time(), ZONE).astimezone(UTC),
        datetime.combine(end, datetime.min.time(), ZONE).astimezone(UTC),
    )


def main() -> int:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meters", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    if args.days < 7 or args.meters < 1000:
        parser.error("at least 1,000 meters and 7 days")
    return run_bench(lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
