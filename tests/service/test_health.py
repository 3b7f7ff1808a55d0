from fastapi.testclient import TestClient

from service.app import create_app


def test_health_and_ready_on_a_real_database(settings):
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/v1/health").json() == {"status": "ok"}
        body = client.get("/api/v1/ready").json()
        assert body["database"] is True
