"""The error answers of every API operation, written into the OpenAPI schema from the routes themselves.

Every error the service gives has one JSON shape, :class:`ErrorResponse`
(``{"error": {"code", "message", "detail"}}``, see :mod:`service.core.errors`). FastAPI documents its own
``HTTPValidationError`` for 422 and nothing else, so a client (or a fuzzer checking conformance) would be
told a lie. :func:`document_errors` rewrites the schema once, when it is first built:

* every 4xx/5xx answer a route declares without a body gets :class:`ErrorResponse`, and FastAPI's 422
  model is replaced by it;
* from each route's dependencies: 401 for routes that take a key (``require_role``, ``/identify``),
  403 for role-restricted ones; 404 for routes with path parameters; 400, 408 and 413 for routes with a
  request body; 429 (with ``Retry-After``) for rate-limited routes;
* :data:`EXTRA_ERRORS` adds the domain answers (409 and the like) that only some routes give.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from service.api.ratelimit import EXEMPT_PATHS


class ErrorDetail(BaseModel):
    """What went wrong: a stable machine-readable code, a message for people, optional details."""

    code: str = Field(description="stable error code, e.g. invalid_image, rate_limited")
    message: str
    detail: Any = None


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}

GENERIC: dict[int, str] = {
    400: "the request body cannot be parsed (e.g. a broken multipart body)",
    401: "no API key, a malformed Authorization header, or an unknown or revoked key",
    403: "the key's role may not do this",
    404: "not found (or not visible to this key)",
    408: "the request body did not arrive in time",
    413: "the request body is over the size limit",
    422: "invalid parameters or body",
    429: "rate limited: retry after Retry-After seconds",
}

# Domain answers that only some operations give: (method, path) -> {status: description}.
EXTRA_ERRORS: dict[tuple[str, str], dict[int, str]] = {
    ("POST", "/api/v1/admin/users"): {409: "a user with this name exists"},
    ("POST", "/api/v1/admin/retrain"): {409: "this model version already exists"},
    ("POST", "/api/v1/admin/jobs/{job_id}/cancel"): {409: "the job has already finished"},
    ("GET", "/api/v1/admin/jobs/{job_id}/download"): {409: "the export job has not succeeded (yet)"},
    ("POST", "/api/v1/admin/models/{version}/activate"): {
        409: "several models have this version: say which with ?name=",
        422: "the version cannot serve (corrupt model, card and graph disagree)",
    },
    ("POST", "/api/v1/observations/{observation_id}/identifications/{identification_id}/withdraw"): {
        409: "the identification is already withdrawn",
    },
    ("DELETE", "/api/v1/validation/queue/{observation_id}/lease"): {
        409: "the observation is not leased to this expert",
    },
    ("PATCH", "/api/v1/admin/users/{user_id}"): {409: "this is the last active admin"},
    ("POST", "/api/v1/identify"): {503: "no model is loaded, or too many uploads are in progress (Retry-After)"},
    ("POST", "/api/v1/observations"): {503: "too many uploads are in progress: retry after Retry-After seconds"},
}


def _calls(dependant: Any) -> Iterator[Any]:
    for dep in getattr(dependant, "dependencies", None) or []:
        if dep.call is not None:
            yield dep.call
        yield from _calls(dep)


def access_policy(dependant: Any) -> str:
    """``"roles"`` (some roles only), ``"all_roles"`` (any key), ``"identify"`` or ``"public"``."""
    from service.accounts import ALL_ROLES

    for call in _calls(dependant):
        roles = getattr(call, "pollinid_roles", None)
        if roles is not None:
            return "all_roles" if set(roles) >= set(ALL_ROLES) else "roles"
        if getattr(call, "pollinid_identify", False):
            return "identify"
    return "public"


def _operations(app: FastAPI) -> Iterator[tuple[str, str, Any]]:
    """(method, path, dependant) of every API route, through included routers."""
    stack = list(app.routes)
    while stack:
        route = stack.pop(0)
        if isinstance(route, APIRoute):
            for method in route.methods or ():
                yield method, route.path, route.dependant
        elif hasattr(route, "effective_route_contexts"):
            for ctx in route.effective_route_contexts():
                if ctx.dependant is not None:
                    for method in ctx.methods or ():
                        yield method, ctx.path, ctx.dependant


def _error_response(description: str, status: int) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}
    if status == 429:
        out["headers"] = {
            "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}},
            "RateLimit": {"description": "remaining quota (draft-ietf-httpapi-ratelimit-headers)",
                          "schema": {"type": "string"}},
            "RateLimit-Policy": {"description": "the quotas", "schema": {"type": "string"}},
        }
    return out


def _patch(schema: dict[str, Any], app: FastAPI, rate_limited: bool) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorDetail, ErrorResponse):
        definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
        definition.pop("$defs", None)
        components[model.__name__] = definition
    policies = {(m, p): access_policy(d) for m, p, d in _operations(app)}
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            key = (method.upper(), path)
            responses: dict[str, Any] = op["responses"]
            wanted: dict[int, str] = {}
            policy = policies.get(key, "public")
            if policy in ("roles", "all_roles", "identify"):
                wanted[401] = GENERIC[401]
            if policy in ("roles", "all_roles"):
                wanted[403] = GENERIC[403]
            if "{" in path:
                wanted[404] = GENERIC[404]
            if "requestBody" in op:
                wanted.update({400: GENERIC[400], 408: GENERIC[408], 413: GENERIC[413]})
            if rate_limited and path.startswith("/api/") and path not in EXEMPT_PATHS:
                wanted[429] = GENERIC[429]
            wanted.update(EXTRA_ERRORS.get(key, {}))
            for code, description in wanted.items():
                responses.setdefault(str(code), {"description": description})
            for status, response in responses.items():
                if not status.isdigit() or int(status) < 400:
                    continue
                content = response.get("content", {}).get("application/json", {})
                ref = content.get("schema", {}).get("$ref", "")
                if not content or ref.endswith("/HTTPValidationError"):
                    merged = _error_response(response.get("description") or GENERIC.get(int(status), "error"),
                                             int(status))
                    if "example" in content:
                        merged["content"]["application/json"]["example"] = copy.deepcopy(content["example"])
                    response.update(merged)
    # FastAPI's own validation models are no longer referenced.
    for name in ("HTTPValidationError", "ValidationError"):
        if name in components and f'"#/components/schemas/{name}"' not in _dumps(schema, skip=name):
            components.pop(name)


def _dumps(schema: dict[str, Any], *, skip: str) -> str:
    import json

    trimmed = {**schema, "components": {**schema.get("components", {}),
                                        "schemas": {k: v for k, v in schema["components"]["schemas"].items()
                                                    if k not in (skip, "HTTPValidationError")}}}
    return json.dumps(trimmed)


def document_errors(app: FastAPI, *, rate_limited: bool) -> None:
    """Make ``app.openapi()`` document every error answer with :class:`ErrorResponse` (see above)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            _patch(schema, app, rate_limited)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
