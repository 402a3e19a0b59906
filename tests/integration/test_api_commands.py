"""The command, alarm and relay endpoints on the real PostgreSQL: disconnects held by the real dispatcher, roles."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from headend.api import store as api_store
from headend.api.app import create_app
from headend.api.credentials import Role, new_token
from headend.dispatch import store
from headend.dispatch.dispatcher import DispatchConfig, Dispatcher
from headend.dispatch.lifecycle import AlarmKind
from headend.engine.accounts import open_account
from headend.engine.catalog import Catalog
from headend.engine.runner import EngineRunner
from headend.settings import Settings
from prepay_engine.tariffs import SHANGHAI
from protocols.readings import RelayState
from protocols.relay_codec import RelayCommandMessage
from tests.integration.conftest import count, register
from tests.integration.engine_support import DAY_START, STRICT_POLICY, TARIFF, seed_catalog, series, store_readings

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
STEP = timedelta(minutes=15)
ENGINE_NOW = DAY_START + timedelta(days=1, hours=2)


class FakeSender:
    """Records what the dispatcher would publish (the broker path is covered by test_dispatch.py)."""

    def __init__(self) -> None:
        self.sent: list[RelayCommandMessage] = []

    def send(self, message: RelayCommandMessage, concentrator_id: str | None) -> str:
        """Accept the command."""
        self.sent.append(message)
        return f"meters/{message.meter_id}/commands"


@dataclass
class Api:
    """A client of the API, principals' tokens, and the engine and dispatcher to make commands the real way."""

    client: TestClient
    db: Conn
    catalog: Catalog
    dispatcher: Dispatcher
    sender: FakeSender
    tokens: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        """The Authorization header of a principal."""
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def get(self, url: str, who: str = "ops", **params: Any) -> httpx2.Response:
        """GET as a principal."""
        return self.client.get(url, params=params, headers=self.auth(who))

    def post(self, url: str, who: str = "ops", body: dict[str, Any] | None = None) -> httpx2.Response:
        """POST a JSON body (or none) as a principal."""
        return self.client.post(url, json=body, headers=self.auth(who))

    def exhaust(self, n: int) -> str:
        """Open account An on meter mn, use up its balance and let the dispatcher hold its disconnect; the id."""
        register(self.db, [f"m{n}"])
        open_account(
            self.db,
            self.catalog,
            f"A{n}",
            meter_id=f"m{n}",
            tariff_code=TARIFF.code,
            policy_code=STRICT_POLICY.name,
            opened_at=DAY_START,
            opening_register_wh=1_000_000,
            zone=SHANGHAI,
        )
        store_readings(self.db, series(f"m{n}", DAY_START + STEP, 16, STEP, 1_000_500, 500))
        EngineRunner(self.db, 600.0, 100, clock=lambda: ENGINE_NOW, catalog=self.catalog).sweep()
        self.dispatcher.step()
        [(command_id, state)] = self.db.execute(
            "SELECT command_id, state FROM commands WHERE account_id = %s", (f"A{n}",)
        ).fetchall()
        assert state == "held", state
        return str(command_id)

    def state(self, command_id: str) -> str:
        """The command's state as stored."""
        row = self.db.execute("SELECT state FROM commands WHERE command_id = %s", (command_id,)).fetchone()
        assert row is not None
        return str(row[0])

    def audit_count(self, command_id: str) -> int:
        """How many audit records the command has."""
        return count(self.db, "SELECT count(*) FROM command_audit WHERE command_id = %s", command_id)

    def pending(self, account_id: str) -> dict[str, Any] | None:
        """The account's pending command."""
        row = self.db.execute(
            "SELECT pending_command FROM prepaid_accounts WHERE account_id = %s", (account_id,)
        ).fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    """The API on a migrated database with a principal of every role, and a dispatcher that holds every disconnect."""
    with (
        psycopg.connect(database_url, autocommit=True) as conn,
        psycopg.connect(database_url, autocommit=True) as audit_conn,
    ):
        catalog = seed_catalog(conn)
        tokens = {}
        for name, role in (("ops", Role.OPERATOR), ("field", Role.FIELD_STAFF), ("root", Role.ADMIN)):
            tokens[name] = new_token()
            api_store.create_principal(conn, name, role, tokens[name], created_by="test")
        tokens["wechat"] = new_token()
        api_store.create_principal(conn, "wechat", Role.CHANNEL, tokens["wechat"], created_by="test")
        sender = FakeSender()
        # a storm limit of 0 holds every disconnect for an operator
        dispatcher = Dispatcher(conn, audit_conn, sender, config=DispatchConfig(storm_limit=0), catalog=catalog)
        app = create_app(Settings(database_url=database_url, api_pool_size=4))
        with TestClient(app) as client:
            yield Api(client, conn, catalog, dispatcher, sender, tokens)


def _raise_alarm(db: Conn, meter_id: str, command_id: str | None = None) -> int:
    with db.transaction(), db.cursor(row_factory=dict_row) as cur:
        return store.raise_alarm(
            cur, meter_id, command_id, AlarmKind.RELAY_MISMATCH, RelayState.CLOSED, "relay stuck", datetime.now(UTC)
        )


def test_commands_are_listed_newest_first_and_read_with_their_history(api: Api) -> None:
    first = api.exhaust(1)
    second = api.exhaust(2)
    page = api.get("/v1/commands")
    assert page.status_code == 200, page.text
    body = page.json()
    assert [c["command_id"] for c in body["commands"]] == [second, first]
    assert body["next_before"] is None
    listed = body["commands"][1]
    assert (listed["account_id"], listed["meter_id"], listed["action"], listed["state"]) == (
        "A1",
        "m1",
        "disconnect",
        "held",
    )
    assert listed["issued_at"].endswith("Z")
    assert listed["next_attempt_at"] is None
    assert listed["approved_by"] is None
    assert "storm limit" in listed["detail"]

    # keyset pagination: one per page, in the same order, then the end
    one = api.get("/v1/commands", limit=1).json()
    assert [c["command_id"] for c in one["commands"]] == [second]
    assert one["next_before"] == second
    older = api.get("/v1/commands", limit=1, before=one["next_before"]).json()
    assert [c["command_id"] for c in older["commands"]] == [first]
    assert older["next_before"] is None

    assert [c["command_id"] for c in api.get("/v1/commands", account_id="A1").json()["commands"]] == [first]
    assert [c["command_id"] for c in api.get("/v1/commands", meter_id="m2").json()["commands"]] == [second]
    assert len(api.get("/v1/commands", state="held", action="disconnect").json()["commands"]) == 2
    assert api.get("/v1/commands", state="sent").json() == {"commands": [], "next_before": None}
    assert api.get("/v1/commands", action="reconnect").json()["commands"] == []
    for params, loc in (
        ({"state": "stuck"}, ["query", "state"]),
        ({"action": "explode"}, ["query", "action"]),
        ({"limit": 0}, ["query", "limit"]),
        ({"limit": 501}, ["query", "limit"]),
        ({"before": "relay:nope:1:disconnect"}, ["query", "before"]),
    ):
        refused = api.get("/v1/commands", **params)
        assert refused.status_code == 422, params
        assert refused.headers["content-type"] == "application/problem+json"
        assert [e["loc"] for e in refused.json()["errors"]] == [loc], params

    detail = api.get(f"/v1/commands/{first}", who="field")
    assert detail.status_code == 200, detail.text
    shown = detail.json()
    assert {k: v for k, v in shown.items() if k != "history"} == listed
    history = shown["history"]
    assert [(e["from_state"], e["to_state"]) for e in history] == [(None, "created"), ("created", "held")]
    assert [e["actor"] for e in history] == ["engine", "dispatcher"]
    assert history[0]["inputs"]["reasons"]
    assert history[0]["at"].endswith("Z")
    assert history[0]["seq"] < history[1]["seq"]

    missing = api.get("/v1/commands/relay:A9:1:disconnect")
    assert missing.status_code == 404
    assert missing.json()["type"] == "urn:headend:problem:unknown_command"


def test_a_field_staff_token_cannot_approve_or_cancel_a_disconnect_held_by_the_storm_limit(api: Api) -> None:
    held = api.exhaust(1)
    trail = api.audit_count(held)
    for action, body in (("approve", None), ("approve", {"note": "go"}), ("cancel", {"reason": "site visit"})):
        refused = api.post(f"/v1/commands/{held}/{action}", who="field", body=body)
        assert refused.status_code == 403, refused.text
        assert refused.json()["type"] == "urn:headend:problem:forbidden"
    assert api.state(held) == "held"
    assert api.audit_count(held) == trail
    assert api.db.execute("SELECT approved_by FROM commands WHERE command_id = %s", (held,)).fetchone() == (None,)
    assert api.pending("A1") is not None
    assert api.pending("A1")["request_id"] == held  # type: ignore[index]


def test_an_operator_approves_a_held_disconnect_and_the_dispatcher_sends_it(api: Api) -> None:
    held = api.exhaust(1)
    approved = api.post(f"/v1/commands/{held}/approve", body={"note": "storm checked with the feeder"})
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert (body["state"], body["approved_by"]) == ("created", "ops")
    assert body["next_attempt_at"].endswith("Z")
    trail = store.history(api.db, held)
    assert [(e["to_state"], e["actor"]) for e in trail[-2:]] == [("created", "ops"), ("created", "ops")]
    assert trail[-2]["detail"] == "approved by ops"
    assert trail[-1]["inputs"] == {"note": "storm checked with the feeder"}

    # approval is the operator's decision: the storm limit does not hold it again
    api.dispatcher.step()
    assert api.state(held) == "sent"
    assert [m.command_id for m in api.sender.sent] == [held]

    again = api.post(f"/v1/commands/{held}/approve")
    assert again.status_code == 409, again.text
    assert again.json()["type"] == "urn:headend:problem:command_state"
    assert "only a held command can be approved" in again.json()["detail"]
    unknown = api.post("/v1/commands/relay:A9:1:disconnect/approve")
    assert unknown.status_code == 404
    assert unknown.json()["type"] == "urn:headend:problem:unknown_command"


def test_an_admin_approves_without_a_body_and_a_bad_note_is_refused(api: Api) -> None:
    held = api.exhaust(1)
    for body in ({"note": ""}, {"note": "x" * 257}, {"note": 5}, {"remark": "hi"}):
        refused = api.post(f"/v1/commands/{held}/approve", who="root", body=body)
        assert refused.status_code == 422, body
    assert api.state(held) == "held"
    approved = api.client.post(f"/v1/commands/{held}/approve", headers=api.auth("root"))
    assert approved.status_code == 200, approved.text
    assert approved.json()["approved_by"] == "root"
    assert store.history(api.db, held)[-1]["actor"] == "root"


def test_an_operator_cancels_a_held_disconnect_with_a_reason(api: Api) -> None:
    held = api.exhaust(1)
    for body in (None, {}, {"reason": ""}, {"reason": "x" * 257}, {"reason": "ok", "note": "extra"}):
        refused = api.post(f"/v1/commands/{held}/cancel", body=body)
        assert refused.status_code == 422, body
    assert api.state(held) == "held"
    # keep-supply set meanwhile: the account decides again after the cancel and asks for nothing new
    api.db.execute("UPDATE prepaid_accounts SET keep_supply = true WHERE account_id = 'A1'")

    cancelled = api.post(f"/v1/commands/{held}/cancel", body={"reason": "site visit first"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["finished_at"].endswith("Z")
    last = store.history(api.db, held)[-1]
    assert (last["to_state"], last["actor"], last["detail"]) == (
        "cancelled",
        "ops",
        "cancelled by ops: site visit first",
    )
    assert api.pending("A1") is None

    again = api.post(f"/v1/commands/{held}/cancel", body={"reason": "twice"})
    assert again.status_code == 409
    assert again.json()["type"] == "urn:headend:problem:command_state"
    unknown = api.post("/v1/commands/relay:A9:1:disconnect/cancel", body={"reason": "x"})
    assert unknown.status_code == 404


def test_a_cancelled_disconnect_of_an_exhausted_account_is_requested_again(api: Api) -> None:
    held = api.exhaust(1)
    cancelled = api.post(f"/v1/commands/{held}/cancel", body={"reason": "wrong meter?"})
    assert cancelled.status_code == 200, cancelled.text
    pending = api.pending("A1")
    assert pending is not None
    assert pending["request_id"] != held
    assert pending["action"] == "disconnect"


def test_a_channel_token_may_use_none_of_the_command_endpoints(api: Api) -> None:
    held = api.exhaust(1)
    alarm = _raise_alarm(api.db, "m1")
    api.db.execute(
        "INSERT INTO meter_relays VALUES ('m1', 'closed', false, now(), now(), 'test')",
    )
    for method, url, body in (
        ("GET", "/v1/commands", None),
        ("GET", f"/v1/commands/{held}", None),
        ("POST", f"/v1/commands/{held}/approve", None),
        ("POST", f"/v1/commands/{held}/cancel", {"reason": "x"}),
        ("GET", "/v1/alarms", None),
        ("POST", f"/v1/alarms/{alarm}/resolve", None),
        ("GET", "/v1/meters/m1/relay", None),
    ):
        refused = api.client.request(method, url, json=body, headers=api.auth("wechat"))
        assert refused.status_code == 403, (method, url)
        anonymous = api.client.request(method, url, json=body)
        assert anonymous.status_code == 401, (method, url)
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert api.state(held) == "held"
    assert count(api.db, "SELECT count(*) FROM relay_alarms WHERE resolved_at IS NULL") == 1


def test_alarms_are_listed_and_resolved_once(api: Api) -> None:
    register(api.db, ["m1", "m2"])
    first = _raise_alarm(api.db, "m1")
    second = _raise_alarm(api.db, "m2")
    third = _raise_alarm(api.db, "m1")
    listed = api.get("/v1/alarms", who="field")
    assert listed.status_code == 200, listed.text
    assert [a["alarm_id"] for a in listed.json()["alarms"]] == [third, second, first]
    alarm = listed.json()["alarms"][0]
    assert (alarm["meter_id"], alarm["kind"], alarm["relay"], alarm["resolved_at"]) == (
        "m1",
        "relay_mismatch",
        "closed",
        None,
    )
    assert alarm["raised_at"].endswith("Z")
    assert [a["alarm_id"] for a in api.get("/v1/alarms", meter_id="m1").json()["alarms"]] == [third, first]
    page = api.get("/v1/alarms", limit=2).json()
    assert page["next_before_id"] == second
    assert [a["alarm_id"] for a in api.get("/v1/alarms", before_id=second).json()["alarms"]] == [first]

    refused = api.post(f"/v1/alarms/{first}/resolve", who="field", body={"note": "fixed"})
    assert refused.status_code == 403
    resolved = api.post(f"/v1/alarms/{first}/resolve", body={"note": "relay replaced"})
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["resolved_by"] == "ops"
    assert resolved.json()["resolved_at"].endswith("Z")
    assert [a["alarm_id"] for a in api.get("/v1/alarms").json()["alarms"]] == [third, second]
    assert [a["alarm_id"] for a in api.get("/v1/alarms", open="false").json()["alarms"]] == [first]

    twice = api.post(f"/v1/alarms/{first}/resolve", who="root")
    assert twice.status_code == 409
    assert twice.json()["type"] == "urn:headend:problem:alarm_resolved"
    assert "ops" in twice.json()["detail"]
    assert api.post("/v1/alarms/999999/resolve").status_code == 404
    assert api.post(f"/v1/alarms/{second}/resolve", body={"note": ""}).status_code == 422
    assert api.post("/v1/alarms/0/resolve").status_code == 422
    assert api.get("/v1/alarms", open="maybe").status_code == 422


def test_a_meters_last_reported_relay_position(api: Api) -> None:
    register(api.db, ["m1", "m2"])
    reported = datetime(2026, 11, 22, 10, 16, 11, tzinfo=SHANGHAI)
    with api.db.transaction(), api.db.cursor(row_factory=dict_row) as cur:
        store.note_relay(cur, "m1", RelayState.OPEN, False, reported, datetime.now(UTC), "relay:A1:1:disconnect")
    relay = api.get("/v1/meters/m1/relay", who="field")
    assert relay.status_code == 200, relay.text
    body = relay.json()
    assert (body["relay"], body["ready_for_reconnection"], body["source"]) == ("open", False, "relay:A1:1:disconnect")
    assert body["reported_at"] == "2026-11-22T02:16:11Z"
    none = api.get("/v1/meters/m2/relay")
    assert none.status_code == 404
    assert none.json()["type"] == "urn:headend:problem:unknown_relay"
    assert api.get("/v1/meters/nope/relay").status_code == 404


def test_field_staff_ask_a_meter_to_read_its_relay_and_the_dispatcher_sends_it(api: Api) -> None:
    register(api.db, ["m1"])
    created = api.post("/v1/meters/m1/relay/read", who="field")
    assert created.status_code == 202, created.text
    body = created.json()
    assert (body["action"], body["state"], body["requested_by"], body["account_id"]) == (
        "read_relay",
        "created",
        "field",
        None,
    )
    api.dispatcher.step()  # a relay read is never held
    assert [m.command_id for m in api.sender.sent] == [body["command_id"]]
    assert api.state(body["command_id"]) == "sent"
    assert api.post("/v1/meters/nope/relay/read", who="field").status_code == 404
    assert api.post("/v1/meters/m1/relay/read", who="wechat").status_code == 403


def test_the_command_routes_are_documented(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    operations = {(path, method): op for path, ops in doc["paths"].items() for method, op in ops.items()}
    expected = {
        ("/v1/commands", "get"): {"401", "403", "422", "503"},
        ("/v1/commands/{command_id}", "get"): {"401", "403", "404", "422", "503"},
        ("/v1/commands/{command_id}/approve", "post"): {"401", "403", "404", "409", "413", "422", "503"},
        ("/v1/commands/{command_id}/cancel", "post"): {"401", "403", "404", "409", "413", "422", "503"},
        ("/v1/alarms", "get"): {"401", "403", "422", "503"},
        ("/v1/alarms/{alarm_id}/resolve", "post"): {"401", "403", "404", "409", "413", "422", "503"},
        ("/v1/meters/{meter_id}/relay", "get"): {"401", "403", "404", "422", "503"},
        ("/v1/meters/{meter_id}/relay/read", "post"): {"401", "403", "404", "422", "503"},
    }
    for key, errors in expected.items():
        op = operations[key]
        assert op["summary"], key
        assert op["tags"], key
        assert op["security"] == [{"bearer": []}], key
        assert {s for s in op["responses"] if s[0] in "45"} == errors, key
        assert "Roles:" in op["description"], key
    cancel = operations[("/v1/commands/{command_id}/cancel", "post")]["requestBody"]
    assert cancel["required"] is True
    assert cancel["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/CancelIn"}
    approve = operations[("/v1/commands/{command_id}/approve", "post")]["requestBody"]
    assert approve["required"] is False
    schemas = doc["components"]["schemas"]
    assert schemas["CancelIn"]["required"] == ["reason"]
    assert schemas["CancelIn"]["additionalProperties"] is False
    for name in ("ApproveIn", "ResolveIn", "CommandDetail", "CommandPage", "AlarmPage", "RelayOut"):
        assert schemas[name].get("examples"), name
    assert {t["name"] for t in doc["tags"]} >= {"commands", "alarms", "meters"}
