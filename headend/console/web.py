"""What the console's routes share: its state on the app, a connection per request, the signed-in session, forms,
pages rendered from the templates, and the refusals (a redirect to sign in, or an error page).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, cast
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import psycopg
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, StrictUndefined
from psycopg_pool import ConnectionPool

from headend.console.roles import FIELD_PAGE_ROLES, OPERATOR_PAGE_ROLES, ROLE_LABELS, ConsoleRole
from headend.console.sessions import EndReason, Session, SessionPolicy, session_for
from headend.console.tokens import csrf_token, csrf_token_valid
from prepay_engine.money import fen_to_yuan

Connection = psycopg.Connection[Any]
Clock = Callable[[], datetime]

PREFIX: Final = "/console"
SESSION_COOKIE: Final = "headend_console_session"
SIGN_IN_COOKIE: Final = "headend_console_sign_in"
SIGN_IN_COOKIE_MAX_AGE_S: Final = 3600
CSRF_FIELD: Final = "csrf_token"
MAX_FORM_BYTES: Final = 16 * 1024
MAX_FORM_FIELDS: Final = 20


def _percent(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.1%}"


def _yuan(amount_fen: int | None) -> str:
    return "–" if amount_fen is None else f"¥{fen_to_yuan(amount_fen)}"


def _local(at: datetime | None, zone: ZoneInfo) -> str:
    return "–" if at is None else at.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def templates() -> Environment:
    """The console's Jinja2 templates (packaged in headend/console/templates), HTML-escaped."""
    environment = Environment(
        loader=PackageLoader("headend.console", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["percent"] = _percent
    environment.filters["yuan"] = _yuan
    environment.filters["local"] = _local
    return environment


@dataclass(slots=True)
class ConsoleState:
    """The console's shared state, kept on `app.state.console`."""

    pool: ConnectionPool[Any]
    clock: Clock
    policy: SessionPolicy
    secure_cookies: bool
    zone: ZoneInfo
    templates: Environment


def console_state(request: Request) -> ConsoleState:
    """The console's shared state."""
    return cast(ConsoleState, request.app.state.console)


def connection(request: Request) -> Iterator[Connection]:
    """A pooled autocommit connection for the request, returned afterwards."""
    with console_state(request).pool.connection() as conn:
        yield conn


State = Annotated[ConsoleState, Depends(console_state)]
Conn = Annotated[Connection, Depends(connection)]


class SignInRequiredError(Exception):
    """The request needs a signed-in user and has none: answered with a redirect to the sign-in page."""

    def __init__(self, ended: EndReason | None = None) -> None:
        super().__init__("sign in first")
        self.ended = ended


class RefusedError(Exception):
    """The request is refused: answered with an error page of this status."""

    def __init__(self, status: int, title: str, message: str, session: Session | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.session = session  # the page shows the user's own menu


def client_address(request: Request) -> str | None:
    """The address the request came from (the proxy's, behind one)."""
    return request.client.host if request.client else None


def session_cookie_kwargs(state: ConsoleState) -> dict[str, Any]:
    """The flags every console cookie carries."""
    return {"path": PREFIX, "httponly": True, "secure": state.secure_cookies}


def optional_session(request: Request, conn: Conn, state: State) -> Session | None:
    """The signed-in session of the request's cookie, or None; raises SignInRequiredError when it just ended."""
    token = request.cookies.get(SESSION_COOKIE)
    if token is None:
        return None
    found = session_for(conn, token, now=state.clock(), policy=state.policy)
    if isinstance(found, EndReason):
        raise SignInRequiredError(found)
    if found is None:
        raise SignInRequiredError()
    return found


OptionalSession = Annotated[Session | None, Depends(optional_session)]


def signed_in(session: OptionalSession) -> Session:
    """The signed-in session; SignInRequiredError without one."""
    if session is None:
        raise SignInRequiredError()
    return session


SignedInSession = Annotated[Session, Depends(signed_in)]


def require_roles(roles: frozenset[ConsoleRole], pages: str) -> Callable[..., Session]:
    """A dependency admitting sessions of these roles; others get a 403 page naming what they may not see."""

    def dependency(session: SignedInSession) -> Session:
        if session.role not in roles:
            raise RefusedError(
                403,
                "Not for your role",
                f"{pages} are not open to {ROLE_LABELS[session.role].lower()} users. Your pages are in the menu above.",
                session,
            )
        return session

    return dependency


OperatorSession = Annotated[Session, Depends(require_roles(OPERATOR_PAGE_ROLES, "Operator pages"))]
FieldSession = Annotated[Session, Depends(require_roles(FIELD_PAGE_ROLES, "Field pages"))]


async def read_form(request: Request) -> dict[str, str]:
    """A URL-encoded form body, each field's first value; RefusedError (400, 413, 415) when not one or too big."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise RefusedError(413, "Too large", f"A form may be at most {MAX_FORM_BYTES} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise RefusedError(413, "Too large", f"A form may be at most {MAX_FORM_BYTES} bytes.")
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # nothing sent is an empty form (no CSRF token: refused as such); anything else must be a URL-encoded form
    if body and media_type != "application/x-www-form-urlencoded":
        raise RefusedError(415, "Not a form", "This address takes a submitted form only.")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise RefusedError(400, "Bad form", "The form could not be read.") from None
    return {name: values[0] for name, values in fields.items()}


Form = Annotated[dict[str, str], Depends(read_form)]


def require_csrf(form: dict[str, str], session: Session) -> None:
    """Refuse (403) a form without a valid CSRF token of this session."""
    if not csrf_token_valid(session.csrf_secret, form.get(CSRF_FIELD)):
        raise RefusedError(
            403,
            "Form refused",
            "The form had no valid security token (it was not sent from this console page, or the page was too old). "
            "Reload the page and try again.",
        )


def render(
    request: Request,
    template: str,
    *,
    session: Session | None = None,
    status: int = 200,
    active: str | None = None,
    **context: Any,
) -> HTMLResponse:
    """A page of the console: never stored by browsers or proxies (it holds a user's data and a CSRF token)."""
    state = console_state(request)
    page = state.templates.get_template(template).render(
        session=session,
        role_label=None if session is None else ROLE_LABELS[session.role],
        can_operate=session is not None and session.role in OPERATOR_PAGE_ROLES,
        can_field=session is not None and session.role in FIELD_PAGE_ROLES,
        csrf=None if session is None else csrf_token(session.csrf_secret),
        csrf_field=CSRF_FIELD,
        active=active,
        **context,
    )
    return HTMLResponse(page, status_code=status, headers={"Cache-Control": "no-store"})


def sign_in_redirect(request: Request, ended: EndReason | None = None) -> RedirectResponse:
    """To the sign-in page (saying the session ended, when it did), the stale session cookie removed."""
    state = console_state(request)
    target = f"{PREFIX}/sign-in" + ("?ended=1" if ended is not None else "")
    response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
    if SESSION_COOKIE in request.cookies:
        response.delete_cookie(SESSION_COOKIE, samesite="lax", **session_cookie_kwargs(state))
    return response


def landing(session: Session) -> str:
    """Where a role starts."""
    return f"{PREFIX}/collection" if session.role in OPERATOR_PAGE_ROLES else f"{PREFIX}/field"


def session_policy(idle_s: int, max_s: int, lockout_failures: int, lockout_s: int) -> SessionPolicy:
    """The policy of the HEADEND_CONSOLE_* settings."""
    return SessionPolicy(
        timedelta(seconds=idle_s), timedelta(seconds=max_s), lockout_failures, timedelta(seconds=lockout_s)
    )
