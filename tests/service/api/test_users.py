"""Users, roles and API keys: CLI and admin REST; keys shown once, stored as HMAC, revocable."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from sqlalchemy import select

from service.cli.main import main
from service.settings import Settings, get_settings
from service.store.tables import ApiKey, User
from tests.service.observation_support import Env, env  # noqa: F401


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("POLLINID_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("POLLINID_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("POLLINID_SECRET_KEY", settings.secret_key)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_cli_creates_a_user_whose_key_works_and_is_stored_as_hmac(cli_env: Settings, capsys) -> None:
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    assert main(["users", "create", "--name", "Ada", "--role", "expert"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("pk_") and len(key) > 40
    app = create_app(cli_env)
    with TestClient(app) as client:
        me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {key}"})
        assert me.status_code == 200 and me.json()["name"] == "Ada" and me.json()["role"] == "expert"
        with app.state.sessionmaker() as session:
            row = session.scalar(select(ApiKey))
            expected = hmac.new(cli_env.secret_key.encode(), key.encode(), hashlib.sha256).hexdigest()
            assert row.key_hash == expected and key not in row.key_hash
        # The key only works with the same server secret.
        other = cli_env.model_copy(update={"secret_key": "another-secret"})
        with TestClient(create_app(other)) as c2:
            assert c2.get("/api/v1/users/me", headers={"Authorization": f"Bearer {key}"}).status_code == 401

        assert main(["users", "list"]) == 0
        assert "Ada" in capsys.readouterr().out
        assert main(["users", "revoke", "--name", "Ada"]) == 0
        assert client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_cli_refuses_duplicate_names(cli_env: Settings, capsys) -> None:
    assert main(["users", "create", "--name", "Bo", "--role", "volunteer"]) == 0
    assert main(["users", "create", "--name", "Bo", "--role", "volunteer"]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["users", "create", "--name", "Cy", "--role", "king"])


def test_admin_manages_users_and_keys_over_rest(env: Env) -> None:  # noqa: F811
    c = env.client
    r = c.post("/api/v1/admin/users", headers=env.h("admin"), json={"name": "Dee", "role": "volunteer"})
    assert r.status_code == 201, r.text
    body = r.json()
    first_key, user_id = body["key"], body["id"]
    assert body["keys"][0]["prefix"] == first_key[:10]
    listed = c.get("/api/v1/admin/users", headers=env.h("admin")).json()
    assert listed["count"] == len(env.keys) + 1
    assert all("key" not in u and all("key" not in k for k in u["keys"]) for u in listed["data"])
    assert first_key not in str(listed)

    r = c.post(f"/api/v1/admin/users/{user_id}/keys", headers=env.h("admin"))
    assert r.status_code == 201
    second_key, second_id = r.json()["key"], r.json()["id"]
    for k in (first_key, second_key):
        assert c.get("/api/v1/users/me", headers={"Authorization": f"Bearer {k}"}).json()["id"] == user_id

    r = c.post(f"/api/v1/admin/users/{user_id}/keys/{second_id}/revoke", headers=env.h("admin"))
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert c.get("/api/v1/users/me", headers={"Authorization": f"Bearer {second_key}"}).status_code == 401
    assert c.get("/api/v1/users/me", headers={"Authorization": f"Bearer {first_key}"}).status_code == 200

    # Promote, then deactivate.
    r = c.patch(f"/api/v1/admin/users/{user_id}", headers=env.h("admin"), json={"role": "expert"})
    assert r.json()["role"] == "expert"
    assert (
        c.get("/api/v1/validation/queue", headers={"Authorization": f"Bearer {first_key}"}).status_code == 200
    )
    c.patch(f"/api/v1/admin/users/{user_id}", headers=env.h("admin"), json={"active": False})
    assert c.get("/api/v1/users/me", headers={"Authorization": f"Bearer {first_key}"}).status_code == 401


def test_admin_user_errors_are_clear(env: Env) -> None:  # noqa: F811
    c = env.client
    dup = c.post("/api/v1/admin/users", headers=env.h("admin"), json={"name": "vol", "role": "volunteer"})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "conflict"
    bad = c.post("/api/v1/admin/users", headers=env.h("admin"), json={"name": "x", "role": "king"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    missing = c.post("/api/v1/admin/users/999/keys/1/revoke", headers=env.h("admin"))
    assert missing.status_code == 404
    # Another user's key id under the wrong user is not found either.
    with env.session() as s:
        vol_key = s.scalar(select(ApiKey).join(User).where(User.name == "vol"))
    wrong = c.post(f"/api/v1/admin/users/{env.ids['exp']}/keys/{vol_key.id}/revoke", headers=env.h("admin"))
    assert wrong.status_code == 404
    assert c.get("/api/v1/users/me", headers=env.h("vol")).status_code == 200
    forbidden = c.post("/api/v1/admin/users", headers=env.h("exp"), json={"name": "z", "role": "admin"})
    assert forbidden.status_code == 403
