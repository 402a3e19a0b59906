"""`headend db roles`: roles created with passwords from the environment, URLs printed without them, safe to repeat.

Passwords are only checked by a server that asks for them: a throwaway cluster with scram-sha-256 over TCP (the test
server trusts every login). Roles are per server: these tests use a prefix of their own and drop their roles.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from headend.cli.app import app
from headend.db.errors import SetupError
from headend.db.grants import DbRole, role_name, undecided_relations
from headend.db.migrate import migrate
from headend.db.roles import password_variable, role_url, setup_roles
from tests.integration.cluster_support import throwaway_cluster
from tests.integration.conftest import ADMIN_URL, ROLE_PREFIX, MigratedDatabase

pytestmark = pytest.mark.integration

PG_BIN = Path(os.environ.get("HEADEND_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER_PASSWORD = "admin-password-0123456789abcdef"
PASSWORDS = {
    DbRole.OWNER: "owner-pw-0123456789abcdef",
    DbRole.INGEST: "ingest-pw-0123456789abcdef",
    DbRole.API: "api-pw-0123456789abcdef",
}


@pytest.fixture(scope="module")
def password_server() -> Iterator[str]:
    """A superuser's URL (with its password) on a new cluster that checks passwords over TCP; removed afterwards."""
    with throwaway_cluster(
        PG_BIN, initdb_options=["--auth-local=trust", "--auth-host=scram-sha-256"], prefix="headend-scram-"
    ) as cluster:
        with psycopg.connect(
            host=str(cluster.socket_dir), port=cluster.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f"ALTER ROLE postgres PASSWORD '{SUPERUSER_PASSWORD}'")
        yield f"postgresql://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{cluster.port}/postgres"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A role prefix of this test's own; its roles are dropped afterwards, on the test server."""
    value = f"t{uuid.uuid4().hex[:8]}_"
    yield value
    _drop_roles(ADMIN_URL, value)


def _drop_roles(admin_url: str, prefix: str) -> None:
    """Drop the roles of `prefix` on the server of `admin_url`, with what they hold in each database."""
    names = [role_name(prefix, role) for role in DbRole]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        databases = [
            str(d)
            for (d,) in admin.execute(
                "SELECT datname FROM pg_database WHERE datallowconn AND datname NOT LIKE 'template%'"
            )
        ]
        present = [str(n) for (n,) in admin.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,))]
    if not present:
        return
    for database in databases:
        try:
            with psycopg.connect(
                make_url(admin_url).set(database=database).render_as_string(False), autocommit=True
            ) as c:
                c.execute(f"DROP OWNED BY {', '.join(present)}")
        except psycopg.OperationalError:
            continue  # dropped meanwhile by its own test
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for role in present:
            admin.execute(f"DROP ROLE IF EXISTS {role}")


def _roles(env: dict[str, str]) -> Any:
    return CliRunner().invoke(app, ["db", "roles"], env=env)


def _password_env(prefix: str) -> dict[str, str]:
    env = {"HEADEND_DB_ROLE_PREFIX": prefix, "HEADEND_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    env.update({password_variable(role): password for role, password in PASSWORDS.items()})
    return env


def _url_of(output: str, role: DbRole) -> str:
    """The URL `db roles` printed for `role`."""
    lines = output.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{role.value} "))
    return lines[at + 1].strip()


def test_db_roles_creates_the_roles_with_their_passwords_and_prints_urls_without_them(password_server: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}_"  # the cluster is this module's own, and removed afterwards
    env = _password_env(prefix) | {"HEADEND_DB_ADMIN_URL": password_server}
    result = _roles(env)
    assert result.exit_code == 0, result.output
    for secret in (*PASSWORDS.values(), SUPERUSER_PASSWORD):
        assert secret not in result.output
    assert f"created {', '.join(role_name(prefix, role) for role in DbRole)}" in result.output
    # each service's URL: its password as the variable it came from, to be substituted where it is deployed
    ingest_url = _url_of(result.output, DbRole.INGEST)
    port = make_url(password_server).port
    assert ingest_url == (
        f"postgresql+psycopg://{prefix}ingest:${{HEADEND_DB_PASSWORD_INGEST}}@127.0.0.1:{port}/postgres"
    )
    assert _url_of(result.output, DbRole.ENGINE) == f"postgresql+psycopg://{prefix}engine@127.0.0.1:{port}/postgres"
    with psycopg.connect(_substituted(ingest_url, env)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (f"{prefix}ingest",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(role_url(password_server, f"{prefix}ingest", password="wrong-password")).close()
    # no password given and none held: password authentication can never log it in
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(role_url(password_server, f"{prefix}engine", password="")).close()
    # again without the passwords: each role keeps the one it has, nothing is created
    again = _roles({"HEADEND_DB_ROLE_PREFIX": prefix, "HEADEND_DB_ADMIN_URL": password_server})
    assert again.exit_code == 0, again.output
    assert "created" not in again.output
    assert "password kept (HEADEND_DB_PASSWORD_INGEST not given)" in again.output
    assert _url_of(again.output, DbRole.INGEST) == ingest_url
    with psycopg.connect(_substituted(ingest_url, env)):
        pass
    # the owner migrates over its password, and the services then work under theirs
    owner_url = _substituted(_url_of(result.output, DbRole.OWNER), env)
    migrate(owner_url, require_timescaledb=False, collection_timezone="Asia/Shanghai", role_prefix=prefix)
    with psycopg.connect(_substituted(ingest_url, env)) as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM payments")


def _substituted(url: str, env: dict[str, str]) -> str:
    """A printed URL with `${VARIABLE}` replaced as a deployment would, then as plain psycopg takes it."""
    filled = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], url)
    return filled.replace("postgresql+psycopg://", "postgresql://", 1)


def test_db_roles_needs_a_superuser_s_url(migrated: MigratedDatabase) -> None:
    missing = _roles({"HEADEND_DATABASE_URL": migrated.url})
    assert missing.exit_code == 1
    assert "set HEADEND_DB_ADMIN_URL" in missing.output
    not_superuser = _roles({"HEADEND_DB_ADMIN_URL": migrated.url})
    assert not_superuser.exit_code == 1
    assert (
        f'must name a superuser (user "{role_name(ROLE_PREFIX, DbRole.OPERATOR)}" is not one)' in not_superuser.output
    )
    assert "Traceback" not in not_superuser.output


def test_a_schema_migrated_by_the_superuser_is_handed_to_the_owner(prefix: str) -> None:
    # how every database was set up before the roles existed: migrated (and partitioned) as postgres
    name = f"headend_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    admin_url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(admin_url, require_timescaledb=False, collection_timezone="Asia/Shanghai", role_prefix=prefix)
        done = setup_roles(admin_url, prefix, {})
        assert "public.ledger_postings" in done.handed_over
        assert "create_readings_partition(date)" in done.handed_over
        with psycopg.connect(admin_url, autocommit=True) as admin:
            owners = admin.execute(
                "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = relnamespace "
                "WHERE nspname = 'public'"
            ).fetchall()
            assert owners == [(role_name(prefix, DbRole.OWNER),)]
            assert undecided_relations(admin) == []
        # the owner can now migrate it (nothing to do but the grants) and the services use it
        migrate(
            role_url(admin_url, role_name(prefix, DbRole.OWNER)),
            require_timescaledb=False,
            collection_timezone="Asia/Shanghai",
            role_prefix=prefix,
        )
        with psycopg.connect(role_url(admin_url, role_name(prefix, DbRole.ENGINE)), autocommit=True) as engine:
            assert engine.execute("SELECT count(*) FROM prepaid_accounts").fetchone() == (0,)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_setups_of_the_same_roles_at_the_same_time_all_succeed(prefix: str) -> None:
    names = [f"headend_test_{uuid.uuid4().hex[:12]}" for _ in range(4)]
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
    failures: list[BaseException] = []
    start = threading.Barrier(len(names))

    def set_up(name: str) -> Callable[[], None]:
        def run() -> None:
            try:
                start.wait()
                setup_roles(make_url(ADMIN_URL).set(database=name).render_as_string(False), prefix, {})
            except BaseException as exc:  # reported below
                failures.append(exc)

        return run

    threads = [threading.Thread(target=set_up(name)) for name in names]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert failures == []
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_db_roles_puts_back_a_role_made_more_powerful(prefix: str, migrated: MigratedDatabase) -> None:
    setup_roles(migrated.admin_url, prefix, {})
    api, owner = role_name(prefix, DbRole.API), role_name(prefix, DbRole.OWNER)
    with psycopg.connect(migrated.admin_url, autocommit=True) as admin:
        admin.execute(f"ALTER ROLE {api} CREATEROLE BYPASSRLS")
        admin.execute(f"GRANT {owner} TO {api}")
        admin.execute(f"GRANT pg_write_all_data TO {api}")
    with pytest.raises(SetupError):
        setup_roles(migrated.url, prefix, {})  # not a superuser's
    setup_roles(migrated.admin_url, prefix, {})
    with psycopg.connect(migrated.admin_url, autocommit=True) as admin:
        row = admin.execute("SELECT rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = %s", (api,)).fetchone()
        assert row == (False, False)
        groups = admin.execute(
            "SELECT g.rolname FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid "
            "WHERE am.member = %s::regrole",
            (api,),
        ).fetchall()
        assert groups == []
