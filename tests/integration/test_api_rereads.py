"""The re-read endpoints on the real PostgreSQL, as the API's own database role: ask, follow, list, refusals, roles."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx2
import psycopg
import pytest
from fastapi.testclient import TestClient

from headend.api import store
from headend.api.app import create_app
from headend.api.credentials import Role, new_token
from headend.api.rereads import MAX_BODY_BYTES, MAX_ERRORS_LISTED
from headend.db.grants import DbRole
from headend.reread.tasks import MAX_METERS
from headend.settings import Settings
from tests.integration.conftest import MigratedDatabase, count, register

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=SHANGHAI)
FROM = "2026-11-20T00:00:00+08:00"
TO = "2026-11-21T00:00:00+08:00"


@dataclass
class Api:
    """A client of the API (as the `api` database role) with a fixed clock, principals' tokens, a look behind."""

    client: TestClient
    db: Conn
    tokens: dict[str, str]

    def post(self, body: dict[str, Any] | bytes, who: str | None = "ops") -> httpx2.Response:
        """POST /v1/rereads with a JSON body as a principal (None: no token)."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return self.client.post("/v1/rereads", content=raw, headers=headers)

    def get(self, url: str, who: str | None = "ops") -> httpx2.Response:
        """GET as a principal (None: no token)."""
        headers = {} if who is None else {"Authorization": f"Bearer {self.tokens[who]}"}
        return self.client.get(url, headers=headers)

    def stored(self) -> tuple[int, int]:
        """How many tasks and task meters are stored."""
        return count(self.db, "SELECT count(*) FROM reread_tasks"), count(
            self.db, "SELECT count(*) FROM reread_task_meters"
        )


@pytest.fixture
def api(migrated: MigratedDatabase, db: Conn) -> Iterator[Api]:
    """Meters direct and behind two concentrators (one inactive), a principal of every role, the API at NOW."""
    register(db, ["m1", "m2", "m9"])
    register(db, ["d1-a", "d1-b", "d1-off"], concentrator="dcu-1")
    register(db, ["d2-a"], concentrator="dcu-2")
    register(db, ["m9"], status="inactive")
    register(db, ["d1-off"], concentrator="dcu-1", status="inactive")
    tokens = {}
    for name, role in (
        ("ops", Role.OPERATOR),
        ("field", Role.FIELD_STAFF),
        ("watcher", Role.VIEWER),
        ("root", Role.ADMIN),
        ("wechat", Role.CHANNEL),
    ):
        tokens[name] = new_token()
        store.create_principal(db, name, role, tokens[name], created_by="test")
    app = create_app(Settings(database_url=migrated.role_url(DbRole.API), api_pool_size=2), clock=lambda: NOW)
    with TestClient(app) as client:
        yield Api(client, db, tokens)


def test_a_meter_is_asked_for_and_followed_at_its_location(api: Api) -> None:
    asked = api.post({"meter_id": "m1", "from": FROM, "to": TO})
    assert asked.status_code == 202, asked.text
    task = asked.json()
    assert task["task_id"].startswith("rr-")
    assert asked.headers["location"] == f"/v1/rereads/{task['task_id']}"
    assert {k: v for k, v in task.items() if k != "task_id"} == {
        "scope": "meter",
        "scope_ids": ["m1"],
        "from": "2026-11-19T16:00:00Z",
        "to": "2026-11-20T16:00:00Z",
        "state": "pending",
        "requested_by": "ops",
        "requested_at": "2026-11-22T04:00:00Z",
        "started_at": None,
        "finished_at": None,
        "meters_total": 1,
        "intervals_missing": 0,
        "intervals_recovered": 0,
        "detail": None,
        "meters": [
            {
                "meter_id": "m1",
                "path": "mqtt_meter",
                "state": "pending",
                "intervals_missing": 0,
                "intervals_recovered": 0,
                "detail": None,
            }
        ],
    }
    followed = api.get(asked.headers["location"])
    assert followed.status_code == 200, followed.text
    assert followed.json() == task
    row = api.db.execute("SELECT scope, scope_ids, state, requested_by FROM reread_tasks").fetchone()
    assert row == ("meter", ["m1"], "pending", "ops")


def test_a_list_of_meters_is_one_task_each_meter_once(api: Api) -> None:
    asked = api.post({"meter_ids": ["m2", "d1-a", "m2", "d2-a"], "from": FROM, "to": TO}, who="root")
    assert asked.status_code == 202, asked.text
    task = asked.json()
    assert (task["scope"], task["scope_ids"], task["meters_total"], task["requested_by"]) == (
        "list",
        ["m2", "d1-a", "d2-a"],
        3,
        "root",
    )
    assert [(m["meter_id"], m["path"]) for m in task["meters"]] == [
        ("d1-a", "mqtt_concentrator"),
        ("d2-a", "mqtt_concentrator"),
        ("m2", "mqtt_meter"),
    ]
    assert api.stored() == (1, 3)


def test_concentrators_cover_their_active_meters_and_to_defaults_to_now(api: Api) -> None:
    asked = api.post({"concentrator_ids": ["dcu-1", "dcu-2"], "from": "2026-11-22T08:00:00+08:00"})
    assert asked.status_code == 202, asked.text
    task = asked.json()
    assert (task["scope"], task["scope_ids"]) == ("concentrator", ["dcu-1", "dcu-2"])
    assert (task["from"], task["to"]) == ("2026-11-22T00:00:00Z", "2026-11-22T04:00:00Z")
    assert [m["meter_id"] for m in task["meters"]] == ["d1-a", "d1-b", "d2-a"]  # not the inactive d1-off
    assert {m["path"] for m in task["meters"]} == {"mqtt_concentrator"}
    explicit_null = api.post({"meter_id": "m1", "from": "2026-11-22T08:00:00+08:00", "to": None})
    assert explicit_null.status_code == 202, explicit_null.text
    assert explicit_null.json()["to"] == "2026-11-22T04:00:00Z"


@pytest.mark.parametrize(
    ("body", "code", "in_detail"),
    [
        ({"from": FROM, "to": TO}, "unprocessable", "name exactly one of meter_id, meter_ids, concentrator_ids"),
        ({"meter_id": "m1", "meter_ids": ["m2"], "from": FROM}, "unprocessable", "(got meter_id, meter_ids)"),
        ({"meter_id": "m1", "from": FROM, "note": "x"}, "unprocessable", "body.note: Extra inputs are not permitted"),
        ({"meter_id": "m1", "from_": FROM}, "unprocessable", "body.from: Field required"),
        ({"meter_id": "m1", "from": "2026-11-20T00:00:00"}, "unprocessable", "body.from: Input should have timezone"),
        ({"meter_id": "m1", "from": 1795000000}, "unprocessable", "body.from"),
        ({"meter_ids": "m1", "from": FROM}, "unprocessable", "body.meter_ids: Input should be a valid array"),
        ({"meter_ids": [], "from": FROM}, "unprocessable", "body.meter_ids: List should have at least 1 item"),
        ({"meter_ids": ["m1", 2], "from": FROM}, "unprocessable", "body.meter_ids.1: Input should be a valid string"),
        ({"meter_id": "m\u00001", "from": FROM}, "unprocessable", "body.meter_id: String should match pattern"),
        ({"meter_id": "m" * 33, "from": FROM}, "unprocessable", "body.meter_id: String should match pattern"),
        ({"concentrator_ids": ["dcu 1"], "from": FROM}, "unprocessable", "body.concentrator_ids.0: String should"),
        ({"meter_id": "m1", "from": TO, "to": FROM}, "reread_refused", "before or when it starts"),
        ({"meter_id": "m1", "from": TO, "to": TO}, "reread_refused", "before or when it starts"),
        (
            {"meter_id": "m1", "from": "2026-11-22T13:00:00+08:00", "to": "2026-11-22T14:00:00+08:00"},
            "reread_refused",
            "starts in the future",
        ),
        ({"meter_id": "m1", "from": "2026-10-01T00:00:00+08:00", "to": TO}, "reread_refused", "longer than 31 days"),
        ({"meter_id": "nope", "from": FROM}, "reread_refused", "unknown meter(s): nope"),
        ({"meter_ids": ["m1", "x1", "x2"], "from": FROM}, "reread_refused", "unknown meter(s): x1, x2"),
        ({"meter_ids": ["m1", "m9"], "from": FROM}, "reread_refused", "meter(s) not active: m9"),
        ({"concentrator_ids": ["dcu-1", "dcu-9"], "from": FROM}, "reread_refused", "unknown concentrator(s): dcu-9"),
    ],
)
def test_a_bad_request_is_a_422_problem_and_stores_nothing(
    api: Api, body: dict[str, Any], code: str, in_detail: str
) -> None:
    refused = api.post(body)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["type"] == f"urn:headend:problem:{code}"
    assert problem["title"] == "Unprocessable Entity"
    assert in_detail in problem["detail"]
    if code == "unprocessable":
        assert problem["errors"], problem
    assert api.stored() == (0, 0)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"meter_id": "m1", "meter_id": "m2", "from": "2026-11-20T00:00:00+08:00"}',
        b'{"meter_id": "m1", "from": ',
        b"",
        b"[]",
    ],
    ids=["key-twice", "truncated", "empty", "not-an-object"],
)
def test_a_body_that_is_not_one_json_object_is_refused(api: Api, raw: bytes) -> None:
    refused = api.post(raw)
    assert refused.status_code == 422, refused.text
    assert refused.json()["type"] in ("urn:headend:problem:unprocessable", "urn:headend:problem:duplicate_key")
    assert api.stored() == (0, 0)


def test_a_list_of_the_largest_size_is_read_and_one_item_more_refused(api: Api) -> None:
    ids = [f"{n:032d}" for n in range(MAX_METERS)]
    body = {"meter_ids": ["m1", *ids[1:]], "from": FROM}
    raw = json.dumps(body, indent=4).encode()  # written out line by line: larger than compact
    assert len(raw) > 4 * 1024 * 1024
    refused = api.post(raw)
    # read and parsed whole: refused for what it names, not for its size
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert detail.startswith("unknown meter(s): 00000000000000000000000000000001, ")
    assert detail.endswith(f" and {MAX_METERS - 11} more")
    too_long = api.post({"meter_ids": [*ids, "m1"], "from": FROM})
    assert too_long.status_code == 422
    assert [e["type"] for e in too_long.json()["errors"]] == ["too_long"]
    assert api.stored() == (0, 0)


def test_a_list_of_wrong_items_lists_its_first_errors_only(api: Api) -> None:
    refused = api.post({"meter_ids": list(range(1000)), "from": FROM})
    assert refused.status_code == 422
    problem = refused.json()
    assert len(problem["errors"]) == MAX_ERRORS_LISTED
    assert problem["errors"][0] == {
        "loc": ["body", "meter_ids", 0],
        "msg": "Input should be a valid string",
        "type": "string_type",
    }
    assert problem["detail"].endswith(f"; and {1000 - MAX_ERRORS_LISTED} more")


def test_a_body_beyond_the_limit_is_a_413(api: Api) -> None:
    raw = b'{"meter_ids": [' + b'"m1", ' * (MAX_BODY_BYTES // 6) + b'"m1"], "from": "2026-11-20T00:00:00+08:00"}'
    refused = api.post(raw)
    assert refused.status_code == 413, refused.text
    assert refused.json()["type"] == "urn:headend:problem:too_large"
    assert api.stored() == (0, 0)


def test_operators_and_admins_may_ask_and_read_others_may_not(api: Api) -> None:
    body = {"meter_id": "m1", "from": FROM, "to": TO}
    missing = api.post(body, who=None)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    unknown = api.client.post("/v1/rereads", json=body, headers={"Authorization": "Bearer not-a-token"})
    assert unknown.status_code == 401
    assert 'error="invalid_token"' in unknown.headers["www-authenticate"]
    for who in ("field", "wechat", "watcher"):
        forbidden = api.post(body, who=who)
        assert forbidden.status_code == 403, who
        assert forbidden.json()["type"] == "urn:headend:problem:forbidden"
    assert api.stored() == (0, 0)
    # the role is checked before the body is parsed: a field-staff token learns nothing from a bad body
    assert api.post(b"{", who="field").status_code == 403

    task_id = api.post(body).json()["task_id"]
    for url in ("/v1/rereads", f"/v1/rereads/{task_id}"):
        assert api.get(url, who=None).status_code == 401, url
        for who in ("field", "wechat"):
            assert api.get(url, who=who).status_code == 403, (url, who)
        for who in ("ops", "root", "watcher"):  # a viewer reads, and may not ask
            assert api.get(url, who=who).status_code == 200, (url, who)


def test_an_unknown_task_is_a_404_and_a_malformed_id_a_4xx(api: Api) -> None:
    unknown = api.get("/v1/rereads/rr-nope")
    assert unknown.status_code == 404
    assert unknown.json() == {
        "type": "urn:headend:problem:unknown_reread",
        "title": "Not Found",
        "detail": "no re-read task 'rr-nope'",
    }
    assert api.get("/v1/rereads/" + "x" * 65).status_code == 422
    assert api.get("/v1/rereads/rr%00x").status_code == 400


def test_the_latest_tasks_are_listed_newest_first_without_their_meters(api: Api) -> None:
    first = api.post({"meter_id": "m1", "from": FROM, "to": TO}).json()
    api.db.execute("UPDATE reread_tasks SET requested_at = requested_at - interval '1 hour'")
    second = api.post({"concentrator_ids": ["dcu-1"], "from": FROM, "to": TO}).json()
    listed = api.get("/v1/rereads")
    assert listed.status_code == 200, listed.text
    tasks = listed.json()["tasks"]
    assert [t["task_id"] for t in tasks] == [second["task_id"], first["task_id"]]
    assert tasks[0] == {k: v for k, v in second.items() if k != "meters"}
    assert [t["task_id"] for t in api.get("/v1/rereads?limit=1").json()["tasks"]] == [second["task_id"]]
    for bad in ("0", "501", "x"):
        refused = api.get(f"/v1/rereads?limit={bad}")
        assert refused.status_code == 422, bad
        assert refused.headers["content-type"] == "application/problem+json"


def test_the_openapi_document_describes_the_routes_and_the_strict_body(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    paths = doc["paths"]
    assert set(paths["/v1/rereads"]) == {"get", "post"}
    assert set(paths["/v1/rereads/{task_id}"]) == {"get"}
    post = paths["/v1/rereads"]["post"]
    assert post["tags"] == ["rereads"]
    assert post["security"] == [{"bearer": []}]
    assert set(post["responses"]) == {"202", "401", "403", "413", "422", "503"}
    assert post["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/RereadIn"}
    model = doc["components"]["schemas"]["RereadIn"]
    assert model["additionalProperties"] is False
    assert model["required"] == ["from"]
    assert set(model["properties"]) == {"meter_id", "meter_ids", "concentrator_ids", "from", "to"}
    assert model["examples"]
    task = doc["components"]["schemas"]["RereadTaskOut"]
    assert {"from", "to", "meters"} <= set(task["properties"])
    assert set(paths["/v1/rereads/{task_id}"]["get"]["responses"]) == {"200", "401", "403", "404", "422", "503"}


def test_a_stored_task_keeps_the_instants_asked_for(api: Api) -> None:
    asked = api.post({"meter_id": "m1", "from": "2026-11-20T01:02:03.5+08:00", "to": "2026-11-20T05:00:00Z"})
    assert asked.status_code == 202, asked.text
    row = api.db.execute("SELECT from_at, to_at, requested_at FROM reread_tasks").fetchone()
    assert row == (
        datetime(2026, 11, 20, 1, 2, 3, 500_000, tzinfo=SHANGHAI),
        datetime(2026, 11, 20, 13, 0, tzinfo=SHANGHAI),
        NOW,
    )
    assert (asked.json()["from"], asked.json()["to"]) == ("2026-11-19T17:02:03.500000Z", "2026-11-20T05:00:00Z")
