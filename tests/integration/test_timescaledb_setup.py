"""`headend migrate` decides by whether TimescaleDB can be loaded, not by whether it is installed.

A throwaway cluster built from PostgreSQL binaries that have TimescaleDB installed, started WITHOUT it in
shared_preload_libraries: `CREATE EXTENSION timescaledb` would end the session there ("must be preloaded"), so the
migration falls back to native partitions with a warning, or fails in one line when TimescaleDB is required. A
server that preloads it (HEADEND_TEST_TIMESCALEDB_URL, by default 127.0.0.1:5433) gets the hypertable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from headend.db.grants import DEFAULT_ROLE_PREFIX
from headend.db.roles import setup_roles
from tests.integration.cluster_support import throwaway_cluster

pytestmark = pytest.mark.integration

TIMESCALEDB_BIN = Path(os.environ.get("HEADEND_TEST_TIMESCALEDB_BIN", "/opt/pg15-timescaledb/lib/postgresql/15/bin"))
PRELOADED_URL = os.environ.get("HEADEND_TEST_TIMESCALEDB_URL", "postgresql://postgres@127.0.0.1:5433/postgres")
NOT_PRELOADED_WARNING = (
    "WARNING headend.migrations: TimescaleDB is installed on this server but not preloaded (shared_preload_libraries "
    "= ''): readings are stored in native daily partitions instead. To use TimescaleDB, add timescaledb to "
    "shared_preload_libraries in postgresql.conf and restart PostgreSQL, then migrate a new database."
)


@pytest.fixture(scope="module")
def not_preloaded_server() -> Iterator[str]:
    """The admin URL of a new cluster that has TimescaleDB installed but not preloaded; removed afterwards."""
    with throwaway_cluster(
        TIMESCALEDB_BIN,
        initdb_options=["--auth=trust"],
        server_options="-c shared_preload_libraries=''",
        prefix="headend-tsdb-",
    ) as cluster:
        yield f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"


def _new_database(admin_url: str) -> str:
    name = f"headend_tsdb_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    # the roles whose grants migrate applies (else it warns that they are missing); migrated as the superuser here,
    # which alone may see whether TimescaleDB is preloaded
    setup_roles(url, DEFAULT_ROLE_PREFIX, {})
    return url


def _migrate(url: str, *, require: bool) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HEADEND_")}
    environment.update({"HEADEND_DATABASE_URL": url, "HEADEND_REQUIRE_TIMESCALEDB": str(require).lower()})
    return subprocess.run(
        [sys.executable, "-m", "headend", "--log-level", "warning", "migrate"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_throwaway_server_has_timescaledb_installed_but_not_preloaded(not_preloaded_server: str) -> None:
    with psycopg.connect(not_preloaded_server, autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone() == (1,)
        assert conn.execute("SHOW shared_preload_libraries").fetchone() == ("",)


def test_not_preloaded_falls_back_to_partitions_with_a_warning(not_preloaded_server: str) -> None:
    url = _new_database(not_preloaded_server)
    result = _migrate(url, require=False)
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.endswith(NOT_PRELOADED_WARNING)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM schema_options WHERE name = 'storage'").fetchone() == ("partitioned",)
        assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'readings'").fetchone() == ("p",)
        assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None


def test_not_preloaded_fails_in_one_line_when_timescaledb_is_required(not_preloaded_server: str) -> None:
    url = _new_database(not_preloaded_server)
    result = _migrate(url, require=True)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: HEADEND_REQUIRE_TIMESCALEDB is set but TimescaleDB is installed on this server without being "
        "preloaded (shared_preload_libraries = ''); add timescaledb to shared_preload_libraries in postgresql.conf "
        "and restart PostgreSQL, then migrate again"
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        # nothing half-made: the migration ran in one transaction
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


@pytest.fixture
def preloaded_server() -> str:
    """The admin URL of a server that preloads TimescaleDB, or a skip."""
    try:
        with psycopg.connect(PRELOADED_URL, autocommit=True, connect_timeout=3) as conn:
            preload = conn.execute("SHOW shared_preload_libraries").fetchone()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no server preloading TimescaleDB at HEADEND_TEST_TIMESCALEDB_URL: {exc}")
    if preload is None or "timescaledb" not in preload[0]:
        pytest.skip(f"the server at HEADEND_TEST_TIMESCALEDB_URL does not preload timescaledb ({preload})")
    return PRELOADED_URL


def test_preloaded_gets_the_hypertable(preloaded_server: str) -> None:
    url = _new_database(preloaded_server)
    try:
        result = _migrate(url, require=True)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        with psycopg.connect(url, autocommit=True) as conn:
            storage = conn.execute("SELECT value FROM schema_options WHERE name = 'storage'").fetchone()
            assert storage == ("timescaledb",)
            hypertable = conn.execute(
                "SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'readings'"
            ).fetchone()
            assert hypertable == (1,)
    finally:
        with psycopg.connect(preloaded_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
