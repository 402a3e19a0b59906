"""Controlled switches without a database: field checks, partial edits, the CSV file and its per-row errors."""

from __future__ import annotations

import pytest

from headend.registry.meter_search import MAX_QUERY_CHARS, SearchError, clean_query
from headend.registry.switch_import import (
    MAX_ROWS,
    RowErrorKind,
    SwitchFileError,
    SwitchRowError,
    parse_switch_text,
)
from headend.registry.switches import (
    DEVICE_MAX,
    NOTES_MAX,
    REASON_MAX,
    SWITCH_NUMBER_MAX,
    SwitchDraft,
    SwitchError,
    SwitchErrorKind,
    clean_actor,
    clean_reason,
    validate_changes,
    validate_draft,
)

HEADER = "switch_number,controlled_device,meter_id,location,notes"


def _refusal(call: object, *args: object) -> SwitchError:
    assert callable(call)
    with pytest.raises(SwitchError) as caught:
        call(*args)
    return caught.value


def test_a_draft_is_trimmed_and_empty_optional_fields_are_none() -> None:
    draft = validate_draft("  QF-01 ", " box transformer 1 main switch\t", " m1 ", "  ", "")
    assert draft == SwitchDraft("QF-01", "box transformer 1 main switch", "m1", None, None)
    noted = validate_draft("1#箱变-01", "1号箱变总开关", "m1", "3栋2单元", "line one\nline two")
    assert (noted.switch_number, noted.location, noted.notes) == ("1#箱变-01", "3栋2单元", "line one\nline two")


@pytest.mark.parametrize(
    ("args", "field", "message"),
    [
        (("", "device", "m1"), "switch_number", "switch_number is empty"),
        ((None, "device", "m1"), "switch_number", "switch_number is empty"),
        (("QF-01", "  ", "m1"), "controlled_device", "controlled_device is empty"),
        (("QF-01", "device", ""), "meter_id", "meter_id is empty"),
        (("QF-01", "device", "m 1"), "meter_id", "meter_id 'm 1' does not match [A-Za-z0-9_-]{1,32}"),
        (("Q" * (SWITCH_NUMBER_MAX + 1), "d", "m1"), "switch_number", "switch_number of 65 characters exceeds 64"),
        (
            ("QF-01", "d" * (DEVICE_MAX + 1), "m1"),
            "controlled_device",
            "controlled_device of 201 characters exceeds 200",
        ),
        (("QF\n01", "device", "m1"), "switch_number", "switch_number holds a control character (one line of text)"),
        (("QF\x0001", "device", "m1"), "switch_number", "switch_number holds a control character (one line of text)"),
        (("QF-01", "a\u2028b", "m1"), "controlled_device", "controlled_device holds a control character"),
        (("QF-\ud800", "device", "m1"), "switch_number", "switch_number is not valid Unicode (a lone surrogate)"),
        (("QF-01", "device", "m1", "room\r1"), "location", "location holds a control character (one line of text)"),
        (("QF-01", "device", "m1", None, "n" * (NOTES_MAX + 1)), "notes", "notes of 1001 characters exceeds 1000"),
        (("QF-01", "device", "m1", None, "bell\x07"), "notes", "notes holds a control character"),
    ],
)
def test_a_draft_names_the_field_at_fault(args: tuple[str | None, ...], field: str, message: str) -> None:
    refused = _refusal(validate_draft, *args)
    assert refused.kind is SwitchErrorKind.INVALID
    assert refused.field == field
    assert str(refused).startswith(message)


def test_length_is_counted_after_trimming_in_characters_not_bytes() -> None:
    assert validate_draft(" " + "开" * SWITCH_NUMBER_MAX + " ", "d", "m1").switch_number == "开" * SWITCH_NUMBER_MAX


def test_an_edit_names_only_known_fields_and_cannot_clear_a_required_one() -> None:
    assert validate_changes({"location": "  ", "notes": None, "switch_number": " QF-02 "}) == {
        "location": None,
        "notes": None,
        "switch_number": "QF-02",
    }
    assert validate_changes({"meter_id": "m2"}) == {"meter_id": "m2"}
    assert _refusal(validate_changes, {}).field == "body"
    assert "nothing to change" in str(_refusal(validate_changes, {}))
    assert _refusal(validate_changes, {"controlled_device": None}).field == "controlled_device"
    assert _refusal(validate_changes, {"meter_id": None}).field == "meter_id"
    unknown = _refusal(validate_changes, {"commissioning_state": "commissioned"})
    assert unknown.field == "commissioning_state"
    assert "not a field of a switch" in str(unknown)


def test_a_retirement_needs_a_reason_and_an_actor() -> None:
    assert clean_reason("  replaced\nafter a fault ") == "replaced\nafter a fault"
    assert _refusal(clean_reason, " ").field == "reason"
    assert _refusal(clean_reason, "r" * (REASON_MAX + 1)).field == "reason"
    assert clean_actor(" field.li ") == "field.li"
    for bad in ("", "x" * 65, "a\nb"):
        assert _refusal(clean_actor, bad).field == "by"


# --- the CSV file ---------------------------------------------------------------------------------------------------


def test_a_good_file_gives_its_rows_with_their_lines() -> None:
    parsed = parse_switch_text(
        "\ufeff" + HEADER + "\n"
        "QF-01,box transformer 1 main switch,m1,building 3,\n"
        "\n"
        '"QF-02","pump, main switch",m2,,"two\nlines"\n'
        "QF-03,street lights,m1,,\n"
    )
    assert parsed.errors == []
    assert [(r.line, r.draft.switch_number) for r in parsed.rows] == [(2, "QF-01"), (4, "QF-02"), (6, "QF-03")]
    assert parsed.rows[1].draft == SwitchDraft("QF-02", "pump, main switch", "m2", None, "two\nlines")


def test_optional_columns_may_be_left_out_and_columns_come_in_any_order() -> None:
    parsed = parse_switch_text("meter_id,switch_number,controlled_device\nm1,QF-01,main switch\n")
    assert parsed.errors == []
    assert parsed.rows[0].draft == SwitchDraft("QF-01", "main switch", "m1")


def test_every_bad_row_is_reported_with_its_line_and_kind() -> None:
    parsed = parse_switch_text(
        f"{HEADER}\n"
        "QF-01,main switch,m1,,\n"
        ",main switch,m1,,\n"
        "QF-03,,m1,,\n"
        "QF-04,main switch,,,\n"
        f"{'Q' * 65},main switch,m1,,\n"
        "QF-01,another,m2,,\n"
        "QF-07,main switch,m1,,,extra\n"
        "QF-08,main switch,bad id,,\n"
    )
    assert [r.draft.switch_number for r in parsed.rows] == ["QF-01"]
    assert parsed.errors == [
        SwitchRowError(3, "switch_number is empty", RowErrorKind.INVALID),
        SwitchRowError(4, "controlled_device is empty", RowErrorKind.INVALID),
        SwitchRowError(5, "meter_id is empty", RowErrorKind.INVALID),
        SwitchRowError(6, "switch_number of 65 characters exceeds 64", RowErrorKind.INVALID),
        SwitchRowError(7, "switch_number 'QF-01' repeats line 2", RowErrorKind.REPEATED),
        SwitchRowError(8, "more fields than header columns", RowErrorKind.INVALID),
        SwitchRowError(9, "meter_id 'bad id' does not match [A-Za-z0-9_-]{1,32}", RowErrorKind.INVALID),
    ]
    assert str(parsed.errors[0]) == "line 3: switch_number is empty"


def test_a_row_is_reported_at_the_line_it_starts_on() -> None:
    parsed = parse_switch_text(f'{HEADER}\nQF-01,main,m1,,"a\nb\nc"\nQF-02,,m1,,\n')
    assert parsed.errors == [SwitchRowError(5, "controlled_device is empty", RowErrorKind.INVALID)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "header lacks required column(s): switch_number, controlled_device, meter_id"),
        ("switch_number,meter_id\n", "header lacks required column(s): controlled_device"),
        (f"{HEADER},colour\n", "header names unknown column(s): colour"),
        (f"{HEADER},notes\n", "header names column(s) twice: notes"),
        (f'{HEADER}\nQF-01,"main\n', "not readable as CSV after line 1"),
    ],
)
def test_a_file_that_cannot_be_read_is_refused_as_a_whole(text: str, message: str) -> None:
    with pytest.raises(SwitchFileError) as caught:
        parse_switch_text(text)
    assert str(caught.value).startswith(message)


def test_a_file_beyond_the_row_limit_is_refused() -> None:
    rows = "".join(f"QF-{i},main,m1,,\n" for i in range(MAX_ROWS + 1))
    with pytest.raises(SwitchFileError, match="more than 10,000 rows"):
        parse_switch_text(f"{HEADER}\n{rows}")
    assert len(parse_switch_text(f"{HEADER}\n{rows[: rows.index(f'QF-{MAX_ROWS},')]}").rows) == MAX_ROWS


def test_a_meter_query_is_trimmed_and_bounded() -> None:
    assert clean_query("  A0001 ") == "A0001"
    for bad in ("", "   ", "x" * (MAX_QUERY_CHARS + 1)):
        with pytest.raises(SearchError):
            clean_query(bad)
