"""The switch and meter-search endpoints on the real PostgreSQL, as the API's own database role: every route, every
role, the answers and the refusals that store nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import psycopg
import pytest
from fastapi.testclient import TestClient

from headend.api import store
from headend.api.app import create_app
from headend.api.credentials import Role, new_token
from headend.api.switches import MAX_IMPORT_BYTES
from headend.db.grants import DbRole
from headend.settings import Settings
from tests.integration.conftest import MigratedDatabase, count, register
from tests.integration.engine_support import open_test_account, seed_catalog

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
NOW = datetime(2026, 12, 8, 2, 15, tzinfo=UTC)
HEADER = "switch_number,controlled_device,meter_id,location,notes"
NEW = {"switch_no": "QF-01", "controlled_device": "box transformer 1 main switch", "meter_id": "m1", "location": "B3"}
WHO = ("field", "ops", "view", "root", "wechat")


@dataclass
class Api:
    """A client of the API (as the `api` database role) at NOW, principals' tokens, a look behind it."""

    client: TestClient
    db: Conn
    tokens: dict[str, str]

    def headers(self, who: str | None) -> dict[str, str]:
        """The Authorization header of a principal (None: none)."""
        return {} if who is None else {"Authorization": f"Bearer {self.tokens[who]}"}

    def send(self, method: str, url: str, body: Any = None, who: str | None = "field") -> httpx2.Response:
        """A request with a JSON body (bytes as they are) as a principal."""
        headers = self.headers(who)
        content = None
        if body is not None:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return self.client.request(method, url, content=content, headers=headers)

    def upload(self, text: str | bytes, who: str | None = "field", query: str = "") -> httpx2.Response:
        """POST a CSV to the import."""
        headers = {**self.headers(who), "Content-Type": "text/csv"}
        content = text.encode() if isinstance(text, str) else text
        return self.client.post(f"/v1/switches/import{query}", content=content, headers=headers)

    def stored(self) -> tuple[int, int]:
        """How many switches and audit rows are stored."""
        return (
            count(self.db, "SELECT count(*) FROM controlled_switches"),
            count(self.db, "SELECT count(*) FROM controlled_switch_changes"),
        )


@pytest.fixture
def api(migrated: MigratedDatabase, db: Conn) -> Iterator[Api]:
    """Meters m1, m2 and m-off (inactive), an account on m1, a principal of every role, the API at NOW."""
    register(db, ["m1", "m2"])
    register(db, ["m-off"], status="inactive")
    open_test_account(db, seed_catalog(db), "A0001", "m1")
    tokens = {}
    for name, role in (
        ("field", Role.FIELD_STAFF),
        ("ops", Role.OPERATOR),
        ("view", Role.VIEWER),
        ("root", Role.ADMIN),
        ("wechat", Role.CHANNEL),
    ):
        tokens[name] = new_token()
        store.create_principal(db, name, role, tokens[name], created_by="test")
    app = create_app(Settings(database_url=migrated.role_url(DbRole.API), api_pool_size=2), clock=lambda: NOW)
    with TestClient(app) as client:
        yield Api(client, db, tokens)


def _problem(answer: httpx2.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert body["type"] == f"urn:headend:problem:{code}", body
    return body


def test_field_staff_register_a_switch_and_read_it_back(api: Api) -> None:
    made = api.send("POST", "/v1/switches", {**NEW, "notes": "call first"})
    assert made.status_code == 201, made.text
    switch = made.json()
    assert made.headers["location"] == f"/v1/switches/{switch['id']}"
    assert switch == {
        "id": switch["id"],
        **NEW,
        "notes": "call first",
        "commissioning_state": "registered",
        "registered_by": "field",
        "registered_at": "2026-12-08T02:15:00Z",
        "updated_by": "field",
        "updated_at": "2026-12-08T02:15:00Z",
        "retired_at": None,
        "retired_by": None,
        "retire_reason": None,
    }
    for who in ("field", "ops", "view", "root"):
        read = api.send("GET", f"/v1/switches/{switch['id']}", who=who)
        assert read.status_code == 200, (who, read.text)
        detail = read.json()
        assert {k: v for k, v in detail.items() if k != "history"} == switch
        [change] = detail["history"]
        assert (change["action"], change["actor"], change["at"]) == ("registered", "field", "2026-12-08T02:15:00Z")
        assert change["changes"]["switch_no"] == {"from": None, "to": "QF-01"}
        listed = api.send("GET", "/v1/switches?meter_id=m1", who=who)
        assert listed.status_code == 200, (who, listed.text)
        assert listed.json() == {"switches": [switch], "next_after": None}
    assert api.send("GET", "/v1/switches?meter_id=m2").json()["switches"] == []
    assert [s["switch_no"] for s in api.send("GET", "/v1/switches?switch_no=qf").json()["switches"]] == ["QF-01"]
    _problem(api.send("GET", "/v1/switches/999"), 404, "unknown_switch")
    _problem(api.send("GET", "/v1/switches/0"), 422, "unprocessable")
    _problem(api.send("GET", "/v1/switches?limit=0"), 422, "unprocessable")


def test_a_registration_refused_stores_nothing(api: Api) -> None:
    assert api.send("POST", "/v1/switches", NEW).status_code == 201
    before = api.stored()
    taken = _problem(api.send("POST", "/v1/switches", {**NEW, "meter_id": "m2"}), 409, "switch_number_in_service")
    assert "switch number 'QF-01' is in service" in taken["detail"]
    unknown = _problem(
        api.send("POST", "/v1/switches", {**NEW, "switch_no": "QF-02", "meter_id": "m9"}), 422, "unknown_meter"
    )
    assert unknown["errors"] == [
        {"loc": ["body", "meter_id"], "msg": "no meter 'm9' is registered", "type": "unknown_meter"}
    ]
    _problem(
        api.send("POST", "/v1/switches", {**NEW, "switch_no": "QF-02", "meter_id": "m-off"}), 422, "inactive_meter"
    )
    empty = _problem(api.send("POST", "/v1/switches", {**NEW, "switch_no": "  "}), 422, "invalid_switch")
    assert empty["errors"][0]["loc"] == ["body", "switch_no"]
    assert empty["detail"] == "switch_number is empty"
    _problem(api.send("POST", "/v1/switches", {**NEW, "switch_no": "QF\n02"}), 422, "invalid_switch")
    _problem(api.send("POST", "/v1/switches", {**NEW, "switch_no": "Q" * 65}), 422, "unprocessable")
    _problem(api.send("POST", "/v1/switches", {**NEW, "switch_no": "QF-02", "colour": "red"}), 422, "unprocessable")
    _problem(api.send("POST", "/v1/switches", {**NEW, "switch_no": 2}), 422, "unprocessable")
    _problem(api.send("POST", "/v1/switches", {"switch_no": "QF-02"}), 422, "unprocessable")
    _problem(api.send("POST", "/v1/switches", b'{"switch_no": "a", "switch_no": "b"}'), 422, "duplicate_key")
    _problem(api.send("POST", "/v1/switches", b"not json"), 422, "unprocessable")
    _problem(api.send("POST", "/v1/switches", b"{" + b" " * 20_000 + b"}"), 413, "too_large")
    assert api.stored() == before


def test_roles_decide_who_may_write_and_who_may_read(api: Api) -> None:
    switch_id = api.send("POST", "/v1/switches", NEW, who="root").json()["id"]
    writes: list[tuple[str, str, Any]] = [
        ("POST", "/v1/switches", {**NEW, "switch_no": "QF-09"}),
        ("PATCH", f"/v1/switches/{switch_id}", {"notes": "x"}),
        ("POST", f"/v1/switches/{switch_id}/retire", {"reason": "x"}),
    ]
    before = api.stored()
    for who in ("ops", "view", "wechat"):
        for method, url, body in writes:
            _problem(api.send(method, url, body, who=who), 403, "forbidden")
        _problem(api.upload(f"{HEADER}\nQF-09,main,m1,,\n", who=who), 403, "forbidden")
    for method, url, body in writes:
        missing = _problem(api.send(method, url, body, who=None), 401, "unauthorized")
        assert missing["detail"].startswith("a bearer token is required")
    _problem(api.upload(f"{HEADER}\nQF-09,main,m1,,\n", who=None), 401, "unauthorized")
    assert api.stored() == before
    for url in (f"/v1/switches/{switch_id}", "/v1/switches", "/v1/meters/search?q=m1"):
        _problem(api.send("GET", url, who="wechat"), 403, "forbidden")
        _problem(api.send("GET", url, who=None), 401, "unauthorized")
    # viewer reads switches and searches meters, and nothing of what existed before it
    assert api.send("GET", "/v1/accounts/A0001", who="view").status_code == 403
    assert api.send("GET", "/v1/commands", who="view").status_code == 403
    assert api.send("POST", "/v1/meters/m1/relay/read", who="view").status_code == 403


def test_a_switch_is_corrected_field_by_field_and_each_change_is_kept(api: Api) -> None:
    switch_id = api.send("POST", "/v1/switches", {**NEW, "notes": "old"}).json()["id"]
    patched = api.send("PATCH", f"/v1/switches/{switch_id}", {"location": "B4", "notes": None}, who="root")
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["location"], body["notes"], body["updated_by"], body["registered_by"]) == ("B4", None, "root", "field")
    moved = api.send("PATCH", f"/v1/switches/{switch_id}", {"meter_id": "m2", "switch_no": "QF-01A"})
    assert moved.status_code == 200, moved.text
    assert (moved.json()["meter_id"], moved.json()["switch_no"]) == ("m2", "QF-01A")
    same = api.send("PATCH", f"/v1/switches/{switch_id}", {"meter_id": "m2"})
    assert same.status_code == 200
    history = api.send("GET", f"/v1/switches/{switch_id}").json()["history"]
    assert [h["action"] for h in history] == ["registered", "edited", "edited"]
    assert history[1]["changes"] == {"location": {"from": "B3", "to": "B4"}, "notes": {"from": "old", "to": None}}
    assert history[2]["changes"] == {
        "switch_no": {"from": "QF-01", "to": "QF-01A"},
        "meter_id": {"from": "m1", "to": "m2"},
    }

    before = api.stored()
    nothing = _problem(api.send("PATCH", f"/v1/switches/{switch_id}", {}), 422, "invalid_switch")
    assert nothing["errors"][0]["loc"] == ["body"]
    cleared = _problem(
        api.send("PATCH", f"/v1/switches/{switch_id}", {"controlled_device": None}), 422, "invalid_switch"
    )
    assert cleared["errors"][0]["loc"] == ["body", "controlled_device"]
    _problem(api.send("PATCH", f"/v1/switches/{switch_id}", {"meter_id": "m9"}), 422, "unknown_meter")
    _problem(
        api.send("PATCH", f"/v1/switches/{switch_id}", {"commissioning_state": "commissioned"}), 422, "unprocessable"
    )
    _problem(api.send("PATCH", "/v1/switches/999", {"notes": "x"}), 404, "unknown_switch")
    other = api.send("POST", "/v1/switches", {**NEW, "switch_no": "QF-02"}).json()["id"]
    before = api.stored()
    _problem(api.send("PATCH", f"/v1/switches/{other}", {"switch_no": "QF-01A"}), 409, "switch_number_in_service")
    api.db.execute("UPDATE controlled_switches SET commissioning_state = 'testing' WHERE switch_id = %s", (other,))
    _problem(api.send("PATCH", f"/v1/switches/{other}", {"meter_id": "m2"}), 409, "switch_testing")
    _problem(api.send("POST", f"/v1/switches/{other}/retire", {"reason": "gone"}), 409, "switch_testing")
    assert api.stored() == before


def test_a_switch_is_retired_with_a_reason_and_its_number_given_again(api: Api) -> None:
    switch_id = api.send("POST", "/v1/switches", NEW).json()["id"]
    _problem(api.send("POST", f"/v1/switches/{switch_id}/retire", {"reason": " "}), 422, "invalid_switch")
    _problem(api.send("POST", f"/v1/switches/{switch_id}/retire", {}), 422, "unprocessable")
    _problem(api.send("POST", "/v1/switches/999/retire", {"reason": "x"}), 404, "unknown_switch")
    retired = api.send("POST", f"/v1/switches/{switch_id}/retire", {"reason": "burnt out"})
    assert retired.status_code == 200, retired.text
    body = retired.json()
    assert (body["retired_at"], body["retired_by"], body["retire_reason"], body["commissioning_state"]) == (
        "2026-12-08T02:15:00Z",
        "field",
        "burnt out",
        "decommissioned",
    )
    _problem(api.send("POST", f"/v1/switches/{switch_id}/retire", {"reason": "again"}), 409, "switch_retired")
    _problem(api.send("PATCH", f"/v1/switches/{switch_id}", {"notes": "x"}), 409, "switch_retired")
    assert api.send("GET", "/v1/switches?meter_id=m1").json()["switches"] == []
    assert [s["id"] for s in api.send("GET", "/v1/switches?meter_id=m1&retired=true").json()["switches"]] == [switch_id]
    replacement = api.send("POST", "/v1/switches", NEW)
    assert replacement.status_code == 201, replacement.text
    assert replacement.json()["id"] != switch_id
    assert api.send("GET", f"/v1/switches/{switch_id}").json()["history"][-1]["detail"] == "burnt out"


def test_a_csv_import_is_all_or_nothing_with_its_rows_errors_and_idempotent(api: Api) -> None:
    good = f"{HEADER}\nQF-01,main switch,m1,B3,\nQF-02,pump,m2,,call first\n"
    done = api.upload("\ufeff" + good)
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["created"], body["unchanged"], body["errors"]) == (2, 0, [])
    assert [s["switch_no"] for s in body["switches"]] == ["QF-01", "QF-02"]
    assert api.send("GET", f"/v1/switches/{body['switches'][1]['id']}").json()["history"][0]["detail"] == (
        "API import, line 3"
    )
    before = api.stored()
    again = api.upload(good, who="root")
    assert again.status_code == 200
    assert (again.json()["created"], again.json()["unchanged"]) == (0, 2)
    assert api.stored() == before

    bad = f"{HEADER}\nQF-03,main,m1,,\nQF-04,main,m9,,\nQF-01,other,m1,,\nQF-03,main,m2,,\n,main,m1,,\n"
    refused = _problem(api.upload(bad), 422, "rows_refused")
    assert refused["detail"].startswith("4 row(s) refused; nothing imported (fix them, or pass skip_invalid=true)")
    assert [(e["loc"], e["type"]) for e in refused["errors"]] == [
        (["body", 3], "unknown_meter"),
        (["body", 4], "number_in_service"),
        (["body", 5], "repeated"),
        (["body", 6], "invalid"),
    ]
    assert refused["errors"][0]["msg"] == "meter_id 'm9' is not registered"
    assert api.stored() == before
    skipped = api.upload(bad, query="?skip_invalid=true")
    assert skipped.status_code == 200, skipped.text
    assert [s["switch_no"] for s in skipped.json()["switches"]] == ["QF-03"]
    assert [e["line"] for e in skipped.json()["errors"]] == [3, 4, 5, 6]

    _problem(api.upload("meter_id\nm1\n"), 422, "invalid_file")
    _problem(api.upload(b"\xff\xfe"), 422, "invalid_file")
    _problem(api.upload(f'{HEADER}\nQF-05,"main\n'), 422, "invalid_file")
    _problem(api.upload(b"x" * (MAX_IMPORT_BYTES + 1)), 413, "too_large")
    empty = api.upload(f"{HEADER}\n")
    assert (empty.status_code, empty.json()["created"]) == (200, 0)


def test_meters_are_found_with_their_account_switches_relay_and_last_reading(api: Api) -> None:
    api.db.execute(
        "INSERT INTO meter_register_state (meter_id, last_ts, last_energy_import_wh) VALUES ('m1', %s, 5)", (NOW,)
    )
    api.db.execute(
        "INSERT INTO meter_relays (meter_id, relay, ready_for_reconnection, reported_at, received_at, source) "
        "VALUES ('m1', 'open', true, %s, %s, 'test')",
        (NOW - timedelta(minutes=5), NOW),
    )
    switch = api.send("POST", "/v1/switches", NEW).json()
    for who in ("field", "ops", "view", "root"):
        found = api.send("GET", "/v1/meters/search?q=A0001", who=who)
        assert found.status_code == 200, (who, found.text)
        body = found.json()
        assert (body["query"], body["more"]) == ("A0001", False)
        [meter] = body["meters"]
        assert meter["meter_id"] == "m1"
        assert meter["matched_by"] == ["account"]
        assert meter["account"]["account_id"] == "A0001"
        assert meter["account"]["supply"] == "connected"
        assert meter["last_reading_at"] == "2026-12-08T02:15:00Z"
        assert meter["relay"] == {
            "relay": "open",
            "ready_for_reconnection": True,
            "reported_at": "2026-12-08T02:10:00Z",
        }
        assert meter["switches"] == [switch]
    prefix = api.send("GET", "/v1/meters/search?q=m&limit=2").json()
    assert ([m["meter_id"] for m in prefix["meters"]], prefix["more"]) == (["m-off", "m1"], True)
    assert api.send("GET", "/v1/meters/search?q=QF-01").json()["meters"][0]["matched_by"] == ["switch_number"]
    assert api.send("GET", "/v1/meters/search?q=zz").json()["meters"] == []
    _problem(api.send("GET", "/v1/meters/search?q=%20%20"), 422, "unprocessable")
    _problem(api.send("GET", "/v1/meters/search"), 422, "unprocessable")
    _problem(api.send("GET", "/v1/meters/search?q=" + "x" * 101), 422, "unprocessable")
    # the meters' other routes are where they were
    assert api.send("GET", "/v1/meters/m1/relay", who="ops").json()["relay"] == "open"
    assert api.send("GET", "/v1/meters/search/relay", who="ops").status_code == 404


def test_a_viewer_token_is_created_from_the_command_line(database_url: str) -> None:
    from typer.testing import CliRunner

    from headend.cli.app import app

    made = CliRunner().invoke(
        app,
        ["api-token", "create", "--name", "wall.screen", "--role", "viewer"],
        env={"HEADEND_DATABASE_URL": database_url},
    )
    assert made.exit_code == 0, made.output
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT role FROM api_principals WHERE name = 'wall.screen'").fetchone() == ("viewer",)


def test_the_openapi_document_describes_the_switch_routes(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    paths = doc["paths"]
    assert set(paths["/v1/switches"]) == {"get", "post"}
    assert set(paths["/v1/switches/{switch_id}"]) == {"get", "patch"}
    assert set(paths["/v1/switches/{switch_id}/retire"]) == {"post"}
    assert set(paths["/v1/switches/import"]) == {"post"}
    assert set(paths["/v1/meters/search"]) == {"get"}
    post = paths["/v1/switches"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/SwitchIn"}
    assert set(post["responses"]) == {"201", "401", "403", "409", "413", "422", "503"}
    model = doc["components"]["schemas"]["SwitchIn"]
    assert model["additionalProperties"] is False
    assert model["required"] == ["switch_no", "controlled_device", "meter_id"]
    assert doc["components"]["schemas"]["SwitchPatch"]["additionalProperties"] is False
    assert "text/csv" in paths["/v1/switches/import"]["post"]["requestBody"]["content"]
    assert paths["/v1/switches/{switch_id}/retire"]["post"]["security"] == [{"bearer": []}]
