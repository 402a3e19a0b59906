"""The dispatcher's tables: commands taken from the outbox, their transitions with the audit trail, alarms, relays.

Every state change goes through `move`, which checks the state machine, updates the row and appends the audit
record in the caller's transaction. The row lock on the command is always taken before the account's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from headend.dispatch.lifecycle import OPEN_STATES, AlarmKind, CommandState, ReconnectMode, can_move
from prepay_engine.account import RelayAction as AccountAction
from prepay_engine.account import RelayCommand
from protocols.readings import RelayState
from protocols.relay_codec import RelayAction

Connection = psycopg.Connection[Any]
Cursor = psycopg.Cursor[dict[str, Any]]

COMMAND_COLUMNS: Final = (
    "command_id",
    "account_id",
    "sequence",
    "meter_id",
    "concentrator_id",
    "action",
    "reconnect_mode",
    "state",
    "attempts",
    "next_attempt_at",
    "issued_at",
    "expires_at",
    "sent_at",
    "acknowledged_at",
    "finished_at",
    "relay",
    "superseded_by",
    "requested_by",
    "approved_by",
    "detail",
    "version",
    "test_id",
)


class CommandError(ValueError):
    """A command operation refused: unknown command, or a transition the state machine forbids."""


@dataclass(frozen=True, slots=True)
class Command:
    """A command row."""

    command_id: str
    account_id: str | None
    sequence: int | None
    meter_id: str
    concentrator_id: str | None
    action: RelayAction
    reconnect_mode: ReconnectMode
    state: CommandState
    attempts: int
    next_attempt_at: datetime | None
    issued_at: datetime
    expires_at: datetime
    sent_at: datetime | None
    acknowledged_at: datetime | None
    finished_at: datetime | None
    relay: str | None
    superseded_by: str | None
    requested_by: str
    approved_by: str | None
    detail: str
    version: int
    test_id: int | None = None  # the commissioning test that sent it (never an account's command)

    @property
    def account_command(self) -> RelayCommand | None:
        """The account's view of this command (None for a relay read)."""
        if self.account_id is None or self.sequence is None or self.action is RelayAction.READ_RELAY:
            return None
        return RelayCommand(self.command_id, self.account_id, self.meter_id, self.sequence, AccountAction(self.action))


def command_from_row(row: dict[str, Any]) -> Command:
    """A `commands` row as a Command."""
    values = {c: row[c] for c in COMMAND_COLUMNS}
    values["action"] = RelayAction(row["action"])
    values["reconnect_mode"] = ReconnectMode(row["reconnect_mode"])
    values["state"] = CommandState(row["state"])
    return Command(**values)


_SELECT = f"SELECT {', '.join(COMMAND_COLUMNS)} FROM commands"


@dataclass(frozen=True, slots=True)
class CommandPage:
    """Commands newest first; `next_before` is the last one's id when older ones exist."""

    commands: list[Command]
    next_before: str | None


def list_commands(
    conn: Connection,
    *,
    state: CommandState | None = None,
    account_id: str | None = None,
    meter_id: str | None = None,
    action: RelayAction | None = None,
    limit: int = 50,
    before: str | None = None,
) -> CommandPage:
    """A page of commands, newest first (by issued_at, then id), older than the command `before`.

    Raises CommandError when `before` is not a command.
    """
    # constant fragments only; the values are parameters
    where: list[str] = []
    params: dict[str, Any] = {"n": limit + 1}
    for column, value in (("state", state), ("account_id", account_id), ("meter_id", meter_id), ("action", action)):
        if value is not None:
            where.append(f"{column} = %({column})s")
            params[column] = str(value)
    with conn.cursor(row_factory=dict_row) as cur:
        if before is not None:
            row = cur.execute("SELECT issued_at FROM commands WHERE command_id = %s", (before,)).fetchone()
            if row is None:
                raise CommandError(f"no command {before!r}")
            where.append("(issued_at, command_id) < (%(before_at)s, %(before)s)")
            params |= {"before_at": row["issued_at"], "before": before}
        condition = f"WHERE {' AND '.join(where)}" if where else ""
        rows = cur.execute(
            f"{_SELECT} {condition} ORDER BY issued_at DESC, command_id DESC LIMIT %(n)s", params
        ).fetchall()
    commands = [command_from_row(r) for r in rows[:limit]]
    return CommandPage(commands, commands[-1].command_id if len(rows) > limit else None)


def open_commands(conn: Connection, meter_id: str, limit: int = 50) -> list[Command]:
    """The meter's commands not in a final state, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"{_SELECT} WHERE meter_id = %s AND state = ANY(%s) ORDER BY issued_at DESC, command_id DESC LIMIT %s",
            (meter_id, sorted(str(s) for s in OPEN_STATES), limit),
        ).fetchall()
    return [command_from_row(r) for r in rows]


def lock_command(cur: Cursor, command_id: str, *, skip_locked: bool = False) -> Command | None:
    """The command, row-locked for the caller's transaction (None if unknown, or locked by another when skipping)."""
    # NO KEY UPDATE: the send's audit record (another connection) references the row while it is locked
    cur.execute(
        f"{_SELECT} WHERE command_id = %s FOR NO KEY UPDATE{' SKIP LOCKED' if skip_locked else ''}", (command_id,)
    )
    row = cur.fetchone()
    return None if row is None else command_from_row(row)


def get_command(conn: Connection, command_id: str) -> Command | None:
    """The command as committed."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"{_SELECT} WHERE command_id = %s", (command_id,))
        row = cur.fetchone()
    return None if row is None else command_from_row(row)


def take_requests(cur: Cursor, now: datetime, ttl: timedelta, since: datetime | None) -> list[str]:
    """Turn new outbox requests into commands (created, due now) and supersede the commands they replace."""
    cur.execute(
        """
        WITH new AS (
            SELECT r.request_id, r.account_id, r.sequence, r.meter_id, r.action, r.supersedes, r.requested_by,
                r.reasons, r.evidence, m.concentrator_id, m.reconnect_mode
            FROM command_requests r JOIN meters m USING (meter_id)
            WHERE (%(since)s::timestamptz IS NULL OR r.created_at >= %(since)s)
                AND NOT EXISTS (SELECT 1 FROM commands c WHERE c.command_id = r.request_id)
            ORDER BY r.created_at, r.account_id, r.sequence
        ), taken AS (
            INSERT INTO commands (command_id, account_id, sequence, meter_id, concentrator_id, action, reconnect_mode,
                state, next_attempt_at, issued_at, expires_at, requested_by)
            SELECT request_id, account_id, sequence, meter_id, concentrator_id, action, reconnect_mode, 'created',
                %(now)s, %(now)s, %(expires)s, requested_by
            FROM new
            ON CONFLICT (command_id) DO NOTHING
            RETURNING command_id
        )
        INSERT INTO command_audit (command_id, at, from_state, to_state, actor, detail, inputs)
        SELECT n.request_id, %(now)s, NULL, 'created', n.requested_by,
            n.action || ' requested' || coalesce(', superseding ' || n.supersedes, ''),
            jsonb_build_object('reasons', n.reasons, 'evidence', n.evidence, 'request_id', n.request_id)
        FROM new n JOIN taken t ON t.command_id = n.request_id
        RETURNING command_id
        """,
        {"since": since, "now": now, "expires": now + ttl},
    )
    taken = [str(r["command_id"]) for r in cur.fetchall()]
    if taken:
        cur.execute(
            "SELECT request_id AS command_id, supersedes FROM command_requests "
            "WHERE request_id = ANY(%s) AND supersedes IS NOT NULL",
            (taken,),
        )
        for row in cur.fetchall():
            superseded = lock_command(cur, str(row["supersedes"]))
            if superseded is not None and superseded.state not in _ENDED:
                move(
                    cur,
                    superseded,
                    CommandState.SUPERSEDED,
                    now,
                    actor="dispatcher",
                    detail=f"superseded by {row['command_id']}",
                    superseded_by=str(row["command_id"]),
                )
    return taken


_ENDED: Final = frozenset(
    {CommandState.CONFIRMED, CommandState.FAILED, CommandState.EXPIRED, CommandState.SUPERSEDED, CommandState.CANCELLED}
)


def can_cancel(state: CommandState) -> bool:
    """Whether a command in `state` may still be withdrawn."""
    return can_move(state, CommandState.CANCELLED)


def move(
    cur: Cursor,
    command: Command,
    target: CommandState,
    now: datetime,
    *,
    actor: str,
    detail: str,
    inputs: dict[str, Any] | None = None,
    audited: bool = False,
    **changes: Any,
) -> Command:
    """Move a locked command to `target` (with column changes), appending its audit record unless `audited`."""
    if not can_move(command.state, target):
        raise CommandError(f"{command.command_id}: {command.state} → {target} is not allowed")
    values: dict[str, Any] = {"state": str(target), "detail": detail, **changes}
    if target in _ENDED:
        values["finished_at"] = now
        values["next_attempt_at"] = None
    elif target is CommandState.HELD:
        values["next_attempt_at"] = None
    assignments = ", ".join(f"{c} = %({c})s" for c in values)
    cur.execute(
        f"UPDATE commands SET {assignments}, version = version + 1, updated_at = now() "
        f"WHERE command_id = %(command_id)s RETURNING {', '.join(COMMAND_COLUMNS)}",
        {**values, "command_id": command.command_id},
    )
    row = cur.fetchone()
    assert row is not None, command.command_id
    if not audited:
        audit(cur, command.command_id, now, command.state, target, actor, detail, inputs)
    return command_from_row(row)


def audit(
    cur: Cursor,
    command_id: str,
    now: datetime,
    from_state: CommandState | None,
    to_state: CommandState,
    actor: str,
    detail: str,
    inputs: dict[str, Any] | None,
) -> None:
    """Append one audit record."""
    cur.execute(
        "INSERT INTO command_audit (command_id, at, from_state, to_state, actor, detail, inputs) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            command_id,
            now,
            None if from_state is None else str(from_state),
            str(to_state),
            actor,
            detail,
            Jsonb(inputs or {}),
        ),
    )


def create_test_command(
    cur: Cursor,
    command_id: str,
    meter_id: str,
    action: RelayAction,
    test_id: int,
    *,
    by: str,
    now: datetime,
    ttl: timedelta,
    detail: str,
    inputs: dict[str, Any],
) -> Command:
    """Create a commissioning test's command (created, due now; audited), sent by the dispatcher like any other."""
    cur.execute("SELECT concentrator_id, reconnect_mode FROM meters WHERE meter_id = %s", (meter_id,))
    meter = cur.fetchone()
    if meter is None:
        raise CommandError(f"no meter {meter_id!r}")
    cur.execute(
        "INSERT INTO commands (command_id, meter_id, concentrator_id, action, reconnect_mode, state, "
        "next_attempt_at, issued_at, expires_at, requested_by, test_id) "
        "VALUES (%s, %s, %s, %s, %s, 'created', %s, %s, %s, %s, %s)",
        (
            command_id,
            meter_id,
            meter["concentrator_id"],
            str(action),
            meter["reconnect_mode"],
            now,
            now,
            now + ttl,
            by,
            test_id,
        ),
    )
    audit(cur, command_id, now, None, CommandState.CREATED, by, detail, inputs)
    command = lock_command(cur, command_id)
    assert command is not None
    return command


def meter_under_test(cur: Cursor, meter_id: str) -> int | None:
    """The commissioning test moving the meter's relay now (started, not finished), if any."""
    cur.execute(
        "SELECT test_id FROM switch_tests WHERE meter_id = %s AND started_at IS NOT NULL AND finished_at IS NULL",
        (meter_id,),
    )
    row = cur.fetchone()
    return None if row is None else int(row["test_id"])


def due_command_ids(conn: Connection, now: datetime, limit: int) -> list[str]:
    """Commands whose next step (send, resend, expire) is due, oldest first."""
    rows = conn.execute(
        "SELECT command_id FROM commands WHERE state IN ('created', 'sent', 'acknowledged') "
        "AND next_attempt_at <= %s ORDER BY next_attempt_at LIMIT %s",
        (now, limit),
    ).fetchall()
    return [str(r[0]) for r in rows]


def disconnects_sent_since(cur: Cursor, since: datetime) -> int:
    """Disconnects first sent after `since` (the storm limit's count)."""
    cur.execute("SELECT count(*) AS n FROM commands WHERE action = 'disconnect' AND sent_at > %s", (since,))
    row = cur.fetchone()
    return 0 if row is None else int(row["n"])


def open_alarm_id(cur: Cursor, meter_id: str) -> int | None:
    """An unresolved relay alarm of the meter, if any."""
    cur.execute(
        "SELECT alarm_id FROM relay_alarms WHERE meter_id = %s AND resolved_at IS NULL ORDER BY alarm_id LIMIT 1",
        (meter_id,),
    )
    row = cur.fetchone()
    return None if row is None else int(row["alarm_id"])


ALARM_COLUMNS: Final = (
    "alarm_id",
    "meter_id",
    "command_id",
    "kind",
    "detail",
    "relay",
    "raised_at",
    "resolved_at",
    "resolved_by",
)
_SELECT_ALARMS: Final = f"SELECT {', '.join(ALARM_COLUMNS)} FROM relay_alarms"


@dataclass(frozen=True, slots=True)
class Alarm:
    """A relay alarm row: a meter whose relay was not where it should be."""

    alarm_id: int
    meter_id: str
    command_id: str | None
    kind: AlarmKind
    detail: str
    relay: RelayState
    raised_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None


@dataclass(frozen=True, slots=True)
class AlarmPage:
    """Alarms newest first; `next_before_id` is the last one's id when older ones exist."""

    alarms: list[Alarm]
    next_before_id: int | None


def _alarm_from_row(row: dict[str, Any]) -> Alarm:
    return Alarm(**{**row, "kind": AlarmKind(row["kind"]), "relay": RelayState(row["relay"])})


def get_alarm(conn: Connection, alarm_id: int) -> Alarm | None:
    """The alarm as committed."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"{_SELECT_ALARMS} WHERE alarm_id = %s", (alarm_id,)).fetchone()
    return None if row is None else _alarm_from_row(row)


def list_alarms(
    conn: Connection,
    *,
    unresolved: bool | None = True,
    meter_id: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> AlarmPage:
    """A page of alarms newest first: unresolved ones (True), resolved ones (False) or all (None)."""
    where: list[str] = []
    if unresolved is not None:
        where.append("resolved_at IS NULL" if unresolved else "resolved_at IS NOT NULL")
    params: dict[str, Any] = {"n": limit + 1}
    if meter_id is not None:
        where.append("meter_id = %(meter)s")
        params["meter"] = meter_id
    if before_id is not None:
        where.append("alarm_id < %(before)s")
        params["before"] = before_id
    condition = f"WHERE {' AND '.join(where)}" if where else ""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(f"{_SELECT_ALARMS} {condition} ORDER BY alarm_id DESC LIMIT %(n)s", params).fetchall()
    alarms = [_alarm_from_row(r) for r in rows[:limit]]
    return AlarmPage(alarms, alarms[-1].alarm_id if len(rows) > limit else None)


def raise_alarm(
    cur: Cursor, meter_id: str, command_id: str | None, kind: AlarmKind, relay: RelayState, detail: str, now: datetime
) -> int:
    """Record an alarm about the meter's relay; its id."""
    cur.execute(
        "INSERT INTO relay_alarms (meter_id, command_id, kind, detail, relay, raised_at) "
        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING alarm_id",
        (meter_id, command_id, str(kind), detail, str(relay), now),
    )
    row = cur.fetchone()
    assert row is not None
    return int(row["alarm_id"])


def resolve_alarm(conn: Connection, alarm_id: int, by: str, now: datetime) -> bool:
    """Mark an alarm resolved; False if unknown or already resolved."""
    cur = conn.execute(
        "UPDATE relay_alarms SET resolved_at = %s, resolved_by = %s WHERE alarm_id = %s AND resolved_at IS NULL",
        (now, by, alarm_id),
    )
    return cur.rowcount == 1


def note_relay(
    cur: Cursor, meter_id: str, relay: RelayState, armed: bool, reported_at: datetime, now: datetime, source: str
) -> None:
    """Keep the meter's latest reported relay position (by the meter's clock)."""
    cur.execute(
        """
        INSERT INTO meter_relays (meter_id, relay, ready_for_reconnection, reported_at, received_at, source)
        VALUES (%s, %s, %s, %s, %s, %s)
        ON CONFLICT (meter_id) DO UPDATE SET relay = excluded.relay,
            ready_for_reconnection = excluded.ready_for_reconnection, reported_at = excluded.reported_at,
            received_at = excluded.received_at, source = excluded.source
        WHERE meter_relays.reported_at <= excluded.reported_at
        """,
        (meter_id, str(relay), armed, reported_at, now, source),
    )


def relay_noted(cur: Cursor, meter_id: str, relay: RelayState, armed: bool, reported_at: datetime, source: str) -> bool:
    """Whether this very report (same meter time, position and source) is the meter's last one kept."""
    cur.execute(
        "SELECT EXISTS (SELECT FROM meter_relays WHERE meter_id = %s AND relay = %s AND ready_for_reconnection = %s "
        "AND reported_at = %s AND source = %s) AS noted",
        (meter_id, str(relay), armed, reported_at, source),
    )
    row = cur.fetchone()
    return bool(row and row["noted"])


def answer_recorded(cur: Cursor, command_id: str, actor: str, stamp: dict[str, Any]) -> bool:
    """Whether the command's audit trail already holds this answer of the meter (same meter time, result, relay)."""
    cur.execute(
        "SELECT EXISTS (SELECT FROM command_audit WHERE command_id = %s AND actor = %s AND inputs @> %s) AS recorded",
        (command_id, actor, Jsonb(stamp)),
    )
    row = cur.fetchone()
    return bool(row and row["recorded"])


def meter_known(cur: Cursor, meter_id: str) -> bool:
    """Whether the meter is registered."""
    cur.execute("SELECT EXISTS (SELECT FROM meters WHERE meter_id = %s) AS known", (meter_id,))
    row = cur.fetchone()
    return bool(row and row["known"])


@dataclass(frozen=True, slots=True)
class RelayPosition:
    """The relay position a meter last reported, by its clock."""

    meter_id: str
    relay: RelayState
    ready_for_reconnection: bool
    reported_at: datetime
    received_at: datetime
    source: str


def relay_position(conn: Connection, meter_id: str) -> RelayPosition | None:
    """The meter's last reported relay position (None if it never reported one)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT meter_id, relay, ready_for_reconnection, reported_at, received_at, source FROM meter_relays "
            "WHERE meter_id = %s",
            (meter_id,),
        ).fetchone()
    return None if row is None else RelayPosition(**{**row, "relay": RelayState(row["relay"])})


def history(conn: Connection, command_id: str) -> list[dict[str, Any]]:
    """The command's audit trail, oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT seq, at, from_state, to_state, actor, detail, inputs FROM command_audit WHERE command_id = %s "
            "ORDER BY seq",
            (command_id,),
        )
        return list(cur.fetchall())
