"""The OpenAPI document tells the truth about errors: each route declares its error answers (service.api.errors),
and they all have the one JSON error body."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from service.accounts import ALL_ROLES
from service.api.app import create_app
from service.api.ratelimit import EXEMPT_PATHS
from service.settings import Settings

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in schema["paths"].items() for method, op in item.items()]


def _policies(app: Any) -> dict[tuple[str, str], str]:
    """(method, path) -> "roles", "all_roles", "identify" or "public", from each route's dependencies."""

    def calls(dependant: Any) -> Any:
        for dep in dependant.dependencies:
            if dep.call is not None:
                yield dep.call
            yield from calls(dep)

    def contexts() -> Any:  # (methods, path, dependant) of every route, through included routers
        for route in app.routes:
            if hasattr(route, "effective_route_contexts"):
                for ctx in route.effective_route_contexts():
                    yield ctx.methods or (), ctx.path, ctx.dependant
            elif getattr(route, "dependant", None) is not None:
                yield route.methods or (), route.path, route.dependant

    out = {}
    for methods, path, dependant in contexts():
        if dependant is None:
            continue
        policy = "public"
        for call in calls(dependant):
            roles = getattr(call, "pollinid_roles", None)
            if roles is not None:
                policy = "all_roles" if set(roles) >= set(ALL_ROLES) else "roles"
                break
            if getattr(call, "pollinid_identify", False):
                policy = "identify"
                break
        for method in methods:
            out[(method, path)] = policy
    return out


def test_every_route_documents_its_errors_with_the_error_body(settings: Settings) -> None:
    app = create_app(settings)
    with TestClient(app) as client:
        schema = client.get("/openapi.json").json()
    policies = _policies(app)
    assert policies[("GET", "/api/v1/users/me")] == "all_roles"
    assert policies[("POST", "/api/v1/admin/users")] == "roles"
    assert policies[("POST", "/api/v1/identify")] == "identify"
    assert policies[("GET", "/api/v1/taxa")] == "public"
    operations = _operations(schema)
    assert len(operations) > 30
    for method, path, op in operations:
        responses = op["responses"]
        where = f"{method} {path}"
        for status, response in responses.items():
            if status.isdigit() and int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == ERROR_REF, (where, status)
        policy = policies[(method, path)]
        if policy != "public":
            assert "401" in responses, where
        if policy in ("roles", "all_roles"):
            assert "403" in responses, where
        if "{" in path:
            assert "404" in responses, where
        if "requestBody" in op:
            assert {"400", "408", "413", "422"} <= set(responses), where
        if op.get("parameters"):
            assert "422" in responses, where
        if path not in EXEMPT_PATHS:
            assert "429" in responses and "Retry-After" in responses["429"]["headers"], where
    assert "HTTPValidationError" not in schema["components"]["schemas"]
