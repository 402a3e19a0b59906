"""The HTTP API on the real PostgreSQL: signed callbacks credited once, refusals that post nothing, roles, OpenAPI."""

from __future__ import annotations

import json
import threading
import time
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
from headend.api.credentials import Role, new_token, signature
from headend.settings import Settings
from prepay_engine.ledger import prepaid_account_id
from tests.integration.conftest import count, register
from tests.integration.engine_support import STRICT_POLICY, TARIFF, open_test_account, seed_catalog

Conn = psycopg.Connection[Any]
SECRET = "wechat-secret-0123456789abcdef0123456789"
ALIPAY_SECRET = "alipay-secret-0123456789abcdef0123456789"
PAID_AT = "2026-11-22T10:15:00+08:00"


@dataclass
class Api:
    """A client of the API on a seeded database, the tokens of its principals and a connection to look behind it."""

    client: TestClient
    db: Conn
    tokens: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        """The Authorization header of a principal."""
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def callback(
        self,
        body: dict[str, Any] | bytes,
        *,
        channel: str = "wechat",
        secret: str = SECRET,
        timestamp: int | None = None,
    ) -> httpx2.Response:
        """POST a channel callback signed with `secret`."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        headers = {
            "Content-Type": "application/json",
            "X-Headend-Timestamp": stamp,
            "X-Headend-Signature": signature(secret, stamp, raw),
        }
        return self.client.post(f"/v1/channels/{channel}/payments", content=raw, headers=headers)

    def posted(self) -> tuple[int, int]:
        """How many payments and ledger postings there are."""
        return count(self.db, "SELECT count(*) FROM payments"), count(self.db, "SELECT count(*) FROM ledger_postings")

    def balance(self, account_id: str = "A1") -> int:
        """The prepaid balance in the ledger."""
        return count(
            self.db, "SELECT balance_fen FROM ledger_accounts WHERE account_id = %s", prepaid_account_id(account_id)
        )


def _payment(
    txn: str = "WX1", account_id: str = "A1", amount_fen: int = 5000, paid_at: str = PAID_AT
) -> dict[str, Any]:
    return {"channel_txn_id": txn, "account_id": account_id, "amount_fen": amount_fen, "paid_at": paid_at}


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    """The API on a database with two accounts, channels wechat and alipay, and a principal of every kind."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        catalog = seed_catalog(conn)
        register(conn, ["m1", "m2"])
        for account_id, meter_id in (("A1", "m1"), ("A2", "m2")):
            open_test_account(conn, catalog, account_id, meter_id)
        store.add_channel(conn, "wechat", SECRET)
        store.add_channel(conn, "alipay", ALIPAY_SECRET)
        tokens = {}
        for name, role in (
            ("ops", Role.OPERATOR),
            ("field", Role.FIELD_STAFF),
            ("root", Role.ADMIN),
            ("wechat", Role.CHANNEL),
            ("alipay", Role.CHANNEL),
        ):
            tokens[name] = new_token()
            store.create_principal(conn, name, role, tokens[name], created_by="test")
        # the payments here are dated on fixed days: refused as too old only where a test says so
        app = create_app(Settings(database_url=database_url, api_pool_size=4, payment_max_age_days=3660))
        with TestClient(app) as client:
            yield Api(client, conn, tokens)


def test_a_signed_callback_is_credited_once_and_a_duplicate_gets_the_first_result(api: Api) -> None:
    first = api.callback(_payment())
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["channel"] == "wechat"
    assert body["channel_txn_id"] == "WX1"
    assert body["amount_fen"] == 5000
    assert body["split"] == {"credited_fen": 5000, "emergency_credit_repaid_fen": 0, "debt_recovered_fen": 0}
    assert body["balance_after_fen"] == 5000
    assert body["paid_at"] == "2026-11-22T02:15:00Z"
    assert api.posted() == (1, 1)

    # the channel retries (another timestamp, the same payment): credited once, the same answer
    again = api.callback(_payment(), timestamp=int(time.time()) - 10)
    assert again.status_code == 200, again.text
    assert again.content == first.content
    assert api.posted() == (1, 1)
    assert api.balance() == 5000

    shown = api.client.get("/v1/accounts/A1", headers=api.auth("ops"))
    assert shown.status_code == 200, shown.text
    assert shown.json()["balance_fen"] == 5000
    stored = api.db.execute("SELECT received_by FROM payments").fetchone()
    assert stored == ("channel:wechat",)


def test_concurrent_deliveries_of_one_payment_credit_it_once(api: Api) -> None:
    answers: list[httpx2.Response] = []
    start = threading.Barrier(4)

    def deliver() -> None:
        start.wait()
        answers.append(api.callback(_payment("WX-RACE")))

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201]
    assert len({a.content for a in answers}) == 1
    assert api.posted() == (1, 1)
    assert api.balance() == 5000


@pytest.mark.parametrize(
    "changed",
    [{"amount_fen": 4000}, {"account_id": "A2"}, {"paid_at": "2026-11-22T10:16:00+08:00"}, {"account_id": "NOPE"}],
)
def test_a_conflicting_duplicate_is_refused_and_changes_nothing(api: Api, changed: dict[str, Any]) -> None:
    assert api.callback(_payment()).status_code == 201
    refused = api.callback({**_payment(), **changed})
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["type"] == "urn:headend:problem:payment_conflict"
    assert problem["title"] == "Conflict"
    assert next(iter(changed)) in problem["detail"]
    assert api.posted() == (1, 1)
    assert api.balance() == 5000
    assert api.balance("A2") == 0


def test_the_same_offset_written_differently_is_the_same_payment(api: Api) -> None:
    assert api.callback(_payment()).status_code == 201
    same_instant = api.callback(_payment(paid_at="2026-11-22T02:15:00Z"))
    assert same_instant.status_code == 200, same_instant.text


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong secret", "does not verify"),
        ("tampered body", "does not verify"),
        ("stale timestamp", "300 s"),
        ("future timestamp", "300 s"),
        ("unknown channel", "does not verify"),
        ("disabled channel", "does not verify"),
        ("missing headers", "are required"),
        ("counter channel", "does not verify"),
        ("malformed signature", "does not verify"),
    ],
)
def test_an_unauthenticated_callback_is_refused_and_posts_nothing(api: Api, case: str, expected: str) -> None:
    raw = json.dumps(_payment()).encode()
    now = int(time.time())
    if case == "wrong secret":
        answer = api.callback(raw, secret="x" * 40)
    elif case == "tampered body":
        stamp = str(now)
        headers = {"X-Headend-Timestamp": stamp, "X-Headend-Signature": signature(SECRET, stamp, raw)}
        tampered = raw.replace(b"5000", b"9000")
        answer = api.client.post("/v1/channels/wechat/payments", content=tampered, headers=headers)
    elif case == "stale timestamp":
        answer = api.callback(raw, timestamp=now - 301)
    elif case == "future timestamp":
        # well past the 300 s: `now` is truncated to the second and the server's clock moves on before it checks
        answer = api.callback(raw, timestamp=now + 310)
    elif case == "unknown channel":
        answer = api.callback(raw, channel="unionpay")
    elif case == "disabled channel":
        assert store.set_channel_disabled(api.db, "wechat", disabled=True)
        answer = api.callback(raw)
    elif case == "missing headers":
        answer = api.client.post("/v1/channels/wechat/payments", content=raw)
    elif case == "counter channel":
        answer = api.callback(raw, channel="counter")
    else:
        stamp = str(now)
        headers = {"X-Headend-Timestamp": stamp, "X-Headend-Signature": signature(SECRET, stamp, raw)[7:]}
        answer = api.client.post("/v1/channels/wechat/payments", content=raw, headers=headers)
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"].startswith("HMAC-SHA256")
    assert expected in answer.json()["detail"]
    assert api.posted() == (0, 0)


def test_a_wrong_signature_is_refused_before_the_body_is_read(api: Api) -> None:
    answer = api.callback(b"not json at all", secret="y" * 40)
    assert answer.status_code == 401
    assert api.posted() == (0, 0)


def test_the_previous_secret_is_accepted_during_its_grace_period_only(api: Api) -> None:
    new_secret = "wechat-new-secret-0123456789abcdef012345"
    rotated = store.rotate_channel(api.db, "wechat", new_secret, timedelta(hours=1))
    assert rotated.previous_valid_until is not None
    assert api.callback(_payment("WX-OLD"), secret=SECRET).status_code == 201
    assert api.callback(_payment("WX-NEW"), secret=new_secret).status_code == 201

    api.db.execute(
        "UPDATE payment_channels SET previous_valid_until = now() - interval '1 second' WHERE channel = 'wechat'"
    )
    late = api.callback(_payment("WX-LATE"), secret=SECRET)
    assert late.status_code == 401
    assert api.posted() == (2, 2)

    newest = "wechat-newest-secret-0123456789abcdef0123"
    assert store.rotate_channel(api.db, "wechat", newest, timedelta(0)).previous_valid_until is None
    assert api.callback(_payment("WX-GONE"), secret=new_secret).status_code == 401
    assert api.callback(_payment("WX-NEWEST"), secret=newest).status_code == 201


@pytest.mark.parametrize(
    ("body", "location"),
    [
        (_payment() | {"amount_fen": 50.0}, ["body", "amount_fen"]),
        (_payment() | {"amount_fen": "5000"}, ["body", "amount_fen"]),
        (_payment() | {"amount_fen": True}, ["body", "amount_fen"]),
        (_payment() | {"amount_fen": 0}, ["body", "amount_fen"]),
        (_payment() | {"amount_fen": 10**12}, ["body", "amount_fen"]),
        (_payment() | {"paid_at": "2026-11-22T10:15:00"}, ["body", "paid_at"]),
        (_payment() | {"paid_at": 1795000000}, ["body", "paid_at"]),
        # the edges of what a datetime can hold: with the offset applied they would leave it
        (_payment() | {"paid_at": "0001-01-01T00:00:00+14:00"}, ["body", "paid_at"]),
        (_payment() | {"paid_at": "9999-12-31T23:59:59-14:00"}, ["body", "paid_at"]),
        (_payment() | {"paid_at": "1999-12-31T23:59:59+00:00"}, ["body", "paid_at"]),
        (_payment() | {"channel_txn_id": "WX\u00001"}, ["body", "channel_txn_id"]),
        (_payment() | {"account_id": "\ud800"}, ["body"]),  # a lone surrogate is not JSON text
        (_payment() | {"note": "extra"}, ["body", "note"]),
        (_payment() | {"channel_txn_id": "WX:1"}, ["body", "channel_txn_id"]),
        (_payment() | {"channel_txn_id": ""}, ["body", "channel_txn_id"]),
        (_payment() | {"channel_txn_id": "x" * 65}, ["body", "channel_txn_id"]),
        ({k: v for k, v in _payment().items() if k != "account_id"}, ["body", "account_id"]),
        (b"[1, 2]", ["body"]),
        (b"{not json", ["body"]),
    ],
)
def test_a_body_that_is_not_strictly_valid_is_refused_and_posts_nothing(
    api: Api, body: dict[str, Any] | bytes, location: list[str]
) -> None:
    refused = api.callback(body)
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert problem["type"] == "urn:headend:problem:unprocessable"
    assert [e["loc"] for e in problem["errors"]] == [location]
    assert api.posted() == (0, 0)


def test_a_key_given_twice_is_refused_whatever_the_signature_covers(api: Api) -> None:
    # signed, so the channel vouches for the bytes; which amount it meant is still not ours to guess
    raw = b'{"channel_txn_id":"WX1","account_id":"A1","amount_fen":1,"amount_fen":99999999,"paid_at":"%s"}' % (
        PAID_AT.encode()
    )
    refused = api.callback(raw)
    assert refused.status_code == 422, refused.text
    assert refused.json()["type"] == "urn:headend:problem:duplicate_key"
    assert "amount_fen" in refused.json()["detail"]
    assert api.posted() == (0, 0)


@pytest.mark.parametrize(
    "target",
    [
        "/v1/channels/%00/payments",
        "/v1/accounts/A%001",
        "/v1/accounts/A1/ledger?book=%00",
        "/v1/commands?account_id=%00",
        "/v1/commands?meter_id=%ED%A0%80",
        "/v1/payments/wechat/%FF%FE",
        "/v1/alarms?meter_id=a%0Ab",
    ],
)
def test_a_target_with_nul_control_characters_or_bad_utf8_is_a_400_before_anything_else(api: Api, target: str) -> None:
    method = "POST" if target.endswith("/payments") and "channels" in target else "GET"
    refused = api.client.request(method, target, headers=api.auth("root"))
    assert refused.status_code == 400, refused.text
    assert refused.json()["type"] == "urn:headend:problem:malformed_request"
    # no credentials needed to be told: the target is refused before authentication
    assert api.client.request(method, target).status_code == 400


@pytest.mark.parametrize(
    ("note", "location"),
    [
        ("storm\u0000checked", ["body", "reason"]),
        ("bell\u0007", ["body", "reason"]),
        ("\ud83d", ["body"]),  # a lone surrogate is not JSON text
    ],
)
def test_free_text_that_the_database_cannot_store_is_refused(api: Api, note: str, location: list[str]) -> None:
    body = json.dumps({"reason": note}).encode()
    refused = api.client.post(
        "/v1/commands/nope/cancel", content=body, headers={**api.auth("ops"), "Content-Type": "application/json"}
    )
    assert refused.status_code == 422, refused.text
    assert [e["loc"] for e in refused.json()["errors"]] == [location]


def test_a_payment_older_than_the_limit_is_refused(database_url: str, api: Api) -> None:
    app = create_app(Settings(database_url=database_url, api_pool_size=2, payment_max_age_days=30))
    now = datetime.now(UTC)
    with TestClient(app) as client:
        late = Api(client, api.db, api.tokens)
        refused = late.callback(_payment("WX-OLD", paid_at=(now - timedelta(days=31)).isoformat()))
        assert refused.status_code == 422, refused.text
        assert refused.json()["type"] == "urn:headend:problem:paid_at_too_old"
        assert api.posted() == (0, 0)
        accepted = late.callback(_payment("WX-RECENT", paid_at=(now - timedelta(days=29)).isoformat()))
        assert accepted.status_code == 201, accepted.text


def test_refused_payments_post_nothing(api: Api) -> None:
    unknown = api.callback(_payment(account_id="A9"))
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["type"] == "urn:headend:problem:unknown_account"
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    ahead = api.callback(_payment(paid_at=future))
    assert ahead.status_code == 422, ahead.text
    assert "future" in ahead.json()["detail"]
    too_big = api.client.post(
        "/v1/channels/wechat/payments", content=b"{" + b" " * 20_000 + b"}", headers={"Content-Type": "text/plain"}
    )
    assert too_big.status_code == 413
    assert api.posted() == (0, 0)


def test_roles_decide_what_a_token_may_do(api: Api) -> None:
    read = api.client.get("/v1/accounts/A1", headers=api.auth("field"))
    assert read.status_code == 200, read.text
    account = read.json()
    assert account["meter_id"] == "m1"
    assert account["tariff_code"] == TARIFF.code
    assert account["policy_code"] == STRICT_POLICY.name
    assert account["supply"] == "connected"
    assert account["pending_command"] is None
    assert (account["balance_fen"], account["emergency_credit_outstanding_fen"], account["debt_fen"]) == (0, 0, 0)

    ledger = api.client.get("/v1/accounts/A1/ledger", headers=api.auth("field"))
    assert ledger.status_code == 403
    assert ledger.json()["type"] == "urn:headend:problem:forbidden"
    counter = api.client.post(
        "/v1/accounts/A1/payments", json={"channel_txn_id": "R1", "amount_fen": 100}, headers=api.auth("field")
    )
    assert counter.status_code == 403
    assert api.client.get("/v1/accounts/A1", headers=api.auth("wechat")).status_code == 403
    assert api.posted() == (0, 0)

    for who in ("ops", "root"):
        assert api.client.get("/v1/accounts/A1/ledger", headers=api.auth(who)).status_code == 200

    missing = api.client.get("/v1/accounts/A1")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    unknown = api.client.get("/v1/accounts/A1", headers={"Authorization": "Bearer not-a-token"})
    assert unknown.status_code == 401
    assert 'error="invalid_token"' in unknown.headers["www-authenticate"]
    basic = api.client.get("/v1/accounts/A1", headers={"Authorization": f"Basic {api.tokens['ops']}"})
    assert basic.status_code == 401

    store.revoke_principal(api.db, "field")
    revoked = api.client.get("/v1/accounts/A1", headers=api.auth("field"))
    assert revoked.status_code == 401
    assert revoked.json()["detail"] == "the bearer token is unknown or revoked"
    assert api.client.get("/v1/accounts/A9", headers=api.auth("ops")).status_code == 404


def test_an_operator_takes_a_counter_payment_once(api: Api) -> None:
    taken = api.client.post(
        "/v1/accounts/A1/payments", json={"channel_txn_id": "R-0001", "amount_fen": 3000}, headers=api.auth("ops")
    )
    assert taken.status_code == 201, taken.text
    assert taken.json()["channel"] == "counter"
    # a retry without paid_at is the same payment, whoever sends it
    again = api.client.post(
        "/v1/accounts/A1/payments", json={"channel_txn_id": "R-0001", "amount_fen": 3000}, headers=api.auth("root")
    )
    assert again.status_code == 200, again.text
    assert again.content == taken.content
    other = api.client.post(
        "/v1/accounts/A2/payments", json={"channel_txn_id": "R-0001", "amount_fen": 3000}, headers=api.auth("ops")
    )
    assert other.status_code == 409
    strict = api.client.post(
        "/v1/accounts/A1/payments",
        json={"channel_txn_id": "R-0002", "amount_fen": 30.5, "account_id": "A1"},
        headers=api.auth("ops"),
    )
    assert strict.status_code == 422
    assert {tuple(e["loc"]) for e in strict.json()["errors"]} == {("body", "amount_fen"), ("body", "account_id")}
    assert api.posted() == (1, 1)
    assert api.db.execute("SELECT received_by FROM payments").fetchone() == ("ops",)


def test_a_channel_reads_its_own_payments_only(api: Api) -> None:
    assert api.callback(_payment("WX/2026/1")).status_code == 201
    assert api.callback(_payment("AP1"), channel="alipay", secret=ALIPAY_SECRET).status_code == 201
    own = api.client.get("/v1/payments/wechat/WX/2026/1", headers=api.auth("wechat"))
    assert own.status_code == 200, own.text
    assert own.json()["received_by"] == "channel:wechat"
    assert own.json()["reversed_at"] is None
    encoded = api.client.get("/v1/payments/wechat/WX%2F2026%2F1", headers=api.auth("wechat"))
    assert encoded.status_code == 200
    assert api.client.get("/v1/payments/alipay/AP1", headers=api.auth("wechat")).status_code == 403
    assert api.client.get("/v1/payments/alipay/AP1", headers=api.auth("alipay")).status_code == 200
    assert api.client.get("/v1/payments/alipay/AP1", headers=api.auth("ops")).status_code == 200
    assert api.client.get("/v1/payments/alipay/AP1", headers=api.auth("field")).status_code == 403
    missing = api.client.get("/v1/payments/wechat/NOPE", headers=api.auth("ops"))
    assert missing.status_code == 404
    assert missing.json()["type"] == "urn:headend:problem:unknown_payment"


def test_the_ledger_pages_newest_first_with_running_balances(api: Api) -> None:
    for i in range(5):
        assert api.callback(_payment(f"WX{i}", amount_fen=100 * (i + 1))).status_code == 201
    seen: list[dict[str, Any]] = []
    before: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({} if before is None else {"before_seq": before})
        page = api.client.get("/v1/accounts/A1/ledger", params=params, headers=api.auth("ops"))
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["ledger_account_id"] == "customer:A1:prepaid"
        assert body["balance_fen"] == 1500
        seen.extend(body["entries"])
        before = body["next_before_seq"]
        if before is None:
            break
    assert [e["posting_id"] for e in seen] == [f"topup:wechat:WX{i}" for i in reversed(range(5))]
    assert [e["balance_after_fen"] for e in seen] == [1500, 1000, 600, 300, 100]
    assert [e["delta_fen"] for e in seen] == [500, 400, 300, 200, 100]
    assert {e["counter_account_id"] for e in seen} == {"cash_in_transit:wechat"}
    debt = api.client.get("/v1/accounts/A1/ledger", params={"book": "debt"}, headers=api.auth("ops"))
    assert debt.json()["entries"] == []
    assert debt.json()["next_before_seq"] is None
    bad = api.client.get("/v1/accounts/A1/ledger", params={"limit": 0}, headers=api.auth("ops"))
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["loc"] == ["query", "limit"]
    assert api.client.get("/v1/accounts/A9/ledger", headers=api.auth("ops")).status_code == 404


def test_health_needs_no_token(api: Api) -> None:
    answer = api.client.get("/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "database": "ok"}


def test_the_openapi_document_lists_every_route_with_its_security_and_errors(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "opaque",
        "description": schemes["bearer"]["description"],
    }
    assert schemes["channelTimestamp"]["in"] == "header"
    assert schemes["channelTimestamp"]["name"] == "X-Headend-Timestamp"
    assert schemes["channelSignature"]["name"] == "X-Headend-Signature"
    operations = {(path, method): op for path, ops in doc["paths"].items() for method, op in ops.items()}
    # routes added later (commands) must meet the same bar: every operation is checked below
    assert set(operations) >= {
        ("/healthz", "get"),
        ("/v1/channels/{channel}/payments", "post"),
        ("/v1/accounts/{account_id}", "get"),
        ("/v1/accounts/{account_id}/ledger", "get"),
        ("/v1/accounts/{account_id}/payments", "post"),
        ("/v1/payments/{channel}/{channel_txn_id}", "get"),
    }
    for key, op in operations.items():
        assert op.get("summary"), key
        assert op.get("tags"), key
        for status, response in op["responses"].items():
            media = "application/problem+json" if status[0] in "45" else "application/json"
            assert response["content"][media]["schema"], (key, status)
        if key[0] == "/healthz":
            assert "security" not in op
            continue
        assert "401" in op["responses"], key
    security = {key: op["security"] for key, op in operations.items() if "security" in op}
    assert security[("/v1/channels/{channel}/payments", "post")] == [{"channelTimestamp": [], "channelSignature": []}]
    for key in security:
        if key[0] != "/v1/channels/{channel}/payments":
            assert security[key] == [{"bearer": []}], key
    callback = operations[("/v1/channels/{channel}/payments", "post")]
    assert set(callback["responses"]) == {"200", "201", "401", "404", "409", "413", "422", "503"}
    body = callback["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChannelPaymentIn"}
    model = doc["components"]["schemas"]["ChannelPaymentIn"]
    assert model["additionalProperties"] is False
    assert model["required"] == ["channel_txn_id", "account_id", "amount_fen", "paid_at"]
    assert model["examples"]
    assert "CounterPaymentIn" in doc["components"]["schemas"]
