"""`headend.registry`: parsing the meter registry CSV, row by row, with line numbers."""

from __future__ import annotations

import csv
import io
import re
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headend.registry.meter_import import (
    MeterRow,
    RegistryFileError,
    RowError,
    parse_registry,
    parse_row,
    read_registry_file,
)

FULL_HEADER = "meter_id,protocol,concentrator_id,region,model,multiplier,status,register_max_wh"


def _lines(text: str) -> list[str]:
    return io.StringIO(text).readlines()


# --------------------------------------------------------------------------- good files


def test_good_file_with_optional_columns() -> None:
    parsed = parse_registry(
        _lines(
            f"{FULL_HEADER}\n"
            "m-1,mqtt,dcu-1,north,SDM120,1,active,999999990\n"
            "m-2,mqtt,,south,,40,inactive,\n"
            " m-3 , MQTT ,dcu-1, north ,DDSY 666,,removed,100000\n"
        )
    )
    assert parsed.errors == []
    assert parsed.rows == [
        MeterRow("m-1", "mqtt", "dcu-1", "north", "SDM120", 1, "active", 999_999_990),
        MeterRow("m-2", "mqtt", None, "south", None, 40, "inactive", None),
        MeterRow("m-3", "mqtt", "dcu-1", "north", "DDSY 666", 1, "removed", 100_000),
    ]


def test_installed_on_is_an_optional_local_day() -> None:
    parsed = parse_registry(
        _lines("meter_id,protocol,concentrator_id,region,installed_on\nm-1,mqtt,,r,2026-11-21\nm-2,mqtt,,r,\n")
    )
    assert parsed.errors == []
    assert [(r.meter_id, r.installed_on) for r in parsed.rows] == [("m-1", date(2026, 11, 21)), ("m-2", None)]


def test_required_columns_only_give_the_defaults() -> None:
    parsed = parse_registry(_lines("region,meter_id,concentrator_id,protocol\nwest,m-9,,MQTT\n"))
    assert parsed.errors == []
    assert parsed.rows == [MeterRow("m-9", "mqtt", None, "west", None, 1, "active", None)]


def test_blank_lines_are_skipped_and_line_numbers_stay_true() -> None:
    parsed = parse_registry(_lines(f"{FULL_HEADER}\n\nm-1,mqtt,,r\n\nm-2,zigbee,,r\n"))
    assert [r.meter_id for r in parsed.rows] == ["m-1"]
    assert [e.line for e in parsed.errors] == [5]


def test_a_quoted_field_over_two_lines_keeps_later_line_numbers_true() -> None:
    parsed = parse_registry(_lines(f'{FULL_HEADER}\nm-1,mqtt,,r,"two\nlines"\nm-2,mqtt,,\n'))
    assert [(r.meter_id, r.model) for r in parsed.rows] == [("m-1", "two\nlines")]
    assert parsed.errors == [RowError(4, "region is empty")]


# --------------------------------------------------------------------------- the file as a whole


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        ("meter_id,protocol,concentrator_id\nm-1,mqtt,\n", "region"),
        ("meter_id,protocol\nm-1,mqtt\n", "concentrator_id, region"),
        ("id,protocol,concentrator_id,region\nm-1,mqtt,,r\n", "meter_id"),
        ("", "meter_id, protocol, concentrator_id, region"),
    ],
)
def test_missing_required_header_column_is_a_file_error(text: str, missing: str) -> None:
    with pytest.raises(RegistryFileError) as info:
        parse_registry(_lines(text))
    assert str(info.value) == f"header lacks required column(s): {missing}"


def test_header_only_file_is_empty_not_an_error() -> None:
    parsed = parse_registry(_lines(f"{FULL_HEADER}\n"))
    assert parsed.rows == []
    assert parsed.errors == []


# --------------------------------------------------------------------------- bad rows

BAD_ROWS_FILE = f"""{FULL_HEADER}
m-1,mqtt,dcu-1,north,,,,
bad id!,mqtt,dcu-1,north,,,,
m-3,zigbee,dcu-1,north,,,,
m-4,mqtt,dcu 1,north,,,,
m-5,mqtt,dcu-1,  ,,,,
m-6,mqtt,dcu-1,north,,x,,
m-7,mqtt,dcu-1,north,,0,,
m-8,mqtt,dcu-1,north,,,retired,
m-9,mqtt,dcu-1,north,,,,,surplus
m-10,mqtt,,south,,,,
m-1,mqtt,,south,,,,
m-12,mqtt,,south,,,,-5
m-13,mqtt,,south,,2.5,,
"""

EXPECTED_ERRORS = [
    RowError(3, "meter_id 'bad id!' does not match [A-Za-z0-9_-]{1,32}"),
    RowError(4, "protocol 'zigbee' is not one of mqtt, modbus, dlt645"),
    RowError(5, "concentrator_id 'dcu 1' does not match [A-Za-z0-9_-]{1,32}"),
    RowError(6, "region is empty"),
    RowError(7, "multiplier 'x' is not a whole number"),
    RowError(8, "multiplier must be positive, got 0"),
    RowError(9, "status 'retired' is not one of active, inactive, removed"),
    RowError(10, "more fields than header columns"),
    RowError(12, "meter_id 'm-1' repeats line 2"),
    RowError(13, "register_max_wh must be positive, got -5"),
    RowError(14, "multiplier '2.5' is not a whole number"),
]


def test_every_bad_row_is_reported_with_its_line_and_good_rows_are_kept() -> None:
    parsed = parse_registry(_lines(BAD_ROWS_FILE))
    assert parsed.rows == [
        MeterRow("m-1", "mqtt", "dcu-1", "north", None, 1, "active", None),
        MeterRow("m-10", "mqtt", None, "south", None, 1, "active", None),
    ]
    assert parsed.errors == EXPECTED_ERRORS


def test_row_error_reads_as_line_and_reason() -> None:
    assert str(RowError(7, "multiplier 'x' is not a whole number")) == "line 7: multiplier 'x' is not a whole number"


def test_fewer_fields_than_header_is_reported_by_what_is_missing() -> None:
    parsed = parse_registry(_lines(f"{FULL_HEADER}\nm-1,mqtt\n"))
    assert parsed.rows == []
    assert parsed.errors == [RowError(2, "region is empty")]


# --------------------------------------------------------------------------- parse_row


GOOD_RECORD = {"meter_id": "m-1", "protocol": "mqtt", "concentrator_id": "", "region": "r"}


def test_parse_row_of_a_good_record() -> None:
    assert parse_row(GOOD_RECORD) == MeterRow("m-1", "mqtt", None, "r", None, 1, "active", None)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"meter_id": ""}, "meter_id '' does not match"),
        ({"meter_id": "m" * 33}, "does not match [A-Za-z0-9_-]{1,32}"),
        ({"protocol": "dlms"}, "protocol 'dlms' is not one of mqtt, modbus, dlt645"),
        ({"concentrator_id": "dcu/1"}, "concentrator_id 'dcu/1' does not match"),
        ({"region": ""}, "region is empty"),
        ({"multiplier": "ten"}, "multiplier 'ten' is not a whole number"),
        ({"multiplier": "-3"}, "multiplier must be positive, got -3"),
        ({"status": "Active"}, "status 'Active' is not one of active, inactive, removed"),
        ({"register_max_wh": "0"}, "register_max_wh must be positive, got 0"),
        ({"register_max_wh": "1e9"}, "register_max_wh '1e9' is not a whole number"),
        ({"installed_on": "21/11/2026"}, "installed_on '21/11/2026' is not a date YYYY-MM-DD"),
    ],
)
def test_parse_row_refuses_each_bad_field(changes: dict[str, str], reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_row({**GOOD_RECORD, **changes})


def test_parse_row_with_missing_keys_is_refused_not_crashed() -> None:
    with pytest.raises(ValueError, match="meter_id '' does not match"):
        parse_row({})


_ids = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)


@given(st.lists(st.tuples(_ids, st.sampled_from(["mqtt", "MQTT"]), st.integers(1, 10**6)), max_size=20))
def test_written_rows_parse_back_exactly(rows: list[tuple[str, str, int]]) -> None:
    unique = list({meter_id: (meter_id, protocol, mult) for meter_id, protocol, mult in rows}.values())
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["meter_id", "protocol", "concentrator_id", "region", "multiplier"])
    for meter_id, protocol, multiplier in unique:
        writer.writerow([meter_id, protocol, "", "r", multiplier])
    parsed = parse_registry(_lines(out.getvalue()))
    assert parsed.errors == []
    assert parsed.rows == [MeterRow(m, p.lower(), None, "r", None, k, "active", None) for m, p, k in unique]


# --------------------------------------------------------------------------- files on disk


def test_byte_order_mark_is_handled_by_read_registry_file(tmp_path: Path) -> None:
    path = tmp_path / "registry.csv"
    path.write_text(f"{FULL_HEADER}\nm-1,mqtt,dcu-1,华东,,,,\n", encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    parsed = read_registry_file(path)
    assert parsed.errors == []
    assert parsed.rows == [MeterRow("m-1", "mqtt", "dcu-1", "华东", None, 1, "active", None)]


def test_byte_order_mark_would_hide_the_first_column_without_utf8_sig() -> None:
    # why read_registry_file must decode with utf-8-sig: the BOM sticks to the first header name
    with pytest.raises(RegistryFileError, match="meter_id"):
        parse_registry(_lines(f"\ufeff{FULL_HEADER}\nm-1,mqtt,,r,,,,\n"))


def test_crlf_file_without_bom(tmp_path: Path) -> None:
    path = tmp_path / "registry.csv"
    path.write_bytes(f"{FULL_HEADER}\r\nm-1,mqtt,,r,,,,\r\nm-2,bad,,r,,,,\r\n".encode())
    parsed = read_registry_file(path)
    assert [r.meter_id for r in parsed.rows] == ["m-1"]
    assert [e.line for e in parsed.errors] == [3]


def test_file_that_is_not_utf8_raises_unicode_error(tmp_path: Path) -> None:
    path = tmp_path / "registry.csv"
    path.write_bytes(f"{FULL_HEADER}\nm-1,mqtt,,华东,,,,\n".encode("gbk"))
    with pytest.raises(UnicodeDecodeError):
        read_registry_file(path)


# --------------------------------------------------------------------------- regressions of fixed defects

UNCLOSED_QUOTE = 'meter_id,protocol,concentrator_id,region\nm-0,mqtt,"dcu-a,north\n'


def test_unclosed_quote_in_a_large_file_is_a_file_error() -> None:
    rows = "".join(f"m-{i},mqtt,dcu-a,north\n" for i in range(1, 8000))  # ~190 kB, a realistic registry
    with pytest.raises(RegistryFileError):
        parse_registry(_lines(UNCLOSED_QUOTE + rows))


def test_a_record_spanning_lines_is_reported_at_its_first_line() -> None:
    parsed = parse_registry(_lines(UNCLOSED_QUOTE + "m-1,mqtt,dcu-a,north\n"))
    assert [e.line for e in parsed.errors] == [2]


# --------------------------------------------------------------------------- polled meters

POLLED_HEADER = "meter_id,protocol,concentrator_id,region,model,endpoint,unit_id,address,bus"


def test_polled_meters_say_where_they_answer() -> None:
    parsed = parse_registry(
        _lines(
            f"{POLLED_HEADER}\n"
            "mb-1,modbus,,r,eastron_sdm630,10.0.0.7:502,3,,\n"
            "mb-2,modbus,,r,chint_dtsu666,gw-1.example:4001,3,,rs485-2\n"
            "dl-1,dlt645,,r,,[fd00::1]:8899,,000012345678,\n"
            "m-1,mqtt,dcu-1,r,,,,,\n"
        )
    )
    assert parsed.errors == []
    assert [(r.meter_id, r.endpoint, r.unit_id, r.address, r.bus) for r in parsed.rows] == [
        ("mb-1", "10.0.0.7:502", 3, None, None),
        ("mb-2", "gw-1.example:4001", 3, None, "rs485-2"),
        ("dl-1", "[fd00::1]:8899", None, "000012345678", None),
        ("m-1", None, None, None, None),
    ]


POLLED = {"meter_id": "mb-1", "protocol": "modbus", "concentrator_id": "", "region": "r", "model": "eastron_sdm120"}


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({**POLLED}, "a modbus meter needs an endpoint (host:port)"),
        ({**POLLED, "endpoint": "10.0.0.7"}, "endpoint '10.0.0.7' is not host:port with a port 1-65535"),
        ({**POLLED, "endpoint": "10.0.0.7:0", "unit_id": "1"}, "is not host:port with a port 1-65535"),
        ({**POLLED, "endpoint": "10.0.0.7:70000", "unit_id": "1"}, "is not host:port with a port 1-65535"),
        ({**POLLED, "endpoint": "a b:502", "unit_id": "1"}, "endpoint 'a b:502' is not host:port"),
        ({**POLLED, "endpoint": "h:502"}, "a modbus meter needs a unit_id (1-247)"),
        ({**POLLED, "endpoint": "h:502", "unit_id": "0"}, "unit_id 0 is outside 1-247"),
        ({**POLLED, "endpoint": "h:502", "unit_id": "248"}, "unit_id 248 is outside 1-247"),
        ({**POLLED, "endpoint": "h:502", "unit_id": "x"}, "unit_id 'x' is not a whole number"),
        ({**POLLED, "endpoint": "h:502", "unit_id": "1", "address": "000000000001"}, "address is for DL/T 645"),
        ({**POLLED, "endpoint": "h:502", "unit_id": "1", "model": "sdm999"}, "model 'sdm999' of a modbus meter"),
        ({**POLLED, "endpoint": "h:502", "unit_id": "1", "model": ""}, "model None of a modbus meter"),
        ({**POLLED, "endpoint": "h:502", "unit_id": "1", "bus": "b" * 65}, "bus name of 65 characters"),
        ({**POLLED, "endpoint": "h:502", "unit_id": "1", "concentrator_id": "dcu-1"}, "not through concentrator"),
        ({**POLLED, "protocol": "dlt645", "endpoint": "h:1"}, "a dlt645 meter needs an address of 12 digits"),
        ({**POLLED, "protocol": "dlt645", "endpoint": "h:1", "address": "12345"}, "got '12345'"),
        ({**POLLED, "protocol": "dlt645", "endpoint": "h:1", "address": "00000000000A"}, "12 digits"),
        ({**POLLED, "protocol": "dlt645", "endpoint": "h:1", "unit_id": "1"}, "unit_id is for modbus meters"),
        ({**POLLED, "protocol": "mqtt", "endpoint": "h:1"}, "endpoint given for a mqtt meter, which is not polled"),
        ({**POLLED, "protocol": "mqtt", "unit_id": "1", "bus": "x"}, "unit_id, bus given for a mqtt meter"),
        ({**POLLED, "endpoint": "h:502", "unit_id": "1", "framing": "ascii"}, "framing 'ascii' of a modbus meter is"),
        ({**POLLED, "endpoint": "h:502", "unit_id": "1", "framing": "mbap"}, "is not one of tcp, rtu"),
        (
            {**POLLED, "protocol": "dlt645", "endpoint": "h:1", "address": "000000000001", "framing": "rtu"},
            "framing is for modbus meters (tcp or rtu); a dlt645 meter has none",
        ),
        ({**POLLED, "protocol": "mqtt", "framing": "tcp"}, "framing is for modbus meters (tcp or rtu); a mqtt meter"),
    ],
)
def test_a_polled_meter_row_is_refused_with_its_reason(record: dict[str, str], reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_row(record)


def test_two_meters_answering_at_one_place_are_refused_at_the_second() -> None:
    parsed = parse_registry(
        _lines(
            f"{POLLED_HEADER}\n"
            "mb-1,modbus,,r,eastron_sdm120,h:502,1,,\n"
            "mb-2,modbus,,r,eastron_sdm120,h:502,1,,\n"
            "mb-3,modbus,,r,eastron_sdm120,h:502,1,,bus-b\n"
            "mb-4,modbus,,r,eastron_sdm120,h:503,1,,\n"
            "dl-1,dlt645,,r,,h:502,,000000000001,bus-b\n"
            "dl-2,dlt645,,r,,h:502,,000000000001,bus-b\n"
        )
    )
    assert [r.meter_id for r in parsed.rows] == ["mb-1", "mb-3", "mb-4", "dl-1"]
    assert parsed.errors == [
        RowError(3, "unit 1 on h:502 repeats line 2"),
        RowError(7, "address 000000000001 on bus 'bus-b' of h:502 repeats line 6"),
    ]


def test_a_modbus_meter_is_framed_tcp_unless_its_row_says_rtu() -> None:
    parsed = parse_registry(
        _lines(
            f"{POLLED_HEADER},framing\n"
            "mb-1,modbus,,r,eastron_sdm120,h:502,1,,,\n"
            "mb-2,modbus,,r,eastron_sdm120,gw:4001,1,,,rtu\n"
            "mb-3,modbus,,r,eastron_sdm120,gw:4001,2,,, RTU \n"
            "mb-4,modbus,,r,eastron_sdm120,h:503,1,,,tcp\n"
            "dl-1,dlt645,,r,,gw:4001,,000000000001,b,\n"
            "m-1,mqtt,dcu-1,r,,,,,,\n"
        )
    )
    assert parsed.errors == []
    assert [(r.meter_id, r.framing) for r in parsed.rows] == [
        ("mb-1", "tcp"),
        ("mb-2", "rtu"),
        ("mb-3", "rtu"),
        ("mb-4", "tcp"),
        ("dl-1", None),
        ("m-1", None),
    ]
    # a file without the column: Modbus TCP, as before the column was
    [row] = parse_registry(_lines(f"{POLLED_HEADER}\nmb-1,modbus,,r,eastron_sdm120,h:502,1,,\n")).rows
    assert row.framing == "tcp"


def test_the_meters_of_one_bus_share_a_framing() -> None:
    parsed = parse_registry(
        _lines(
            f"{POLLED_HEADER},framing\n"
            "mb-1,modbus,,r,eastron_sdm120,gw:4001,1,,,rtu\n"
            "mb-2,modbus,,r,eastron_sdm120,gw:4001,2,,,\n"
            "mb-3,modbus,,r,eastron_sdm120,gw:4001,3,,b2,tcp\n"
            "mb-4,modbus,,r,eastron_sdm120,gw:4001,4,,b2,rtu\n"
            "mb-5,modbus,,r,eastron_sdm120,gw:4001,5,,,rtu\n"
            "mb-6,modbus,,r,eastron_sdm120,gw:4002,1,,,tcp\n"
            "dl-1,dlt645,,r,,gw:4001,,000000000001,,\n"
        )
    )
    # another bus of the gateway, another gateway, a DL/T 645 meter (no framing) are not the bus of line 2
    assert [r.meter_id for r in parsed.rows] == ["mb-1", "mb-3", "mb-5", "mb-6", "dl-1"]
    assert parsed.errors == [
        RowError(3, "framing tcp on gw:4001 differs from rtu of line 2 (the meters of one bus share a framing)"),
        RowError(
            5, "framing rtu on bus 'b2' of gw:4001 differs from tcp of line 4 (the meters of one bus share a framing)"
        ),
    ]
