"""Re-read tasks in the database: asked for (meters resolved, each with the way it will be asked), taken, finished."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row

from headend.db.text import storable
from headend.reread.states import MeterState, RereadPath, Scope, TaskState

Connection = psycopg.Connection[Any]
# a `read_readings` command covers at most this much (docs/mqtt.md), and 645 meters hold 62 daily freezes
MAX_RANGE = timedelta(days=31)
MAX_METERS = 100_000
DETAIL_MAX_CHARS = 1000
_TASK_COLUMNS = (
    "task_id, scope, scope_ids, from_at, to_at, state, requested_by, requested_at, started_at, finished_at, "
    "meters_total, intervals_missing, intervals_recovered, detail"
)


class RereadError(ValueError):
    """A re-read that can't be asked for as given (unknown meters, a bad range …); nothing was stored."""


@dataclass(frozen=True, slots=True)
class TaskMeter:
    """One meter of a task: how it is asked, where it is, what was missing and what came back."""

    meter_id: str
    path: RereadPath
    state: MeterState
    intervals_missing: int
    intervals_recovered: int
    detail: str | None
    concentrator_id: str | None = None


@dataclass(frozen=True, slots=True)
class RereadTask:
    """A re-read an operator asked for, with its meters when loaded with them."""

    task_id: str
    scope: Scope
    scope_ids: tuple[str, ...]
    from_at: datetime
    to_at: datetime
    state: TaskState
    requested_by: str
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    meters_total: int
    intervals_missing: int
    intervals_recovered: int
    detail: str | None
    meters: tuple[TaskMeter, ...] = ()

    def to_json(self, zone: ZoneInfo) -> dict[str, Any]:
        """The stable JSON form (`headend reread --json`, the API): instants local with their offset."""

        def local(value: datetime | None) -> str | None:
            return None if value is None else value.astimezone(zone).isoformat()

        return {
            "task_id": self.task_id,
            "scope": str(self.scope),
            "scope_ids": list(self.scope_ids),
            "from": local(self.from_at),
            "to": local(self.to_at),
            "state": str(self.state),
            "requested_by": self.requested_by,
            "requested_at": local(self.requested_at),
            "started_at": local(self.started_at),
            "finished_at": local(self.finished_at),
            "meters_total": self.meters_total,
            "intervals_missing": self.intervals_missing,
            "intervals_recovered": self.intervals_recovered,
            "detail": self.detail,
            "meters": [
                {
                    "meter_id": m.meter_id,
                    "path": str(m.path),
                    "state": str(m.state),
                    "intervals_missing": m.intervals_missing,
                    "intervals_recovered": m.intervals_recovered,
                    "detail": m.detail,
                }
                for m in self.meters
            ],
        }


def path_of(protocol: str, concentrator_id: str | None) -> RereadPath:
    """How a meter of `protocol` (behind `concentrator_id`, if any) is asked again."""
    if protocol == "modbus":
        return RereadPath.POLL
    if protocol == "dlt645":
        return RereadPath.DLT645_FROZEN
    assert protocol == "mqtt", protocol
    return RereadPath.MQTT_METER if concentrator_id is None else RereadPath.MQTT_CONCENTRATOR


def _check_range(from_at: datetime, to_at: datetime, now: datetime) -> None:
    assert from_at.utcoffset() is not None
    assert to_at.utcoffset() is not None
    if to_at <= from_at:
        raise RereadError(f"the range ends ({to_at.isoformat()}) before or when it starts ({from_at.isoformat()})")
    if to_at - from_at > MAX_RANGE:
        raise RereadError(f"the range is longer than {MAX_RANGE.days} days: ask for several")
    if from_at >= now:
        raise RereadError(f"the range starts in the future ({from_at.isoformat()})")


def _resolve(cur: psycopg.Cursor[dict[str, Any]], scope: Scope, ids: list[str]) -> list[dict[str, Any]]:
    """The active meters a task covers, in a stable order; RereadError naming what is unknown."""
    if scope is Scope.CONCENTRATOR:
        cur.execute("SELECT concentrator_id FROM concentrators WHERE concentrator_id = ANY(%s)", (ids,))
        known = {row["concentrator_id"] for row in cur.fetchall()}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise RereadError(f"unknown concentrator(s): {', '.join(unknown[:10])}")
        cur.execute(
            "SELECT meter_id, protocol, concentrator_id FROM meters "
            "WHERE concentrator_id = ANY(%s) AND status = 'active' ORDER BY meter_id",
            (ids,),
        )
        meters = cur.fetchall()
        if not meters:
            raise RereadError(f"no active meter behind {', '.join(ids[:10])}")
        return meters
    cur.execute(
        "SELECT meter_id, protocol, concentrator_id, status FROM meters WHERE meter_id = ANY(%s) ORDER BY meter_id",
        (ids,),
    )
    meters = cur.fetchall()
    found = {row["meter_id"] for row in meters}
    unknown = [i for i in ids if i not in found]
    if unknown:
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise RereadError(f"unknown meter(s): {', '.join(unknown[:10])}{more}")
    retired = [row["meter_id"] for row in meters if row["status"] != "active"]
    if retired:
        raise RereadError(f"meter(s) not active: {', '.join(retired[:10])}")
    return meters


def create_task(
    conn: Connection, scope: Scope, ids: list[str], from_at: datetime, to_at: datetime, *, by: str, now: datetime
) -> RereadTask:
    """Store a pending re-read of the meters `ids` name (a meter, concentrators, a list) over [from_at, to_at)."""
    ids = list(dict.fromkeys(i.strip() for i in ids if i.strip()))
    if not ids:
        raise RereadError("name at least one meter or concentrator")
    if scope is Scope.METER and len(ids) != 1:
        raise RereadError("a meter re-read names one meter: use a list for several")
    if len(ids) > MAX_METERS:
        raise RereadError(f"at most {MAX_METERS} meters or concentrators a task")
    _check_range(from_at, to_at, now)
    task_id = f"rr-{uuid.uuid4().hex[:20]}"
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        meters = _resolve(cur, scope, ids)
        cur.execute(
            "INSERT INTO reread_tasks (task_id, scope, scope_ids, from_at, to_at, state, requested_by, requested_at, "
            "meters_total) VALUES (%s, %s, %s, %s, %s, 'pending', %s, %s, %s)",
            (task_id, str(scope), ids, from_at, to_at, storable(by, 200), now, len(meters)),
        )
        with cur.copy("COPY reread_task_meters (task_id, meter_id, path, state, updated_at) FROM STDIN") as copy:
            for meter in meters:
                path = path_of(meter["protocol"], meter["concentrator_id"])
                copy.write_row((task_id, meter["meter_id"], str(path), str(MeterState.PENDING), now))
        cur.execute("NOTIFY reread_tasks")
    task = load_task(conn, task_id)
    assert task is not None
    return task


def _task(row: dict[str, Any], meters: tuple[TaskMeter, ...] = ()) -> RereadTask:
    return RereadTask(
        task_id=row["task_id"],
        scope=Scope(row["scope"]),
        scope_ids=tuple(row["scope_ids"]),
        from_at=row["from_at"],
        to_at=row["to_at"],
        state=TaskState(row["state"]),
        requested_by=row["requested_by"],
        requested_at=row["requested_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        meters_total=row["meters_total"],
        intervals_missing=row["intervals_missing"],
        intervals_recovered=row["intervals_recovered"],
        detail=row["detail"],
        meters=meters,
    )


def load_task(conn: Connection, task_id: str) -> RereadTask | None:
    """A task with its meters, or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_TASK_COLUMNS} FROM reread_tasks WHERE task_id = %s", (task_id,))
        row = cur.fetchone()
        if row is None:
            return None
        cur.execute(
            "SELECT t.meter_id, t.path, t.state, t.intervals_missing, t.intervals_recovered, t.detail, "
            "m.concentrator_id FROM reread_task_meters t JOIN meters m USING (meter_id) "
            "WHERE t.task_id = %s ORDER BY t.meter_id",
            (task_id,),
        )
        meters = tuple(
            TaskMeter(
                m["meter_id"],
                RereadPath(m["path"]),
                MeterState(m["state"]),
                m["intervals_missing"],
                m["intervals_recovered"],
                m["detail"],
                m["concentrator_id"],
            )
            for m in cur.fetchall()
        )
    return _task(row, meters)


def list_tasks(conn: Connection, limit: int = 50) -> list[RereadTask]:
    """The latest tasks, newest first, without their meters."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_TASK_COLUMNS} FROM reread_tasks ORDER BY requested_at DESC LIMIT %s", (limit,))
        return [_task(row) for row in cur.fetchall()]


def next_pending(conn: Connection) -> str | None:
    """The oldest pending task's id, if any."""
    row = conn.execute(
        "SELECT task_id FROM reread_tasks WHERE state = 'pending' ORDER BY requested_at LIMIT 1"
    ).fetchone()
    return None if row is None else str(row[0])


def claim(conn: Connection, task_id: str, now: datetime) -> bool:
    """Take a pending task (True), or learn that another runner has it or it ended (False)."""
    row = conn.execute(
        "UPDATE reread_tasks SET state = 'running', started_at = %s WHERE task_id = %s AND state = 'pending' "
        "RETURNING task_id",
        (now, task_id),
    ).fetchone()
    return row is not None


def record_meter(
    conn: Connection,
    task_id: str,
    meter_id: str,
    state: MeterState,
    now: datetime,
    *,
    missing: int | None = None,
    recovered: int | None = None,
    detail: str | None = None,
) -> None:
    """Move one meter of a task to `state`, with its counts and detail when given."""
    conn.execute(
        "UPDATE reread_task_meters SET state = %s, updated_at = %s, "
        "intervals_missing = coalesce(%s, intervals_missing), intervals_recovered = coalesce(%s, intervals_recovered), "
        "detail = coalesce(%s, detail) WHERE task_id = %s AND meter_id = %s",
        (str(state), now, missing, recovered, _text(detail), task_id, meter_id),
    )


def _text(detail: str | None) -> str | None:
    return None if detail is None else storable(detail, DETAIL_MAX_CHARS)


def finish(conn: Connection, task_id: str, state: TaskState, now: datetime, detail: str | None = None) -> None:
    """End a task: its counts summed from its meters, and a detail (a summary, or why it failed)."""
    assert state in (TaskState.DONE, TaskState.FAILED), state
    conn.execute(
        "UPDATE reread_tasks t SET state = %s, finished_at = %s, detail = %s, "
        "intervals_missing = s.missing, intervals_recovered = s.recovered "
        "FROM (SELECT coalesce(sum(intervals_missing), 0) AS missing, "
        "             coalesce(sum(intervals_recovered), 0) AS recovered "
        "      FROM reread_task_meters WHERE task_id = %s) s WHERE t.task_id = %s",
        (str(state), now, _text(detail), task_id, task_id),
    )
