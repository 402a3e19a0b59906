"""The FastAPI application: a connection pool for its lifetime, problem documents for errors, the routers.

To add endpoints, write a module with an `APIRouter` (prefix `/v1/...`, a tag) whose routes depend on
`headend.api.auth.require_roles(...)` and `headend.api.db.Conn`, document their errors with
`headend.api.errors.problem_responses`, and add the router to `ROUTERS` (and its tag to `TAGS`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, Final

from fastapi import APIRouter, FastAPI
from psycopg_pool import ConnectionPool

from headend.api import accounts, channels, collection, commands, health, payments, rereads, switch_tests, switches
from headend.api.db import ApiState, Clock, utc_now
from headend.api.errors import install_handlers, problems_as_problem_json
from headend.api.metrics import install_metrics
from headend.api.request_guard import RefuseMalformedTargets
from headend.api.schemas import BODY_MODELS, REF_PREFIX
from headend.console.mount import install_console
from headend.db.engine import libpq_dsn
from headend.db.readiness import check_schema
from headend.settings import Settings

ROUTERS: Final[tuple[APIRouter, ...]] = (
    health.router,
    channels.router,
    accounts.router,
    payments.router,
    commands.router,
    commands.alarms_router,
    # before commands.meters_router: /v1/meters/search is not a meter id
    switches.meters_router,
    commands.meters_router,
    rereads.router,
    switches.router,
    switch_tests.switches_router,
    switch_tests.router,
    collection.router,
    collection.meters_router,
)
TAGS: Final = [
    {"name": "health", "description": "Liveness; no authentication."},
    {
        "name": "channel callbacks",
        "description": "Payment channels confirm payments here, signing each request with their HMAC secret.",
    },
    {"name": "accounts", "description": "Prepaid accounts: balances, ledger, counter payments."},
    {"name": "payments", "description": "Stored payments by channel transaction."},
    {"name": "commands", "description": "Relay commands (disconnect, reconnect, relay read): history, approval."},
    {"name": "alarms", "description": "Relay alarms: relays not where they should be; resolved after a site visit."},
    {"name": "meters", "description": "Meters' last reported relay positions; find a meter (field staff)."},
    {
        "name": "rereads",
        "description": "Re-reads (补抄): ask meters again for the load points they missed, follow them.",
    },
    {
        "name": "switches",
        "description": "Customers' controlled switches (接控开关): field staff register, correct, retire, import them.",
    },
    {
        "name": "switch tests",
        "description": "The on-site commissioning test of a switch's relay: start it, follow its steps, its result.",
    },
    {
        "name": "collection",
        "description": "Collection success per day and group, first pass and after re-read; the meters not read "
        "(completely) with why; a meter's readings and gaps. JSON or CSV.",
    },
]
DESCRIPTION: Final = """\
The head-end's HTTP API: payment intake from channels (HMAC-signed callbacks, idempotent by channel
transaction id) and at the counter, prepaid accounts and their ledgers.

Authentication: a bearer token (`Authorization: Bearer <token>`, from `headend api-token create`) whose
principal has a role — `operator`, `field_staff`, `viewer` (reads only), `channel` or `admin` (admin may do
everything); channel callbacks are signed instead (`X-Headend-Timestamp`, `X-Headend-Signature`). Money is
integer fen, times are ISO 8601 (answers in UTC). Errors are problem documents (`application/problem+json`:
`type`, `title`, `detail`). See docs/api.md.
"""
POOL_OPEN_TIMEOUT_S: Final = 10.0
POOL_TIMEOUT_S: Final = 10.0


class HeadendApi(FastAPI):
    """FastAPI with the request bodies routes parse themselves in its OpenAPI components."""

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document, built once."""
        if self.openapi_schema is not None:
            return self.openapi_schema
        schema = super().openapi()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, model in BODY_MODELS.items():
            components[name] = model.model_json_schema(ref_template=REF_PREFIX + "{model}")
        problems_as_problem_json(schema)
        _all_schemes_required(schema)
        self.openapi_schema = schema
        return schema


def _all_schemes_required(schema: dict[str, Any]) -> None:
    # FastAPI lists each security dependency as an alternative; a route runs all of them, so all are required
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            requirements = operation.get("security")
            if requirements and len(requirements) > 1:
                operation["security"] = [{name: scopes for r in requirements for name, scopes in r.items()}]


def create_app(settings: Settings, *, clock: Clock = utc_now) -> FastAPI:
    """The API on `settings.database_url` (which must be set), with `clock` as its notion of now."""
    url = settings.database_url
    if not url:
        raise ValueError("the API needs HEADEND_DATABASE_URL (or the embedded server's URL)")
    pool: ConnectionPool[Any] = ConnectionPool(
        libpq_dsn(url),
        kwargs={"autocommit": True},
        min_size=1,
        max_size=settings.api_pool_size,
        open=False,
        check=ConnectionPool.check_connection,
        timeout=POOL_TIMEOUT_S,
        name="headend-api",
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
        try:
            with pool.connection() as conn:
                check_schema(conn)
            yield
        finally:
            pool.close()

    app = HeadendApi(
        title="headend API",
        version="1",
        summary="Prepaid smart-meter head-end: payment intake, accounts, ledger.",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.api = ApiState(
        pool,
        clock,
        timedelta(seconds=settings.dispatch_command_ttl_s),
        timedelta(days=settings.payment_max_age_days),
    )
    app.add_middleware(RefuseMalformedTargets)
    install_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    install_console(app, pool, settings, clock)
    install_metrics(app, settings)  # last: its middleware outermost, counting what the others answer too
    return app
