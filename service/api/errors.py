"""Error answers: one JSON body for every error, the handlers that write it, and its OpenAPI documentation.

Every error the service gives has one shape, :class:`ErrorResponse`
(``{"error": {"code", "message", "detail"}}``). :func:`register_exception_handlers` turns the domain
errors (:mod:`service.core.errors`), validation errors and HTTP errors into it.

Each router and route declares the error answers it may give with :func:`errors`, e.g.
``APIRouter(..., responses=errors(401, 403))`` and ``@router.get("/{id}", responses=errors(404, 422))``;
a route-specific description is given as a mapping: ``errors(404, {409: "the job has already finished"})``.
A route with parameters or a body declares 422, so that FastAPI's own ``HTTPValidationError`` (a shape
the service never answers with) is not documented.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.errors import PollinidError

logger = logging.getLogger(__name__)

DATABASE_RETRY_AFTER_SECONDS = 5


class ErrorDetail(BaseModel):
    """What went wrong: a stable machine-readable code, a message for people, optional details."""

    code: str = Field(description="stable error code, e.g. invalid_image, rate_limited")
    message: str
    detail: Any = None


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if detail is not None:
        body["error"]["detail"] = detail
    return body


# -- OpenAPI: the error answers of routes ------------------------------------------------------------------

DESCRIPTIONS: dict[int, str] = {
    400: "the request body cannot be parsed (e.g. a broken multipart body)",
    401: "no API key, a malformed Authorization header, or an unknown or revoked key",
    403: "the key's role may not do this",
    404: "not found (or not visible to this key)",
    408: "the request body did not arrive in time",
    413: "the request body is over the size limit",
    422: "invalid parameters or body",
    429: "rate limited: retry after Retry-After seconds",
    503: "the service cannot answer now",
}
RATE_LIMIT_HEADERS: dict[str, Any] = {
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}},
    "RateLimit": {"description": "remaining quota (draft-ietf-httpapi-ratelimit-headers)",
                  "schema": {"type": "string"}},
    "RateLimit-Policy": {"description": "the quotas", "schema": {"type": "string"}},
}
# What any route with a request body may answer besides its own errors: unparsable, too slow, too large.
BODY_ERRORS: tuple[int, ...] = (400, 408, 413, 422)


def errors(*statuses: int | Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route or router for these error statuses, each with :class:`ErrorResponse`.

    A status alone gets the generic description (:data:`DESCRIPTIONS`); a mapping ``{status: description}``
    says what this route means by it. 429 also documents the rate-limit headers.
    """
    wanted: dict[int, str] = {}
    for item in statuses:
        if isinstance(item, Mapping):
            wanted.update(item)
        else:
            wanted[item] = DESCRIPTIONS[item]
    out: dict[int | str, dict[str, Any]] = {}
    for status, description in wanted.items():
        out[status] = {"model": ErrorResponse, "description": description}
        if status == 429:
            out[status]["headers"] = RATE_LIMIT_HEADERS
    return out


# -- handlers ----------------------------------------------------------------------------------------------


def register_exception_handlers(app: FastAPI) -> None:
    """Map domain errors, validation errors and HTTP errors to JSON bodies."""

    @app.exception_handler(PollinidError)
    async def _domain(_: Request, exc: PollinidError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        retry_after = getattr(exc, "retry_after", None)  # a 503 that says when to come back
        if retry_after is not None:
            headers = {**(headers or {}), "Retry-After": str(int(retry_after))}
        return JSONResponse(error_body(exc.code, exc.message, exc.detail), status_code=exc.status_code,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            errors.append({"field": loc, "message": err.get("msg", "invalid"), "type": err.get("type")})
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return JSONResponse(error_body("invalid_request", f"invalid request: {summary}", errors),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden",
                408: "request_timeout", 413: "payload_too_large", 429: "rate_limited"}.get(exc.status_code,
                                                                                         "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse(error_body(code, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def _out_of_range(_: Request, exc: Exception) -> JSONResponse:
        # A number too large for the database (an id of 2**70: SQLite raises OverflowError, PostgreSQL a
        # DataError for out-of-range values): the request is at fault, not the service.
        logger.info("request value out of range for the database: %s", exc)
        return JSONResponse(error_body("invalid_request", "a value in the request is out of range"),
                            status_code=422)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeout)
    async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        # The database cannot be reached, dropped the connection, or is busy past its timeout: the service
        # cannot answer now, the request is not at fault. Nothing was committed (the session rolls back).
        logger.warning("database unavailable: %s", str(exc).splitlines()[0][:300])
        return JSONResponse(error_body("database_unavailable", "the database is unavailable; try again shortly"),
                            status_code=503, headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)})

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - last resort
        logger.exception("unhandled error")
        return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)
