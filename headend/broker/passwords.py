"""Passwords of broker accounts: generated at random, stored only as Mosquitto's `$7$` PBKDF2-SHA512 hash.

The format is the one `mosquitto_passwd` writes and Mosquitto 2.0 reads from its `password_file`:
`$7$<iterations>$<base64 of a 12-byte salt>$<base64 of the 64-byte PBKDF2-HMAC-SHA512 digest>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from typing import Final

# mosquitto_passwd's default. A device password is 256 random bits, which no iteration count makes any harder to
# guess; a service password comes from an operator. The broker hashes on every connection and, at a reload, once for
# every connected client, on its one thread: a higher count buys little and costs the broker at reconnect storms.
ITERATIONS: Final = 101
SALT_BYTES: Final = 12  # Mosquitto refuses any other salt length
DIGEST_BYTES: Final = 64
PASSWORD_BYTES: Final = 32
_HASH: Final = re.compile(r"\$7\$([1-9][0-9]{0,8})\$([A-Za-z0-9+/]{16})\$([A-Za-z0-9+/]{86}==)")


def new_password() -> str:
    """A random password of 256 bits, URL-safe (43 characters)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The `$7$` hash of `password` that Mosquitto's password file holds, under a fresh random salt by default."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    if len(salt) != SALT_BYTES:
        raise ValueError(f"a salt has {SALT_BYTES} bytes, got {len(salt)}")
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, DIGEST_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def is_password_hash(value: str) -> bool:
    """Whether `value` is a `$7$` hash Mosquitto accepts."""
    return _HASH.fullmatch(value) is not None


def verify_password(password: str, password_hash: str) -> bool:
    """Whether `password` matches a `$7$` hash (as the broker checks it)."""
    match = _HASH.fullmatch(password_hash)
    if match is None:
        return False
    try:
        salt = base64.b64decode(match[2], validate=True)
        expected = base64.b64decode(match[3], validate=True)
    except binascii.Error:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(match[1]), DIGEST_BYTES)
    return hmac.compare_digest(digest, expected)
