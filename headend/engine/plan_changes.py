"""An account's tariff or disconnect policy changed from a stated instant: the request, the history, the application.

Rules (docs/engine.md, "Changing an account's tariff or policy"):

- A change takes effect at an instant on the 15-minute grid (the grid the intervals are charged on); without a
  time asked for, at the first grid instant not before now.
- A tariff change may not lie before the account's `charged_until`: the intervals charged so far stay as they
  were priced (a correction of charged usage is a ledger adjustment, not a change). Every interval starting
  before the instant is priced with the old tariff, every one from it with the new; the engine switches when
  charging reaches the instant, in the runner, its eager on-grid charging and the settlement alike. The tier
  cycle's counter crosses the change as it crosses a version change of one tariff
  (`prepay_engine.tariffs.cycle_usage_across`): kept when the cycle is defined the same way, else from zero.
- A policy change may not lie before now: decisions taken so far were taken under the old policy. It applies to
  every decision from its instant (the runner's, and those after a payment, a flag change or a relay report); the
  account is woken at the instant so that its new policy decides at once.
- Changes of one kind follow each other: a new one must take effect after the account's latest of that kind, so
  the old code each records stays true. Several may be pending. The latest pending change of a kind may be
  cancelled; a change in force can't (ask for another).
- The history (`account_plan_changes`, `account_plan_change_cancellations`) is append-only: who asked, when,
  from when, old → new, and each withdrawal. Whether a change is applied is told by the account's
  `next_tariff_change_at` / `next_policy_change_at`, the earliest change of each kind not yet applied.
"""

from __future__ import annotations

import getpass
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row

from headend.engine.catalog import Catalog
from prepay_engine.tariffs import TariffNotInForceError
from prepay_engine.usage import INTERVAL, floor_to_interval

Connection = psycopg.Connection[Any]
Cursor = psycopg.Cursor[Any]


class PlanChangeKind(StrEnum):
    """What a plan change changes."""

    TARIFF = "tariff"
    POLICY = "policy"


class PlanChangeState(StrEnum):
    """Where a plan change stands."""

    PENDING = "pending"  # not applied yet: charging (tariff) or a decision (policy) has not reached its instant
    APPLIED = "applied"
    CANCELLED = "cancelled"


class PlanChangeError(ValueError):
    """A plan change refused before anything changed."""


@dataclass(frozen=True, slots=True)
class PlanChange:
    """One change of an account's tariff or policy, as recorded."""

    change_id: int
    account_id: str
    kind: PlanChangeKind
    effective_at: datetime
    old_code: str
    new_code: str
    requested_by: str
    requested_at: datetime
    state: PlanChangeState = PlanChangeState.PENDING
    cancelled_by: str | None = None
    cancelled_at: datetime | None = None


_NEXT_COLUMN: Final = {PlanChangeKind.TARIFF: "next_tariff_change_at", PlanChangeKind.POLICY: "next_policy_change_at"}
_CODE_COLUMN: Final = {PlanChangeKind.TARIFF: "tariff_code", PlanChangeKind.POLICY: "policy_code"}
_CHANGE_COLUMNS: Final = (
    "c.change_id, c.account_id, c.kind, c.effective_at, c.old_code, c.new_code, c.requested_by, c.requested_at"
)


def next_grid_instant(instant: datetime) -> datetime:
    """The first instant of the 15-minute grid at or after the aware `instant` (UTC)."""
    start = floor_to_interval(instant)
    return start if start == instant else start + INTERVAL


def default_actor() -> str:
    """Who asks, when a command line does not say: `cli:<login name>`."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name in the environment or the password database
        return "cli"


def _local(instant: datetime, zone: ZoneInfo) -> str:
    return instant.astimezone(zone).isoformat()


def _lock(cur: Cursor, account_id: str) -> dict[str, Any]:
    cur.execute(
        "SELECT account_id, tariff_code, policy_code, zone, charged_until, wake_at, next_tariff_change_at, "
        "next_policy_change_at FROM prepaid_accounts WHERE account_id = %s FOR UPDATE",
        (account_id,),
    )
    row = cur.fetchone()
    if row is None:
        raise PlanChangeError(f"no prepaid account {account_id!r}")
    return dict(row)


def _change(row: Mapping[str, Any]) -> PlanChange:
    return PlanChange(
        int(row["change_id"]),
        str(row["account_id"]),
        PlanChangeKind(row["kind"]),
        row["effective_at"].astimezone(UTC),
        str(row["old_code"]),
        str(row["new_code"]),
        str(row["requested_by"]),
        row["requested_at"].astimezone(UTC),
    )


def request_change(
    conn: Connection,
    catalog: Catalog,
    account_id: str,
    kind: PlanChangeKind,
    code: str,
    *,
    effective_at: datetime | None,
    now: datetime,
    actor: str,
) -> PlanChange:
    """Record that the account moves to tariff or policy `code` from `effective_at` (default: the next grid instant
    from `now`); the engine applies it when it gets there. Raises `PlanChangeError` with the rule broken."""
    if now.utcoffset() is None or (effective_at is not None and effective_at.utcoffset() is None):
        raise PlanChangeError("times must be timezone-aware")
    if not actor.strip():
        raise PlanChangeError("who asks for the change must be named")
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        catalog.refresh(conn)
        row = _lock(cur, account_id)
        zone = ZoneInfo(row["zone"])
        at = next_grid_instant(now) if effective_at is None else effective_at.astimezone(UTC)
        if floor_to_interval(at) != at:
            before = floor_to_interval(at)
            raise PlanChangeError(
                f"{_local(at, zone)} is not on the 15-minute grid: a change takes effect at :00, :15, :30 or :45 "
                f"(the nearest are {_local(before, zone)} and {_local(before + INTERVAL, zone)})"
            )
        if kind is PlanChangeKind.TARIFF:
            tariff = catalog.tariffs.get(code)
            if tariff is None:
                raise PlanChangeError(f"no tariff {code!r}")
            charged_until: datetime = row["charged_until"]
            if at < charged_until:
                raise PlanChangeError(
                    f"account {account_id} is charged up to {_local(charged_until, zone)}: a tariff change from "
                    f"{_local(at, zone)} would reprice intervals already charged, and a change can't do that (a "
                    f"correction of charged usage is a ledger adjustment); choose {_local(charged_until, zone)} "
                    "or later"
                )
            try:
                tariff.version_index_at(at)
            except TariffNotInForceError as exc:
                raise PlanChangeError(str(exc)) from None
        else:
            if code not in catalog.policies:
                raise PlanChangeError(f"no policy {code!r}")
            if at < now:
                raise PlanChangeError(
                    f"a policy change can't take effect before now ({_local(now, zone)}): the decisions taken so "
                    f"far were taken under policy {row['policy_code']}; choose {_local(next_grid_instant(now), zone)} "
                    "or later, or leave the time out"
                )
        cur.execute(
            f"SELECT {_CHANGE_COLUMNS} FROM account_plan_changes c WHERE c.account_id = %s AND c.kind = %s "
            "AND NOT EXISTS (SELECT 1 FROM account_plan_change_cancellations x WHERE x.change_id = c.change_id) "
            "ORDER BY c.effective_at DESC LIMIT 1",
            (account_id, str(kind)),
        )
        latest_row = cur.fetchone()
        latest = None if latest_row is None else _change(latest_row)
        if latest is not None and at <= latest.effective_at:
            raise PlanChangeError(
                f"account {account_id} has a {kind} change from {_local(latest.effective_at, zone)} "
                f"(#{latest.change_id}, {latest.old_code} → {latest.new_code}); a new one must take effect after it "
                "(cancel that one first if it is still pending)"
            )
        old_code = str(row[_CODE_COLUMN[kind]]) if latest is None else latest.new_code
        if code == old_code:
            raise PlanChangeError(f"account {account_id} is already on {kind} {code} from {_local(at, zone)}")
        cur.execute(
            "INSERT INTO account_plan_changes (account_id, kind, effective_at, old_code, new_code, requested_by, "
            "requested_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING change_id",
            (account_id, str(kind), at, old_code, code, actor, now),
        )
        created = cur.fetchone()
        assert created is not None
        next_column = _NEXT_COLUMN[kind]
        # a policy change wakes its account at its instant (wake_at is never after next_policy_change_at)
        wake = ", wake_at = LEAST(wake_at, %(at)s)" if kind is PlanChangeKind.POLICY else ""
        cur.execute(
            f"UPDATE prepaid_accounts SET {next_column} = coalesce({next_column}, %(at)s){wake}, "
            "version = version + 1, updated_at = now() WHERE account_id = %(id)s",
            {"at": at, "id": account_id},
        )
        return PlanChange(int(created["change_id"]), account_id, kind, at, old_code, code, actor, now)


def cancel_change(conn: Connection, account_id: str, change_id: int, *, now: datetime, actor: str) -> PlanChange:
    """Withdraw a pending change (the latest of its kind); the withdrawal is recorded, the change stays in the
    history. Raises `PlanChangeError` if it is in force, already withdrawn, or not the account's latest."""
    if now.utcoffset() is None:
        raise PlanChangeError("now must be timezone-aware")
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = _lock(cur, account_id)
        zone = ZoneInfo(row["zone"])
        changes = {c.change_id: c for c in _history(cur, row)}
        change = changes.get(change_id)
        if change is None:
            raise PlanChangeError(f"account {account_id} has no plan change #{change_id}")
        if change.state is PlanChangeState.CANCELLED:
            raise PlanChangeError(f"plan change #{change_id} was already cancelled")
        if change.state is PlanChangeState.APPLIED:
            raise PlanChangeError(
                f"plan change #{change_id} is in force since {_local(change.effective_at, zone)}; it can't be "
                "cancelled (ask for another change instead)"
            )
        later = [
            c
            for c in changes.values()
            if c.kind is change.kind and c.state is PlanChangeState.PENDING and c.effective_at > change.effective_at
        ]
        if later:
            raise PlanChangeError(
                f"plan change #{change_id} is followed by #{later[0].change_id} from "
                f"{_local(later[0].effective_at, zone)}, which records it as the old {change.kind}; cancel that "
                "one first"
            )
        cur.execute(
            "INSERT INTO account_plan_change_cancellations (change_id, cancelled_by, cancelled_at) VALUES (%s, %s, %s)",
            (change_id, actor, now),
        )
        next_column = _NEXT_COLUMN[change.kind]
        # the latest pending change was the earliest too only if it was the one pending: then none is left
        cur.execute(
            f"UPDATE prepaid_accounts SET {next_column} = CASE WHEN {next_column} = %(at)s THEN NULL "
            f"ELSE {next_column} END, version = version + 1, updated_at = now() WHERE account_id = %(id)s",
            {"at": change.effective_at, "id": account_id},
        )
        return PlanChange(
            change.change_id,
            change.account_id,
            change.kind,
            change.effective_at,
            change.old_code,
            change.new_code,
            change.requested_by,
            change.requested_at,
            PlanChangeState.CANCELLED,
            actor,
            now,
        )


def plan_history(conn: Connection, account_id: str) -> list[PlanChange]:
    """Every plan change of the account, in the order they take effect (per kind), with where each stands."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT account_id, next_tariff_change_at, next_policy_change_at FROM prepaid_accounts "
            "WHERE account_id = %s",
            (account_id,),
        )
        row = cur.fetchone()
        if row is None:
            raise PlanChangeError(f"no prepaid account {account_id!r}")
        return _history(cur, row)


def _history(cur: Cursor, row: Mapping[str, Any]) -> list[PlanChange]:
    cur.execute(
        f"SELECT {_CHANGE_COLUMNS}, x.cancelled_by, x.cancelled_at FROM account_plan_changes c "
        "LEFT JOIN account_plan_change_cancellations x USING (change_id) WHERE c.account_id = %s "
        "ORDER BY c.effective_at, c.change_id",
        (row["account_id"],),
    )
    history = []
    for r in cur.fetchall():
        change = _change(r)
        if r["cancelled_at"] is not None:
            state = PlanChangeState.CANCELLED
        else:
            pending_from: datetime | None = row[_NEXT_COLUMN[change.kind]]
            pending = pending_from is not None and change.effective_at >= pending_from
            state = PlanChangeState.PENDING if pending else PlanChangeState.APPLIED
        history.append(
            PlanChange(
                change.change_id,
                change.account_id,
                change.kind,
                change.effective_at,
                change.old_code,
                change.new_code,
                change.requested_by,
                change.requested_at,
                state,
                r["cancelled_by"],
                None if r["cancelled_at"] is None else r["cancelled_at"].astimezone(UTC),
            )
        )
    return history


# ------------------------------------------------------------------------------------------ the engine's side


@dataclass(frozen=True, slots=True)
class PendingChanges:
    """An account's changes not yet applied, each kind in the order they take effect."""

    tariff: tuple[PlanChange, ...] = ()
    policy: tuple[PlanChange, ...] = ()


def pending_changes(cur: Cursor, account_ids: Sequence[str]) -> dict[str, PendingChanges]:
    """The changes not yet applied of the given accounts (locked by the caller), by account id."""
    if not account_ids:
        return {}
    with cur.connection.cursor(row_factory=dict_row) as rows:
        rows.execute(
            f"""
            SELECT {_CHANGE_COLUMNS} FROM account_plan_changes c JOIN prepaid_accounts a USING (account_id)
            WHERE c.account_id = ANY(%s)
                AND c.effective_at >= CASE c.kind WHEN 'tariff' THEN a.next_tariff_change_at
                    ELSE a.next_policy_change_at END
                AND NOT EXISTS (SELECT 1 FROM account_plan_change_cancellations x WHERE x.change_id = c.change_id)
            ORDER BY c.account_id, c.effective_at
            """,
            (list(account_ids),),
        )
        found: dict[str, dict[PlanChangeKind, list[PlanChange]]] = defaultdict(lambda: defaultdict(list))
        for r in rows.fetchall():
            change = _change(r)
            found[change.account_id][change.kind].append(change)
    return {
        account_id: PendingChanges(tuple(kinds[PlanChangeKind.TARIFF]), tuple(kinds[PlanChangeKind.POLICY]))
        for account_id, kinds in found.items()
    }


def apply_due_policy_changes(cur: Cursor, row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The account row (locked by the caller, with `policy_code` and `next_policy_change_at`) with the policy in
    force at `now`: changes due by then applied, and stored."""
    due_from: datetime | None = row["next_policy_change_at"]
    if due_from is None or due_from > now:
        return row
    pending = pending_changes(cur, [row["account_id"]]).get(row["account_id"], PendingChanges()).policy
    due = [c for c in pending if c.effective_at <= now]
    if not due:
        return row
    later = pending[len(due)] if len(due) < len(pending) else None
    updated = {
        **row,
        "policy_code": due[-1].new_code,
        "next_policy_change_at": None if later is None else later.effective_at,
    }
    save_plans(cur, [updated])
    if "version" in updated:
        updated["version"] += 1  # as stored
    return updated


def save_plans(cur: Cursor, rows: Sequence[Mapping[str, Any]]) -> None:
    """Store the tariff and policy codes of accounts that applied changes, and their next changes' instants.

    Before the rest of the account's new state: the checks on the next instants hold against the old
    `charged_until` and `wake_at` and then against the new ones.
    """
    if not rows:
        return
    cur.execute(
        """
        UPDATE prepaid_accounts AS a SET tariff_code = v.tariff_code, policy_code = v.policy_code,
            next_tariff_change_at = v.next_tariff, next_policy_change_at = v.next_policy, version = a.version + 1
        FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[])
            AS v(account_id, tariff_code, policy_code, next_tariff, next_policy)
        WHERE a.account_id = v.account_id
        """,
        (
            [r["account_id"] for r in rows],
            [r["tariff_code"] for r in rows],
            [r["policy_code"] for r in rows],
            [r["next_tariff_change_at"] for r in rows],
            [r["next_policy_change_at"] for r in rows],
        ),
    )
    assert cur.rowcount == len(rows), (cur.rowcount, len(rows))
