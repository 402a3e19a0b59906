"""`headend.db.text.storable`: any Python string becomes one PostgreSQL can store, readable and bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from headend.db.text import storable


def test_nul_and_lone_surrogates_are_escaped() -> None:
    assert storable("a\x00b") == "a\\x00b"
    assert storable("id\ud800") == "id\\ud800"
    assert storable("plain 电表") == "plain 电表"


def test_long_text_is_cut_and_marked() -> None:
    assert storable("x" * 10, max_chars=4) == "xxx…"
    assert storable("xyz", max_chars=4) == "xyz"


@given(st.text(alphabet=st.characters(codec=None, exclude_categories=())), st.integers(1, 50))
def test_any_string_becomes_encodable_utf8_without_nul(text: str, limit: int) -> None:
    stored = storable(text, max_chars=limit)
    assert "\x00" not in stored
    stored.encode("utf-8")  # raises on a lone surrogate
    assert len(stored) <= limit
