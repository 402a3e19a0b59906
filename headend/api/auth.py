"""Authentication dependencies: bearer tokens with roles for people and systems, HMAC signatures for channels.

A router protects a route with `Depends(require_roles(Role.OPERATOR, ...))` (admin is always allowed) and gets
the `Principal`; a channel callback depends on `signed_channel`, which checks the request's signature over its
raw body (`raw_body`) before anything is parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Final

from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from headend.api import store
from headend.api.credentials import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Principal,
    Role,
    signature_matches,
    timestamp_problem,
)
from headend.api.db import Conn, Connection, State
from headend.api.errors import ProblemError

MAX_BODY_BYTES: Final = 16 * 1024
_BEARER_CHALLENGE: Final = 'Bearer realm="headend"'
_SIGNATURE_CHALLENGE: Final = f'HMAC-SHA256 realm="headend", headers="{TIMESTAMP_HEADER} {SIGNATURE_HEADER}"'

bearer = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="opaque",
    description="A token from `headend api-token create`; its principal's role decides what it may do.",
    auto_error=False,
)
channel_timestamp = APIKeyHeader(
    name=TIMESTAMP_HEADER,
    scheme_name="channelTimestamp",
    description="Unix seconds when the channel signed the request; refused when more than 300 s off.",
    auto_error=False,
)
channel_signature = APIKeyHeader(
    name=SIGNATURE_HEADER,
    scheme_name="channelSignature",
    description='`sha256=` + hex HMAC-SHA256 of `<timestamp> + "." + <raw body>` under the channel\'s secret.',
    auto_error=False,
)


def _unauthorized(detail: str, challenge: str = _BEARER_CHALLENGE) -> ProblemError:
    return ProblemError(401, detail, headers={"WWW-Authenticate": challenge})


def authenticate(conn: Connection, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """The principal of a bearer token; 401 when it is missing, unknown or revoked."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    principal = store.principal_for_token(conn, credentials.credentials)
    if principal is None:
        raise _unauthorized("the bearer token is unknown or revoked", _BEARER_CHALLENGE + ', error="invalid_token"')
    return principal


def require_roles(*roles: Role) -> Callable[..., Principal]:
    """A dependency admitting principals of these roles (and admin): 401 without a valid token, 403 otherwise."""
    allowed = frozenset((*roles, Role.ADMIN))
    names = ", ".join(sorted(allowed))

    def dependency(
        conn: Conn, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
    ) -> Principal:
        principal = authenticate(conn, credentials)
        if principal.role not in allowed:
            raise ProblemError(403, f"role {principal.role} may not do this (allowed: {names})")
        return principal

    return dependency


async def raw_body(request: Request) -> bytes:
    """The request body as sent (signatures are over these bytes); 413 beyond MAX_BODY_BYTES."""
    return await body_within(request, MAX_BODY_BYTES)


async def body_within(request: Request, limit_bytes: int) -> bytes:
    """The request body as sent, read no further than `limit_bytes` (413 beyond)."""
    declared = request.headers.get("content-length", "")
    too_large = f"the body may be at most {limit_bytes} bytes"
    if declared.isdigit() and int(declared) > limit_bytes:
        raise ProblemError(413, too_large)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise ProblemError(413, too_large)
        chunks.append(chunk)
    return b"".join(chunks)


def signed_channel(
    channel: Annotated[str, Path(description="The payment channel, as registered.", examples=["wechat"])],
    body: Annotated[bytes, Depends(raw_body)],
    conn: Conn,
    state: State,
    timestamp: Annotated[str | None, Security(channel_timestamp)],
    presented: Annotated[str | None, Security(channel_signature)],
) -> str:
    """The channel of the path, once the request's signature verifies under its secret; 401 otherwise."""
    if timestamp is None or presented is None:
        raise _unauthorized(f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required", _SIGNATURE_CHALLENGE)
    now = state.clock()
    problem = timestamp_problem(timestamp, now.timestamp())
    if problem is not None:
        raise _unauthorized(problem, _SIGNATURE_CHALLENGE)
    secrets_ = store.channel_secrets(conn, channel, now)
    # unknown, disabled and wrong signature look alike from outside: nothing to learn about which channels exist
    if not signature_matches(secrets_, timestamp, body, presented):
        raise _unauthorized(f"the signature does not verify for channel {channel!r}", _SIGNATURE_CHALLENGE)
    return channel


SignedChannel = Annotated[str, Depends(signed_channel)]
RawBody = Annotated[bytes, Depends(raw_body)]
