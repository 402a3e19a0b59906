"""Write decoded readings in one transaction: validate against the registry, binary COPY, de-duplicating merge."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from headend.db.engine import SchemaOptions, Storage
from headend.db.partitions import ensure_partitions
from headend.ingest.messages import DeadLetter, Decoded, SourcedReading, reading_payload
from headend.ingest.validation import QualityFlag, future_reason, grid_flags, register_flags

LATE_LOOKBACK = timedelta(days=7)

_STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS ingest_stage (
    meter_id varchar(32) NOT NULL,
    ts timestamptz NOT NULL,
    energy_import_wh bigint NOT NULL,
    energy_export_wh bigint,
    power_w integer,
    voltage_v double precision,
    relay_state text,
    quality_flags smallint NOT NULL,
    source text NOT NULL,
    received_at timestamptz NOT NULL
) ON COMMIT DELETE ROWS
"""
_COPY_STAGE = (
    "COPY ingest_stage (meter_id, ts, energy_import_wh, energy_export_wh, power_w, voltage_v, relay_state, "
    "quality_flags, source, received_at) FROM STDIN (FORMAT BINARY)"
)
_STAGE_TYPES = [
    "varchar",
    "timestamptz",
    "int8",
    "int8",
    "int4",
    "float8",
    "text",
    "int2",
    "text",
    "timestamptz",
]
_MERGE_HEAD = """
WITH ins AS (
    INSERT INTO readings (meter_id, ts, energy_import_wh, energy_export_wh, power_w, voltage_v, relay_state,
                          quality_flags, source, received_at)
    SELECT meter_id, ts, energy_import_wh, energy_export_wh, power_w, voltage_v, relay_state,
           quality_flags, source, received_at
    FROM ingest_stage ORDER BY meter_id, ts
    ON CONFLICT (meter_id, ts) DO NOTHING
    RETURNING meter_id, ts, energy_import_wh
), state AS (
    INSERT INTO meter_register_state AS s (meter_id, last_ts, last_energy_import_wh)
    SELECT DISTINCT ON (meter_id) meter_id, ts, energy_import_wh FROM ins ORDER BY meter_id, ts DESC
    ON CONFLICT (meter_id) DO UPDATE SET last_ts = excluded.last_ts,
                                         last_energy_import_wh = excluded.last_energy_import_wh
    WHERE excluded.last_ts > s.last_ts
)
"""
_MERGE_DAILY = """
, daily AS (
    INSERT INTO collection_daily AS d (day, meter_id, readings_count, slots)
    SELECT (ts AT TIME ZONE %(zone)s)::date AS day, meter_id, count(*),
           bit_or(B'1'::bit(96) >> (extract(hour FROM ts AT TIME ZONE %(zone)s)::int * 4
                                    + extract(minute FROM ts AT TIME ZONE %(zone)s)::int / 15))
    FROM ins GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (day, meter_id) DO UPDATE SET readings_count = d.readings_count + excluded.readings_count,
                                              slots = d.slots | excluded.slots
)
"""
_MERGE_TAIL = "SELECT count(*) FROM ins"
_DEAD_LETTER_INSERT = """
INSERT INTO dead_letters (received_at, source, topic, payload, item_index, reason, payload_sha256)
VALUES (%s, 'mqtt', %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class MeterInfo:
    """What the writer needs to know of a meter to validate its readings."""

    status: str
    register_max_wh: int
    last_ts: datetime | None
    last_energy_import_wh: int | None


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Counts of one committed batch."""

    offered: int
    inserted: int
    dead_letters: int

    @property
    def duplicates(self) -> int:
        """Valid readings that were already stored (or repeated within the batch)."""
        return self.offered - self.inserted


class ReadingWriter:
    """Stores batches of readings on one psycopg connection; each `write` is one transaction."""

    def __init__(self, conn: psycopg.Connection[Any], options: SchemaOptions, future_tolerance: timedelta) -> None:
        self._conn = conn
        self._options = options
        self._future_tolerance = future_tolerance
        self._known_partitions: set[date] = set()
        merge = _MERGE_HEAD + (_MERGE_DAILY if options.storage is Storage.PARTITIONED else "") + _MERGE_TAIL
        self._merge_sql = merge
        with conn.transaction():
            conn.execute(_STAGE_DDL)

    def ensure_partitions(self, days: set[date]) -> None:
        """Create missing daily partitions (partitioned storage only), in their own transaction."""
        if self._options.storage is not Storage.PARTITIONED:
            return
        missing = days - self._known_partitions
        if missing:
            ensure_partitions(self._conn, missing)
            self._known_partitions |= missing

    def write(self, decoded: Decoded, now: datetime) -> WriteResult:
        """Validate and store `decoded` in one transaction; nothing is committed if anything fails."""
        assert now.utcoffset() is not None
        self.ensure_partitions({item.reading.ts.astimezone(UTC).date() for item in decoded.readings})
        dead = list(decoded.dead_letters)
        with self._conn.transaction():
            info = self._meter_info({item.reading.meter_id for item in decoded.readings})
            rows, valid = self._validate(decoded.readings, info, now, dead)
            inserted = 0
            if rows:
                with self._conn.cursor().copy(_COPY_STAGE) as copy:
                    copy.set_types(_STAGE_TYPES)
                    for row in rows:
                        copy.write_row(row)
                record = self._conn.execute(self._merge_sql, {"zone": self._options.collection_timezone}).fetchone()
                assert record is not None
                inserted = int(record[0])
            if dead:
                self._record_dead_letters(dead)
        return WriteResult(offered=valid, inserted=inserted, dead_letters=len(dead))

    def _meter_info(self, meter_ids: set[str]) -> dict[str, MeterInfo]:
        if not meter_ids:
            return {}
        cursor = self._conn.execute(
            "SELECT m.meter_id, m.status, m.register_max_wh, s.last_ts, s.last_energy_import_wh "
            "FROM meters m LEFT JOIN meter_register_state s USING (meter_id) WHERE m.meter_id = ANY(%s)",
            (list(meter_ids),),
        )
        return {str(r[0]): MeterInfo(str(r[1]), int(r[2]), r[3], r[4]) for r in cursor}

    def _previous_before(self, keys: list[tuple[str, datetime]]) -> dict[tuple[str, datetime], int]:
        """The stored register value just before each (meter, ts), looking back a bounded window."""
        if not keys:
            return {}
        cursor = self._conn.execute(
            "SELECT q.meter_id, q.ts, p.energy_import_wh "
            "FROM unnest(%s::text[], %s::timestamptz[]) AS q(meter_id, ts) "
            "CROSS JOIN LATERAL (SELECT r.energy_import_wh FROM readings r "
            "  WHERE r.meter_id = q.meter_id AND r.ts < q.ts AND r.ts >= q.ts - %s "
            "  ORDER BY r.ts DESC LIMIT 1) AS p",
            ([k[0] for k in keys], [k[1] for k in keys], LATE_LOOKBACK),
        )
        return {(str(r[0]), r[1]): int(r[2]) for r in cursor}

    def _validate(
        self, items: list[SourcedReading], info: dict[str, MeterInfo], now: datetime, dead: list[DeadLetter]
    ) -> tuple[list[tuple[object, ...]], int]:
        """Rows to stage (one per meter and time) and the count of valid readings including repeats."""
        by_meter: dict[str, list[SourcedReading]] = defaultdict(list)
        for item in items:
            meter_id = item.reading.meter_id
            meter = info.get(meter_id)
            reason: str | None
            if meter is None:
                reason = f"unknown meter {meter_id!r}"
            elif meter.status != "active":
                reason = f"meter {meter_id!r} is {meter.status}, not active"
            else:
                reason = future_reason(item.reading, now, self._future_tolerance)
            if reason is not None:
                dead.append(self._dead_letter(item, reason))
                continue
            by_meter[meter_id].append(item)

        late: list[tuple[str, datetime]] = []
        for meter_id, group in by_meter.items():
            group.sort(key=lambda i: i.reading.ts)
            last_ts = info[meter_id].last_ts
            if last_ts is not None and group[0].reading.ts <= last_ts:
                late.append((meter_id, group[0].reading.ts))
        previous_late = self._previous_before(late)

        rows: list[tuple[object, ...]] = []
        for meter_id, group in by_meter.items():
            meter = info[meter_id]
            first_ts = group[0].reading.ts
            if meter.last_ts is not None and first_ts <= meter.last_ts:
                previous: int | None = previous_late.get((meter_id, first_ts))
            else:
                previous = meter.last_energy_import_wh
            seen: set[datetime] = set()
            for item in group:
                r = item.reading
                if r.ts in seen:
                    continue
                seen.add(r.ts)
                flags = register_flags(previous, r.energy_import_wh, meter.register_max_wh) | grid_flags(r.ts)
                previous = r.energy_import_wh
                rows.append(
                    (
                        meter_id,
                        r.ts,
                        r.energy_import_wh,
                        r.energy_export_wh,
                        r.power_w,
                        r.voltage_v,
                        None if r.relay is None else r.relay.value,
                        int(flags),
                        item.source,
                        item.received_at,
                    )
                )
        return rows, sum(len(group) for group in by_meter.values())

    @staticmethod
    def _dead_letter(item: SourcedReading, reason: str) -> DeadLetter:
        payload = reading_payload(item)
        return DeadLetter(item.topic, payload, reason, item.received_at, item.item_index)

    def _record_dead_letters(self, dead: list[DeadLetter]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(
                _DEAD_LETTER_INSERT,
                [
                    (d.received_at, d.topic, d.payload, d.item_index, d.reason, hashlib.sha256(d.payload).digest())
                    for d in dead
                ],
            )


QUALITY_FLAG_NAMES = {flag.value: flag.name for flag in QualityFlag}
