"""Every route enforces its role: walked from the app itself, so new routes are covered automatically.

For each route and method: without a key 401, with a bad key 401, with a role it does not admit 403, and
with each admitted role neither 401 nor 403 (nor a 5xx). Public routes must be listed in PUBLIC.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute

from service.accounts import ALL_ROLES
from service.settings import Settings
from tests.service.observation_support import Env, make_env

# Routes that need no key: the web pages (they call the API with the user's key), health, metrics, taxa,
# the reference photos (validated observations with a reusable licence, and the bundled set), the vocabulary
# and the API docs. Any other route must declare its roles with require_role(...).
PUBLIC_MODULES = {
    "service.api.routes.pages",
    "service.api.routes.health",
    "service.api.routes.metrics",
    "service.api.routes.taxa",
    "service.api.routes.references",
    "service.api.routes.vocabulary",
    "fastapi.applications",
}
ROLE_USER = {"volunteer": "vol", "expert": "exp", "admin": "admin"}


def _calls(dependant: Any) -> Iterator[Any]:
    for dep in getattr(dependant, "dependencies", []) or []:
        if dep.call is not None:
            yield dep.call
        yield from _calls(dep)


def api_routes(app: Any) -> Iterator[tuple[str, set[str], Any]]:
    """(path, methods, dependant) of every API route, through nested included routers."""
    stack = list(app.routes)
    while stack:
        route = stack.pop(0)
        if isinstance(route, APIRoute):
            yield route.path, set(route.methods), route.dependant
        elif hasattr(route, "effective_route_contexts"):
            for ctx in route.effective_route_contexts():
                if ctx.dependant is not None:
                    yield ctx.path, set(ctx.methods or ()), ctx.dependant


def policy(dependant: Any) -> tuple[str, tuple[str, ...]]:
    for call in _calls(dependant):
        roles = getattr(call, "pollinid_roles", None)
        if roles is not None:
            return "roles", tuple(r.value for r in roles)
        if getattr(call, "pollinid_identify", False):
            return "identify", ()
    return "public", ()


def fill(path: str) -> str:
    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "sha256":
            return "0" * 64
        if name == "kind":
            return "csv"
        if name.endswith("id"):
            return "999999"
        return "x"

    return re.sub(r"\{([^}:]+)(?::[^}]*)?\}", value, path)


@pytest.fixture
def walk_env(sqlite_url: str, tmp_path, models_dir) -> Iterator[Env]:
    settings = Settings(
        data_dir=tmp_path / "data", database_url=sqlite_url, models_dir=models_dir, max_wait_ms=2.0
    )
    yield from make_env(settings)


def test_every_route_for_every_role(walk_env: Env) -> None:
    client = walk_env.client
    checked = 0
    seen_paths = set()
    for path, methods, dependant in api_routes(walk_env.app):
        seen_paths.add(path)
        kind, roles = policy(dependant)
        url = fill(path)
        for method in sorted(methods - {"HEAD", "OPTIONS"}):

            def call(headers: dict[str, str] | None = None, url: str = url, method: str = method) -> Any:
                return client.request(method, url, headers=headers or {})

            if kind == "public":
                module = getattr(dependant.call, "__module__", "")
                assert module in PUBLIC_MODULES, (
                    f"{method} {path} ({module}) declares no role: add "
                    "require_role(...) or make it public in this test"
                )
                r = call()
                assert r.status_code not in (401, 403) and r.status_code < 500, (method, path, r.status_code)
            elif kind == "identify":
                r = call({"Authorization": "Bearer pk_not-a-key"})
                assert r.status_code == 401, (method, path)
            else:
                r = call()
                assert r.status_code == 401, (method, path, r.status_code)
                assert r.json()["error"]["code"] == "unauthorized"
                assert r.headers.get("www-authenticate") == "Bearer"
                r = call({"Authorization": "Bearer pk_not-a-key"})
                assert r.status_code == 401, (method, path)
                r = call({"Authorization": "Basic dXNlcjpwYXNz"})
                assert r.status_code == 401, (method, path)
                for role in ALL_ROLES:
                    r = call(walk_env.h(ROLE_USER[role.value]))
                    if role.value in roles:
                        assert r.status_code not in (401, 403), (method, path, role.value, r.status_code)
                        assert r.status_code < 500, (method, path, role.value, r.status_code, r.text)
                    else:
                        assert r.status_code == 403, (method, path, role.value, r.status_code)
                        assert r.json()["error"]["code"] == "forbidden"
            checked += 1
    # The walk did reach the routes of this issue.
    for p in (
        "/api/v1/observations",
        "/api/v1/observations/{observation_id}",
        "/api/v1/validation/queue",
        "/api/v1/admin/users",
        "/api/v1/media/{sha256}",
        "/api/v1/stats/models",
        "/api/v1/admin/exports/{kind}",
        "/api/v1/observations/{observation_id}/identifications",
    ):
        assert p in seen_paths
    assert checked >= 20


def test_policies_of_key_routes(walk_env: Env) -> None:
    found = {path: policy(dep) for path, _, dep in api_routes(walk_env.app)}
    assert found["/api/v1/validation/queue"] == ("roles", ("expert", "admin"))
    assert found["/api/v1/admin/users"] == ("roles", ("admin",))
    assert found["/api/v1/observations"] == ("roles", ("volunteer", "expert", "admin"))
    assert found["/api/v1/identify"][0] == "identify"


def test_identify_is_public_by_default_and_can_require_a_key(tmp_path, sqlite_url, models_dir) -> None:
    from tests.helpers import photo_bytes

    photo = [("images", ("a.jpg", photo_bytes(), "image/jpeg"))]
    for requires in (False, True):
        settings = Settings(
            data_dir=tmp_path / f"d{requires}",
            database_url=f"{sqlite_url}{int(requires)}",
            models_dir=models_dir,
            identify_requires_key=requires,
            max_wait_ms=2.0,
        )
        for env in make_env(settings, {"vol": "volunteer"}):
            anonymous = env.client.post("/api/v1/identify", files=photo)
            assert anonymous.status_code == (401 if requires else 200)
            assert env.client.post("/api/v1/identify", files=photo, headers=env.h("vol")).status_code == 200
            bad = env.client.post("/api/v1/identify", files=photo, headers={"Authorization": "Bearer nope"})
            assert bad.status_code == 401
