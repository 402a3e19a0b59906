"""Registry import into the real database: directly and through `headend meters import`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner, Result

from headend.cli.app import app
from headend.registry.meter_import import ImportResult, RegistryConflictError, import_meters, read_registry_file
from tests.integration.conftest import count

pytestmark = pytest.mark.integration

HEADER = "meter_id,protocol,concentrator_id,region,model,multiplier,status,register_max_wh"
GOOD = f"""{HEADER}
m-01,mqtt,dcu-a,north,SDM120,1,active,
m-02,mqtt,dcu-a,north,SDM120,1,active,
m-03,mqtt,dcu-b,south,SDM630,40,inactive,100000
m-04,mqtt,,south,,,,
m-05,mqtt,,north,,,removed,
"""
METER_COLUMNS = "meter_id, protocol, concentrator_id, region, model, multiplier, status, register_max_wh"


def _write(tmp_path: Path, text: str, name: str = "registry.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _meters(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT {METER_COLUMNS} FROM meters ORDER BY meter_id").fetchall()


def _updated(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    return {str(m): u for m, u in conn.execute("SELECT meter_id, updated_at FROM meters")}


def _cli(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(app, ["meters", "import", *args], env={"HEADEND_DATABASE_URL": database_url})


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text)).strip()


# --------------------------------------------------------------------------- import_meters


def test_import_creates_meters_and_concentrators(db: psycopg.Connection[Any], tmp_path: Path) -> None:
    parsed = read_registry_file(_write(tmp_path, GOOD))
    assert parsed.errors == []
    assert import_meters(db, parsed.rows) == ImportResult(meters_created=5, meters_updated=0, concentrators_created=2)
    assert _meters(db) == [
        ("m-01", "mqtt", "dcu-a", "north", "SDM120", 1, "active", 999_999_990),
        ("m-02", "mqtt", "dcu-a", "north", "SDM120", 1, "active", 999_999_990),
        ("m-03", "mqtt", "dcu-b", "south", "SDM630", 40, "inactive", 100_000),
        ("m-04", "mqtt", None, "south", None, 1, "active", 999_999_990),
        ("m-05", "mqtt", None, "north", None, 1, "removed", 999_999_990),
    ]
    assert db.execute("SELECT concentrator_id, region FROM concentrators ORDER BY 1").fetchall() == [
        ("dcu-a", "north"),
        ("dcu-b", "south"),
    ]


def test_importing_the_same_file_again_changes_nothing(db: psycopg.Connection[Any], tmp_path: Path) -> None:
    rows = read_registry_file(_write(tmp_path, GOOD)).rows
    import_meters(db, rows)
    before, stamps = _meters(db), _updated(db)
    assert import_meters(db, rows) == ImportResult(0, 0, 0)
    assert _meters(db) == before
    assert _updated(db) == stamps
    assert count(db, "SELECT count(*) FROM concentrators") == 2


def test_a_changed_region_updates_exactly_that_row(db: psycopg.Connection[Any], tmp_path: Path) -> None:
    import_meters(db, read_registry_file(_write(tmp_path, GOOD)).rows)
    before, stamps = _meters(db), _updated(db)
    changed = GOOD.replace("m-04,mqtt,,south,", "m-04,mqtt,,east,")
    assert changed != GOOD
    assert import_meters(db, read_registry_file(_write(tmp_path, changed, "v2.csv")).rows) == ImportResult(0, 1, 0)
    after, new_stamps = _meters(db), _updated(db)
    assert [row for row in after if row not in before] == [
        ("m-04", "mqtt", None, "east", None, 1, "active", 999_999_990)
    ]
    assert {m for m in stamps if stamps[m] != new_stamps[m]} == {"m-04"}
    assert new_stamps["m-04"] > stamps["m-04"]


def test_a_new_row_with_a_new_concentrator_is_created_beside_the_old(
    db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    import_meters(db, read_registry_file(_write(tmp_path, GOOD)).rows)
    more = GOOD + "m-06,mqtt,dcu-c,west,,,,\n"
    assert import_meters(db, read_registry_file(_write(tmp_path, more, "v2.csv")).rows) == ImportResult(1, 0, 1)
    assert count(db, "SELECT count(*) FROM meters") == 6
    assert count(db, "SELECT count(*) FROM concentrators WHERE concentrator_id = 'dcu-c' AND region = 'west'") == 1


def test_importing_nothing_changes_nothing(db: psycopg.Connection[Any]) -> None:
    assert import_meters(db, []) == ImportResult(0, 0, 0)
    assert count(db, "SELECT count(*) FROM meters") == 0


# --------------------------------------------------------------------------- headend meters import

BAD = f"""{HEADER}
m-01,mqtt,dcu-a,north,,,,
m 02,mqtt,dcu-a,north,,,,
m-03,mqtt,dcu-a,north,,,,
m-04,lora,,north,,,,
m-01,mqtt,dcu-a,north,,,,
"""


def test_cli_imports_a_good_file_and_again_changes_nothing(
    db: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, GOOD)
    first = _cli(database_url, str(path))
    assert first.exit_code == 0, first.output
    assert "5 valid row(s): 5 meter(s) created, 0 updated, 2 concentrator(s) created" in first.stdout
    assert count(db, "SELECT count(*) FROM meters") == 5
    again = _cli(database_url, str(path))
    assert again.exit_code == 0, again.output
    assert "5 valid row(s): 0 meter(s) created, 0 updated, 0 concentrator(s) created" in again.stdout


def test_cli_with_bad_rows_reports_them_and_imports_nothing(
    db: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, BAD)
    result = _cli(database_url, str(path))
    assert result.exit_code == 1, result.output
    err = result.stderr.splitlines()
    assert f"error: {path}: line 3: meter_id 'm 02' does not match [A-Za-z0-9_-]{{1,32}}" in err
    assert f"error: {path}: line 5: protocol 'lora' is not one of mqtt, modbus, dlt645" in err
    assert f"error: {path}: line 6: meter_id 'm-01' repeats line 2" in err
    assert "3 row(s) refused; nothing imported (fix them, or pass --skip-invalid)" in err
    assert count(db, "SELECT count(*) FROM meters") == 0
    assert count(db, "SELECT count(*) FROM concentrators") == 0


def test_cli_skip_invalid_imports_the_good_rows_and_still_fails(
    db: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, BAD)
    result = _cli(database_url, "--skip-invalid", str(path))
    assert result.exit_code == 1, result.output
    assert "2 valid row(s): 2 meter(s) created, 0 updated, 1 concentrator(s) created" in result.stdout
    assert f"error: {path}: line 3: meter_id 'm 02' does not match" in result.stderr
    assert [m for (m,) in db.execute("SELECT meter_id FROM meters ORDER BY 1")] == ["m-01", "m-03"]


def test_cli_missing_column_exits_2_before_touching_the_database(
    db: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, "meter_id,protocol,concentrator_id\nm-01,mqtt,\n")
    result = _cli(database_url, str(path))
    assert result.exit_code == 2, result.output
    assert f"error: {path}: header lacks required column(s): region" in _flat(result.stderr)
    assert count(db, "SELECT count(*) FROM meters") == 0


def test_cli_file_that_is_not_utf8_exits_2(db: psycopg.Connection[Any], database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "gbk.csv"
    path.write_bytes(f"{HEADER}\nm-01,mqtt,,华北,,,,\n".encode("gbk"))
    result = _cli(database_url, str(path))
    assert result.exit_code == 2, result.output
    assert f"error: {path}: 'utf-8' codec can't decode" in _flat(result.stderr)
    assert count(db, "SELECT count(*) FROM meters") == 0


def test_cli_reads_a_file_with_a_byte_order_mark(
    db: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "excel.csv"
    path.write_text(GOOD, encoding="utf-8-sig")
    result = _cli(database_url, str(path))
    assert result.exit_code == 0, result.output
    assert count(db, "SELECT count(*) FROM meters") == 5


# --------------------------------------------------------------------------- regressions of fixed defects


def test_cli_unclosed_quote_in_a_large_file_exits_2_with_a_message(
    db: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    rows = "".join(f"m-{i:05d},mqtt,dcu-a,north,,,,\n" for i in range(1, 8000))
    path = _write(tmp_path, f'{HEADER}\nm-00000,mqtt,"dcu-a,north,,,,\n{rows}')
    result = _cli(database_url, str(path))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2
    assert f"error: {path}:" in _flat(result.stderr)
    assert count(db, "SELECT count(*) FROM meters") == 0


def test_reconnect_mode_is_imported_and_checked(db: psycopg.Connection[Any], tmp_path: Path) -> None:
    text = "meter_id,protocol,concentrator_id,region,reconnect_mode\nr-1,mqtt,,north,allowed\nr-2,mqtt,,north,\n"
    parsed = read_registry_file(_write(tmp_path, text))
    assert not parsed.errors
    import_meters(db, parsed.rows)
    modes = db.execute("SELECT meter_id, reconnect_mode FROM meters ORDER BY meter_id").fetchall()
    assert [tuple(m) for m in modes] == [("r-1", "allowed"), ("r-2", "direct")]
    bad = read_registry_file(
        _write(tmp_path, "meter_id,protocol,concentrator_id,region,reconnect_mode\nr-3,mqtt,,n,press\n")
    )
    assert [str(e) for e in bad.errors] == ["line 2: reconnect_mode 'press' is not one of direct, allowed"]


POLLED = """meter_id,protocol,concentrator_id,region,model,endpoint,unit_id,address,bus
mb-1,modbus,,north,eastron_sdm630,10.0.0.7:502,1,,
mb-2,modbus,,north,chint_dtsu666,10.0.0.7:502,2,,
dl-1,dlt645,,north,,10.0.0.8:8899,,000012345678,rs485-1
"""


def test_polled_meters_are_registered_where_they_answer(db: psycopg.Connection[Any], tmp_path: Path) -> None:
    parsed = read_registry_file(_write(tmp_path, POLLED))
    assert parsed.errors == []
    assert import_meters(db, parsed.rows).meters_created == 3
    rows = db.execute("SELECT meter_id, protocol, endpoint, unit_id, address, bus FROM meters ORDER BY 1").fetchall()
    assert rows == [
        ("dl-1", "dlt645", "10.0.0.8:8899", None, "000012345678", "rs485-1"),
        ("mb-1", "modbus", "10.0.0.7:502", 1, None, None),
        ("mb-2", "modbus", "10.0.0.7:502", 2, None, None),
    ]
    assert import_meters(db, parsed.rows) == ImportResult(0, 0, 0)
    # another meter at a place that is taken: nothing of the file is imported
    taken = POLLED.splitlines()[0] + "\nmb-3,modbus,,north,eastron_sdm120,10.0.0.7:502,9,,\n"
    taken += "mb-9,modbus,,north,eastron_sdm120,10.0.0.7:502,2,,\n"
    with pytest.raises(
        RegistryConflictError, match=re.escape("meter 'mb-9': unit 2 on 10.0.0.7:502 is taken by meter 'mb-2'")
    ):
        import_meters(db, read_registry_file(_write(tmp_path, taken, "taken.csv")).rows)
    assert count(db, "SELECT count(*) FROM meters") == 3
    # the schema holds the same rules as the file's checks, for whoever writes meters another way
    with pytest.raises(psycopg.errors.CheckViolation, match="meters_reached"):
        db.execute("UPDATE meters SET unit_id = NULL WHERE meter_id = 'mb-1'")
    with pytest.raises(psycopg.errors.UniqueViolation, match="meters_modbus_unit"):
        db.execute("UPDATE meters SET unit_id = 2 WHERE meter_id = 'mb-1'")


def test_a_conflicting_place_is_refused_by_the_command_with_nothing_imported(
    database_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    assert _cli(database_url, str(_write(tmp_path, POLLED))).exit_code == 0
    moved = POLLED.splitlines()[0] + "\nmb-7,modbus,,north,eastron_sdm120,10.0.0.7:502,1,,\n"
    result = _cli(database_url, str(_write(tmp_path, moved, "moved.csv")))
    assert result.exit_code == 1
    assert "nothing imported: meter 'mb-7': unit 1 on 10.0.0.7:502 is taken by meter 'mb-1'" in _flat(result.output)
    assert count(db, "SELECT count(*) FROM meters WHERE meter_id = 'mb-7'") == 0


FRAMED = """meter_id,protocol,concentrator_id,region,model,endpoint,unit_id,address,bus,framing
mb-1,modbus,,north,eastron_sdm120,10.0.0.7:502,1,,,
mb-2,modbus,,north,eastron_sdm120,10.0.0.9:4001,1,,,rtu
mb-3,modbus,,north,eastron_sdm120,10.0.0.9:4001,2,,,rtu
mb-4,modbus,,north,eastron_sdm120,10.0.0.9:4001,1,,rs485-2,tcp
dl-1,dlt645,,north,,10.0.0.9:4001,,000012345678,,
"""


def _framings(db: psycopg.Connection[Any]) -> dict[str, str | None]:
    return {str(m): f for m, f in db.execute("SELECT meter_id, framing FROM meters")}


def test_modbus_meters_are_registered_with_their_framing(db: psycopg.Connection[Any], tmp_path: Path) -> None:
    parsed = read_registry_file(_write(tmp_path, FRAMED))
    assert parsed.errors == []
    assert import_meters(db, parsed.rows).meters_created == 5
    assert _framings(db) == {"mb-1": "tcp", "mb-2": "rtu", "mb-3": "rtu", "mb-4": "tcp", "dl-1": None}
    assert import_meters(db, parsed.rows) == ImportResult(0, 0, 0)
    # a Modbus meter registered before the column (NULL) is tcp: imported again as tcp, it is not changed
    db.execute("UPDATE meters SET framing = NULL WHERE meter_id = 'mb-1'")
    assert import_meters(db, parsed.rows) == ImportResult(0, 0, 0)
    assert _framings(db)["mb-1"] is None
    # the schema refuses a framing that is not Modbus's
    with pytest.raises(psycopg.errors.CheckViolation, match="meters_framing"):
        db.execute("UPDATE meters SET framing = 'rtu' WHERE meter_id = 'dl-1'")


def test_a_bus_framed_otherwise_in_the_registry_is_refused_with_nothing_imported(
    db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    import_meters(db, read_registry_file(_write(tmp_path, FRAMED)).rows)
    header = FRAMED.splitlines()[0]
    # a tcp meter on the rtu bus, and an rtu meter beside the meter registered with NULL (tcp)
    db.execute("UPDATE meters SET framing = NULL WHERE meter_id = 'mb-1'")
    mixed = f"{header}\nmb-5,modbus,,north,eastron_sdm120,10.0.0.9:4001,5,,,tcp\n"
    mixed += "mb-6,modbus,,north,eastron_sdm120,10.0.0.7:502,6,,,rtu\n"
    mixed += "mb-7,modbus,,north,eastron_sdm120,10.0.0.9:4001,7,,rs485-2,\n"
    with pytest.raises(RegistryConflictError) as refused:
        import_meters(db, read_registry_file(_write(tmp_path, mixed, "mixed.csv")).rows)
    assert str(refused.value) == (
        "meter 'mb-5': framing tcp on 10.0.0.9:4001 differs from rtu of meter 'mb-2'; "
        "meter 'mb-6': framing rtu on 10.0.0.7:502 differs from tcp of meter 'mb-1' "
        "(the meters of one bus share a framing: import them all with the new one)"
    )
    assert count(db, "SELECT count(*) FROM meters") == 5
    # the whole bus imported with the new framing changes it
    moved = f"{header}\nmb-2,modbus,,north,eastron_sdm120,10.0.0.9:4001,1,,,tcp\n"
    moved += "mb-3,modbus,,north,eastron_sdm120,10.0.0.9:4001,2,,,tcp\n"
    moved += "mb-5,modbus,,north,eastron_sdm120,10.0.0.9:4001,5,,,\n"
    assert import_meters(db, read_registry_file(_write(tmp_path, moved, "moved.csv")).rows) == ImportResult(1, 2, 0)
    assert _framings(db) == {"mb-1": None, "mb-2": "tcp", "mb-3": "tcp", "mb-4": "tcp", "mb-5": "tcp", "dl-1": None}


def test_framing_errors_are_reported_by_the_command(
    database_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    assert _cli(database_url, str(_write(tmp_path, FRAMED))).exit_code == 0
    header = FRAMED.splitlines()[0]
    bad = f"{header}\ndl-2,dlt645,,north,,10.0.0.9:4001,,000012345679,,rtu\n"
    bad += "mb-8,modbus,,north,eastron_sdm120,10.0.0.8:502,1,,,ascii\n"
    bad += "mb-9,modbus,,north,eastron_sdm120,10.0.0.8:502,2,,,rtu\n"
    bad += "mb-10,modbus,,north,eastron_sdm120,10.0.0.8:502,3,,,tcp\n"
    result = _cli(database_url, str(_write(tmp_path, bad, "bad.csv")))
    assert result.exit_code == 1
    output = _flat(result.output)
    assert "line 2: framing is for modbus meters (tcp or rtu); a dlt645 meter has none" in output
    assert "line 3: framing 'ascii' of a modbus meter is not one of tcp, rtu" in output
    assert "line 5: framing tcp on 10.0.0.8:502 differs from rtu of line 4" in output
    assert count(db, "SELECT count(*) FROM meters") == 5
    against = f"{header}\nmb-5,modbus,,north,eastron_sdm120,10.0.0.9:4001,5,,,\n"
    result = _cli(database_url, str(_write(tmp_path, against, "against.csv")))
    assert result.exit_code == 1
    assert "nothing imported: meter 'mb-5': framing tcp on 10.0.0.9:4001 differs from rtu of meter 'mb-2'" in _flat(
        result.output
    )
    assert count(db, "SELECT count(*) FROM meters WHERE meter_id = 'mb-5'") == 0
