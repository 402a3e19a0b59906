"""Console passwords: what a password must be, its argon2id hash (pwdlib), a check as slow for nobody as for a user."""

from __future__ import annotations

import re
from functools import cache
from typing import Final

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

MIN_PASSWORD_CHARS: Final = 12
MAX_PASSWORD_CHARS: Final = 256
# control characters can't be typed into a form, and would only hide what a password is
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
# argon2id with argon2-cffi's defaults (RFC 9106's second recommendation: 64 MiB, 3 passes, 4 lanes)
_HASHER: Final = PasswordHash((Argon2Hasher(),))


def password_problem(password: str) -> str | None:
    """Why `password` can't be a console password, or None."""
    if len(password) < MIN_PASSWORD_CHARS:
        return f"a password has at least {MIN_PASSWORD_CHARS} characters"
    if len(password) > MAX_PASSWORD_CHARS:
        return f"a password has at most {MAX_PASSWORD_CHARS} characters"
    if _CONTROL.search(password):
        return "a password may not hold control characters (tabs, line breaks …)"
    if password != password.strip():
        return "a password may not begin or end with a space"
    return None


def hash_password(password: str) -> str:
    """The argon2id hash (PHC string) of a password, with a new salt."""
    return _HASHER.hash(password)


@cache
def _nobody_hash() -> str:
    return _HASHER.hash("nobody has this password")


def password_matches(password: str, stored_hash: str | None) -> bool:
    """Whether `password` matches `stored_hash`; with no hash (no such user) as slow as a real check, and False."""
    if stored_hash is None:
        # the same work as for a real user: the time taken does not tell which names exist
        _HASHER.verify(password, _nobody_hash())
        return False
    return _HASHER.verify(password, stored_hash)
