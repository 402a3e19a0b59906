"""Schemathesis against the running API on the real PostgreSQL: any generated request is answered, never with a 5xx."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from headend.api import store
from headend.api.app import create_app
from headend.api.credentials import Role, new_token, signature
from headend.settings import Settings
from tests.integration.conftest import fresh_database, register
from tests.integration.engine_support import open_test_account, seed_catalog

# per route in CI (about a minute in all); HEADEND_FUZZ_EXAMPLES raises it for a longer hunt
EXAMPLES_PER_ROUTE = int(os.environ.get("HEADEND_FUZZ_EXAMPLES", "60"))
SECRET = "wechat-secret-0123456789abcdef0123456789"
ADMIN_TOKEN = new_token()


@pytest.fixture(scope="module")
def module_database_url() -> Iterator[str]:
    """A freshly created and migrated database shared by this module's examples (as the operator role), dropped."""
    with fresh_database() as database:
        yield database.url


@pytest.fixture(scope="module")
def fuzzed(module_database_url: str) -> Iterator[TestClient]:
    """The API on a database with an account, a signing channel and an admin principal."""
    with psycopg.connect(module_database_url, autocommit=True) as conn:
        catalog = seed_catalog(conn)
        register(conn, ["m1"])
        open_test_account(conn, catalog, "A1", "m1")
        store.add_channel(conn, "wechat", SECRET)
        store.create_principal(conn, "root", Role.ADMIN, ADMIN_TOKEN, created_by="test")
    app = create_app(Settings(database_url=module_database_url, api_pool_size=4))
    # a server error is the finding: answered as a 500 response, not raised into the test
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


# valid and invalid requests alike, NUL bytes included
_CONFIG = SchemathesisConfig()
_CONFIG.projects.default.generation.update(modes=list(GenerationMode), allow_x00=True)
# the document is the same for every database: read it from an app that is never started
schema = schemathesis.openapi.from_dict(
    create_app(Settings(database_url="postgresql://nobody@127.0.0.1:1/none")).openapi(), config=_CONFIG
)


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case: Any, fuzzed: TestClient) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    kwargs = case.as_transport_kwargs(headers=headers)
    if "json" in kwargs:
        kwargs["content"] = json.dumps(kwargs.pop("json")).encode()
        kwargs["headers"] = {**kwargs.get("headers", {}), "Content-Type": "application/json"}
    elif isinstance(kwargs.get("data"), bytes | str):
        kwargs["content"] = kwargs.pop("data")
    if case.path.startswith("/v1/channels/"):
        raw = kwargs.get("content", b"")
        raw = raw.encode() if isinstance(raw, str) else raw
        stamp = str(int(time.time()))
        kwargs["headers"] = {
            **kwargs.get("headers", {}),
            "X-Headend-Timestamp": stamp,
            "X-Headend-Signature": signature(SECRET, stamp, raw),
        }
    # no route reads cookies; the client refuses per-request ones
    response = fuzzed.request(**{k: v for k, v in kwargs.items() if k not in {"base_url", "cookies"}})
    assert response.status_code < 500, (
        f"{case.method} {kwargs.get('url')} params={kwargs.get('params')!r} body={kwargs.get('content')!r}"
    )
