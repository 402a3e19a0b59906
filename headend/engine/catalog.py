"""Tariffs and disconnect policies in the database: every revision kept, the current one cached by revision."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from prepay_engine.account import CHINA_MAINLAND
from prepay_engine.calendar import DeclaredYear, DeclaredYearsCalendar, WorkdayCalendar
from prepay_engine.config_codec import (
    calendar_year_from_json,
    calendar_year_to_json,
    policy_from_json,
    policy_to_json,
    tariff_from_json,
    tariff_to_json,
)
from prepay_engine.policy import PolicyConfig
from prepay_engine.tariffs import Tariff

Connection = psycopg.Connection[Any]


class CatalogError(ValueError):
    """A tariff or policy change the catalog refuses."""


@dataclass(frozen=True, slots=True)
class Stored:
    """The revision a definition was stored as, and whether this call created it."""

    code: str
    revision: int
    created: bool


def _current(conn: Connection, kind: str, code: str) -> tuple[int, Any] | None:
    table = "tariffs" if kind == "tariff" else "policies"
    row = conn.execute(
        f"SELECT c.revision, r.definition FROM {table} c JOIN {kind}_revisions r USING ({kind}_code, revision) "
        f"WHERE c.{kind}_code = %s FOR UPDATE OF c",
        (code,),
    ).fetchone()
    return None if row is None else (int(row[0]), row[1])


def _store(conn: Connection, kind: str, code: str, definition: dict[str, Any], revision: int, stored_by: str) -> None:
    table = "tariffs" if kind == "tariff" else "policies"
    conn.execute(
        f"INSERT INTO {kind}_revisions ({kind}_code, revision, definition, stored_by) VALUES (%s, %s, %s, %s)",
        (code, revision, Jsonb(definition), stored_by),
    )
    conn.execute(
        f"INSERT INTO {table} ({kind}_code, revision) VALUES (%s, %s) "
        f"ON CONFLICT ({kind}_code) DO UPDATE SET revision = excluded.revision, updated_at = now()",
        (code, revision),
    )


def put_tariff(conn: Connection, tariff: Tariff, *, stored_by: str, now: datetime) -> Stored:
    """Store a tariff (a new revision if it changed); versions in force at or before `now` may not change.

    Usage up to now may already be charged at the old prices: a correction of the past is a ledger adjustment,
    not a tariff edit.
    """
    with conn.transaction():
        current = _current(conn, "tariff", tariff.code)
        if current is None:
            _store(conn, "tariff", tariff.code, tariff_to_json(tariff), 1, stored_by)
            return Stored(tariff.code, 1, True)
        revision, definition = current
        old = tariff_from_json(definition)
        if old == tariff:
            return Stored(tariff.code, revision, False)
        if old.zone != tariff.zone:
            raise CatalogError(f"tariff {tariff.code}: the time zone can't change ({old.zone.key} → {tariff.zone.key})")
        old_past = [(s, v) for s, v in zip(old.starts_utc, old.versions, strict=True) if s <= now]
        new_past = [(s, v) for s, v in zip(tariff.starts_utc, tariff.versions, strict=True) if s <= now]
        if old_past != new_past:
            raise CatalogError(
                f"tariff {tariff.code}: versions in force at or before {now.isoformat()} can't change; "
                "add a version with a later effective date instead"
            )
        _store(conn, "tariff", tariff.code, tariff_to_json(tariff), revision + 1, stored_by)
        return Stored(tariff.code, revision + 1, True)


def put_policy(conn: Connection, policy: PolicyConfig, *, stored_by: str) -> Stored:
    """Store a disconnect policy under its name (a new revision if it changed); applies from the next decision."""
    with conn.transaction():
        current = _current(conn, "policy", policy.name)
        if current is None:
            _store(conn, "policy", policy.name, policy_to_json(policy), 1, stored_by)
            return Stored(policy.name, 1, True)
        revision, definition = current
        if policy_from_json(definition) == policy:
            return Stored(policy.name, revision, False)
        _store(conn, "policy", policy.name, policy_to_json(policy), revision + 1, stored_by)
        return Stored(policy.name, revision + 1, True)


def put_calendar_year(conn: Connection, declared: DeclaredYear, *, stored_by: str, now: datetime) -> bool:
    """Store (or replace) an operator-declared holiday year; True if it changed.

    A change wakes every account in a low-balance episode at `now`: a disconnect deferred because the day was
    unknown (or a friendly day that no longer is one) is decided again at the next sweep.
    """
    definition = calendar_year_to_json(declared)
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO calendar_years (year, definition, stored_by) VALUES (%s, %s, %s) "
            "ON CONFLICT (year) DO UPDATE SET definition = excluded.definition, stored_by = excluded.stored_by, "
            "stored_at = now() WHERE calendar_years.definition IS DISTINCT FROM excluded.definition RETURNING year",
            (declared.year, Jsonb(definition), stored_by),
        ).fetchone()
        if row is not None:
            conn.execute(
                "UPDATE prepaid_accounts SET wake_at = %(now)s "
                "WHERE in_episode AND (wake_at IS NULL OR wake_at > %(now)s)",
                {"now": now},
            )
    return row is not None


@dataclass(slots=True)
class Catalog:
    """Current tariffs, policies and declared holiday years, parsed once per revision."""

    _tariffs: dict[tuple[str, int], Tariff] = field(default_factory=dict)
    _policies: dict[tuple[str, int], PolicyConfig] = field(default_factory=dict)
    tariffs: dict[str, Tariff] = field(default_factory=dict)
    policies: dict[str, PolicyConfig] = field(default_factory=dict)
    calendar: WorkdayCalendar = CHINA_MAINLAND
    _calendar_key: tuple[Any, ...] = ()

    def refresh(self, conn: Connection) -> None:
        """Read the current revision of every tariff and policy; parse only revisions not seen before."""
        rows = conn.execute(
            "SELECT 'tariff', c.tariff_code, c.revision, "
            "CASE WHEN c.tariff_code || ':' || c.revision = ANY(%s) THEN NULL ELSE r.definition END "
            "FROM tariffs c JOIN tariff_revisions r USING (tariff_code, revision) "
            "UNION ALL SELECT 'policy', c.policy_code, c.revision, "
            "CASE WHEN c.policy_code || ':' || c.revision = ANY(%s) THEN NULL ELSE r.definition END "
            "FROM policies c JOIN policy_revisions r USING (policy_code, revision)",
            ([f"{c}:{r}" for c, r in self._tariffs], [f"{c}:{r}" for c, r in self._policies]),
        ).fetchall()
        tariffs: dict[str, Tariff] = {}
        policies: dict[str, PolicyConfig] = {}
        for kind, code, revision, definition in rows:
            key = (str(code), int(revision))
            if kind == "tariff":
                if key not in self._tariffs:
                    self._tariffs[key] = tariff_from_json(definition)
                tariffs[key[0]] = self._tariffs[key]
            else:
                if key not in self._policies:
                    self._policies[key] = policy_from_json(definition)
                policies[key[0]] = self._policies[key]
        self.tariffs = tariffs
        self.policies = policies
        years = conn.execute("SELECT year, stored_at, definition FROM calendar_years ORDER BY year").fetchall()
        calendar_key = tuple((int(y), stamp) for y, stamp, _ in years)
        if calendar_key != self._calendar_key:
            declared = [calendar_year_from_json(definition) for _, _, definition in years]
            self.calendar = DeclaredYearsCalendar(CHINA_MAINLAND, declared) if declared else CHINA_MAINLAND
            self._calendar_key = calendar_key
