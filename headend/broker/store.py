"""Device credentials in PostgreSQL (migration 0019): issue, rotate, revoke, list; the live ones for the broker."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import errors
from psycopg.rows import dict_row

from headend.broker.passwords import hash_password, new_password
from protocols.readings import is_valid_id

Connection = psycopg.Connection[Any]
MAX_ACTOR_CHARS = 200


class DeviceKind(StrEnum):
    """What a broker account of a device stands for."""

    METER = "meter"
    CONCENTRATOR = "concentrator"


class EndReason(StrEnum):
    """Why a credential no longer holds."""

    ROTATED = "rotated"
    REVOKED = "revoked"


class CredentialError(ValueError):
    """A credential change refused before anything changed."""


@dataclass(frozen=True, slots=True)
class Issued:
    """A password just issued to a device: shown once, only its hash is kept."""

    kind: DeviceKind
    username: str
    password: str
    credential_id: int
    issued_at: datetime


@dataclass(frozen=True, slots=True)
class Credential:
    """One credential of a device, live or ended."""

    credential_id: int
    kind: DeviceKind
    username: str
    issued_at: datetime
    issued_by: str
    ended_at: datetime | None
    ended_by: str | None
    end_reason: EndReason | None


@dataclass(frozen=True, slots=True)
class LiveCredential:
    """A live credential of a device still in the registry, as the broker's configuration needs it."""

    kind: DeviceKind
    username: str
    password_hash: str


def _actor(actor: str) -> str:
    actor = actor.strip()
    if not 1 <= len(actor) <= MAX_ACTOR_CHARS or not actor.isprintable():
        raise CredentialError(f"who acts must be 1 to {MAX_ACTOR_CHARS} printable characters")
    return actor


def device_kind(conn: Connection, device_id: str) -> DeviceKind:
    """Whether `device_id` is a registered meter or concentrator; CredentialError if neither, both, or unfit."""
    if not is_valid_id(device_id):
        raise CredentialError(f"device id {device_id!r} does not match [A-Za-z0-9_-]{{1,32}}")
    meter = conn.execute("SELECT protocol, status FROM meters WHERE meter_id = %s", (device_id,)).fetchone()
    concentrator = conn.execute("SELECT 1 FROM concentrators WHERE concentrator_id = %s", (device_id,)).fetchone()
    if meter is not None and concentrator is not None:
        # both would be the same broker username; the broker could not tell which one connected
        raise CredentialError(f"{device_id!r} is both a meter and a concentrator; a broker username must be one")
    if concentrator is not None:
        return DeviceKind.CONCENTRATOR
    if meter is None:
        raise CredentialError(f"no meter or concentrator {device_id!r} is registered")
    protocol, status = meter
    if protocol != "mqtt":
        raise CredentialError(f"meter {device_id!r} speaks {protocol}, not MQTT: it never connects to the broker")
    if status == "removed":
        raise CredentialError(f"meter {device_id!r} is removed")
    return DeviceKind.METER


def _insert(conn: Connection, kind: DeviceKind, device_id: str, actor: str) -> Issued:
    password = new_password()
    column = "meter_id" if kind is DeviceKind.METER else "concentrator_id"
    row = conn.execute(
        f"INSERT INTO device_credentials ({column}, password_hash, issued_by) VALUES (%s, %s, %s) "
        "RETURNING credential_id, issued_at",
        (device_id, hash_password(password), actor),
    ).fetchone()
    assert row is not None
    return Issued(kind, device_id, password, row[0], row[1])


def _end_live(conn: Connection, device_id: str, reason: EndReason, actor: str) -> int | None:
    row = conn.execute(
        "UPDATE device_credentials SET ended_at = now(), ended_by = %s, end_reason = %s "
        "WHERE username = %s AND ended_at IS NULL RETURNING credential_id",
        (actor, str(reason), device_id),
    ).fetchone()
    return None if row is None else int(row[0])


def issue(conn: Connection, device_id: str, *, actor: str) -> Issued:
    """Issue a password to a registered device that holds none; refused while it holds a live one (rotate it)."""
    actor = _actor(actor)
    try:
        with conn.transaction():
            kind = device_kind(conn, device_id)
            return _insert(conn, kind, device_id, actor)
    except errors.UniqueViolation as exc:
        if exc.diag.constraint_name == "device_credentials_live":
            raise CredentialError(
                f"{device_id!r} already holds live credentials: rotate them, or revoke them first"
            ) from None
        raise


def rotate(conn: Connection, device_id: str, *, actor: str) -> Issued:
    """Replace a device's live password with a new one (the old one is ended as rotated)."""
    actor = _actor(actor)
    with conn.transaction():
        kind = device_kind(conn, device_id)
        if _end_live(conn, device_id, EndReason.ROTATED, actor) is None:
            raise CredentialError(f"{device_id!r} holds no live credentials: issue them")
        return _insert(conn, kind, device_id, actor)


def revoke(conn: Connection, device_id: str, *, actor: str) -> int:
    """End a device's live credential as revoked (the device needs not be registered any more); its id."""
    actor = _actor(actor)
    with conn.transaction():
        ended = _end_live(conn, device_id, EndReason.REVOKED, actor)
    if ended is None:
        raise CredentialError(f"{device_id!r} holds no live credentials")
    return ended


def credentials(conn: Connection, *, device_id: str | None = None, live_only: bool = True) -> list[Credential]:
    """Credentials by username and issue, live ones only unless `live_only` is false; of one device if given."""
    where = ["TRUE"]
    params: list[object] = []
    if live_only:
        where.append("ended_at IS NULL")
    if device_id is not None:
        where.append("username = %s")
        params.append(device_id)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT credential_id, CASE WHEN meter_id IS NULL THEN 'concentrator' ELSE 'meter' END AS kind, username, "
            "issued_at, issued_by, ended_at, ended_by, end_reason FROM device_credentials "
            f"WHERE {' AND '.join(where)} ORDER BY username, credential_id",
            params,
        ).fetchall()
    return [
        Credential(
            **{
                **row,
                "kind": DeviceKind(row["kind"]),
                "end_reason": None if row["end_reason"] is None else EndReason(row["end_reason"]),
            }
        )
        for row in rows
    ]


def live_credentials(conn: Connection) -> list[LiveCredential]:
    """The live credentials of meters not removed and of concentrators, by username: the broker's device accounts."""
    rows = conn.execute(
        "SELECT CASE WHEN c.meter_id IS NULL THEN 'concentrator' ELSE 'meter' END, c.username, c.password_hash "
        "FROM device_credentials c LEFT JOIN meters m ON m.meter_id = c.meter_id "
        "WHERE c.ended_at IS NULL AND (c.meter_id IS NULL OR m.status <> 'removed') ORDER BY c.username"
    ).fetchall()
    return [LiveCredential(DeviceKind(kind), username, password_hash) for kind, username, password_hash in rows]


def meters_behind(conn: Connection) -> dict[str, list[str]]:
    """The meters (not removed) registered behind each concentrator, by concentrator and meter id."""
    behind: dict[str, list[str]] = {}
    rows = conn.execute(
        "SELECT concentrator_id, meter_id FROM meters WHERE concentrator_id IS NOT NULL AND status <> 'removed' "
        "ORDER BY concentrator_id, meter_id"
    ).fetchall()
    for concentrator_id, meter_id in rows:
        behind.setdefault(concentrator_id, []).append(meter_id)
    return behind
