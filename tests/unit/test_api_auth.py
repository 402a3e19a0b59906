"""The API's pure credential helpers: channel signatures, their timestamps, tokens and their hashes, names."""

from __future__ import annotations

import hashlib
import hmac
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headend.api.credentials import (
    Role,
    channel_problem,
    new_channel_secret,
    new_token,
    principal_name_problem,
    secret_problem,
    signature,
    signature_matches,
    timestamp_problem,
    token_sha256,
)

SECRET = "s3cr3t-0123456789abcdef0123456789abcdef"
BODY = b'{"channel_txn_id":"WX1","account_id":"A1","amount_fen":5000,"paid_at":"2026-11-22T10:15:00+08:00"}'


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1795000000." + BODY, hashlib.sha256).hexdigest()
    assert signature(SECRET, "1795000000", BODY) == f"sha256={expected}"


def test_the_worked_example_of_the_documentation() -> None:
    # docs/api.md shows this signature computed in Python and with openssl; keep them in step
    body = (
        b'{"channel_txn_id":"WX20261122001","account_id":"A0001","amount_fen":10000,'
        b'"paid_at":"2026-11-22T10:15:00+08:00"}'
    )
    assert signature("wechat-example-secret-0123456789abcdef", "1795313703", body) == (
        "sha256=6fef7102e25a2dd717246fd0084fc760f8c45632e4902293c407c5555e235f81"
    )


def test_a_signature_matches_under_any_current_secret_and_nothing_else() -> None:
    good = signature(SECRET, "1795000000", BODY)
    assert signature_matches([SECRET], "1795000000", BODY, good)
    assert signature_matches(["previous-" + SECRET, SECRET], "1795000000", BODY, good)
    assert signature_matches([SECRET], "1795000000", BODY, good.upper().replace("SHA256=", "sha256="))
    assert not signature_matches([], "1795000000", BODY, good)
    assert not signature_matches(["other-" + SECRET], "1795000000", BODY, good)
    assert not signature_matches([SECRET], "1795000001", BODY, good)
    assert not signature_matches([SECRET], "1795000000", BODY + b" ", good)
    assert not signature_matches([SECRET], "1795000000", BODY, good.removeprefix("sha256="))
    assert not signature_matches([SECRET], "1795000000", BODY, "sha1=" + good.removeprefix("sha256="))
    assert not signature_matches([SECRET], "1795000000", BODY, good[:-1])
    assert not signature_matches([SECRET], "+1795000000", BODY, signature(SECRET, "+1795000000", BODY))


@given(secret=st.text(alphabet=string.printable, min_size=1), body=st.binary(), flip=st.integers(min_value=0))
def test_any_change_to_the_body_breaks_the_signature(secret: str, body: bytes, flip: int) -> None:
    good = signature(secret, "1795000000", body)
    assert signature_matches([secret], "1795000000", body, good)
    if body:
        i = flip % len(body)
        changed = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]
        assert not signature_matches([secret], "1795000000", changed, good)


@pytest.mark.parametrize(
    ("timestamp", "refused"),
    [("1795000000", False), ("1794999700", False), ("1795000300", False), ("1794999699", True), ("1795000301", True)],
)
def test_a_timestamp_is_refused_beyond_300_seconds_either_way(timestamp: str, refused: bool) -> None:
    assert (timestamp_problem(timestamp, 1_795_000_000.0) is not None) is refused


@pytest.mark.parametrize("timestamp", ["", "17950000.5", "-1795000000", "1e9", "1795000000000", " 1795000000"])
def test_a_timestamp_must_be_unix_seconds(timestamp: str) -> None:
    assert timestamp_problem(timestamp, 1_795_000_000.0) is not None


def test_tokens_are_random_urlsafe_and_stored_as_their_sha256() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert len(token) >= 43
    assert set(token) <= set(string.ascii_letters + string.digits + "-_")
    assert token_sha256(token) == hashlib.sha256(token.encode()).digest()
    assert len(token_sha256(token)) == 32
    assert secret_problem(new_channel_secret()) is None


@pytest.mark.parametrize(
    ("name", "role", "valid"),
    [
        ("ops.zhang-3", Role.OPERATOR, True),
        ("a" * 64, Role.ADMIN, True),
        ("a" * 65, Role.ADMIN, False),
        ("Ops", Role.OPERATOR, False),
        ("", Role.FIELD_STAFF, False),
        ("wechat", Role.CHANNEL, True),
        ("we.chat", Role.CHANNEL, False),
        ("w" * 33, Role.CHANNEL, False),
    ],
)
def test_principal_names(name: str, role: Role, valid: bool) -> None:
    assert (principal_name_problem(name, role) is None) is valid


def test_channel_names_and_secrets() -> None:
    assert channel_problem("wechat") is None
    assert channel_problem("counter") is not None
    assert channel_problem("WeChat") is not None
    assert secret_problem("x" * 31) is not None
    assert secret_problem("x" * 32) is None
    assert secret_problem("x" * 31 + " ") is not None
