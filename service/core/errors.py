"""Domain errors and their mapping to HTTP responses.

Code outside the HTTP layer raises these; :func:`register_exception_handlers` turns each into a JSON
body ``{"error": {"code": ..., "message": ..., "detail": ...}}`` with a fitting status code.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class PollinidError(Exception):
    """Base of every error the service turns into a 4xx/5xx JSON answer."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidImage(PollinidError):
    status_code = 422
    code = "invalid_image"


class UnsupportedMediaType(PollinidError):
    status_code = 415
    code = "unsupported_media_type"


class PayloadTooLarge(PollinidError):
    status_code = 413
    code = "payload_too_large"


class InvalidRequest(PollinidError):
    status_code = 422
    code = "invalid_request"


class NotFound(PollinidError):
    status_code = 404
    code = "not_found"


class Conflict(PollinidError):
    status_code = 409
    code = "conflict"


class Unauthorized(PollinidError):
    status_code = 401
    code = "unauthorized"


class Forbidden(PollinidError):
    status_code = 403
    code = "forbidden"


class ModelUnavailable(PollinidError):
    status_code = 503
    code = "model_unavailable"


class InvalidModel(PollinidError):
    """A model folder that cannot be served (corrupt ONNX, card and graph disagree, ...)."""

    status_code = 422
    code = "invalid_model"


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if detail is not None:
        body["error"]["detail"] = detail
    return body


def register_exception_handlers(app: FastAPI) -> None:
    """Map domain errors, validation errors and HTTP errors to JSON bodies."""

    @app.exception_handler(PollinidError)
    async def _domain(_: Request, exc: PollinidError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
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

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - last resort
        logger.exception("unhandled error")
        return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)
