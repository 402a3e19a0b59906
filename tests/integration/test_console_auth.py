"""The web console on the real PostgreSQL, through the API's app: signing in and out, sessions, CSRF, lock-out, roles,
the security headers, the users' command line, and the collection overview's figures for a seeded fleet."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx2
import psycopg
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from headend.api.app import create_app
from headend.cli.app import app as cli
from headend.console.roles import ConsoleRole
from headend.console.users import create_user
from headend.db.engine import SCHEMA_OPTIONS_SQL, SchemaOptions, Storage
from headend.db.grants import DbRole
from headend.registry.meter_import import MeterRow, import_meters
from headend.reread.first_pass import freeze_first_pass
from headend.settings import Settings
from tests.integration.conftest import MigratedDatabase, count, storage_of
from tests.integration.engine_support import series, store_readings

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=SHANGHAI)
PASSWORD = "correct horse battery"
USERS = {
    "olga": ConsoleRole.OPERATOR,
    "fred": ConsoleRole.FIELD_STAFF,
    "vera": ConsoleRole.VIEWER,
    "ada": ConsoleRole.ADMIN,
}
IDLE = timedelta(minutes=10)
MAX_AGE = timedelta(hours=1)
LOCKOUT_FAILURES = 3
LOCKOUT = timedelta(minutes=5)
SESSION_COOKIE = "headend_console_session"
_TOKEN_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
_MESSAGE = re.compile(r'<p class="problem" role="alert">(.*?)</p>', re.S)


class Clock:
    """A clock the test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now.astimezone(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        """Move the clock forward."""
        self.now += by


def csrf_of(page: httpx2.Response) -> str:
    """The CSRF token of the page's first form."""
    match = _TOKEN_FIELD.search(page.text)
    assert match is not None, page.text
    return match.group(1)


def message_of(page: httpx2.Response) -> str:
    """The problem a page shows."""
    match = _MESSAGE.search(page.text)
    assert match is not None, page.text
    return match.group(1)


@dataclass
class Console:
    """The app with the console, its clock, a connection to look behind it."""

    app: Any
    db: Conn
    clock: Clock

    def browser(self) -> TestClient:
        """A new browser: its own cookies (the app is already started)."""
        return TestClient(self.app, follow_redirects=False)

    def sign_in(self, name: str, password: str = PASSWORD, browser: TestClient | None = None) -> httpx2.Response:
        """Fill in and send the sign-in form as a browser does (the form's page first)."""
        browser = browser or self.browser()
        form = browser.get("/console/sign-in")
        assert form.status_code == 200, form.text
        return browser.post("/console/sign-in", data={"csrf_token": csrf_of(form), "name": name, "password": password})

    def signed_in(self, name: str) -> TestClient:
        """A browser with `name` signed in."""
        browser = self.browser()
        answer = self.sign_in(name, browser=browser)
        assert answer.status_code == 303, answer.text
        return browser

    def outcomes(self) -> list[str]:
        """The audit's outcomes, oldest first."""
        return [str(r[0]) for r in self.db.execute("SELECT outcome FROM console_sign_ins ORDER BY sign_in_id")]


def _settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "api_pool_size": 4,
        "console_session_idle_s": int(IDLE.total_seconds()),
        "console_session_max_s": int(MAX_AGE.total_seconds()),
        "console_lockout_failures": LOCKOUT_FAILURES,
        "console_lockout_s": int(LOCKOUT.total_seconds()),
    }
    return Settings(**(values | overrides))


@pytest.fixture
def users(database_url: str) -> None:
    """One user of each role, all with PASSWORD."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name, role in USERS.items():
            create_user(conn, name, role, PASSWORD, created_by="test")


@pytest.fixture
def make_console(database_url: str, admin_url: str, users: None) -> Iterator[Callable[..., Console]]:
    """Start the app (settings overridden as given) on the test database; stopped after the test."""
    stack = contextlib.ExitStack()

    def make(url: str = database_url, **overrides: Any) -> Console:
        clock = Clock(NOW)
        app = create_app(_settings(url, **overrides), clock=clock)
        stack.enter_context(TestClient(app))  # runs the lifespan: the pool is open until the test ends
        # behind the app as the superuser: the audit of sign-ins is readable by no role of the head-end
        db = stack.enter_context(psycopg.connect(admin_url, autocommit=True))
        return Console(app, db, clock)

    with stack:
        yield make


@pytest.fixture
def console(make_console: Callable[..., Console]) -> Console:
    """The console with the test's session and lock-out settings."""
    return make_console()


# --- signing in -------------------------------------------------------------------------------------------------------


def test_signing_in_opens_a_session_whose_cookie_is_httponly_samesite_and_scoped(console: Console) -> None:
    browser = console.browser()
    answer = console.sign_in("olga", browser=browser)
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/console/collection"
    [cookie] = [c for c in answer.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE + "=")]
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite"} <= flags
    assert "path=/console" in cookie.lower()
    assert "samesite=lax" in cookie.lower()
    assert "secure" not in flags  # HEADEND_CONSOLE_SECURE_COOKIES is off by default (served on 127.0.0.1)
    # gone with the browser; the server ends it anyway
    assert "max-age" not in flags
    assert "expires" not in flags
    token = browser.cookies[SESSION_COOKIE]
    # the table holds the token's SHA-256, never the token
    stored = console.db.execute("SELECT session_id, user_id FROM console_sessions").fetchall()
    assert [bytes(r[0]) for r in stored] == [hashlib.sha256(token.encode()).digest()]
    assert (
        count(console.db, "SELECT count(*) FROM console_sessions WHERE position(%s in session_id::text) > 0", token)
        == 0
    )
    assert console.outcomes() == ["signed_in"]
    page = browser.get("/console/collection")
    assert page.status_code == 200, page.text
    assert "olga" in page.text


def test_each_role_lands_on_its_own_pages(console: Console) -> None:
    assert console.sign_in("fred").headers["location"] == "/console/field"
    assert console.sign_in("vera").headers["location"] == "/console/collection"
    assert console.sign_in("ada").headers["location"] == "/console/collection"
    # the name as a phone types it: capitalised, with a space
    assert console.sign_in(" Olga").headers["location"] == "/console/collection"


def test_secure_cookies_are_marked_secure_when_configured(make_console: Callable[..., Console]) -> None:
    console = make_console(console_secure_cookies=True)
    browser = console.browser()
    form = browser.get("/console/sign-in")
    assert "secure" in form.headers["set-cookie"].lower()
    # a browser keeps a Secure cookie from http://testserver but never sends it back there: send it by hand
    answer = browser.post(
        "/console/sign-in",
        data={"csrf_token": csrf_of(form), "name": "olga", "password": PASSWORD},
        headers={"Cookie": form.headers["set-cookie"].split(";")[0]},
    )
    assert answer.status_code == 303, answer.text
    [cookie] = [c for c in answer.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE + "=")]
    assert "; secure" in cookie.lower()
    assert "httponly" in cookie.lower()


def test_a_wrong_password_an_unknown_name_and_a_disabled_user_get_the_same_answer(console: Console) -> None:
    console.db.execute("UPDATE console_users SET disabled_at = now() WHERE name = 'vera'")
    answers = [
        console.sign_in("olga", "wrong password here"),
        console.sign_in("nobody", PASSWORD),
        console.sign_in("vera", PASSWORD),
        console.sign_in("x" * 500 + "\x00", "anything"),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")
    assert len({message_of(a) for a in answers}) == 1
    assert "Sign-in failed" in message_of(answers[0])
    assert console.outcomes() == ["wrong_password", "unknown_user", "disabled", "unknown_user"]
    assert count(console.db, "SELECT count(*) FROM console_sessions") == 0
    assert count(console.db, "SELECT max(char_length(name_tried)) FROM console_sign_ins") <= 100
    # the attempts are kept as they were: no role may change them, not even the owner
    with pytest.raises(psycopg.errors.RestrictViolation):
        console.db.execute("DELETE FROM console_sign_ins")


def test_a_user_is_locked_out_after_n_failures_and_let_in_again_after_m_minutes(console: Console) -> None:
    wrong = [console.sign_in("olga", f"wrong password {i}") for i in range(LOCKOUT_FAILURES)]
    assert [a.status_code for a in wrong] == [200] * LOCKOUT_FAILURES
    # locked: the right password is refused too, with the same answer as a wrong one
    locked = console.sign_in("olga", PASSWORD)
    assert locked.status_code == 200
    assert SESSION_COOKIE not in locked.headers.get("set-cookie", "")
    assert message_of(locked) == message_of(wrong[0])
    console.clock.advance(LOCKOUT - timedelta(seconds=1))
    assert console.sign_in("olga", PASSWORD).status_code == 200  # still locked
    assert console.outcomes() == ["wrong_password", "wrong_password", "locked_now", "locked", "locked"]
    console.clock.advance(timedelta(seconds=1))
    assert console.sign_in("olga", PASSWORD).status_code == 303
    assert console.db.execute(
        "SELECT failed_attempts, locked_until FROM console_users WHERE name = 'olga'"
    ).fetchone() == (
        0,
        None,
    )
    # another user was never affected
    assert console.sign_in("ada", PASSWORD).status_code == 303


def test_failures_below_the_limit_are_forgotten_after_a_successful_sign_in(console: Console) -> None:
    for _ in range(LOCKOUT_FAILURES - 1):
        console.sign_in("olga", "wrong password!!")
    assert console.sign_in("olga").status_code == 303
    for _ in range(LOCKOUT_FAILURES - 1):
        console.sign_in("olga", "wrong password!!")
    assert console.sign_in("olga").status_code == 303


# --- sessions ---------------------------------------------------------------------------------------------------------


def test_a_session_ends_after_the_idle_time(console: Console) -> None:
    browser = console.signed_in("olga")
    console.clock.advance(IDLE - timedelta(seconds=1))
    assert browser.get("/console/collection").status_code == 200  # in use: the idle time starts again
    console.clock.advance(IDLE - timedelta(seconds=1))
    assert browser.get("/console/collection").status_code == 200
    console.clock.advance(IDLE)
    ended = browser.get("/console/collection")
    assert ended.status_code == 303
    assert ended.headers["location"] == "/console/sign-in?ended=1"
    assert SESSION_COOKIE in ended.headers["set-cookie"]  # the stale cookie is removed
    row = console.db.execute("SELECT end_reason FROM console_sessions").fetchone()
    assert row == ("idle",)
    again = console.browser()
    again.cookies.set(SESSION_COOKIE, browser.cookies.get(SESSION_COOKIE) or "x", path="/console")
    assert again.get("/console/collection").status_code == 303
    page = console.browser().get("/console/sign-in?ended=1")
    assert "Your session has ended" in page.text


def test_a_session_ends_at_its_absolute_expiry_however_busy(console: Console) -> None:
    browser = console.signed_in("olga")
    token = browser.cookies[SESSION_COOKIE]
    step = IDLE / 2
    elapsed = timedelta(0)
    while elapsed + step < MAX_AGE:
        console.clock.advance(step)
        elapsed += step
        assert browser.get("/console/collection").status_code == 200, elapsed
    console.clock.advance(MAX_AGE - elapsed)
    answer = browser.get("/console/collection")
    assert answer.status_code == 303
    assert console.db.execute(
        "SELECT end_reason FROM console_sessions WHERE session_id = %s", (hashlib.sha256(token.encode()).digest(),)
    ).fetchone() == ("expired",)


def test_signing_out_ends_the_session_on_the_server(console: Console) -> None:
    browser = console.signed_in("olga")
    token = browser.cookies[SESSION_COOKIE]
    page = browser.get("/console/collection")
    answer = browser.post("/console/sign-out", data={"csrf_token": csrf_of(page)})
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/console/sign-in?signed-out=1"
    assert SESSION_COOKIE not in browser.cookies  # the browser dropped it
    assert console.db.execute(
        "SELECT end_reason FROM console_sessions WHERE session_id = %s", (hashlib.sha256(token.encode()).digest(),)
    ).fetchone() == ("signed_out",)
    # a copy of the cookie taken before is worth nothing now
    thief = console.browser()
    thief.cookies.set(SESSION_COOKIE, token, path="/console")
    assert thief.get("/console/collection").status_code == 303


def test_disabling_a_user_or_resetting_the_password_ends_the_sessions(console: Console, database_url: str) -> None:
    olga, fred = console.signed_in("olga"), console.signed_in("fred")
    runner = CliRunner()
    env = {"HEADEND_DATABASE_URL": database_url}
    disabled = runner.invoke(cli, ["user", "disable", "--name", "olga"], env=env)
    assert disabled.exit_code == 0, disabled.output
    assert "1 session(s) ended" in disabled.output
    assert olga.get("/console/collection").status_code == 303
    assert console.sign_in("olga").status_code == 200
    new_password = "a brand new passphrase"
    reset = runner.invoke(
        cli, ["user", "reset-password", "--name", "fred"], input=f"{new_password}\n{new_password}\n", env=env
    )
    assert reset.exit_code == 0, reset.output
    assert fred.get("/console/field").status_code == 303
    assert console.sign_in("fred").status_code == 200
    assert console.sign_in("fred", new_password).status_code == 303
    assert runner.invoke(cli, ["user", "enable", "--name", "olga"], env=env).exit_code == 0
    assert console.sign_in("olga").status_code == 303


# --- CSRF -------------------------------------------------------------------------------------------------------------


def test_a_post_without_or_with_a_wrong_csrf_token_is_refused(console: Console) -> None:
    browser = console.signed_in("olga")
    other = console.signed_in("ada")
    others_token = csrf_of(other.get("/console/collection"))
    good = csrf_of(browser.get("/console/collection"))
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    for data in ({}, {"csrf_token": ""}, {"csrf_token": "x"}, {"csrf_token": forged}, {"csrf_token": others_token}):
        refused = browser.post("/console/sign-out", data=data)
        assert refused.status_code == 403, (data, refused.text)
        assert "security token" in refused.text
    # nothing happened: the session goes on
    assert browser.get("/console/collection").status_code == 200
    assert count(console.db, "SELECT count(*) FROM console_sessions WHERE ended_at IS NULL") == 2
    # a token of a page is good for another request of the same session
    assert browser.post("/console/sign-out", data={"csrf_token": good}).status_code == 303


def test_a_sign_in_form_not_from_the_sign_in_page_is_refused_and_not_counted(console: Console) -> None:
    browser = console.browser()
    # no sign-in cookie (a form posted from another site), then a cookie but no token, then another browser's token
    assert browser.post("/console/sign-in", data={"name": "olga", "password": PASSWORD}).status_code == 403
    browser.get("/console/sign-in")
    assert browser.post("/console/sign-in", data={"name": "olga", "password": PASSWORD}).status_code == 403
    foreign = csrf_of(console.browser().get("/console/sign-in"))
    answer = browser.post("/console/sign-in", data={"csrf_token": foreign, "name": "olga", "password": PASSWORD})
    assert answer.status_code == 403
    assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")
    assert console.outcomes() == []
    # a form that is not a form
    assert browser.post("/console/sign-in", json={"name": "olga"}).status_code == 415
    assert (
        browser.post(
            "/console/sign-in",
            content=b"a=" + b"x" * 20_000,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ).status_code
        == 413
    )


# --- roles ------------------------------------------------------------------------------------------------------------


def test_a_field_worker_is_refused_the_operator_pages(console: Console) -> None:
    fred = console.signed_in("fred")
    refused = fred.get("/console/collection")
    assert refused.status_code == 403
    assert "Operator pages are not open to field staff users" in refused.text
    assert '<a href="/console/field">Field</a>' in refused.text  # the refusal shows the user's own menu
    assert 'href="/console/collection"' not in refused.text
    assert fred.get("/console/field").status_code == 200
    olga, vera, ada = console.signed_in("olga"), console.signed_in("vera"), console.signed_in("ada")
    assert olga.get("/console/field").status_code == 403
    assert vera.get("/console/field").status_code == 403
    assert vera.get("/console/collection").status_code == 200
    assert ada.get("/console/collection").status_code == 200
    assert ada.get("/console/field").status_code == 200
    anonymous = console.browser()
    for path in ("/console/collection", "/console/field", "/console/field/meters?q=m1", "/console/"):
        answer = anonymous.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"] == "/console/sign-in", path


def test_a_field_worker_finds_meters_by_id_or_its_start(console: Console, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        _seed_fleet(conn)
    fred = console.signed_in("fred")
    landing = fred.get("/console/field")
    assert 'action="/console/field/meters"' in landing.text
    exact = fred.get("/console/field/meters", params={"q": " m-b3 "})
    assert exact.status_code == 200, exact.text
    assert re.findall(r"<h3>([^ <]+) ", exact.text) == ["m-b3"]
    assert "matched by meter id" in exact.text
    assert "dcu-b" in exact.text
    assert "2026-11-22 01:45" in exact.text  # its last reading, local time
    prefix = fred.get("/console/field/meters", params={"q": "m-a"})
    assert re.findall(r"<h3>([^ <]+) ", prefix.text) == ["m-a1", "m-a2", "m-a3", "m-a4", "m-a5"]
    nothing = fred.get("/console/field/meters", params={"q": "<b>m1</b>"})
    assert nothing.status_code == 200
    assert "No meter matches “&lt;b&gt;m1&lt;/b&gt;”" in nothing.text  # what was typed, escaped
    assert "<b>m1</b>" not in nothing.text
    empty = fred.get("/console/field/meters", params={"q": "  "})
    assert empty.status_code == 400
    assert "the query is empty" in empty.text
    too_long = fred.get("/console/field/meters", params={"q": "m" * 500})
    assert too_long.status_code == 400
    assert "exceeds 100" in too_long.text


# --- pages ------------------------------------------------------------------------------------------------------------


def test_console_pages_carry_the_security_headers_and_are_not_stored(console: Console) -> None:
    olga = console.signed_in("olga")
    for answer in (
        olga.get("/console/collection"),
        console.browser().get("/console/sign-in"),
        olga.get("/console/field"),
    ):
        headers = answer.headers
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "script-src" not in csp  # no script at all
        assert "unsafe-inline" not in csp
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store"
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in answer.text
        assert "<script" not in answer.text
    css = console.browser().get("/console/static/console.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert "@media" in css.text
    # the API keeps its own headers
    assert "content-security-policy" not in console.browser().get("/healthz").headers


def test_the_console_is_not_part_of_the_api_document(console: Console) -> None:
    paths = console.browser().get("/openapi.json").json()["paths"]
    assert [p for p in paths if p.startswith("/console")] == []


# --- the users' command line ------------------------------------------------------------------------------------------


def test_user_create_reads_the_password_twice_from_standard_input(database_url: str) -> None:
    runner = CliRunner()
    env = {"HEADEND_DATABASE_URL": database_url}
    new = ["user", "create", "--name", "lin", "--role", "field_staff"]
    differ = runner.invoke(cli, new, input="first password one\nsecond password two\n", env=env)
    assert differ.exit_code == 1
    assert "the two passwords differ" in differ.output
    short = runner.invoke(cli, new, input="short\nshort\n", env=env)
    assert short.exit_code == 1
    assert "at least 12 characters" in short.output
    assert runner.invoke(cli, new, input="", env=env).exit_code == 1
    created = runner.invoke(cli, new, input="a long passphrase\na long passphrase\n", env=env)
    assert created.exit_code == 0, created.output
    again = runner.invoke(cli, new, input="a long passphrase\na long passphrase\n", env=env)
    assert again.exit_code == 1
    assert "already exists" in again.output
    bad_role = runner.invoke(cli, ["user", "create", "--name", "x", "--role", "channel"], input="", env=env)
    assert bad_role.exit_code == 2
    listed = runner.invoke(cli, ["user", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert re.search(r"^lin\s+field_staff\s+active\s+0\s+0", listed.output, re.M), listed.output
    with psycopg.connect(database_url) as conn:
        [(stored,)] = conn.execute("SELECT password_hash FROM console_users WHERE name = 'lin'").fetchall()
    assert str(stored).startswith("$argon2id$")
    assert "a long passphrase" not in str(stored)
    as_json = runner.invoke(cli, ["user", "list", "--json"], env=env)
    assert '"role": "field_staff"' in as_json.output
    assert "argon2" not in as_json.output


# --- under the API's own database role --------------------------------------------------------------------------------


def test_the_console_works_under_the_api_role_which_reads_no_more_than_it_needs(
    make_console: Callable[..., Console], migrated: MigratedDatabase
) -> None:
    with psycopg.connect(migrated.url, autocommit=True) as operator:
        _seed_fleet(operator)
    with psycopg.connect(migrated.admin_url, autocommit=True) as admin:
        if storage_of(admin) is Storage.TIMESCALEDB:
            # days materialized: the API role, which may not refresh the aggregate, reads them from readings
            admin.execute("CALL refresh_continuous_aggregate('collection_daily_cagg', NULL, NULL)")
    console = make_console(migrated.role_url(DbRole.API))
    olga = console.signed_in("olga")
    overview = olga.get("/console/collection")
    assert overview.status_code == 200, overview.text
    assert 'data-rate="90.0%"' in overview.text  # yesterday's collection, read as the API role
    found = console.signed_in("fred").get("/console/field/meters", params={"q": "m-a1"})
    assert found.status_code == 200, found.text
    assert "matched by meter id" in found.text
    assert (
        olga.post("/console/sign-out", data={"csrf_token": csrf_of(olga.get("/console/collection"))}).status_code == 303
    )
    for i in range(LOCKOUT_FAILURES):
        console.sign_in("ada", f"wrong password {i}")
    assert console.outcomes()[-1] == "locked_now"
    with psycopg.connect(migrated.role_url(DbRole.API), autocommit=True) as api:
        for statement in (
            "SELECT created_by FROM console_users",
            "UPDATE console_users SET role = 'admin'",
            "UPDATE console_users SET password_hash = password_hash",
            "INSERT INTO console_users (name, role, password_hash, created_by) "
            "VALUES ('x', 'admin', '$argon2id$', 'x')",
            "SELECT * FROM console_sign_ins",
            "DELETE FROM console_sessions",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                api.execute(statement)
    with psycopg.connect(migrated.role_url(DbRole.REPORTING), autocommit=True) as reporting:
        for table in ("console_users", "console_sessions", "console_sign_ins"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reporting.execute(f"SELECT 1 FROM {table}")


# --- the collection overview ------------------------------------------------------------------------------------------


def _seed_fleet(conn: Conn) -> None:
    """Ten meters under two concentrators since October; yesterday 9 read (7 at first pass), today 8 so far."""
    installed = date(2026, 10, 1)
    rows = [
        MeterRow(f"m-{dcu}{i}", "mqtt", f"dcu-{dcu}", "north", None, 1, "active", None, installed_on=installed)
        for dcu in ("a", "b")
        for i in range(1, 6)
    ]
    assert import_meters(conn, rows) is not None
    yesterday = datetime(2026, 11, 21, tzinfo=SHANGHAI)
    today = datetime(2026, 11, 22, tzinfo=SHANGHAI)
    step = timedelta(minutes=15)
    readings: list[tuple[str, datetime, int]] = [*series("m-a1", yesterday, 96, step, 1_000, 10)]  # complete
    for meter in ("m-a2", "m-a3", "m-a4", "m-a5", "m-b1", "m-b2"):
        readings += series(meter, yesterday, 4, step, 1_000, 10)
    store_readings(conn, readings)
    # the first pass is frozen before a re-read recovers two more meters' readings of yesterday
    conn.execute(
        "INSERT INTO reread_tasks (task_id, scope, scope_ids, from_at, to_at, requested_by, requested_at) "
        "VALUES ('t1', 'concentrator', ARRAY['dcu-b'], %s, %s, 'test', %s)",
        (yesterday, today, today),
    )
    options = SchemaOptions.from_rows(conn.execute(SCHEMA_OPTIONS_SQL).fetchall())
    assert freeze_first_pass(conn, options, [yesterday.date()], "t1", datetime.now(UTC)) == [yesterday.date()]
    store_readings(
        conn, [*series("m-b3", yesterday, 2, step, 1_000, 10), *series("m-b4", yesterday, 2, step, 1_000, 10)]
    )
    today_readings: list[tuple[str, datetime, int]] = []
    for meter in ("m-a1", "m-a2", "m-a3", "m-a4", "m-a5", "m-b1", "m-b2", "m-b3"):
        today_readings += series(meter, today, 8, step, 5_000, 10)
    store_readings(conn, today_readings)


def test_the_overview_shows_the_seeded_fleet_s_collection(console: Console, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        _seed_fleet(conn)
    olga = console.signed_in("olga")
    page = olga.get("/console/collection")
    assert page.status_code == 200, page.text
    text = page.text
    today = re.search(r'id="today-so-far">.*?</section>', text, re.S)
    yesterday = re.search(r'id="yesterday">.*?</section>', text, re.S)
    assert today is not None, text
    assert yesterday is not None, text
    assert "2026-11-22" in today.group(0)
    assert 'data-rate="80.0%"' in today.group(0)
    assert "8 of 10 meters read" in today.group(0)
    assert "2026-11-21" in yesterday.group(0)
    assert 'data-rate="90.0%"' in yesterday.group(0)
    assert "9 of 10 meters read · 1 complete" in yesterday.group(0)
    assert "First pass 70.0% (7 read) → after re-read 90.0%" in yesterday.group(0)
    # yesterday's worst concentrators: dcu-b (4 of 5), dcu-a (all read) not listed
    worst = re.search(r'<table class="worst">.*?</table>', text, re.S)
    assert worst is not None
    assert re.findall(r'<th scope="row">([^<]+)</th><td>(\d+)</td><td>(\d+)</td><td>([^<]+)</td>', worst.group(0)) == [
        ("dcu-b", "4", "5", "80.0%")
    ]
    # 30 days up to yesterday: every one below the target, nothing read before yesterday
    assert "30 of 30 days below the 98% target" in text
    days = re.findall(r'<th scope="row">(2026-\d\d-\d\d)</th><td>(\d+)</td><td>(\d+)</td><td>([^<]+)</td>', text)
    assert len(days) == 30
    assert days[0] == ("2026-11-21", "10", "9", "90.0%")
    assert days[-1] == ("2026-10-23", "10", "0", "0.0%")
    # the chart: a dot a day, the target line, all drawn on the server
    assert text.count('<circle class="dot below"') == 30
    assert 'class="target"' in text
    assert "98% target" in text
    assert "<title>2026-11-21: 90.0%</title>" in text
