"""The console's pure helpers: session tokens and their digests, CSRF tokens, password rules, the chart's geometry."""

from __future__ import annotations

import base64
import hashlib
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headend.console.charts import rate_chart
from headend.console.passwords import MIN_PASSWORD_CHARS, password_matches, password_problem
from headend.console.tokens import (
    csrf_token,
    csrf_token_valid,
    is_session_token,
    new_csrf_secret,
    new_session_token,
    session_id,
    sign_in_secret,
)


def test_session_tokens_are_random_and_stored_as_their_sha256() -> None:
    tokens = {new_session_token() for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:
        assert is_session_token(token)
        assert session_id(token) == hashlib.sha256(token.encode()).digest()
    assert not is_session_token("")
    assert not is_session_token("a" * 42)
    assert not is_session_token("a" * 44)
    assert not is_session_token("a" * 42 + "=")
    assert not is_session_token("a" * 42 + "\x00")


def test_a_csrf_token_is_valid_under_its_secret_only() -> None:
    secret, other = new_csrf_secret(), new_csrf_secret()
    token = csrf_token(secret)
    assert csrf_token_valid(secret, token)
    assert not csrf_token_valid(other, token)
    assert not csrf_token_valid(secret, None)
    assert not csrf_token_valid(secret, "")
    # a new token on every page, each one valid
    tokens = {csrf_token(secret) for _ in range(50)}
    assert len(tokens) == 50
    assert all(csrf_token_valid(secret, t) for t in tokens)


def test_a_csrf_token_with_any_byte_changed_is_refused() -> None:
    secret = new_csrf_secret()
    raw = bytearray(base64.urlsafe_b64decode(csrf_token(secret) + "=="))
    for index in range(len(raw)):
        changed = bytearray(raw)
        changed[index] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(changed)).decode().rstrip("=")
        assert not csrf_token_valid(secret, forged), index
    # the MAC without its nonce, or a nonce with no MAC
    whole = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    assert csrf_token_valid(secret, whole)
    assert not csrf_token_valid(secret, whole[:-1])
    assert not csrf_token_valid(secret, whole + "A")


@given(st.text(max_size=200))
def test_any_text_is_refused_as_a_csrf_token_without_error(text: str) -> None:
    assert not csrf_token_valid(new_csrf_secret(), text)


def test_the_sign_in_form_s_secret_follows_its_cookie() -> None:
    cookie, other = new_session_token(), new_session_token()
    token = csrf_token(sign_in_secret(cookie))
    assert csrf_token_valid(sign_in_secret(cookie), token)
    assert not csrf_token_valid(sign_in_secret(other), token)
    # a session's token is not a sign-in token, and the other way round: different secrets
    assert sign_in_secret(cookie) != session_id(cookie)


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("a" * (MIN_PASSWORD_CHARS - 1), "at least"),
        ("a" * 257, "at most"),
        ("correct horse\tbattery", "control characters"),
        (" correct horse battery", "begin or end with a space"),
        ("correct horse battery", None),
        ("正确的马电池钉子很长很长", None),
    ],
)
def test_password_rules(password: str, problem: str | None) -> None:
    found = password_problem(password)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_a_check_without_a_user_is_false() -> None:
    assert password_matches("anything at all", None) is False


def test_the_chart_draws_a_dot_a_day_and_breaks_the_line_where_nothing_was_expected() -> None:
    start = date(2026, 11, 1)
    rates: list[float | None] = [0.99, 0.985, None, 0.95, 1.0, 0.97, 0.99]
    chart = rate_chart([(start + timedelta(days=i), r) for i, r in enumerate(rates)], 0.98)
    assert [p.day for p in chart.points] == [start + timedelta(days=i) for i in (0, 1, 3, 4, 5, 6)]
    assert [p.below_target for p in chart.points] == [False, False, True, False, True, False]
    assert len(chart.lines) == 2
    # x from the left edge to the right edge, evenly; y: higher rates higher up (smaller y)
    assert chart.points[0].x == chart.plot_left
    assert chart.points[-1].x == chart.plot_right
    by_rate = sorted(chart.points, key=lambda p: p.rate)
    assert [p.y for p in by_rate] == sorted((p.y for p in by_rate), reverse=True)
    # the axis spans 90–100 %, the target line between its ends, 100 % at the top
    assert [t.label for t in chart.y_ticks] == ["90%", "92%", "94%", "96%", "98%", "100%"]
    assert chart.y_ticks[-1].position == chart.plot_top
    assert chart.y_ticks[0].position == chart.plot_bottom
    assert chart.plot_top < chart.target_y < chart.plot_bottom
    assert chart.target_y == chart.y_ticks[4].position
    assert chart.target_label == "98% target"
    assert "2 below the 98% target" in chart.description


def test_the_chart_s_axis_goes_as_low_as_the_worst_day() -> None:
    days = [(date(2026, 11, 1) + timedelta(days=i), r) for i, r in enumerate([0.0, 0.5, 0.83])]
    chart = rate_chart(days, 0.98)
    assert chart.y_ticks[0].label == "0%"
    assert chart.y_ticks[-1].label == "100%"
    assert chart.points[0].y == chart.plot_bottom
    chart = rate_chart([(date(2026, 11, 1), 0.83)], 0.98)
    assert chart.y_ticks[0].label == "80%"
    assert chart.points[0].x == (chart.plot_left + chart.plot_right) / 2


def test_a_chart_of_days_without_meters_expected_has_no_dots() -> None:
    chart = rate_chart([(date(2026, 11, 1), None), (date(2026, 11, 2), None)], 0.98)
    assert chart.points == []
    assert chart.lines == []
    assert [t.label for t in chart.x_ticks] == ["11-02"]
