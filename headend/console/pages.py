"""The console's pages: sign in and out, the operators' collection overview, the field staff's landing page.

Every route is an HTML page or a form's target, outside the API's OpenAPI document. State-changing requests are POSTs
with a CSRF token (sign-in's bound to the sign-in cookie, the others' to the session); searches are GETs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from headend.console.overview import collection_overview
from headend.console.sessions import EndReason, SignedIn, end_session, sign_in
from headend.console.tokens import csrf_token, csrf_token_valid, is_session_token, new_session_token, sign_in_secret
from headend.console.web import (
    CSRF_FIELD,
    PREFIX,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    SIGN_IN_COOKIE_MAX_AGE_S,
    Conn,
    FieldSession,
    Form,
    OperatorSession,
    OptionalSession,
    SignedInSession,
    State,
    client_address,
    landing,
    render,
    require_csrf,
    session_cookie_kwargs,
)
from headend.registry.meter_search import MAX_QUERY_CHARS, SearchError, search_meters

router = APIRouter(include_in_schema=False)

SIGN_IN_FAILED: Final = (
    "Sign-in failed: the name or the password is wrong, or this user may not sign in now "
    "(too many failed attempts lock a user out for {minutes} minutes)."
)
SEARCH_LIMIT: Final = 20


@router.get(PREFIX)
@router.get(f"{PREFIX}/")
def home(session: OptionalSession) -> RedirectResponse:
    """To the signed-in user's first page, or to sign in."""
    target = f"{PREFIX}/sign-in" if session is None else landing(session)
    return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})


def _sign_in_page(
    request: Request, state: State, *, status: int = 200, message: str | None = None, name: str = ""
) -> HTMLResponse:
    cookie = request.cookies.get(SIGN_IN_COOKIE)
    fresh = cookie is None or not is_session_token(cookie)
    if fresh:
        cookie = new_session_token()
    assert cookie is not None
    notice = None
    if request.query_params.get("ended"):
        notice = "Your session has ended. Sign in again."
    elif request.query_params.get("signed-out"):
        notice = "You have signed out."
    response = render(
        request,
        "sign_in.html",
        status=status,
        title="Sign in",
        sign_in_csrf=csrf_token(sign_in_secret(cookie)),
        message=message,
        notice=notice,
        name=name,
    )
    if fresh:
        response.set_cookie(
            SIGN_IN_COOKIE, cookie, max_age=SIGN_IN_COOKIE_MAX_AGE_S, samesite="strict", **session_cookie_kwargs(state)
        )
    return response


@router.get(f"{PREFIX}/sign-in")
def sign_in_form(request: Request, state: State) -> HTMLResponse:
    """The sign-in form."""
    return _sign_in_page(request, state)


@router.post(f"{PREFIX}/sign-in")
def sign_in_submit(request: Request, state: State, form: Form, conn: Conn) -> Response:
    """Check the name and password: a new session and its cookie, or the form again with one message for any failure."""
    cookie = request.cookies.get(SIGN_IN_COOKIE)
    if (
        cookie is None
        or not is_session_token(cookie)
        or not csrf_token_valid(sign_in_secret(cookie), form.get(CSRF_FIELD))
    ):
        # a form not from our sign-in page (or from one open too long): nothing is checked, nobody is counted
        return _sign_in_page(
            request,
            state,
            status=403,
            message="The sign-in form was refused (it was too old or not sent from this page). Please try again.",
        )
    name, password = form.get("name", ""), form.get("password", "")
    result = sign_in(conn, name, password, client=client_address(request), now=state.clock(), policy=state.policy)
    if not isinstance(result, SignedIn):
        minutes = max(1, round(state.policy.lockout / timedelta(minutes=1)))
        return _sign_in_page(request, state, message=SIGN_IN_FAILED.format(minutes=minutes), name=name.strip()[:64])
    response = RedirectResponse(landing(result.session), status_code=303, headers={"Cache-Control": "no-store"})
    response.set_cookie(SESSION_COOKIE, result.token, samesite="lax", **session_cookie_kwargs(state))
    response.delete_cookie(SIGN_IN_COOKIE, samesite="strict", **session_cookie_kwargs(state))
    return response


@router.post(f"{PREFIX}/sign-out")
def sign_out(state: State, session: SignedInSession, form: Form, conn: Conn) -> RedirectResponse:
    """End the session (CSRF-checked) on the server and in the browser."""
    require_csrf(form, session)
    end_session(conn, session.session_id, EndReason.SIGNED_OUT, state.clock())
    response = RedirectResponse(
        f"{PREFIX}/sign-in?signed-out=1", status_code=303, headers={"Cache-Control": "no-store"}
    )
    response.delete_cookie(SESSION_COOKIE, samesite="lax", **session_cookie_kwargs(state))
    return response


@router.get(f"{PREFIX}/collection")
def collection(request: Request, state: State, session: OperatorSession, conn: Conn) -> HTMLResponse:
    """The operators' collection overview: today, the last 30 days against the target, yesterday's worst."""
    now = state.clock().astimezone(state.zone)
    overview = collection_overview(conn, now.date())
    return render(
        request,
        "collection.html",
        session=session,
        title="Collection",
        active="collection",
        overview=overview,
        as_of=now.strftime("%Y-%m-%d %H:%M"),
        zone=state.zone.key,
    )


@router.get(f"{PREFIX}/field")
def field(request: Request, session: FieldSession) -> HTMLResponse:
    """The field staff's first page: find a meter."""
    return render(request, "field.html", session=session, title="Field", active="field", query="")


@router.get(f"{PREFIX}/field/meters")
def field_meter_search(request: Request, state: State, session: FieldSession, conn: Conn, q: str = "") -> HTMLResponse:
    """Find a meter by id (or its start), DL/T 645 address, host:port[/unit], account or switch number."""
    query = q.strip()[: MAX_QUERY_CHARS + 1]
    try:
        found = search_meters(conn, query, limit=SEARCH_LIMIT)
    except SearchError as exc:
        return render(
            request,
            "field_search.html",
            session=session,
            status=400,
            title="Meter search",
            active="field",
            query=query[:MAX_QUERY_CHARS],
            problem=str(exc),
            found=None,
            zone=state.zone,
        )
    return render(
        request,
        "field_search.html",
        session=session,
        title="Meter search",
        active="field",
        query=found.query,
        problem=None,
        found=found,
        zone=state.zone,
    )
