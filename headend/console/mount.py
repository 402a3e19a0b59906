"""The console in an app: its routes, its static files, its error pages and the security headers of its responses.

`headend.api.app.create_app` calls `install_console` with the API's connection pool and clock, so `headend serve` serves
both; every path of the console starts with /console.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from psycopg_pool import ConnectionPool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headend.console.pages import router
from headend.console.web import (
    PREFIX,
    Clock,
    ConsoleState,
    RefusedError,
    SignInRequiredError,
    render,
    session_policy,
    sign_in_redirect,
    templates,
)
from headend.settings import Settings

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
# no script at all, styles from our own stylesheet only, forms only to ourselves, never inside a frame
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()"),
)


def is_console_path(path: str) -> bool:
    """Whether a request path belongs to the console."""
    return path == PREFIX or path.startswith(PREFIX + "/")


class ConsoleSecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every response under /console (error pages included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; add the headers to a console response as it starts."""
        if scope["type"] != "http" or not is_console_path(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequiredError)
    return sign_in_redirect(request, exc.ended)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RefusedError)
    return render(request, "error.html", session=exc.session, status=exc.status, title=exc.title, message=exc.message)


def install_console(app: FastAPI, pool: ConnectionPool[Any], settings: Settings, clock: Clock) -> None:
    """Serve the console from `app` on its pool, with `clock` as its notion of now."""
    app.state.console = ConsoleState(
        pool,
        clock,
        session_policy(
            settings.console_session_idle_s,
            settings.console_session_max_s,
            settings.console_lockout_failures,
            settings.console_lockout_s,
        ),
        settings.console_secure_cookies,
        settings.zone,
        templates(),
    )
    app.add_middleware(ConsoleSecurityHeaders)
    app.add_exception_handler(SignInRequiredError, _sign_in_required)
    app.add_exception_handler(RefusedError, _refused)
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC_DIR), name="console-static")
