"""Issue 16, item 10: /metrics behind settings, a cap on the queue items one expert holds, and the last
admin cannot be demoted or deactivated."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings
from tests.service.observation_support import Env, env, make_env  # noqa: F401


@pytest.fixture
def capped(settings: Settings) -> Iterator[Env]:
    """The app on SQLite and PostgreSQL with a cap of 3 leases per expert."""
    yield from make_env(settings.model_copy(update={"queue_max_leases_per_expert": 3}))


def _queue(app_env: Env, who: str, limit: int = 100) -> list[int]:
    r = app_env.client.get("/api/v1/validation/queue", headers=app_env.h(who), params={"limit": limit})
    assert r.status_code == 200, r.text
    return [item["observation"]["id"] for item in r.json()["data"]]


def test_one_expert_holds_at_most_the_cap(capped: Env) -> None:
    env = capped  # noqa: F811
    ids = [env.post_obs().json()["id"] for _ in range(7)]
    first = _queue(env, "exp")
    assert len(first) == 3, first
    assert sorted(_queue(env, "exp")) == sorted(first), "past the cap a claim renews, it takes nothing new"
    others = _queue(env, "exp2")
    assert len(others) == 3 and not set(others) & set(first)
    # Once an item is identified it no longer counts: the expert may take one more.
    assert env.identify("exp", first[0], "agree").status_code == 201
    now = _queue(env, "exp")
    assert len(now) == 3 and first[0] not in now and set(first[1:]) <= set(now)
    assert set(now) <= set(ids)


def test_default_cap_is_finite(sqlite_settings: Settings) -> None:
    assert 1 <= sqlite_settings.queue_max_leases_per_expert <= 50


def test_last_admin_cannot_be_demoted_or_deactivated(env: Env) -> None:  # noqa: F811
    url = f"/api/v1/admin/users/{env.ids['admin']}"
    for change in ({"role": "volunteer"}, {"role": "expert"}, {"active": False}):
        r = env.client.patch(url, headers=env.h("admin"), json=change)
        assert r.status_code == 409, (change, r.text)
        assert r.json()["error"]["code"] == "conflict" and "last" in r.json()["error"]["message"]
    assert env.client.get("/api/v1/users/me", headers=env.h("admin")).json()["role"] == "admin"
    # With a second admin the first may step down; then the second is the last one.
    second = env.client.patch(f"/api/v1/admin/users/{env.ids['exp']}", headers=env.h("admin"),
                              json={"role": "admin"})
    assert second.status_code == 200, second.text
    assert env.client.patch(url, headers=env.h("admin"), json={"role": "expert"}).status_code == 200
    r = env.client.patch(f"/api/v1/admin/users/{env.ids['exp']}", headers=env.h("exp"), json={"active": False})
    assert r.status_code == 409
    # Harmless changes to the last admin still work.
    r = env.client.patch(f"/api/v1/admin/users/{env.ids['exp']}", headers=env.h("exp"), json={"role": "admin"})
    assert r.status_code == 200


def _client(sqlite_settings: Settings, **update: object) -> TestClient:
    return TestClient(create_app(sqlite_settings.model_copy(update=update)))


def test_metrics_can_be_protected_or_turned_off(sqlite_settings: Settings) -> None:
    with _client(sqlite_settings) as c:
        assert c.get("/metrics").status_code == 200  # default: like an exporter, for the private side
    with _client(sqlite_settings, metrics_token="s3cret-metrics-token") as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-metrics-token"}):
            r = c.get("/metrics", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", headers
        r = c.get("/metrics", headers={"Authorization": "Bearer s3cret-metrics-token"})
        assert r.status_code == 200 and "pollinid_http_requests_total" in r.text
    with _client(sqlite_settings, metrics_enabled=False) as c:
        assert c.get("/metrics").status_code == 404
