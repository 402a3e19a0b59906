"""What every request shares: the connection pool, the clock and the tariff catalog; a connection per request."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, cast

import psycopg
from fastapi import Depends, Request
from psycopg_pool import ConnectionPool

from headend.engine.catalog import Catalog

Connection = psycopg.Connection[Any]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


@dataclass(slots=True)
class ApiState:
    """The application's shared state, kept on `app.state.api`."""

    pool: ConnectionPool[Any]
    clock: Clock = utc_now
    command_ttl: timedelta = timedelta(minutes=10)  # how long a relay read requested here may be executed
    payment_max_age: timedelta = timedelta(days=30)  # older new payments are refused (HEADEND_PAYMENT_MAX_AGE_DAYS)
    # a Catalog caches parsed tariffs and mutates itself on refresh: one per worker thread, never shared
    _catalogs: threading.local = field(default_factory=threading.local)

    def catalog(self) -> Catalog:
        """This thread's catalog of tariffs and policies (refreshed by each engine operation)."""
        catalog = getattr(self._catalogs, "catalog", None)
        if catalog is None:
            catalog = self._catalogs.catalog = Catalog()
        return cast(Catalog, catalog)


def api_state(request: Request) -> ApiState:
    """The application's shared state."""
    return cast(ApiState, request.app.state.api)


def connection(request: Request) -> Iterator[Connection]:
    """A pooled autocommit connection for the request (transactions are explicit), returned afterwards."""
    with api_state(request).pool.connection() as conn:
        yield conn


State = Annotated[ApiState, Depends(api_state)]
Conn = Annotated[Connection, Depends(connection)]
