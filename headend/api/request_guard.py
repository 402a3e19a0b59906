"""Refuse request targets no route can use: a path or query string that is not UTF-8 or holds control characters.

PostgreSQL cannot store NUL, and a lone surrogate cannot be encoded for it; such values must stop at the door with a
400, before routing, authentication or any query, instead of failing deep inside as a server error.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from headend.api.errors import ProblemError, problem_response

# C0 controls and DEL: never part of an id, a name or a filter value
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def target_problem(raw_path: bytes, query_string: bytes) -> str | None:
    """Why a request target is refused, or None: each part must percent-decode to UTF-8 without control characters."""
    for part, name in ((raw_path, "path"), (query_string.replace(b"+", b" "), "query string")):
        try:
            text = unquote_to_bytes(part).decode("utf-8")
        except UnicodeDecodeError:
            return f"the {name} is not UTF-8 once percent-decoded"
        if _CONTROL.search(text):
            return f"the {name} holds a control character (such as NUL)"
    return None


class RefuseMalformedTargets:
    """ASGI middleware answering 400 `malformed_request` to a target `target_problem` refuses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer it with a problem document."""
        if scope["type"] == "http":
            raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogatepass")
            problem = target_problem(raw_path, scope.get("query_string", b""))
            if problem is not None:
                response = problem_response(ProblemError(400, problem, code="malformed_request"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
