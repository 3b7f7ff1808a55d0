"""A database that stops answering: 503 ``database_unavailable`` with ``Retry-After``, never a 500; the service
answers again as soon as the database is back, and anonymous ``/identify`` keeps working meanwhile."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.settings import Settings
from tests.conftest import POSTGRES_ADMIN_URL
from tests.helpers import photo_bytes
from tests.service.observation_support import RED, Env, make_env

pytestmark = pytest.mark.postgres


def _allow_connections(url: str, allowed: bool) -> None:
    name = make_url(url).database
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}'))
            if not allowed:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})
    finally:
        admin.dispose()


@pytest.fixture
def pg_env(tmp_path: Path, postgres_url: str, models_dir: Path) -> Iterator[Env]:
    settings = Settings(data_dir=tmp_path / "data", database_url=postgres_url, models_dir=models_dir,
                        max_wait_ms=2.0)
    yield from make_env(settings)


def test_database_down_answers_503_and_recovers(pg_env: Env, postgres_url: str) -> None:
    env = pg_env
    assert env.post_obs().status_code == 201
    _allow_connections(postgres_url, False)
    try:
        for method, path, kwargs in [
            ("GET", "/api/v1/observations", {}),
            ("GET", "/api/v1/observations/1", {}),
            ("GET", "/api/v1/admin/jobs", {"who": "admin"}),
        ]:
            who = kwargs.get("who", "vol")
            r = env.client.request(method, path, headers=env.h(who))
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert r.json()["error"]["code"] == "database_unavailable"
            assert int(r.headers["Retry-After"]) > 0
        r = env.post_obs()
        assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text
        assert env.client.get("/api/v1/ready").status_code == 503
        r = env.client.post("/api/v1/identify", files=[("photos", ("p.jpg", photo_bytes(RED), "image/jpeg"))])
        assert r.status_code == 200, r.text
    finally:
        _allow_connections(postgres_url, True)
    # Back: the pool's dead connections are replaced, nothing of the refused upload was stored.
    r = env.client.get("/api/v1/observations", headers=env.h("vol"))
    assert r.status_code == 200, r.text
    assert r.json()["count"] == 1
    assert env.post_obs().status_code == 201
