"""The switch registry on the real PostgreSQL: register, edit, retire, audit, import, meter search, the command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors
from typer.testing import CliRunner, Result

from headend.cli.app import app
from headend.db.grants import DbRole
from headend.registry.meter_import import MeterRow, import_meters
from headend.registry.meter_search import search_meters
from headend.registry.switch_import import RowErrorKind, SwitchRowError, import_switches, parse_switch_text
from headend.registry.switches import (
    ChangeAction,
    CommissioningState,
    SwitchError,
    SwitchErrorKind,
    edit,
    get_switch,
    history,
    list_switches,
    register,
    retire,
    validate_draft,
)
from tests.integration.conftest import MigratedDatabase, count
from tests.integration.conftest import register as register_meters
from tests.integration.engine_support import open_test_account, seed_catalog

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
NOW = datetime(2026, 12, 8, 2, 0, tzinfo=UTC)
HEADER = "switch_number,controlled_device,meter_id,location,notes"


@pytest.fixture
def api_db(migrated: MigratedDatabase, db: Conn) -> Iterator[Conn]:
    """Meters m1, m2 (active) and m-off (inactive); a connection as the API's database role, which writes switches."""
    register_meters(db, ["m1", "m2"])
    register_meters(db, ["m-off"], status="inactive")
    with psycopg.connect(migrated.role_url(DbRole.API), autocommit=True) as conn:
        yield conn


def _refused(call: Any, *args: Any, **kwargs: Any) -> SwitchError:
    with pytest.raises(SwitchError) as caught:
        call(*args, **kwargs)
    return caught.value


def _changes(conn: Conn) -> int:
    return count(conn, "SELECT count(*) FROM controlled_switch_changes")


# --- register, edit, retire -----------------------------------------------------------------------------------------


def test_a_switch_is_registered_with_who_and_when_and_audited(api_db: Conn) -> None:
    draft = validate_draft(" QF-01 ", "box transformer 1 main switch", "m1", "building 3", None)
    switch = register(api_db, draft, by="field.li", now=NOW)
    assert switch.switch_number == "QF-01"
    assert (switch.registered_by, switch.registered_at, switch.updated_by, switch.updated_at) == (
        "field.li",
        NOW,
        "field.li",
        NOW,
    )
    assert switch.commissioning_state is CommissioningState.REGISTERED
    assert switch.retired_at is None
    assert get_switch(api_db, switch.switch_id) == switch
    [change] = history(api_db, switch.switch_id)
    assert (change.action, change.actor, change.at) == (ChangeAction.REGISTERED, "field.li", NOW)
    assert change.changes == {
        "switch_number": {"from": None, "to": "QF-01"},
        "controlled_device": {"from": None, "to": "box transformer 1 main switch"},
        "meter_id": {"from": None, "to": "m1"},
        "location": {"from": None, "to": "building 3"},
    }


def test_a_switch_needs_an_active_meter_and_a_free_number(api_db: Conn) -> None:
    register(api_db, validate_draft("QF-01", "main", "m1"), by="field.li", now=NOW)
    unknown = _refused(register, api_db, validate_draft("QF-02", "main", "m9"), by="field.li", now=NOW)
    assert (unknown.kind, unknown.field, str(unknown)) == (
        SwitchErrorKind.UNKNOWN_METER,
        "meter_id",
        "no meter 'm9' is registered",
    )
    inactive = _refused(register, api_db, validate_draft("QF-02", "main", "m-off"), by="field.li", now=NOW)
    assert inactive.kind is SwitchErrorKind.INACTIVE_METER
    taken = _refused(register, api_db, validate_draft("QF-01", "other", "m2"), by="field.li", now=NOW)
    assert taken.kind is SwitchErrorKind.NUMBER_IN_SERVICE
    assert "switch number 'QF-01' is in service: switch 1 on meter 'm1'" in str(taken)
    assert count(api_db, "SELECT count(*) FROM controlled_switches") == 1
    assert _changes(api_db) == 1


def test_an_edit_changes_the_fields_given_audits_each_and_keeps_the_rest(api_db: Conn) -> None:
    switch = register(api_db, validate_draft("QF-01", "main", "m1", "room 1", "old note"), by="field.li", now=NOW)
    later = NOW + timedelta(hours=1)
    edited, diff = edit(
        api_db,
        switch.switch_id,
        {"location": "room 2", "notes": None, "controlled_device": "main"},
        by="f.wang",
        now=later,
    )
    assert diff == {"location": {"from": "room 1", "to": "room 2"}, "notes": {"from": "old note", "to": None}}
    assert (edited.location, edited.notes, edited.controlled_device) == ("room 2", None, "main")
    assert (edited.updated_by, edited.updated_at, edited.registered_by) == ("f.wang", later, "field.li")
    # the same values again change nothing and audit nothing
    again, none = edit(api_db, switch.switch_id, {"location": " room 2 "}, by="f.wang", now=later + timedelta(1))
    assert none == {}
    assert again == edited
    trail = history(api_db, switch.switch_id)
    assert [c.action for c in trail] == [ChangeAction.REGISTERED, ChangeAction.EDITED]
    assert trail[1].changes == diff
    assert trail[1].actor == "f.wang"


def test_moving_a_switch_to_another_meter_needs_it_active_and_asks_for_a_new_test(api_db: Conn, db: Conn) -> None:
    switch = register(api_db, validate_draft("QF-01", "main", "m1"), by="field.li", now=NOW)
    assert _refused(edit, api_db, switch.switch_id, {"meter_id": "m9"}, by="f", now=NOW).kind is (
        SwitchErrorKind.UNKNOWN_METER
    )
    assert _refused(edit, api_db, switch.switch_id, {"meter_id": "m-off"}, by="f", now=NOW).kind is (
        SwitchErrorKind.INACTIVE_METER
    )
    db.execute("UPDATE controlled_switches SET commissioning_state = 'testing'")
    testing = _refused(edit, api_db, switch.switch_id, {"meter_id": "m2"}, by="f", now=NOW)
    assert testing.kind is SwitchErrorKind.TESTING
    db.execute("UPDATE controlled_switches SET commissioning_state = 'commissioned'")
    moved, diff = edit(api_db, switch.switch_id, {"meter_id": "m2"}, by="f", now=NOW)
    assert moved.meter_id == "m2"
    assert moved.commissioning_state is CommissioningState.REGISTERED
    assert diff == {
        "meter_id": {"from": "m1", "to": "m2"},
        "commissioning_state": {"from": "commissioned", "to": "registered"},
    }


def test_a_number_taken_by_another_switch_in_service_is_refused_on_edit(api_db: Conn) -> None:
    register(api_db, validate_draft("QF-01", "main", "m1"), by="f", now=NOW)
    second = register(api_db, validate_draft("QF-02", "main", "m1"), by="f", now=NOW)
    assert _refused(edit, api_db, second.switch_id, {"switch_number": "QF-01"}, by="f", now=NOW).kind is (
        SwitchErrorKind.NUMBER_IN_SERVICE
    )
    assert get_switch(api_db, second.switch_id) == second
    assert _refused(edit, api_db, 999, {"notes": "x"}, by="f", now=NOW).kind is SwitchErrorKind.UNKNOWN_SWITCH


def test_a_retired_switch_stays_decommissioned_frees_its_number_and_changes_no_more(api_db: Conn, db: Conn) -> None:
    old = register(api_db, validate_draft("QF-01", "main", "m1"), by="field.li", now=NOW)
    later = NOW + timedelta(days=30)
    retired = retire(api_db, old.switch_id, " burnt out,\nreplaced ", by="f.wang", now=later)
    assert (retired.retired_at, retired.retired_by, retired.retire_reason) == (later, "f.wang", "burnt out,\nreplaced")
    assert retired.commissioning_state is CommissioningState.DECOMMISSIONED
    assert (retired.updated_by, retired.updated_at) == ("f.wang", later)
    again = _refused(retire, api_db, old.switch_id, "again", by="f", now=later)
    assert again.kind is SwitchErrorKind.RETIRED
    assert "was retired at" in str(again)
    assert _refused(edit, api_db, old.switch_id, {"notes": "x"}, by="f", now=later).kind is SwitchErrorKind.RETIRED
    assert _refused(retire, api_db, 999, "why", by="f", now=later).kind is SwitchErrorKind.UNKNOWN_SWITCH
    assert _refused(retire, api_db, old.switch_id, "  ", by="f", now=later).field == "reason"

    # its replacement takes the number; the retired one keeps its row
    new = register(api_db, validate_draft("QF-01", "main (new)", "m1"), by="f.wang", now=later)
    assert new.switch_id != old.switch_id
    assert [s.switch_id for s in list_switches(api_db, number="QF-01").switches] == [new.switch_id]
    assert [s.switch_id for s in list_switches(api_db, number="QF-01", include_retired=True).switches] == [
        old.switch_id,
        new.switch_id,
    ]
    trail = history(api_db, old.switch_id)
    assert [c.action for c in trail] == [ChangeAction.REGISTERED, ChangeAction.RETIRED]
    assert trail[1].detail == "burnt out,\nreplaced"
    assert trail[1].changes["commissioning_state"] == {"from": "registered", "to": "decommissioned"}

    # a switch being tested is not retired under the test's feet
    db.execute("UPDATE controlled_switches SET commissioning_state = 'testing' WHERE switch_id = %s", (new.switch_id,))
    assert _refused(retire, api_db, new.switch_id, "why", by="f", now=later).kind is SwitchErrorKind.TESTING


def test_the_audit_trail_is_append_only_even_for_the_api(api_db: Conn, db: Conn, admin_db: Conn) -> None:
    switch = register(api_db, validate_draft("QF-01", "main", "m1"), by="f", now=NOW)
    for conn in (api_db, db):
        for statement in ("UPDATE controlled_switch_changes SET actor = 'x'", "DELETE FROM controlled_switch_changes"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
    # beyond the grants, the trigger refuses even a superuser
    for statement in (
        "UPDATE controlled_switch_changes SET actor = 'x'",
        "DELETE FROM controlled_switch_changes",
        "TRUNCATE controlled_switch_changes",
    ):
        with pytest.raises(errors.RestrictViolation):
            admin_db.execute(statement)
    # the API may not rewrite who registered a switch, nor when
    with pytest.raises(errors.InsufficientPrivilege):
        api_db.execute("UPDATE controlled_switches SET registered_by = 'x'")
    assert len(history(api_db, switch.switch_id)) == 1


def test_the_database_checks_what_the_registry_checks(db: Conn) -> None:
    register_meters(db, ["m1"])
    insert = (
        "INSERT INTO controlled_switches (switch_number, controlled_device, meter_id, registered_by, updated_by, "
        "updated_at) VALUES (%s, %s, 'm1', 'f', 'f', now())"
    )
    for number, device in ((" QF", "main"), ("QF\n1", "main"), ("Q" * 65, "main"), ("QF", ""), ("QF", "d" * 201)):
        with pytest.raises(errors.CheckViolation):
            db.execute(insert, (number, device))
    with pytest.raises(errors.CheckViolation):
        db.execute(
            "INSERT INTO controlled_switches (switch_number, controlled_device, meter_id, registered_by, updated_by, "
            "updated_at, retired_at) VALUES ('QF', 'main', 'm1', 'f', 'f', now(), now())"
        )


def test_switches_are_listed_by_meter_and_number_prefix_page_by_page(api_db: Conn) -> None:
    for number, meter in (("QF-01", "m1"), ("qf-02", "m1"), ("QF_03", "m2"), ("KK-01", "m2")):
        register(api_db, validate_draft(number, "main", meter), by="f", now=NOW)
    assert [s.switch_number for s in list_switches(api_db, meter_id="m1").switches] == ["QF-01", "qf-02"]
    assert [s.switch_number for s in list_switches(api_db, number="qf").switches] == ["QF-01", "qf-02", "QF_03"]
    # LIKE's wildcards are taken as themselves
    assert [s.switch_number for s in list_switches(api_db, number="QF_").switches] == ["QF_03"]
    assert list_switches(api_db, number="%").switches == []
    first = list_switches(api_db, limit=3)
    assert (len(first.switches), first.next_after) == (3, first.switches[-1].switch_id)
    rest = list_switches(api_db, limit=3, after=first.next_after)
    assert ([s.switch_number for s in rest.switches], rest.next_after) == (["KK-01"], None)


# --- import ---------------------------------------------------------------------------------------------------------

GOOD = f"""{HEADER}
QF-01,box transformer 1 main switch,m1,building 3,
QF-02,pump main switch,m2,,"call first"
"""


def test_an_import_registers_every_row_audited_and_a_second_run_changes_nothing(api_db: Conn) -> None:
    result = import_switches(api_db, parse_switch_text(GOOD), by="field.li", now=NOW, source="switches.csv")
    assert result.imported
    assert ([s.switch_number for s in result.created], result.unchanged, result.errors) == (["QF-01", "QF-02"], 0, [])
    assert result.created[1].notes == "call first"
    assert [c.detail for c in history(api_db, result.created[1].switch_id)] == ["switches.csv, line 3"]
    before = (count(api_db, "SELECT count(*) FROM controlled_switches"), _changes(api_db))
    again = import_switches(api_db, parse_switch_text(GOOD), by="field.li", now=NOW + timedelta(1))
    assert (again.created, again.unchanged, again.errors, again.imported) == ([], 2, [], True)
    assert (count(api_db, "SELECT count(*) FROM controlled_switches"), _changes(api_db)) == before


def test_an_import_with_a_bad_row_imports_nothing_unless_told_to_skip_it(api_db: Conn) -> None:
    register(api_db, validate_draft("QF-09", "main", "m1"), by="f", now=NOW)
    register(api_db, validate_draft("QF-10", "main", "m1"), by="f", now=NOW)
    text = f"""{HEADER}
QF-01,main,m1,,
QF-02,main,m9,,
QF-03,main,m-off,,
QF-09,another device,m1,,
QF-10,main,m1,,
,main,m1,,
QF-01,main,m2,,
QF-04,{"d" * 201},m1,,
"""
    parsed = parse_switch_text(text)
    result = import_switches(api_db, parsed, by="field.li", now=NOW)
    assert not result.imported
    assert result.created == []
    assert result.unchanged == 1  # line 6 is QF-10 as registered
    assert result.errors == [
        SwitchRowError(3, "meter_id 'm9' is not registered", RowErrorKind.UNKNOWN_METER),
        SwitchRowError(
            4, "meter 'm-off' is inactive: a switch is registered on an active meter", RowErrorKind.INACTIVE_METER
        ),
        SwitchRowError(
            5,
            "switch_number 'QF-09' is in service as switch 1 with another controlled_device (edit that switch, or "
            "retire it first)",
            RowErrorKind.NUMBER_IN_SERVICE,
        ),
        SwitchRowError(7, "switch_number is empty", RowErrorKind.INVALID),
        SwitchRowError(8, "switch_number 'QF-01' repeats line 2", RowErrorKind.REPEATED),
        SwitchRowError(9, "controlled_device of 201 characters exceeds 200", RowErrorKind.INVALID),
    ]
    assert count(api_db, "SELECT count(*) FROM controlled_switches") == 2

    skipped = import_switches(api_db, parsed, by="field.li", now=NOW, skip_invalid=True)
    assert skipped.imported
    assert [s.switch_number for s in skipped.created] == ["QF-01"]
    assert skipped.errors == result.errors
    assert count(api_db, "SELECT count(*) FROM controlled_switches") == 3


# --- meter search ---------------------------------------------------------------------------------------------------


@pytest.fixture
def fleet(db: Conn) -> Conn:
    """An MQTT meter with an account, a reading time, a relay position and a switch; DL/T 645 and Modbus meters."""
    register_meters(db, ["000000000001", "000000000012"])
    import_meters(
        db,
        [
            MeterRow(
                "p645",
                "dlt645",
                None,
                "north",
                None,
                1,
                "active",
                None,
                endpoint="10.0.0.5:8899",
                address="123456789012",
            ),
            MeterRow("mb-3", "modbus", None, "north", "SDM120", 1, "active", None, endpoint="10.0.0.6:502", unit_id=3),
            MeterRow("mb-4", "modbus", None, "north", "SDM120", 1, "active", None, endpoint="10.0.0.6:502", unit_id=4),
        ],
    )
    open_test_account(db, seed_catalog(db), "A0001", "000000000001")
    db.execute(
        "INSERT INTO meter_register_state (meter_id, last_ts, last_energy_import_wh) VALUES (%s, %s, 1000)",
        ("000000000001", NOW),
    )
    db.execute(
        "INSERT INTO meter_relays (meter_id, relay, ready_for_reconnection, reported_at, received_at, source) "
        "VALUES ('000000000001', 'closed', false, %s, %s, 'test')",
        (NOW - timedelta(hours=1), NOW),
    )
    register(db, validate_draft("QF-01", "main", "000000000001"), by="f", now=NOW)
    retired = register(db, validate_draft("QF-00", "old main", "000000000001"), by="f", now=NOW)
    retire(db, retired.switch_id, "replaced", by="f", now=NOW)
    return db


def _ids(conn: Conn, query: str, **kwargs: Any) -> list[tuple[str, list[str]]]:
    return [(m.meter_id, m.matched_by) for m in search_meters(conn, query, **kwargs).meters]


def test_a_meter_is_found_by_id_address_endpoint_account_or_switch(fleet: Conn, migrated: MigratedDatabase) -> None:
    with psycopg.connect(migrated.role_url(DbRole.API), autocommit=True) as api_db:
        found = search_meters(api_db, " A0001 ")
        assert found.query == "A0001"
        [meter] = found.meters
        assert (meter.meter_id, meter.matched_by) == ("000000000001", ["account"])
        assert meter.account is not None
        assert (meter.account.account_id, meter.account.supply) == ("A0001", "connected")
        assert meter.last_reading_at == NOW
        assert meter.relay is not None
        assert (meter.relay.relay, meter.relay.reported_at) == ("closed", NOW - timedelta(hours=1))
        assert [s.switch_number for s in meter.switches] == ["QF-01"]

        # the exact id first, then the ids it begins; an address of fewer digits is zero-padded
        assert _ids(api_db, "000000000001") == [("000000000001", ["meter_id"])]
        assert _ids(api_db, "0000000000") == [
            ("000000000001", ["meter_id_prefix"]),
            ("000000000012", ["meter_id_prefix"]),
        ]
        assert _ids(api_db, "123456789012") == [("p645", ["address"])]
        assert _ids(api_db, "10.0.0.5:8899") == [("p645", ["endpoint"])]
        assert _ids(api_db, "10.0.0.6:502") == [("mb-3", ["endpoint"]), ("mb-4", ["endpoint"])]
        assert _ids(api_db, "10.0.0.6:502/4") == [("mb-4", ["endpoint"])]
        assert _ids(api_db, "QF-01") == [("000000000001", ["switch_number"])]
        assert _ids(api_db, "QF-00") == []  # retired
        assert _ids(api_db, "mb") == [("mb-3", ["meter_id_prefix"]), ("mb-4", ["meter_id_prefix"])]
        limited = search_meters(api_db, "mb", limit=1)
        assert ([m.meter_id for m in limited.meters], limited.more) == (["mb-3"], True)
        assert _ids(api_db, "nothing like it") == []
        assert _ids(api_db, "%") == []


# --- the command line -----------------------------------------------------------------------------------------------


def _cli(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"HEADEND_DATABASE_URL": database_url, "HEADEND_TIMEZONE": "UTC"})


def test_the_command_line_registers_edits_retires_lists_shows_and_imports(
    database_url: str, db: Conn, tmp_path: Path
) -> None:
    register_meters(db, ["m1", "m2"])
    made = _cli(
        database_url, "switches", "register", "--number", "QF-01", "--device", "main switch", "--meter", "m1",
        "--location", "room 1", "--by", "field.li",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    assert made.output == "switch 1 registered: QF-01 on meter m1\n"
    taken = _cli(
        database_url, "switches", "register", "--number", "QF-01", "--device", "x", "--meter", "m2", "--by", "f"
    )
    assert taken.exit_code == 1
    assert "error: switch number 'QF-01' is in service" in taken.output
    bad = _cli(database_url, "switches", "register", "--number", " ", "--device", "x", "--meter", "m2", "--by", "f")
    assert bad.exit_code == 2
    assert "switch_number is empty" in bad.output

    edited = _cli(database_url, "switches", "edit", "1", "--location", "", "--notes", "call first", "--by", "f.wang")
    assert edited.exit_code == 0, edited.output
    assert edited.output == "switch 1 changed: location, notes\n"
    same = _cli(database_url, "switches", "edit", "1", "--notes", "call first", "--by", "f.wang")
    assert "nothing changed" in same.output

    shown = _cli(database_url, "switches", "show", "1", "--json")
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.output)
    assert (detail["location"], detail["notes"], detail["updated_by"]) == (None, "call first", "f.wang")
    assert [c["action"] for c in detail["history"]] == ["registered", "edited"]
    text = _cli(database_url, "switches", "show", "1")
    assert "registered     " in text.output
    assert "edited       f.wang: " in text.output
    assert "location 'room 1' → None" in text.output
    assert "notes None → 'call first'" in text.output

    retired = _cli(database_url, "switches", "retire", "1", "--reason", "replaced", "--by", "f.wang")
    assert retired.exit_code == 0, retired.output
    assert _cli(database_url, "switches", "retire", "1", "--reason", "again", "--by", "f").exit_code == 1
    assert _cli(database_url, "switches", "list").output == "no switches\n"
    listed = _cli(database_url, "switches", "list", "--all")
    assert "QF-01" in listed.output
    assert "decommissioned" in listed.output
    assert _cli(database_url, "switches", "show", "9").exit_code == 1

    path = tmp_path / "switches.csv"
    path.write_text(f"{HEADER}\nQF-01,main,m1,,\nQF-02,main,m9,,\n", encoding="utf-8")
    refused = _cli(database_url, "switches", "import", str(path), "--by", "field.li")
    assert refused.exit_code == 1
    assert f"error: {path}: line 3: meter_id 'm9' is not registered" in refused.output
    assert "1 row(s) refused; nothing imported (fix them, or pass --skip-invalid)" in refused.output
    skipped = _cli(database_url, "switches", "import", str(path), "--by", "field.li", "--skip-invalid")
    assert skipped.exit_code == 1
    assert "1 switch(es) registered, 0 unchanged, 1 row(s) refused and skipped" in skipped.output
    path.write_text(f"{HEADER}\nQF-01,main,m1,,\n", encoding="utf-8")
    again = _cli(database_url, "switches", "import", str(path), "--by", "field.li")
    assert again.exit_code == 0, again.output
    assert again.output == "0 switch(es) registered, 1 unchanged\n"
    path.write_text("meter_id\nm1\n", encoding="utf-8")
    assert _cli(database_url, "switches", "import", str(path), "--by", "f").exit_code == 2

    found = _cli(database_url, "meters", "find", "QF-01")
    assert found.exit_code == 0, found.output
    assert "meter          m1  (active)  matched by switch_number" in found.output
    assert "QF-01  registered  main" in found.output
    as_json = json.loads(_cli(database_url, "meters", "find", "m", "--json").output)
    assert [m["meter_id"] for m in as_json["meters"]] == ["m1", "m2"]
    assert _cli(database_url, "meters", "find", "nothing").exit_code == 1
    assert _cli(database_url, "meters", "find", " ").exit_code == 2
