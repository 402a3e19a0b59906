"""Credentials of the API, pure: roles, bearer tokens and their hashes, channel secrets and HMAC signatures."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from prepay_engine.ledger import CHANNEL_PATTERN

TOKEN_BYTES: Final = 32
SECRET_BYTES: Final = 32
SECRET_PATTERN: Final = re.compile(r"[\x21-\x7e]{32,256}")
PRINCIPAL_NAME_PATTERN: Final = re.compile(r"[a-z0-9_.-]{1,64}")
# payments taken by operators at the counter; never a channel that signs callbacks
COUNTER_CHANNEL: Final = "counter"
TIMESTAMP_HEADER: Final = "X-Headend-Timestamp"
SIGNATURE_HEADER: Final = "X-Headend-Signature"
SIGNATURE_SCHEME: Final = "sha256="
# a signed request older or newer than this is refused (a replay within it is a duplicate, answered as such)
SIGNATURE_TOLERANCE_S: Final = 300
_TIMESTAMP_PATTERN: Final = re.compile(r"[0-9]{1,12}")
_SIGNATURE_PATTERN: Final = re.compile(r"sha256=([0-9a-fA-F]{64})")


class Role(StrEnum):
    """What a principal may do; admin may do everything, viewer only reads (migration 0023)."""

    OPERATOR = "operator"
    FIELD_STAFF = "field_staff"
    CHANNEL = "channel"
    ADMIN = "admin"
    VIEWER = "viewer"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its name (for a channel, the channel) and its role."""

    name: str
    role: Role


def new_token() -> str:
    """A new bearer token (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_channel_secret() -> str:
    """A new HMAC secret for a channel (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def token_sha256(token: str) -> bytes:
    """The digest a token is stored and looked up by."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def principal_name_problem(name: str, role: Role) -> str | None:
    """Why a principal name is not valid for a role, or None."""
    if not PRINCIPAL_NAME_PATTERN.fullmatch(name):
        return f"name {name!r} must be 1–64 of a-z, 0-9, '_', '.', '-'"
    if role is Role.CHANNEL and not CHANNEL_PATTERN.fullmatch(name):
        return f"a channel principal is named after its channel: {name!r} must be 1–32 of a-z, 0-9, '_'"
    return None


def channel_problem(channel: str) -> str | None:
    """Why a channel name can't sign callbacks, or None."""
    if not CHANNEL_PATTERN.fullmatch(channel):
        return f"channel {channel!r} must be 1–32 of a-z, 0-9, '_'"
    if channel == COUNTER_CHANNEL:
        return f"channel {COUNTER_CHANNEL!r} is reserved for payments taken by operators"
    return None


def secret_problem(secret: str) -> str | None:
    """Why a channel secret is not acceptable, or None."""
    if SECRET_PATTERN.fullmatch(secret):
        return None
    return "a channel secret is 32–256 printable ASCII characters without spaces"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Headend-Signature value of a request: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>."""
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return SIGNATURE_SCHEME + digest


def signature_matches(secrets_: Iterable[str], timestamp: str, body: bytes, presented: str) -> bool:
    """Whether `presented` is the signature of the request under any of the secrets (compared in constant time)."""
    if not _SIGNATURE_PATTERN.fullmatch(presented) or not _TIMESTAMP_PATTERN.fullmatch(timestamp):
        return False
    wanted = presented.lower().encode("ascii")
    matched = False
    for secret in secrets_:
        # every secret is tried: the time taken does not tell which one matched
        matched |= hmac.compare_digest(signature(secret, timestamp, body).encode("ascii"), wanted)
    return matched


def timestamp_problem(timestamp: str, now_s: float, tolerance_s: int = SIGNATURE_TOLERANCE_S) -> str | None:
    """Why a request's X-Headend-Timestamp is refused at `now_s` (unix seconds), or None."""
    if not _TIMESTAMP_PATTERN.fullmatch(timestamp):
        return f"{TIMESTAMP_HEADER} must be unix seconds (decimal digits)"
    if abs(now_s - int(timestamp)) > tolerance_s:
        return f"{TIMESTAMP_HEADER} is more than {tolerance_s} s away from the server's clock"
    return None
