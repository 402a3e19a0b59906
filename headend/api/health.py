"""Liveness for load balancers and orchestrators: the service answers and its database does."""

from __future__ import annotations

from typing import Final

import psycopg
from fastapi import APIRouter
from psycopg_pool import PoolTimeout

from headend.api.db import State
from headend.api.errors import ProblemError, problem_descriptions
from headend.api.schemas import Health

HEALTH_TIMEOUT_S: Final = 2.0

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    summary="Check the service and its database",
    description="No authentication. 200 when a pooled connection answers `SELECT 1` within 2 s.",
    response_model=Health,
    response_description="The service and its database answer.",
    responses=problem_descriptions({503: "The database does not answer."}),
)
def healthz(state: State) -> Health:
    """Whether the database answers."""
    try:
        with state.pool.connection(timeout=HEALTH_TIMEOUT_S) as conn:
            conn.execute("SELECT 1")
    except (PoolTimeout, psycopg.Error) as exc:
        raise ProblemError(503, f"the database does not answer: {type(exc).__name__}", code="unavailable") from None
    return Health(status="ok", database="ok")
