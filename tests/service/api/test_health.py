"""Liveness and readiness."""

from fastapi.testclient import TestClient

from service.api.app import create_app


def test_health_and_ready_on_a_real_database(settings):
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/v1/health").json() == {"status": "ok"}
        r = client.get("/api/v1/ready")
        assert r.status_code == 200
        body = r.json()
        assert body["ready"] is True and body["database"] is True
        assert body["model"] == {"name": "tiny", "version": "1"}
        assert body["provider"] in ("cpu", "cuda")


def test_ready_is_503_when_the_database_is_unreachable(sqlite_settings):
    from service.store.db import create_db_engine

    with TestClient(create_app(sqlite_settings)) as client:
        working = client.app.state.engine
        # A real engine pointing at a port where nothing listens.
        client.app.state.engine = create_db_engine("postgresql+psycopg://postgres@127.0.0.1:9/nowhere",
                                                   connect_args={"connect_timeout": 2})
        try:
            r = client.get("/api/v1/ready")
            assert r.status_code == 503
            body = r.json()
            assert body["ready"] is False and body["database"] is False
            assert body["model"] == {"name": "tiny", "version": "1"}
            assert "database not reachable" in body["error"]["message"]
        finally:
            client.app.state.engine.dispose()
            client.app.state.engine = working
