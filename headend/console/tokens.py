"""Session and CSRF tokens, pure: random tokens, the digests sessions are stored under, CSRF tokens checked in constant
time.

A CSRF token is a fresh random nonce and the HMAC-SHA256 of it under a secret (the session's, or before sign-in one
derived from the sign-in cookie): a new token on every page (nothing constant for a compression side channel to
recover), each one valid for as long as its secret, and none can be made without the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from typing import Final

SESSION_TOKEN_BYTES: Final = 32
CSRF_SECRET_BYTES: Final = 32
_NONCE_BYTES: Final = 16
_MAC_BYTES: Final = 32
_CSRF_CONTEXT: Final = b"headend-console-csrf\x00"
_SIGN_IN_CONTEXT: Final = b"headend-console-sign-in\x00"
# what secrets.token_urlsafe(32) gives: 43 characters of the URL-safe alphabet, no padding
_SESSION_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{43}")
# base64url without padding of a nonce and its MAC (48 bytes)
_CSRF_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{64}")


def new_session_token() -> str:
    """A new session token for a cookie (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(SESSION_TOKEN_BYTES)


def is_session_token(token: str) -> bool:
    """Whether `token` has the form of a session token (checked before anything is looked up)."""
    return _SESSION_TOKEN.fullmatch(token) is not None


def session_id(token: str) -> bytes:
    """The id a session is stored under: the SHA-256 of its token, so the table alone signs nobody in."""
    return hashlib.sha256(token.encode("ascii")).digest()


def new_csrf_secret() -> bytes:
    """A new per-session CSRF secret."""
    return secrets.token_bytes(CSRF_SECRET_BYTES)


def sign_in_secret(cookie: str) -> bytes:
    """The CSRF secret of the sign-in form, derived from the random value of the sign-in cookie."""
    return hashlib.sha256(_SIGN_IN_CONTEXT + cookie.encode("ascii")).digest()


def _mac(secret: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, _CSRF_CONTEXT + nonce, hashlib.sha256).digest()


def csrf_token(secret: bytes) -> str:
    """A new CSRF token for a form, valid under `secret`."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return base64.urlsafe_b64encode(nonce + _mac(secret, nonce)).decode("ascii").rstrip("=")


def csrf_token_valid(secret: bytes, token: str | None) -> bool:
    """Whether `token` was made under `secret`; the MAC is compared in constant time."""
    if token is None or _CSRF_TOKEN.fullmatch(token) is None:
        return False
    try:
        raw = base64.urlsafe_b64decode(token)
    except (binascii.Error, ValueError):
        return False
    nonce, mac = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
    return len(mac) == _MAC_BYTES and hmac.compare_digest(mac, _mac(secret, nonce))
