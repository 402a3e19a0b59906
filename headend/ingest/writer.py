"""Write decoded readings in one transaction: binary COPY into a stage, set-based validation, de-duplicating merge.

The register checks run in SQL over the whole batch (one statement, no per-row round trips). Their
specification, and the reference the integration tests compare them against, is the pure
`headend.ingest.validation.register_flags` / `grid_flags`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from headend.db.engine import SchemaOptions, Storage
from headend.db.partitions import ensure_partitions, existing_partition_days
from headend.db.text import storable
from headend.ingest.messages import DeadLetter, Decoded, SourcedReading, reading_payload
from headend.ingest.validation import ROLLOVER_HIGH_FRACTION, ROLLOVER_LOW_FRACTION, QualityFlag, TimeWindow
from headend.settings import Settings

LATE_LOOKBACK = timedelta(days=7)
DEFAULT_READING_MAX_AGE = timedelta(days=int(Settings.model_fields["reading_max_age_days"].default))
# dead_letters is unique on (topic, payload_sha256, item_index): a B-tree entry takes at most 2704 bytes, and a
# character at most 4 in UTF-8 once storable() has escaped what PostgreSQL cannot store
TOPIC_MAX_CHARS = 512
REASON_MAX_CHARS = 1000
# a batch whose readings need a partition is rolled back, the partitions created, and the batch written again
PARTITION_ATTEMPTS = 3

_STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS ingest_stage (
    position integer NOT NULL,
    meter_id varchar(32) NOT NULL,
    ts timestamptz NOT NULL,
    energy_import_wh bigint NOT NULL,
    energy_export_wh bigint,
    power_w integer,
    voltage_v double precision,
    relay_state text,
    source text NOT NULL,
    received_at timestamptz NOT NULL,
    via_concentrator varchar(32)
) ON COMMIT DELETE ROWS
"""
_COPY_STAGE = (
    "COPY ingest_stage (position, meter_id, ts, energy_import_wh, energy_export_wh, power_w, voltage_v, relay_state, "
    "source, received_at, via_concentrator) FROM STDIN (FORMAT BINARY)"
)
_STAGE_TYPES = [
    "int4",
    "varchar",
    "timestamptz",
    "int8",
    "int8",
    "int4",
    "float8",
    "text",
    "text",
    "timestamptz",
    "varchar",
]

# Staged readings whose meter is unknown or not active, or that a concentrator forwarded for a meter not registered
# behind it; usually none.
_UNREGISTERED = """
SELECT s.position, m.status, m.concentrator_id
FROM ingest_stage s LEFT JOIN meters m ON m.meter_id = s.meter_id
WHERE m.meter_id IS NULL OR m.status <> 'active'
   OR (s.via_concentrator IS NOT NULL AND m.concentrator_id IS DISTINCT FROM s.via_concentrator)
"""
# Staged readings at a (meter, time) whose stored reading holds other register values: a second version of a
# reading, which the unique key would drop without a word (the first stored is kept). Also a batch's own second
# version, once its first is stored.
_CONFLICTING = """
SELECT s.position, r.energy_import_wh, r.energy_export_wh, r.source
FROM ingest_stage s JOIN readings r ON r.meter_id = s.meter_id AND r.ts = s.ts
WHERE r.energy_import_wh <> s.energy_import_wh
   OR (r.energy_export_wh IS NOT NULL AND s.energy_export_wh IS NOT NULL AND r.energy_export_wh <> s.energy_export_wh)
ORDER BY s.position
"""

# `previous_wh` is the register value of the reading just before each one in time, among this batch
# and what is stored: the later of the previous reading in the batch and the previous stored one (the
# stored one on a tie: a repeat in the batch of a stored reading is not stored, so it is not the truth). The
# previous stored one is the meter's latest (kept in meter_register_state) for a reading newer than
# that, and otherwise looked up in a bounded window so that partitions are pruned.
_MERGE_HEAD = f"""
WITH staged AS (
    SELECT DISTINCT ON (meter_id, ts) * FROM ingest_stage ORDER BY meter_id, ts, position
), ordered AS (
    SELECT s.*, lag(s.ts) OVER w AS batch_previous_ts, lag(s.energy_import_wh) OVER w AS batch_previous_wh
    FROM staged s WINDOW w AS (PARTITION BY s.meter_id ORDER BY s.ts)
), neighbours AS (
    SELECT o.*, m.register_max_wh,
           CASE WHEN o.ts > st.last_ts THEN st.last_ts ELSE late.ts END AS stored_previous_ts,
           CASE WHEN o.ts > st.last_ts THEN st.last_energy_import_wh ELSE late.energy_import_wh END
               AS stored_previous_wh
    FROM ordered o
    JOIN meters m ON m.meter_id = o.meter_id
    LEFT JOIN meter_register_state st ON st.meter_id = o.meter_id
    LEFT JOIN LATERAL (
        SELECT r.ts, r.energy_import_wh FROM readings r
        WHERE o.ts <= st.last_ts
          AND r.meter_id = o.meter_id AND r.ts < o.ts AND r.ts >= o.ts - %(late_lookback)s
        ORDER BY r.ts DESC LIMIT 1
    ) late ON true
), checked AS (
    SELECT n.*,
           CASE WHEN n.stored_previous_ts IS NULL THEN n.batch_previous_wh
                WHEN n.batch_previous_ts IS NULL OR n.stored_previous_ts >= n.batch_previous_ts
                    THEN n.stored_previous_wh
                ELSE n.batch_previous_wh END AS previous_wh
    FROM neighbours n
), ins AS (
    INSERT INTO readings (meter_id, ts, energy_import_wh, energy_export_wh, power_w, voltage_v, relay_state,
                          quality_flags, source, received_at)
    SELECT meter_id, ts, energy_import_wh, energy_export_wh, power_w, voltage_v, relay_state,
           (CASE WHEN previous_wh IS NULL OR energy_import_wh >= previous_wh THEN 0
                 WHEN previous_wh >= register_max_wh * {ROLLOVER_HIGH_FRACTION}
                      AND energy_import_wh <= register_max_wh * {ROLLOVER_LOW_FRACTION} THEN {int(QualityFlag.ROLLOVER)}
                 ELSE {int(QualityFlag.REGISTER_DECREASE)} END
            | CASE WHEN date_bin('15 minutes', ts, TIMESTAMPTZ 'epoch') = ts THEN 0
                   ELSE {int(QualityFlag.OFF_GRID)} END)::smallint,
           source, received_at
    FROM checked ORDER BY meter_id, ts
    ON CONFLICT (meter_id, ts) DO NOTHING
    RETURNING meter_id, ts, energy_import_wh
), state AS (
    INSERT INTO meter_register_state AS s (meter_id, last_ts, last_energy_import_wh)
    SELECT DISTINCT ON (meter_id) meter_id, ts, energy_import_wh FROM ins ORDER BY meter_id, ts DESC
    ON CONFLICT (meter_id) DO UPDATE SET
        last_ts = greatest(s.last_ts, excluded.last_ts),
        last_energy_import_wh = CASE WHEN excluded.last_ts > s.last_ts THEN excluded.last_energy_import_wh
                                     ELSE s.last_energy_import_wh END,
        -- late readings too: the engine charges the meter's account when this passes its seen_stored_seq
        stored_seq = s.stored_seq + 1
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
# the meters of this batch's new readings, for the engine runner (reading_batches)
_MERGE_BATCH = """
, batch AS (
    INSERT INTO reading_batches (meter_ids) SELECT array_agg(DISTINCT meter_id) FROM ins HAVING count(*) > 0
)
"""
_MERGE_TAIL = "SELECT count(*) FROM ins"
_DEAD_LETTER_INSERT = """
INSERT INTO dead_letters (received_at, source, topic, payload, item_index, reason, payload_sha256)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Counts of one committed batch."""

    offered: int
    inserted: int
    dead_letters: int
    dead: tuple[DeadLetter, ...] = ()  # the dead letters recorded, with their reasons

    @property
    def duplicates(self) -> int:
        """Valid readings that were already stored (or repeated within the batch)."""
        return self.offered - self.inserted


def _stage_row(position: int, item: SourcedReading) -> tuple[object, ...]:
    r = item.reading
    relay = None if r.relay is None else r.relay.value
    return (
        position,
        r.meter_id,
        r.ts,
        r.energy_import_wh,
        r.energy_export_wh,
        r.power_w,
        r.voltage_v,
        relay,
        item.source,
        item.received_at,
        item.concentrator_id,
    )


class _PartitionsMissingError(Exception):
    """Raised inside a write transaction to roll it back: `days` need partitions first."""

    def __init__(self, days: set[date]) -> None:
        super().__init__(f"no partition for {len(days)} day(s)")
        self.days = days


class ReadingWriter:
    """Stores batches of readings on one psycopg connection; each `write` is one transaction."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        options: SchemaOptions,
        future_tolerance: timedelta,
        max_age: timedelta = DEFAULT_READING_MAX_AGE,
        dead_letter_source: str = "mqtt",
    ) -> None:
        self._conn = conn
        self._dead_letter_source = dead_letter_source
        self._options = options
        self._future_tolerance = future_tolerance
        self._max_age = max_age
        self._known_partitions: set[date] = set()
        daily = _MERGE_DAILY if options.storage is Storage.PARTITIONED else ""
        self._merge_sql = _MERGE_HEAD + daily + _MERGE_BATCH + _MERGE_TAIL
        self._merge_params = {"zone": options.collection_timezone, "late_lookback": LATE_LOOKBACK}
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
        """Validate and store `decoded` in one transaction; nothing is committed if anything fails.

        A time outside the window is refused before anything else is done with it; a partition is created only
        for a reading that passed every check, the registry's included.
        """
        assert now.utcoffset() is not None
        window = TimeWindow.around(now, self._max_age, self._future_tolerance)
        dead = list(decoded.dead_letters)
        staged: list[SourcedReading] = []
        for item in decoded.readings:
            reason = window.refusal(item.reading.ts)
            if reason is None:
                staged.append(item)
            else:
                dead.append(_dead_letter(item, reason))
        try:
            for attempt in range(1, PARTITION_ATTEMPTS + 1):
                try:
                    return self._write(staged, list(dead), check_partitions=attempt < PARTITION_ATTEMPTS)
                except _PartitionsMissingError as missing:
                    self.ensure_partitions(missing.days)
        except BaseException:
            self._known_partitions.clear()  # read them again: one may have been dropped since
            raise
        raise AssertionError("unreachable: the last attempt does not check partitions")

    def _write(self, staged: list[SourcedReading], dead: list[DeadLetter], *, check_partitions: bool) -> WriteResult:
        inserted = refused = 0
        with self._conn.transaction():
            if staged:
                with self._conn.cursor().copy(_COPY_STAGE) as copy:
                    copy.set_types(_STAGE_TYPES)
                    for position, item in enumerate(staged):
                        copy.write_row(_stage_row(position, item))
                # a temp table has no statistics; without them the planner may hash the whole meter registry
                self._conn.execute("ANALYZE ingest_stage")
                refused_positions = self._refuse_unregistered(staged, dead)
                refused = len(refused_positions)
                if refused < len(staged):
                    if check_partitions:
                        self._check_partitions(staged, refused_positions)
                    record = self._conn.execute(self._merge_sql, self._merge_params).fetchone()
                    assert record is not None
                    inserted = int(record[0])
                    if inserted < len(staged) - refused:
                        refused += self._refuse_conflicting(staged, dead)
            dead = [_storable(d) for d in dead]
            if dead:
                self._record_dead_letters(dead)
        assert inserted <= len(staged) - refused
        return WriteResult(offered=len(staged) - refused, inserted=inserted, dead_letters=len(dead), dead=tuple(dead))

    def _check_partitions(self, staged: list[SourcedReading], refused_positions: set[int]) -> None:
        """Raise _PartitionsMissingError for the days of the readings to merge that have no partition yet."""
        if self._options.storage is not Storage.PARTITIONED:
            return
        days = {item.reading.ts.astimezone(UTC).date() for p, item in enumerate(staged) if p not in refused_positions}
        missing = days - self._known_partitions
        if missing:
            self._known_partitions |= existing_partition_days(self._conn)
            missing -= self._known_partitions
            if missing:
                raise _PartitionsMissingError(missing)

    def _refuse_unregistered(self, staged: list[SourcedReading], dead: list[DeadLetter]) -> set[int]:
        """Move readings of unknown or inactive meters from the stage to `dead`; return their positions."""
        refused = self._conn.execute(_UNREGISTERED).fetchall()
        if not refused:
            return set()
        for position, status, behind in refused:
            item = staged[position]
            meter_id = item.reading.meter_id
            if status is None:
                reason = f"unknown meter {meter_id!r}"
            elif status != "active":
                reason = f"meter {meter_id!r} is {status}, not active"
            else:
                registered = "a direct meter" if behind is None else f"registered behind concentrator {behind!r}"
                reason = f"meter {meter_id!r} is not behind concentrator {item.concentrator_id!r}: {registered}"
            dead.append(_dead_letter(item, reason))
        positions = [row[0] for row in refused]
        self._conn.execute("DELETE FROM ingest_stage WHERE position = ANY(%s)", (positions,))
        return set(positions)

    def _refuse_conflicting(self, staged: list[SourcedReading], dead: list[DeadLetter]) -> int:
        """Append a dead letter for each staged reading that conflicts with the one stored; how many."""
        conflicting = self._conn.execute(_CONFLICTING).fetchall()
        for position, import_wh, export_wh, source in conflicting:
            item = staged[position]
            r = item.reading
            reason = (
                f"conflicts with the reading stored for meter {r.meter_id!r} at {r.ts.astimezone(UTC).isoformat()} "
                f"({_registers(import_wh, export_wh)}, from {source}): "
                f"{_registers(r.energy_import_wh, r.energy_export_wh)}; the stored reading is kept"
            )
            dead.append(_dead_letter(item, reason))
        return len(conflicting)

    def _record_dead_letters(self, dead: list[DeadLetter]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(
                _DEAD_LETTER_INSERT,
                [
                    (
                        d.received_at,
                        self._dead_letter_source,
                        d.topic,
                        d.payload,
                        d.item_index,
                        d.reason,
                        hashlib.sha256(d.payload).digest(),
                    )
                    for d in dead
                ],
            )


def _registers(import_wh: int, export_wh: int | None) -> str:
    """A reading's register values as a conflict's reason names them."""
    return f"energy_import_wh {import_wh}" + ("" if export_wh is None else f", energy_export_wh {export_wh}")


def _storable(dead: DeadLetter) -> DeadLetter:
    """`dead` with a topic and a reason that PostgreSQL stores and indexes, whatever the device sent."""
    topic, reason = storable(dead.topic, TOPIC_MAX_CHARS), storable(dead.reason, REASON_MAX_CHARS)
    if topic == dead.topic and reason == dead.reason:
        return dead
    return dataclasses.replace(dead, topic=topic, reason=reason)


def _dead_letter(item: SourcedReading, reason: str) -> DeadLetter:
    return DeadLetter(
        item.topic, reading_payload(item), reason, item.received_at, item.item_index, item.reading.meter_id
    )
