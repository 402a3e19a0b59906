"""Problem details (RFC 9457) for every error the API returns, and their OpenAPI documentation."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, Final

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
PROBLEM_TYPE_PREFIX: Final = "urn:headend:problem:"
_SLUGS: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "unprocessable",
    503: "unavailable",
}


class FieldError(BaseModel):
    """One reason a request was not valid: where, what, and the validator's code."""

    loc: list[str | int] = Field(description="Path to the offending value: `body`, then field names.")
    msg: str
    type: str = Field(description="Validator error code, e.g. `int_type`, `extra_forbidden`, `timezone_aware`.")


class Problem(BaseModel):
    """An error: a stable type URI, the status's title, and what went wrong in this request."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:headend:problem:unauthorized",
                    "title": "Unauthorized",
                    "detail": "the bearer token is unknown or revoked",
                }
            ]
        }
    )

    type: str = Field(description="`urn:headend:problem:<code>`; the codes are listed in docs/api.md.")
    title: str = Field(description="The HTTP status's reason phrase.")
    detail: str = Field(description="What was wrong with this request, for a human.")
    errors: list[FieldError] | None = Field(default=None, description="Validation failures (422 only).")


class ProblemError(Exception):
    """Raised by routes and dependencies to answer with a problem document; nothing was changed."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[FieldError] = (),
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code or _SLUGS.get(status, "error")
        self.headers = dict(headers or {})
        self.errors = tuple(errors)


def problem_response(problem: ProblemError) -> JSONResponse:
    """The HTTP response of a problem."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + problem.code,
        "title": HTTPStatus(problem.status).phrase,
        "detail": problem.detail,
    }
    if problem.errors:
        body["errors"] = [e.model_dump() for e in problem.errors]
    return JSONResponse(body, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_MEDIA_TYPE)


def field_errors(raw: Sequence[Any], prefix: Sequence[str | int] = ()) -> list[FieldError]:
    """Pydantic's error dicts as FieldErrors (the offending input is left out: it may be long or sensitive)."""
    return [FieldError(loc=[*prefix, *e["loc"]], msg=e["msg"], type=e["type"]) for e in raw]


async def _api_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(exc)


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
    return problem_response(ProblemError(exc.status_code, detail, headers=exc.headers))


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = field_errors(exc.errors())
    detail = "; ".join(f"{'.'.join(str(p) for p in e.loc)}: {e.msg}" for e in errors)
    return problem_response(ProblemError(422, detail or "the request is not valid", errors=errors))


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable for %s %s: %s", request.method, request.url.path, exc)
    return problem_response(
        ProblemError(503, "the database is unavailable or busy; retry later", headers={"Retry-After": "5"})
    )


def install_handlers(app: FastAPI) -> None:
    """Answer every error the API raises with a problem document."""
    app.add_exception_handler(ProblemError, _api_problem)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)


_DEFAULT_DESCRIPTIONS: Final = {
    400: "The request is malformed.",
    401: "No valid credentials: missing, unknown or revoked token (see `WWW-Authenticate`).",
    403: "The credentials are valid but their role may not do this.",
    404: "No such resource.",
    409: "The request conflicts with what is stored.",
    413: "The request body is too large.",
    422: "The request is well-formed but refused; nothing was changed.",
    503: "The database is unavailable or busy; retry later.",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for problem documents of these statuses, with the usual descriptions."""
    return problem_descriptions({status: _DEFAULT_DESCRIPTIONS[status] for status in statuses})


def problem_descriptions(descriptions: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for problem documents, each status with the description given."""
    return {status: {"model": Problem, "description": text} for status, text in descriptions.items()}


def problems_as_problem_json(schema: dict[str, Any]) -> None:
    """Document error responses as the problem documents they are, under application/problem+json."""
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[:1] in "45" and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
                    # FastAPI's own 422 entry names its default body; our handler answers with a problem
                    if content[PROBLEM_MEDIA_TYPE].get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                        content[PROBLEM_MEDIA_TYPE]["schema"] = problem_ref
                        response["description"] = "The request's parameters are not valid."
    schemas = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
