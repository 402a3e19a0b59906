"""The head-end's database roles, set up by an administrator: created, the schema handed to the owner, grants applied.

Roles are cluster-wide, grants are per database object: `setup_roles` creates or corrects the roles (HEADEND_DB_ROLE_
PREFIX + `owner`, `ingest`, …, headend.db.grants.DbRole), then prepares the one database of the administrator's URL —
the owner may create in its schema, TimescaleDB is created when the server can load it (the owner is no superuser),
every object of the schema not owned by the owner is handed over to it, and the grants map is applied. Each step is
idempotent, and safe against another `setup_roles` of the same roles at the same time (a test suite's databases).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import errors, sql
from sqlalchemy.engine import make_url

from headend.db.engine import connect_utc, normalise_url
from headend.db.errors import SetupError
from headend.db.grants import UNION_OF, DbRole, apply_grants, role_name
from headend.db.migrate import MIGRATION_LOCK_KEY
from headend.db.readiness import TimescaleDB, connection_failure, timescaledb_status

log = logging.getLogger(__name__)

# the statements that change roles race when two set-ups run at once (duplicate key on a role or a membership,
# "tuple concurrently updated" on pg_authid): the loser looks again and finds the work done
_ROLE_RACES = (errors.UniqueViolation, errors.DuplicateObject, errors.InternalError_)
_ROLE_ATTEMPTS = 8
_ATTRIBUTES = {
    "rolcanlogin": ("LOGIN", True),
    "rolsuper": ("NOSUPERUSER", False),
    "rolcreatedb": ("NOCREATEDB", False),
    "rolcreaterole": ("NOCREATEROLE", False),
    "rolreplication": ("NOREPLICATION", False),
    "rolbypassrls": ("NOBYPASSRLS", False),
    "rolinherit": ("INHERIT", True),
}
_RELATION_KINDS = {"r": "TABLE", "p": "TABLE", "f": "FOREIGN TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW"}


class Password(StrEnum):
    """What a role's password is after the set-up."""

    SET = "set"  # set from its HEADEND_DB_PASSWORD_* variable
    KEPT = "kept"  # none given; it keeps the one it had
    NONE = "none"  # none given and none held: only certificate, peer or trust authentication can log it in


@dataclass(frozen=True, slots=True)
class RoleOutcome:
    """One role after the set-up."""

    role: DbRole
    name: str
    created: bool
    password: Password


@dataclass(frozen=True, slots=True)
class RolesSetup:
    """What `setup_roles` did."""

    roles: list[RoleOutcome]
    database: str
    handed_over: list[str]  # objects of the schema whose ownership passed to the owner role
    timescaledb_created: bool
    undecided: list[str]  # tables of the schema the grants map has no decision for (no service role may use them)


def password_variable(role: DbRole) -> str:
    """The environment variable a role's password comes from."""
    return f"HEADEND_DB_PASSWORD_{role.value.upper()}"


def role_names(prefix: str) -> dict[DbRole, str]:
    """Every role's server-side name."""
    return {role: role_name(prefix, role) for role in DbRole}


def role_url(url: str, name: str, *, password: str | None = None) -> str:
    """`url` with the user `name` (and `password`, or none); the host, port and database kept."""
    # URL.set leaves a field alone when given None: the password is replaced (or removed) here
    return make_url(url)._replace(username=name, password=password).render_as_string(hide_password=False)


def printable_url(url: str, role: DbRole, name: str, has_password: bool) -> str:
    """The URL a service of `role` should use, without a secret: the password, if any, as `${ITS_VARIABLE}`."""
    if not has_password:
        return role_url(normalise_url(url), name)
    # a URL object would percent-encode the $ and braces of the placeholder: a plain stand-in is replaced after
    stand_in = "PASSWORD0STAND0IN"
    rendered = role_url(normalise_url(url), name, password=stand_in)
    return rendered.replace(f":{stand_in}@", f":${{{password_variable(role)}}}@", 1)


def setup_roles(admin_url: str, prefix: str, passwords: Mapping[DbRole, str]) -> RolesSetup:
    """Create or correct every role, then prepare the database of `admin_url` (a superuser's) for them."""
    names = role_names(prefix)
    with _admin_connection(admin_url) as admin:
        roles = ensure_roles(admin, names, passwords)
        with admin.transaction():
            admin.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            created = _create_timescaledb(admin)
            handed = prepare_schema(admin, names[DbRole.OWNER])
            applied = apply_grants(admin, names)
        return RolesSetup(roles, admin.info.dbname, handed, created, applied.undecided)


@contextmanager
def _admin_connection(admin_url: str) -> Iterator[psycopg.Connection[Any]]:
    try:
        conn = connect_utc(admin_url)
    except psycopg.OperationalError as exc:
        raise connection_failure(admin_url, exc) from exc
    with conn:
        if conn.execute("SELECT current_setting('is_superuser')").fetchone() != ("on",):
            raise SetupError(
                f'HEADEND_DB_ADMIN_URL must name a superuser (user "{conn.info.user}" is not one): setting up the '
                "roles creates them, hands the schema's objects to the owner role and may create TimescaleDB"
            )
        yield conn


def ensure_roles(
    admin: psycopg.Connection[Any], names: Mapping[DbRole, str], passwords: Mapping[DbRole, str]
) -> list[RoleOutcome]:
    """Create the roles that are missing and correct the others: attributes, memberships, given passwords."""
    for attempt in range(_ROLE_ATTEMPTS):
        try:
            with admin.transaction():
                return _ensure_roles_once(admin, names, passwords)
        except _ROLE_RACES as exc:
            if isinstance(exc, errors.InternalError_) and "concurrently" not in str(exc):
                raise
            if attempt == _ROLE_ATTEMPTS - 1:
                raise
            log.debug("roles changed by another set-up at the same time (%s); looking again", exc)
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))  # noqa: S311 - a jitter, not a secret
    raise AssertionError("unreachable")


def _ensure_roles_once(
    admin: psycopg.Connection[Any], names: Mapping[DbRole, str], passwords: Mapping[DbRole, str]
) -> list[RoleOutcome]:
    columns = ", ".join(f"r.{column}" for column in _ATTRIBUTES)
    found = {
        str(row[0]): row[1:]
        for row in admin.execute(
            f"SELECT r.rolname, {columns}, a.rolpassword IS NOT NULL FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid "
            "WHERE r.rolname = ANY(%s)",
            (list(names.values()),),
        )
    }
    outcomes: list[RoleOutcome] = []
    for role, name in names.items():
        ident = sql.Identifier(name)
        given = passwords.get(role)
        state = found.get(name)
        if state is None:
            admin.execute(sql.SQL("CREATE ROLE {} " + " ".join(k for k, _ in _ATTRIBUTES.values())).format(ident))
        else:
            attributes = state[: len(_ATTRIBUTES)]
            wrong = [kw for (kw, wanted), have in zip(_ATTRIBUTES.values(), attributes, strict=True) if have != wanted]
            if wrong:
                admin.execute(sql.SQL("ALTER ROLE {} " + " ".join(wrong)).format(ident))
        if given:
            verifier = admin.pgconn.encrypt_password(given.encode(), name.encode(), b"scram-sha-256")
            # the SCRAM verifier, computed here: the password itself never reaches the server or its logs
            admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(ident, sql.Literal(verifier.decode())))
        if given:
            password = Password.SET
        elif state is not None and state[-1]:
            password = Password.KEPT
        else:
            password = Password.NONE
        outcomes.append(RoleOutcome(role, name, state is None, password))
    _ensure_memberships(admin, names)
    return outcomes


def _ensure_memberships(admin: psycopg.Connection[Any], names: Mapping[DbRole, str]) -> None:
    """Operator is a member of the roles whose union it holds; no role of ours is a member of anything else."""
    wanted = {(names[DbRole.OPERATOR], names[role]) for role in UNION_OF}
    have: set[tuple[str, str]] = set()
    for member, group, grantor in admin.execute(
        "SELECT m.rolname, g.rolname, gr.rolname FROM pg_auth_members am JOIN pg_roles m ON m.oid = am.member "
        "JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles gr ON gr.oid = am.grantor WHERE m.rolname = ANY(%s)",
        (list(names.values()),),
    ):
        if (member, group) in wanted:
            have.add((member, group))
            continue
        # a membership in the owner (or in pg_write_all_data…) would give a service what its grants withhold
        log.warning("role %s was a member of %s: membership revoked", member, group)
        admin.execute(
            sql.SQL("REVOKE {} FROM {} GRANTED BY {}").format(
                sql.Identifier(group), sql.Identifier(member), sql.Identifier(grantor)
            )
        )
    for member, group in sorted(wanted - have):
        admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(member)))


def _create_timescaledb(admin: psycopg.Connection[Any]) -> bool:
    """Create TimescaleDB in a database not migrated yet when the server can load it: the owner role cannot."""
    created, installed, preload, migrated = admin.execute(
        "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb'), "
        "EXISTS (SELECT FROM pg_available_extensions WHERE name = 'timescaledb'), "
        "current_setting('shared_preload_libraries'), to_regclass('public.readings') IS NOT NULL"
    ).fetchone() or (False, False, "", False)
    status = timescaledb_status(created=created, installed=installed, preload_libraries=preload)
    if created or migrated or status is not TimescaleDB.LOADABLE:
        return False
    admin.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    return True


def prepare_schema(admin: psycopg.Connection[Any], owner: str) -> list[str]:
    """Let `owner` create in schema public, nobody else; hand it every object of the schema it does not own."""
    owner_ident = sql.Identifier(owner)
    admin.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(owner_ident))
    admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    handed: list[str] = []
    # objects of an extension (TimescaleDB's functions in public) stay its own; a sequence of an identity or serial
    # column follows its table
    not_ours = (
        "NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = {catalog}::regclass AND d.objid = {oid} "
        "AND d.deptype = 'e')"
    )
    for name, kind in admin.execute(
        "SELECT format('%%I.%%I', n.nspname, c.relname), c.relkind "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
        "AND c.relkind IN ('r', 'p', 'f', 'v', 'm') AND c.relowner <> %s::regrole AND "
        + not_ours.format(catalog="'pg_class'", oid="c.oid")
        + " ORDER BY c.relispartition, c.oid",
        (owner,),
    ).fetchall():
        kind_sql = _RELATION_KINDS[kind]
        if kind == "v" and _is_continuous_aggregate(admin, name):
            kind_sql = "MATERIALIZED VIEW"
        admin.execute(sql.SQL(f"ALTER {kind_sql} {name} OWNER TO {{}}").format(owner_ident))
        handed.append(name)
    for (signature,) in admin.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'public' AND p.proowner <> %s::regrole AND p.prokind IN ('f', 'p') AND "
        + not_ours.format(catalog="'pg_proc'", oid="p.oid")
        + " ORDER BY p.oid",
        (owner,),
    ).fetchall():
        admin.execute(sql.SQL("ALTER ROUTINE {} OWNER TO {}").format(sql.SQL(signature), owner_ident))
        handed.append(signature)
    if handed:
        log.info("handed %d objects of the schema over to %s", len(handed), owner)
    return handed


def _is_continuous_aggregate(admin: psycopg.Connection[Any], name: str) -> bool:
    """Whether the view `name` (schema-qualified, quoted) is a TimescaleDB continuous aggregate."""
    if admin.execute("SELECT to_regclass('_timescaledb_catalog.continuous_agg')").fetchone() == (None,):
        return False
    row = admin.execute(
        "SELECT EXISTS (SELECT FROM _timescaledb_catalog.continuous_agg "
        "WHERE format('%%I.%%I', user_view_schema, user_view_name)::regclass = %s::regclass)",
        (name,),
    ).fetchone()
    return bool(row and row[0])
