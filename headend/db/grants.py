"""What each database role may do: one table → role → privileges map, and the statements that apply it.

The schema is owned by the owner role (`headend migrate` runs as it); every other role owns nothing and holds exactly
the privileges below. A table needs an explicit decision for every service role — `()` is a decision (nothing) — and
`undecided_relations` names any table of the schema without one, so a new table can't be forgotten. Privileges are
`SELECT`, `INSERT`, `UPDATE` or `DELETE`, optionally on columns (`UPDATE (revoked_at)`); TRUNCATE, REFERENCES and
TRIGGER are granted to nobody, and the append-only tables (`APPEND_ONLY`) grant no UPDATE or DELETE to any role.

`operator` is the command line people use (registry, catalog, accounts, tokens, channels): it is also a member of
every service role, so it holds their union — the embedded database and the test suite run everything as it.
Only the standard library at import: the command line reads the role names without loading a driver.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg


class DbRole(StrEnum):
    """A database role of the head-end; its name on the server is the prefix (HEADEND_DB_ROLE_PREFIX) plus this."""

    OWNER = "owner"
    INGEST = "ingest"
    ENGINE = "engine"
    DISPATCH = "dispatch"
    API = "api"
    REPORTING = "reporting"
    OPERATOR = "operator"


DEFAULT_ROLE_PREFIX = "headend_"
SERVICE_ROLES = tuple(role for role in DbRole if role is not DbRole.OWNER)
# the roles whose privileges `operator` inherits (its membership), on top of its own
UNION_OF = (DbRole.INGEST, DbRole.ENGINE, DbRole.DISPATCH, DbRole.API, DbRole.REPORTING)

Privileges = tuple[str, ...]
NONE: Privileges = ()
READ: Privileges = ("SELECT",)

_I, _E, _D, _A, _R, _O = DbRole.INGEST, DbRole.ENGINE, DbRole.DISPATCH, DbRole.API, DbRole.REPORTING, DbRole.OPERATOR


def _row(
    *,
    ingest: Privileges = NONE,
    engine: Privileges = NONE,
    dispatch: Privileges = NONE,
    api: Privileges = NONE,
    reporting: Privileges = NONE,
    operator: Privileges = NONE,
) -> dict[DbRole, Privileges]:
    return {_I: ingest, _E: engine, _D: dispatch, _A: api, _R: reporting, _O: operator}


# Tables, views and materialized views of the schema. A role's privileges here are what its service's work needs;
# operator's are only what it needs beyond the union it inherits (reporting's reads included). Whoever takes a
# policy decision for an account (the engine charging, the API crediting a payment, the dispatcher recording a relay
# outcome or re-checking a disconnect) reads the account, its meters, plan changes, the catalog and its balance, and
# writes the account and the outboxes. INSERT … ON CONFLICT (columns) needs SELECT on those columns.
DECIDES = ("SELECT", "UPDATE")
OUTBOX_INSERT = ("INSERT", "SELECT (request_id)")
TABLE_GRANTS: dict[str, dict[DbRole, Privileges]] = {
    # every role checks the schema revision and reads the storage facts at start-up
    "alembic_version": _row(ingest=READ, engine=READ, dispatch=READ, api=READ, reporting=READ),
    "schema_options": _row(ingest=READ, engine=READ, dispatch=READ, api=READ, reporting=READ),
    # the registry: written by operators (meters import), read by whoever resolves a meter
    "concentrators": _row(api=READ, reporting=READ, operator=("INSERT",)),
    "meters": _row(ingest=READ, dispatch=READ, api=READ, reporting=READ, operator=("INSERT", "UPDATE")),
    # field staff register, edit and retire switches through the API (or the command line); every change is audited
    "controlled_switches": _row(
        api=(
            "SELECT",
            "INSERT",
            "UPDATE (switch_number, controlled_device, meter_id, location, notes, updated_by, updated_at, "
            "retired_at, retired_by, retire_reason, commissioning_state)",
        ),
        dispatch=("SELECT", "UPDATE (commissioning_state)"),  # a commissioning test's steps end (below)
        reporting=READ,
    ),
    "controlled_switch_changes": _row(api=("SELECT", "INSERT"), dispatch=("INSERT",), reporting=READ),
    # collection: ingest writes, the engine reads what it charges from; the console (served by the API) shows the
    # collection report, which aggregates a day from readings where TimescaleDB's aggregate may not be refreshed by it
    "readings": _row(ingest=("SELECT", "INSERT"), engine=READ, api=READ, reporting=READ),
    # the collection API names an MQTT meter's last refused message (on its own topic) as why it was not read
    "dead_letters": _row(
        ingest=("INSERT",), dispatch=("INSERT",), api=("SELECT (topic, received_at, reason)",), reporting=READ
    ),
    # the poller (the ingest role) appends why a poll failed; the collection report reads it
    "poll_failures": _row(ingest=("INSERT",), api=READ, reporting=READ),
    # the API's meter search shows when a meter last read
    "meter_register_state": _row(
        ingest=("SELECT", "INSERT", "UPDATE"), engine=READ, api=("SELECT (meter_id, last_ts)",), reporting=READ
    ),
    "collection_daily": _row(ingest=("SELECT", "INSERT", "UPDATE"), api=READ, reporting=READ),
    # the poll worker (ingest) reads a day's collection to freeze its first pass before the day's first re-read
    "collection_daily_cagg": _row(ingest=READ, api=READ, reporting=READ),
    "meter_day_collection": _row(ingest=READ, api=READ, reporting=READ),
    "reading_batches": _row(ingest=("INSERT",), engine=("SELECT", "DELETE")),
    # re-reads: asked for through the API or the command line, run by the poll worker (the ingest role), which also
    # freezes a day's first-pass collection before its first re-read
    "reread_tasks": _row(ingest=("SELECT", "INSERT", "UPDATE"), api=("SELECT", "INSERT"), reporting=READ),
    "reread_task_meters": _row(ingest=("SELECT", "INSERT", "UPDATE"), api=("SELECT", "INSERT"), reporting=READ),
    "collection_first_pass_days": _row(ingest=("SELECT", "INSERT"), api=READ, reporting=READ),
    "collection_first_pass": _row(ingest=("SELECT", "INSERT"), api=READ, reporting=READ),
    # the collection summary (migration 0026): the API counts a day when it is first asked for and again when it is
    # stale, clearing the day's late-reading marks as it does; the triggers that mark run as the owner
    "collection_summary_state": _row(api=READ, reporting=READ),
    "collection_registry_changes": _row(api=READ, reporting=READ),
    "collection_day_changes": _row(api=("SELECT", "DELETE"), reporting=READ),
    "collection_summary_days": _row(
        api=("SELECT", "INSERT", "UPDATE (computed_at, registry_version)", "DELETE"), reporting=READ
    ),
    "collection_summary": _row(
        api=("SELECT", "INSERT", "UPDATE (read, complete, read_first, complete_first)", "DELETE"), reporting=READ
    ),
    "collection_summary_meters": _row(
        api=("SELECT", "INSERT", "UPDATE (intervals_read, slots)", "DELETE"), reporting=READ
    ),
    "collection_summary_entries": _row(api=("SELECT", "INSERT", "DELETE"), reporting=READ),
    # the catalog: stored by operators, read by whoever decides
    "tariff_revisions": _row(engine=READ, dispatch=READ, api=READ, reporting=READ, operator=("INSERT",)),
    "tariffs": _row(engine=READ, dispatch=READ, api=READ, reporting=READ, operator=("INSERT", "UPDATE")),
    "policy_revisions": _row(engine=READ, dispatch=READ, api=READ, reporting=READ, operator=("INSERT",)),
    "policies": _row(engine=READ, dispatch=READ, api=READ, reporting=READ, operator=("INSERT", "UPDATE")),
    "calendar_years": _row(engine=READ, dispatch=READ, api=READ, reporting=READ, operator=("INSERT", "UPDATE")),
    # accounts: opened, re-metered and re-planned by operators
    "prepaid_accounts": _row(engine=DECIDES, dispatch=DECIDES, api=DECIDES, reporting=READ, operator=("INSERT",)),
    "account_meters": _row(engine=READ, dispatch=READ, api=READ, reporting=READ, operator=("INSERT", "UPDATE")),
    "account_plan_changes": _row(engine=READ, dispatch=READ, api=READ, reporting=READ, operator=("INSERT",)),
    "account_plan_change_cancellations": _row(
        engine=READ, dispatch=READ, api=READ, reporting=READ, operator=("INSERT",)
    ),
    # the ledger: postings appended by the engine (usage) and the API (payments); a channel's house accounts are
    # opened by its first payment
    "ledger_accounts": _row(
        engine=("SELECT", "UPDATE"), dispatch=READ, api=("SELECT", "INSERT", "UPDATE"), reporting=READ
    ),
    "ledger_postings": _row(engine=("SELECT", "INSERT"), api=("SELECT", "INSERT"), reporting=READ),
    "payments": _row(
        api=("SELECT", "INSERT"),
        reporting=READ,
        operator=("UPDATE (reversed_at, reversal_reference)",),  # `headend pay --reverse` marks it, once
    ),
    "usage_charges": _row(engine=("SELECT", "INSERT"), reporting=READ),
    "usage_tallies": _row(engine=("SELECT", "INSERT"), reporting=READ),
    "usage_anomalies": _row(engine=("INSERT",), reporting=READ),
    # `headend settle` is the engine's work: a day settled again replaces its arrears
    "settlements": _row(engine=("SELECT", "INSERT", "UPDATE"), reporting=READ),
    "settlement_arrears": _row(engine=("SELECT", "INSERT", "DELETE"), reporting=READ),
    # the outboxes every decision writes; the dispatcher takes the command requests
    "notification_outbox": _row(engine=OUTBOX_INSERT, dispatch=OUTBOX_INSERT, api=OUTBOX_INSERT, reporting=READ),
    "command_requests": _row(engine=("INSERT",), dispatch=("SELECT", "INSERT"), api=("INSERT",), reporting=READ),
    # relay commands: run by the dispatcher; approved, cancelled and asked for (relay reads) through the API
    "commands": _row(dispatch=("SELECT", "INSERT", "UPDATE"), api=("SELECT", "INSERT", "UPDATE"), reporting=READ),
    "command_audit": _row(dispatch=("SELECT", "INSERT"), api=("SELECT", "INSERT"), reporting=READ),
    "relay_alarms": _row(
        dispatch=("SELECT", "INSERT", "UPDATE"), api=("SELECT", "UPDATE (resolved_at, resolved_by)"), reporting=READ
    ),
    "meter_relays": _row(dispatch=("SELECT", "INSERT", "UPDATE"), api=READ, reporting=READ),
    # the commissioning test of a switch (headend.commissioning): started, approved, cancelled and its result recorded
    # through the API (or the command line); its steps advanced by the dispatcher, which sends their commands and
    # sets the switch testing, failed or back to its state before
    "switch_tests": _row(
        dispatch=("SELECT", "UPDATE (state, detail, approval_reason, started_at, finished_at)"),
        api=(
            "SELECT",
            "INSERT",
            "UPDATE (state, detail, approved_by, approved_at, finished_at, cancelled_by, result, result_note, "
            "result_by, result_at)",
        ),
        reporting=READ,
    ),
    "switch_test_steps": _row(
        dispatch=("SELECT", "INSERT", "UPDATE (state, command_id, detail, relay, started_at, finished_at)"),
        api=("SELECT", "INSERT", "UPDATE (state, detail, finished_at)"),
        reporting=READ,
    ),
    # secrets, read by no dashboard. The API only looks principals and channel secrets up; operators issue, rotate
    # and revoke them (`headend api-token`, `headend channel`, `headend devices`), and `broker-config` reads devices'
    "api_principals": _row(
        api=("SELECT (name, role, token_sha256, revoked_at)",), operator=("SELECT", "INSERT", "UPDATE (revoked_at)")
    ),
    "payment_channels": _row(
        api=("SELECT (channel, hmac_secret, previous_hmac_secret, previous_valid_until, disabled_at)",),
        operator=(
            "SELECT",
            "INSERT",
            "UPDATE (hmac_secret, previous_hmac_secret, previous_valid_until, rotated_at, disabled_at)",
        ),
    ),
    "device_credentials": _row(operator=("SELECT", "INSERT", "UPDATE (ended_at, ended_by, end_reason)")),
    # the console's people (`headend user`): the API signs them in and keeps their sessions; operators create, disable
    # and reset them (ending their sessions through the API's rights they inherit); the attempts are appended only
    "console_users": _row(
        api=(
            "SELECT (user_id, name, role, password_hash, disabled_at, failed_attempts, locked_until)",
            "UPDATE (failed_attempts, locked_until)",
        ),
        operator=(
            "SELECT",
            "INSERT",
            "UPDATE (password_hash, password_changed_at, disabled_at, failed_attempts, locked_until)",
        ),
    ),
    "console_sessions": _row(api=("SELECT", "INSERT", "UPDATE (last_seen_at, ended_at, end_reason)")),
    "console_sign_ins": _row(api=("INSERT",)),
}

# Sequences some role uses by name (an identity column's own needs no grant to insert): USAGE allows nextval.
SEQUENCE_GRANTS: dict[str, tuple[DbRole, ...]] = {
    # a ledger batch reserves its postings' seq values first (headend.money.ledger_store, engine.charging)
    "ledger_postings_seq_seq": (_E, _A),
}

# Functions of the schema that some role may execute (EXECUTE is revoked from PUBLIC for each); by signature.
FUNCTION_GRANTS: dict[str, tuple[DbRole, ...]] = {
    # SECURITY DEFINER: ingest attaches daily partitions of `readings` without owning it (migration 0019)
    "create_readings_partition(date)": (_I,),
}

# Rows are only ever added (a trigger refuses UPDATE, DELETE and TRUNCATE too); `payments` also takes its one
# reversal mark, a grant on those two columns only.
APPEND_ONLY = (
    "ledger_postings",
    "usage_charges",
    "usage_tallies",
    "command_audit",
    "account_plan_changes",
    "account_plan_change_cancellations",
    "payments",
    "dead_letters",
    "poll_failures",
    "controlled_switch_changes",
    "console_sign_ins",
)
APPEND_ONLY_COLUMN_UPDATES = {"payments": frozenset({"reversed_at", "reversal_reference"})}

_PRIVILEGE = re.compile(r"^(SELECT|INSERT|UPDATE|DELETE)(?: \(([a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*)\))?$")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def parse_privilege(privilege: str) -> tuple[str, tuple[str, ...]]:
    """A privilege of the map as (kind, columns); no columns: the whole table."""
    match = _PRIVILEGE.match(privilege)
    if match is None:
        raise ValueError(f"not a privilege this map may grant: {privilege!r}")
    return match.group(1), tuple(match.group(2).split(", ")) if match.group(2) else ()


def role_name(prefix: str, role: DbRole) -> str:
    """The server-side name of a role."""
    name = f"{prefix}{role.value}"
    if not _IDENTIFIER.match(name) or len(name) > 63:
        raise ValueError(f"role prefix {prefix!r} gives the role name {name!r}, not a plain lower-case identifier")
    return name


def effective_privileges(table: str, role: DbRole) -> Privileges:
    """What `role` holds on `table`: its own grants and, for operator, those of every role it is a member of."""
    row = TABLE_GRANTS[table]
    own = row.get(role, NONE)
    if role is not DbRole.OPERATOR:
        return own
    return tuple(dict.fromkeys([*own, *(p for member in UNION_OF for p in row[member])]))


def check_map(grants: Mapping[str, Mapping[DbRole, Privileges]] = TABLE_GRANTS) -> list[str]:
    """What is wrong with a grants map: a role without a decision, a bad privilege, a write on an append-only table."""
    problems: list[str] = []
    for table, row in grants.items():
        missing = [role.value for role in SERVICE_ROLES if role not in row]
        if missing:
            problems.append(f"{table}: no decision for {', '.join(missing)}")
        for role, privileges in row.items():
            for privilege in privileges:
                try:
                    kind, columns = parse_privilege(privilege)
                except ValueError as exc:
                    problems.append(f"{table}: {role.value}: {exc}")
                    continue
                if table in APPEND_ONLY and kind in {"UPDATE", "DELETE"}:
                    allowed = APPEND_ONLY_COLUMN_UPDATES.get(table, frozenset())
                    if kind == "DELETE" or not columns or not set(columns) <= allowed:
                        problems.append(f"{table} is append-only: {role.value} may not {privilege}")
    return problems


def grant_statements(
    tables: Iterable[str], sequences: Iterable[str], functions: Iterable[str], names: Mapping[DbRole, str]
) -> list[str]:
    """REVOKE then GRANT statements setting the privileges of the roles in `names` on the objects given.

    The objects are those of the map that exist (an entry of the other storage is skipped); every service role is
    first stripped of everything on the object, so a privilege taken out of the map is taken away too.
    """
    problems = check_map()
    if problems:
        raise ValueError("the grants map is inconsistent: " + "; ".join(problems))
    holders = [names[role] for role in SERVICE_ROLES if role in names]
    statements: list[str] = []
    for table in tables:
        statements.append(f"REVOKE ALL ON TABLE {table} FROM {', '.join(['PUBLIC', *holders])}")
        for role, privileges in TABLE_GRANTS[table].items():
            if role in names and privileges:
                statements.append(f"GRANT {', '.join(privileges)} ON TABLE {table} TO {names[role]}")
    for sequence in sequences:
        statements.append(f"REVOKE ALL ON SEQUENCE {sequence} FROM {', '.join(['PUBLIC', *holders])}")
        allowed = [names[role] for role in SEQUENCE_GRANTS[sequence] if role in names]
        if allowed:
            statements.append(f"GRANT USAGE ON SEQUENCE {sequence} TO {', '.join(allowed)}")
    for signature in functions:
        statements.append(f"REVOKE ALL ON FUNCTION {signature} FROM {', '.join(['PUBLIC', *holders])}")
        allowed = [names[role] for role in FUNCTION_GRANTS[signature] if role in names]
        if allowed:
            statements.append(f"GRANT EXECUTE ON FUNCTION {signature} TO {', '.join(allowed)}")
    return statements


# the relations of the schema that take grants: tables, partitioned tables, views, materialized views, foreign
# tables; not partitions (reached through their parent only) and not an extension's own (TimescaleDB's)
_RELATIONS_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
  AND NOT EXISTS (SELECT FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY c.relname
"""


@dataclass(frozen=True, slots=True)
class GrantsApplied:
    """What `apply_grants` did."""

    roles: list[str]  # the roles that exist and were given their privileges
    missing_roles: list[str]  # roles of the map not on the server (`headend db roles` creates them)
    undecided: list[str]  # relations of the schema without a decision: no service role may use them


def schema_relations(conn: psycopg.Connection[Any]) -> list[str]:
    """The relations of schema public that take grants."""
    return [str(name) for (name,) in conn.execute(_RELATIONS_SQL)]


def undecided_relations(conn: psycopg.Connection[Any]) -> list[str]:
    """Relations of the schema for which the map has no decision."""
    return [name for name in schema_relations(conn) if name not in TABLE_GRANTS]


def apply_grants(conn: psycopg.Connection[Any], names: Mapping[DbRole, str]) -> GrantsApplied:
    """Give each existing role of `names` exactly its privileges of the map, in the caller's transaction.

    Run by the schema's owner (at the end of every migration) or a superuser (`headend db roles`).
    """
    wanted = [names[role] for role in SERVICE_ROLES]
    existing = {
        str(name) for (name,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (wanted,))
    }
    present: dict[DbRole, str] = {
        role: name for role, name in names.items() if role in SERVICE_ROLES and name in existing
    }
    relations = schema_relations(conn)
    functions = [
        signature
        for signature in FUNCTION_GRANTS
        if conn.execute("SELECT to_regprocedure(%s)", (signature,)).fetchone() != (None,)
    ]
    sequences = [
        sequence
        for sequence in SEQUENCE_GRANTS
        if conn.execute("SELECT to_regclass(%s)", (f"public.{sequence}",)).fetchone() != (None,)
    ]
    statements = grant_statements([r for r in relations if r in TABLE_GRANTS], sequences, functions, present)
    if present and statements:
        conn.execute("; ".join(statements))
    return GrantsApplied(
        sorted(present.values()),
        [name for name in wanted if name not in existing],
        [r for r in relations if r not in TABLE_GRANTS],
    )
