"""Least privilege on the real PostgreSQL: each service's role does its work and nothing that rewrites history.

The test database is set up as production is (headend.db.roles.setup_roles, migrated by the owner role); each test
connects as the head-end's roles over TCP (trust authentication on the test server).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import errors
from psycopg.rows import dict_row
from typer.testing import CliRunner

from headend.api import store as api_store
from headend.api.app import create_app
from headend.api.credentials import Role, new_token, signature
from headend.cli.app import app
from headend.db.connection import check_database
from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions, Storage
from headend.db.errors import SchemaNotReadyError
from headend.db.grants import (
    APPEND_ONLY,
    APPEND_ONLY_COLUMN_UPDATES,
    SEQUENCE_GRANTS,
    SERVICE_ROLES,
    TABLE_GRANTS,
    UNION_OF,
    DbRole,
    check_map,
    effective_privileges,
    parse_privilege,
    role_name,
    schema_relations,
    undecided_relations,
)
from headend.db.migrate import migrate
from headend.db.partitions import ensure_partitions
from headend.dispatch import store as dispatch_store
from headend.dispatch.dispatcher import DispatchConfig, Dispatcher
from headend.dispatch.lifecycle import AlarmKind
from headend.engine.catalog import Catalog
from headend.engine.runner import EngineRunner
from headend.ingest.worker import IngestWorker
from headend.reports.collection import collection_report
from headend.settings import Settings
from prepay_engine.ledger import prepaid_account_id
from protocols.mqtt_codec import encode_meter_reading
from protocols.mqtt_topics import meter_events_topic
from protocols.readings import MeterReading, RelayState
from protocols.relay_codec import CommandResult, MeterEvent, RelayCommandMessage, encode_event
from tests.integration.conftest import ROLE_PREFIX, MigratedDatabase, Publisher, count, register, wait_for
from tests.integration.engine_support import (
    DAY_START,
    open_test_account,
    seed_catalog,
    series,
    store_readings,
)

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
STEP = timedelta(minutes=15)
ENGINE_NOW = DAY_START + timedelta(days=1, hours=2)
KINDS = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
SECRET = "wechat-secret-0123456789abcdef0123456789"


@pytest.fixture
def connect_as(migrated: MigratedDatabase) -> Iterator[Callable[[DbRole], Conn]]:
    """Autocommit connections to the test database as one of the head-end's roles, closed after the test."""
    opened: list[Conn] = []

    def connect(role: DbRole) -> Conn:
        conn = psycopg.connect(migrated.role_url(role), autocommit=True)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


def name(role: DbRole) -> str:
    """The role's name on the test server."""
    return role_name(ROLE_PREFIX, role)


def refused(conn: Conn, statement: str) -> bool:
    """Whether `statement` is refused for want of a privilege (anything else fails the test)."""
    try:
        conn.execute(statement)
    except errors.InsufficientPrivilege:
        return True
    return False


def _a_column(admin_db: Conn, table: str) -> str:
    """A column of `table` that its append-only rule never lets change (not a reversal mark)."""
    columns = [
        str(c)
        for (c,) in admin_db.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "AND attidentity = '' AND attgenerated = '' ORDER BY attnum",
            (table,),
        )
    ]
    return next(c for c in columns if c not in APPEND_ONLY_COLUMN_UPDATES.get(table, frozenset()))


# --- the map and the server agree ---------------------------------------------------------------------------------


def test_the_grants_map_decides_for_every_role_and_keeps_history_append_only() -> None:
    assert check_map() == []
    # every relation of the map names a decision for each service role, an empty one included
    assert all(set(row) == set(SERVICE_ROLES) for row in TABLE_GRANTS.values())


def test_every_relation_of_the_migrated_schema_has_a_decision(admin_db: Conn) -> None:
    # a migration that adds a table without an entry in headend.db.grants fails here
    assert undecided_relations(admin_db) == []


def test_each_role_holds_exactly_what_the_map_gives_it(admin_db: Conn) -> None:
    wrong: list[str] = []
    for table in schema_relations(admin_db):
        columns = [
            str(c)
            for (c,) in admin_db.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                (table,),
            )
        ]
        for role in SERVICE_ROLES:
            whole: set[str] = set()
            by_column: dict[str, set[str]] = {}
            for privilege in effective_privileges(table, role):
                kind, only = parse_privilege(privilege)
                if only:
                    for column in only:
                        by_column.setdefault(column, set()).add(kind)
                else:
                    whole.add(kind)
            for kind in KINDS:
                held = admin_db.execute("SELECT has_table_privilege(%s, %s, %s)", (name(role), table, kind)).fetchone()
                if held != (kind in whole,):
                    wrong.append(f"{name(role)} {kind} on {table}: {held}")
            for column in columns:
                for kind in ("SELECT", "INSERT", "UPDATE"):
                    expected = kind in whole or kind in by_column.get(column, set())
                    held = admin_db.execute(
                        "SELECT has_column_privilege(%s, %s, %s, %s)", (name(role), table, column, kind)
                    ).fetchone()
                    if held != (expected,):
                        wrong.append(f"{name(role)} {kind} on {table}.{column}: {held}")
    for (sequence,) in admin_db.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'S'"
    ).fetchall():
        users = set(SEQUENCE_GRANTS.get(sequence, ()))
        for role in SERVICE_ROLES:
            expected = role in users or (role is DbRole.OPERATOR and bool(users & set(UNION_OF)))
            held = admin_db.execute(
                "SELECT has_sequence_privilege(%s, %s, 'USAGE'), has_sequence_privilege(%s, %s, 'SELECT, UPDATE')",
                (name(role), sequence, name(role), sequence),
            ).fetchone()
            if held != (expected, False):
                wrong.append(f"{name(role)} on sequence {sequence}: {held}")
    assert wrong == []


def test_a_table_without_a_decision_is_named_and_given_to_nobody(
    migrated: MigratedDatabase, connect_as: Callable[[DbRole], Conn], admin_db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    connect_as(DbRole.OWNER).execute("CREATE TABLE forgotten (id bigint PRIMARY KEY)")
    assert undecided_relations(admin_db) == ["forgotten"]
    with caplog.at_level(logging.WARNING, logger="headend.db.migrate"):
        migrate(
            migrated.role_url(DbRole.OWNER),
            require_timescaledb=False,
            collection_timezone="Asia/Shanghai",
            role_prefix=ROLE_PREFIX,
        )
    assert "no grants decided for forgotten" in caplog.text
    for role in SERVICE_ROLES:
        assert refused(connect_as(role), "SELECT * FROM forgotten"), role


def test_every_migrate_puts_the_grants_back_as_the_map_says(migrated: MigratedDatabase, admin_db: Conn) -> None:
    admin_db.execute(f"REVOKE INSERT ON readings FROM {name(DbRole.INGEST)}")
    admin_db.execute(f"GRANT DELETE ON ledger_postings TO {name(DbRole.ENGINE)}")
    migrate(
        migrated.role_url(DbRole.OWNER),
        require_timescaledb=False,
        collection_timezone="Asia/Shanghai",
        role_prefix=ROLE_PREFIX,
    )
    privileges = admin_db.execute(
        "SELECT has_table_privilege(%s, 'readings', 'INSERT'), has_table_privilege(%s, 'ledger_postings', 'DELETE')",
        (name(DbRole.INGEST), name(DbRole.ENGINE)),
    ).fetchone()
    assert privileges == (True, False)


# --- the roles ------------------------------------------------------------------------------------------------------


def test_the_owner_owns_the_schema_and_no_role_is_more_than_it_should_be(admin_db: Conn) -> None:
    names = [name(role) for role in DbRole]
    attributes = admin_db.execute(
        "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin "
        "FROM pg_roles WHERE rolname = ANY(%s) ORDER BY rolname",
        (names,),
    ).fetchall()
    assert [(str(r[0]), *r[1:]) for r in attributes] == [
        (n, False, False, False, False, False, True) for n in sorted(names)
    ]
    memberships = admin_db.execute(
        "SELECT m.rolname, g.rolname FROM pg_auth_members am JOIN pg_roles m ON m.oid = am.member "
        "JOIN pg_roles g ON g.oid = am.roleid WHERE m.rolname = ANY(%s) ORDER BY 1, 2",
        (names,),
    ).fetchall()
    assert memberships == sorted((name(DbRole.OPERATOR), name(role)) for role in UNION_OF)
    # every relation and function of the schema (partitions included) belongs to the owner, nothing to a service
    # (not an extension's own: TimescaleDB's functions in public belong to whoever created it)
    owners = admin_db.execute(
        "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'i', 'I') AND NOT EXISTS "
        "(SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') "
        "UNION SELECT DISTINCT pg_get_userbyid(p.proowner) FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' AND NOT EXISTS "
        "(SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')"
    ).fetchall()
    assert owners == [(name(DbRole.OWNER),)]


@pytest.mark.parametrize("role", SERVICE_ROLES, ids=str)
def test_no_service_role_can_change_or_remove_what_is_only_ever_appended(
    role: DbRole, connect_as: Callable[[DbRole], Conn], admin_db: Conn
) -> None:
    conn = connect_as(role)
    allowed: list[str] = []
    for table in APPEND_ONLY:
        column = _a_column(admin_db, table)
        for statement in (f"UPDATE {table} SET {column} = {column}", f"DELETE FROM {table}", f"TRUNCATE {table}"):
            if not refused(conn, statement):
                allowed.append(statement)
    assert allowed == []


@pytest.mark.parametrize("role", [*SERVICE_ROLES, DbRole.OWNER], ids=str)
def test_no_role_can_switch_the_triggers_off(role: DbRole, connect_as: Callable[[DbRole], Conn]) -> None:
    conn = connect_as(role)
    # superuser-only, and granted to no one: the owner can't either (PostgreSQL 15+ could GRANT SET ON PARAMETER)
    assert refused(conn, "SET session_replication_role = replica")
    assert refused(conn, "SET LOCAL session_replication_role = replica")
    if role is DbRole.OWNER:
        return  # it owns the tables: it is used by `headend migrate` only
    for statement in (
        "ALTER TABLE ledger_postings DISABLE TRIGGER ALL",
        "ALTER TABLE command_audit DISABLE TRIGGER command_audit_no_update_delete",
        "ALTER TABLE payments DISABLE TRIGGER USER",
        "DROP TRIGGER usage_tallies_no_update_delete ON usage_tallies",
        "CREATE OR REPLACE FUNCTION command_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RETURN NEW; END $$",
        "ALTER TABLE commands ADD COLUMN note text",
        "DROP TABLE relay_alarms",
        "CREATE TABLE shadow (id int)",
        f"SET ROLE {name(DbRole.OWNER)}",
    ):
        assert refused(conn, statement), statement


def test_superusers_alone_may_set_session_replication_role(admin_db: Conn) -> None:
    assert admin_db.execute("SELECT context FROM pg_settings WHERE name = 'session_replication_role'").fetchone() == (
        "superuser",
    )
    granted = admin_db.execute(
        "SELECT count(*) FILTER (WHERE has_parameter_privilege(rolname, 'session_replication_role', 'SET')) "
        "FROM pg_roles WHERE rolname = ANY(%s)",
        ([name(role) for role in DbRole],),
    ).fetchone()
    assert granted == (0,)


@pytest.mark.parametrize("role", SERVICE_ROLES, ids=str)
def test_no_role_can_promote_an_api_principal(
    role: DbRole, connect_as: Callable[[DbRole], Conn], database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as operator:
        api_store.create_principal(operator, "field", Role.FIELD_STAFF, new_token(), created_by="test")
    conn = connect_as(role)
    for statement in (
        "UPDATE api_principals SET role = 'admin' WHERE name = 'field'",
        "UPDATE api_principals SET token_sha256 = token_sha256, revoked_at = NULL",
        "DELETE FROM api_principals",
    ):
        assert refused(conn, statement), statement
    if role is DbRole.OPERATOR:  # it issues and revokes tokens (`headend api-token`)
        api_store.revoke_principal(conn, "field")
    else:
        assert refused(
            conn,
            "INSERT INTO api_principals (name, role, token_sha256, created_by) "
            "VALUES ('x', 'admin', decode(repeat('00', 32), 'hex'), 'x')",
        )


def test_a_payment_is_kept_as_received_even_by_the_owner(
    database_url: str, connect_as: Callable[[DbRole], Conn]
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        catalog = seed_catalog(conn)
        _open(conn, catalog, "A1", "m1")
        api = _api_client(database_url, conn)
        with api.client:
            paid = api.callback("WX1", "A1", 5000)
        assert paid.status_code in (200, 201), paid.text
    owner = connect_as(DbRole.OWNER)
    for statement in (
        "UPDATE payments SET received_by = 'forged'",
        "DELETE FROM payments",
        "TRUNCATE payments CASCADE",
    ):
        with pytest.raises(errors.RestrictViolation):
            owner.execute(statement)
    owner.execute("UPDATE payments SET reversed_at = now(), reversal_reference = 'R1'")  # the one reversal mark
    with pytest.raises(errors.RestrictViolation):
        owner.execute("UPDATE payments SET reversed_at = NULL")


# --- each service's work under its own role -------------------------------------------------------------------------


def _open(conn: Conn, catalog: Catalog, account_id: str, meter_id: str) -> None:
    register(conn, [meter_id])
    open_test_account(conn, catalog, account_id, meter_id)


class _ApiClient:
    """The API on a role's URL, and the wechat channel's signed callback."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def callback(self, txn: str, account_id: str, amount_fen: int) -> Any:
        raw = json.dumps(
            {
                "channel_txn_id": txn,
                "account_id": account_id,
                "amount_fen": amount_fen,
                "paid_at": "2026-11-22T10:15:00+08:00",
            }
        ).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Headend-Timestamp": stamp,
            "X-Headend-Signature": signature(SECRET, stamp, raw),
        }
        return self.client.post("/v1/channels/wechat/payments", content=raw, headers=headers)


def _api_client(url: str, operator: Conn) -> _ApiClient:
    api_store.add_channel(operator, "wechat", SECRET)
    client = TestClient(create_app(Settings(database_url=url, api_pool_size=2, payment_max_age_days=3660)))
    return _ApiClient(client)


def test_ingest_stores_readings_and_dead_letters_under_its_role(
    migrated: MigratedDatabase,
    db: Conn,
    settings_for: Callable[..., Settings],
    unique: str,
    publisher: Publisher,
    connect_as: Callable[[DbRole], Conn],
    admin_db: Conn,
) -> None:
    url = migrated.role_url(DbRole.INGEST)
    meters = [f"m{unique}{i}" for i in range(3)]
    register(db, meters)
    worker = IngestWorker(settings_for(url), url)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.connected.wait(15), "worker did not subscribe"
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        for i, meter_id in enumerate(meters):
            publisher.publish(
                f"meters/{meter_id}/readings", encode_meter_reading(MeterReading(meter_id, now, 1000 + i))
            )
        publisher.publish(f"meters/{meters[0]}/readings", b"not a reading")
        publisher.flush()
        wait_for(lambda: count(db, "SELECT count(*) FROM readings") == 3, 30, "3 readings stored")
        wait_for(lambda: count(db, "SELECT count(*) FROM dead_letters") == 1, 30, "a dead letter")
    finally:
        worker.stop()
        thread.join(15)
    storage = SchemaOptions.from_rows(db.execute(SCHEMA_OPTIONS_SQL).fetchall()).storage
    if storage is Storage.PARTITIONED:
        ingest = connect_as(DbRole.INGEST)
        # partitions only through the owner's function, only of a day near today, owned by the owner
        assert refused(
            ingest,
            "CREATE TABLE readings_p20991231 PARTITION OF readings "
            "FOR VALUES FROM ('2099-12-31 00:00+00') TO ('2100-01-01 00:00+00')",
        )
        with pytest.raises(errors.InvalidParameterValue):
            ensure_partitions(ingest, [date(2099, 12, 31)])
        ahead = datetime.now(UTC).date() + timedelta(days=30)
        assert ensure_partitions(ingest, [ahead]) == [ahead]
        owners = admin_db.execute(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'readings'::regclass"
        ).fetchall()
        assert owners == [(name(DbRole.OWNER),)]
        assert refused(connect_as(DbRole.ENGINE), "SELECT create_readings_partition(current_date)")
    else:
        # TimescaleDB: the chunk the ingest role's readings created (not in public) belongs to the owner too
        chunk_owners = admin_db.execute(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM timescaledb_information.chunks ch "
            "JOIN pg_class c ON c.oid = format('%I.%I', ch.chunk_schema, ch.chunk_name)::regclass "
            "WHERE ch.hypertable_name = 'readings'"
        ).fetchall()
        assert chunk_owners == [(name(DbRole.OWNER),)]


def _exhausted(operator: Conn, connect_as: Callable[[DbRole], Conn]) -> Catalog:
    """Account A1 on meter m1, a day of heavy use stored by ingest, charged by the engine: a disconnect is due."""
    catalog = seed_catalog(operator)
    _open(operator, catalog, "A1", "m1")
    store_readings(connect_as(DbRole.INGEST), series("m1", DAY_START + STEP, 16, STEP, 1_000_500, 500))
    stats = EngineRunner(connect_as(DbRole.ENGINE), 600.0, 100, clock=lambda: ENGINE_NOW, catalog=Catalog()).sweep()
    assert stats.charges > 0
    assert stats.commands == 1
    return catalog


def test_the_engine_charges_and_settles_under_its_role(
    migrated: MigratedDatabase, db: Conn, connect_as: Callable[[DbRole], Conn]
) -> None:
    _exhausted(db, connect_as)
    assert count(db, "SELECT count(*) FROM usage_charges") == 16
    assert count(db, "SELECT count(*) FROM command_requests WHERE action = 'disconnect'") == 1
    balance = count(db, "SELECT balance_fen FROM ledger_accounts WHERE account_id = %s", prepaid_account_id("A1"))
    assert balance < 0
    env = {"HEADEND_DATABASE_URL": migrated.role_url(DbRole.ENGINE)}
    settled = CliRunner().invoke(app, ["settle", "--date", "2026-11-20", "--workers", "1", "--json"], env=env)
    assert settled.exit_code == 0, settled.output
    assert count(db, "SELECT count(*) FROM settlements") == 1


def test_the_dispatcher_sends_and_confirms_under_its_role(db: Conn, connect_as: Callable[[DbRole], Conn]) -> None:
    catalog = _exhausted(db, connect_as)
    sent: list[RelayCommandMessage] = []

    class Sender:
        def send(self, message: RelayCommandMessage, concentrator_id: str | None) -> str:
            sent.append(message)
            return f"meters/{message.meter_id}/commands"

    dispatcher = Dispatcher(
        connect_as(DbRole.DISPATCH), connect_as(DbRole.DISPATCH), Sender(), config=DispatchConfig(), catalog=catalog
    )
    dispatcher.step()
    [message] = sent
    answer = MeterEvent("m1", RelayState.OPEN, datetime.now(UTC), message.command_id, CommandResult.EXECUTED)
    assert dispatcher.handle_event(meter_events_topic("m1"), encode_event(answer))
    assert not dispatcher.handle_event(meter_events_topic("m1"), b"{not json")  # a dead letter, by dispatch
    state = db.execute("SELECT state FROM commands WHERE command_id = %s", (message.command_id,)).fetchone()
    assert state == ("confirmed",)
    assert db.execute("SELECT supply FROM prepaid_accounts WHERE account_id = 'A1'").fetchone() == ("disconnected",)
    assert count(db, "SELECT count(*) FROM dead_letters WHERE source = 'dispatch'") == 1


def test_the_api_credits_a_payment_and_acts_on_commands_and_alarms_under_its_role(
    migrated: MigratedDatabase, db: Conn, connect_as: Callable[[DbRole], Conn]
) -> None:
    catalog = _exhausted(db, connect_as)
    # a storm limit of 0 holds the disconnect for an operator
    Dispatcher(
        connect_as(DbRole.DISPATCH),
        connect_as(DbRole.DISPATCH),
        object(),  # type: ignore[arg-type]  # nothing is sent while held
        config=DispatchConfig(storm_limit=0),
        catalog=catalog,
    ).step()
    [(held,)] = db.execute("SELECT command_id FROM commands WHERE state = 'held'").fetchall()
    with db.cursor(row_factory=dict_row) as cur:
        alarm = dispatch_store.raise_alarm(
            cur, "m1", None, AlarmKind.RELAY_MISMATCH, RelayState.CLOSED, "relay stuck", datetime.now(UTC)
        )
    token = new_token()
    api_store.create_principal(db, "ops", Role.OPERATOR, token, created_by="test")
    api = _api_client(migrated.role_url(DbRole.API), db)
    auth = {"Authorization": f"Bearer {token}"}
    with api.client:
        paid = api.callback("WX1", "A1", 50_000)
        assert paid.status_code in (200, 201), paid.text
        assert api.callback("WX1", "A1", 50_000).json() == paid.json()  # a duplicate: the first result
        approved = api.client.post(f"/v1/commands/{held}/approve", headers=auth)
        assert approved.status_code in (200, 409), approved.text
        cancelled = api.client.post(f"/v1/commands/{held}/cancel", json={"reason": "site visit"}, headers=auth)
        assert cancelled.status_code in (200, 409), cancelled.text
        resolved = api.client.post(f"/v1/alarms/{alarm}/resolve", headers=auth)
        assert resolved.status_code == 200, resolved.text
        read = api.client.post("/v1/meters/m1/relay/read", headers=auth)
        assert read.status_code == 202, read.text
        account = api.client.get("/v1/accounts/A1", headers=auth)
        assert account.status_code == 200, account.text
    assert count(db, "SELECT count(*) FROM payments") == 1
    assert count(db, "SELECT balance_fen FROM ledger_accounts WHERE account_id = %s", prepaid_account_id("A1")) > 0
    assert count(db, "SELECT count(*) FROM relay_alarms WHERE resolved_by = 'ops'") == 1


def test_reporting_reads_the_collection_and_writes_nothing(
    db: Conn, connect_as: Callable[[DbRole], Conn], admin_db: Conn
) -> None:
    register(db, ["m1"])
    store_readings(connect_as(DbRole.INGEST), series("m1", DAY_START, 4, STEP, 1_000, 10))
    reporting = connect_as(DbRole.REPORTING)
    report = collection_report(reporting, date(2026, 11, 20))
    assert report.totals.read == 1
    assert count(reporting, "SELECT count(*) FROM meter_day_collection") == 1
    writable = admin_db.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
        "AND c.relkind IN ('r', 'p', 'v', 'm') AND (has_table_privilege(%(r)s, c.oid, 'INSERT, UPDATE, DELETE, "
        "TRUNCATE, REFERENCES, TRIGGER') OR has_any_column_privilege(%(r)s, c.oid, 'INSERT, UPDATE, REFERENCES'))",
        {"r": name(DbRole.REPORTING)},
    ).fetchall()
    assert writable == []
    for secret in ("api_principals", "payment_channels", "device_credentials"):
        assert refused(reporting, f"SELECT * FROM {secret}"), secret


def test_a_role_without_its_grants_is_told_what_to_run(migrated: MigratedDatabase, admin_db: Conn) -> None:
    admin_db.execute(f"REVOKE ALL ON alembic_version FROM {name(DbRole.ENGINE)}")
    with pytest.raises(SchemaNotReadyError, match="may not read the schema") as raised:
        check_database(migrated.role_url(DbRole.ENGINE))
    assert "run `headend db roles` as an administrator, then `headend migrate` as the owner role" in str(raised.value)
