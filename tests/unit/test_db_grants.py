"""The grants map: a decision for every role, nothing that rewrites history, statements that set exactly it."""

from __future__ import annotations

import pytest

from headend.db.grants import (
    APPEND_ONLY,
    FUNCTION_GRANTS,
    SEQUENCE_GRANTS,
    SERVICE_ROLES,
    TABLE_GRANTS,
    DbRole,
    check_map,
    effective_privileges,
    grant_statements,
    parse_privilege,
    role_name,
)
from headend.db.roles import printable_url, role_url
from headend.settings import Settings
from tests.unit.test_cli_startup import HEAVY, _modules_after

NAMES = {role: role_name("headend_", role) for role in DbRole}


def test_the_map_is_consistent() -> None:
    assert check_map() == []


def test_a_missing_decision_or_a_write_on_history_is_a_problem() -> None:
    row = dict(TABLE_GRANTS["ledger_postings"])
    row[DbRole.ENGINE] = ("SELECT", "INSERT", "DELETE")
    del row[DbRole.REPORTING]
    problems = check_map({"ledger_postings": row, "payments": {**TABLE_GRANTS["payments"], DbRole.API: ("UPDATE",)}})
    assert problems == [
        "ledger_postings: no decision for reporting",
        "ledger_postings is append-only: engine may not DELETE",
        "payments is append-only: api may not UPDATE",
    ]
    assert check_map({"meters": {**TABLE_GRANTS["meters"], DbRole.API: ("TRUNCATE",)}}) == [
        "meters: api: not a privilege this map may grant: 'TRUNCATE'"
    ]


def test_no_role_may_change_what_is_only_appended() -> None:
    for table in APPEND_ONLY:
        for role in SERVICE_ROLES:
            for privilege in effective_privileges(table, role):
                kind, columns = parse_privilege(privilege)
                assert kind in {"SELECT", "INSERT"} or (table, kind, columns) == (
                    "payments",
                    "UPDATE",
                    ("reversed_at", "reversal_reference"),
                ), (table, role, privilege)


def test_operator_holds_the_union_of_the_services_and_its_own() -> None:
    assert effective_privileges("readings", DbRole.OPERATOR) == ("SELECT", "INSERT")
    assert "UPDATE (revoked_at)" in effective_privileges("api_principals", DbRole.OPERATOR)
    # the API looks principals up, and may change none of them
    assert effective_privileges("api_principals", DbRole.API) == ("SELECT (name, role, token_sha256, revoked_at)",)


def test_the_statements_strip_every_role_then_grant_the_map() -> None:
    statements = grant_statements(
        ["readings", "api_principals"], ["ledger_postings_seq_seq"], list(FUNCTION_GRANTS), NAMES
    )
    everyone = "PUBLIC, " + ", ".join(NAMES[role] for role in SERVICE_ROLES)
    assert statements == [
        f"REVOKE ALL ON TABLE readings FROM {everyone}",
        "GRANT SELECT, INSERT ON TABLE readings TO headend_ingest",
        "GRANT SELECT ON TABLE readings TO headend_engine",
        "GRANT SELECT ON TABLE readings TO headend_api",
        "GRANT SELECT ON TABLE readings TO headend_reporting",
        f"REVOKE ALL ON TABLE api_principals FROM {everyone}",
        "GRANT SELECT (name, role, token_sha256, revoked_at) ON TABLE api_principals TO headend_api",
        "GRANT SELECT, INSERT, UPDATE (revoked_at) ON TABLE api_principals TO headend_operator",
        f"REVOKE ALL ON SEQUENCE ledger_postings_seq_seq FROM {everyone}",
        "GRANT USAGE ON SEQUENCE ledger_postings_seq_seq TO headend_engine, headend_api",
        f"REVOKE ALL ON FUNCTION create_readings_partition(date) FROM {everyone}",
        "GRANT EXECUTE ON FUNCTION create_readings_partition(date) TO headend_ingest",
    ]
    assert set(SEQUENCE_GRANTS) == {"ledger_postings_seq_seq"}


@pytest.mark.parametrize("prefix", ["Headend_", "he-adend_", "x" * 60])
def test_a_prefix_must_make_plain_role_names(prefix: str) -> None:
    with pytest.raises(ValueError, match="not a plain lower-case identifier"):
        role_name(prefix, DbRole.OPERATOR)


def test_the_settings_take_only_prefixes_that_make_role_names() -> None:
    with pytest.raises(ValueError, match="db_role_prefix"):
        Settings(db_role_prefix="Bad-Prefix")
    assert role_name(Settings(db_role_prefix="site2_").db_role_prefix, DbRole.REPORTING) == "site2_reporting"


def test_a_printed_url_names_the_password_s_variable_and_never_holds_a_password() -> None:
    admin = "postgresql://postgres:s3cret@db.example:5432/headend"
    assert printable_url(admin, DbRole.INGEST, "headend_ingest", True) == (
        "postgresql+psycopg://headend_ingest:${HEADEND_DB_PASSWORD_INGEST}@db.example:5432/headend"
    )
    assert printable_url(admin, DbRole.ENGINE, "headend_engine", False) == (
        "postgresql+psycopg://headend_engine@db.example:5432/headend"
    )
    assert role_url(admin, "headend_api") == "postgresql://headend_api@db.example:5432/headend"


def test_db_help_imports_nothing_heavy() -> None:
    assert sorted(_modules_after("db", "roles", "--help") & set(HEAVY)) == []


def test_a_printed_url_keeps_the_host_given_as_a_socket_directory() -> None:
    admin = "postgresql+psycopg://postgres@/postgres?host=%2Ftmp%2Fdata%2Fpgdata"
    assert printable_url(admin, DbRole.API, "headend_api", True) == (
        "postgresql+psycopg://headend_api:${HEADEND_DB_PASSWORD_API}@/postgres?host=%2Ftmp%2Fdata%2Fpgdata"
    )
