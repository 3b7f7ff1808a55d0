"""Limits: request size, photos per request, body deadline (slow uploads), rate limits with the IETF
RateLimit fields, CORS and security headers."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.api.app import create_app
from service.api.ratelimit import BoundedMemoryStorage, Quota, make_storage
from service.settings import Settings
from service.store.tables import Observation
from tests.hardening.support import LiveService, create_users
from tests.helpers import photo_bytes, write_tiny_model
from tests.service.observation_support import Env, make_env

FORM = {"observed_at": "2024-06-01T10:00:00Z", "latitude": "45", "longitude": "5"}


def _settings(tmp_path: Path, models_dir: Path, **extra: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}",
                    models_dir=models_dir, max_wait_ms=2.0, **extra)


@pytest.fixture
def limited(tmp_path: Path, models_dir: Path) -> Iterator[Env]:
    settings = _settings(tmp_path, models_dir, rate_limit_per_ip=8, rate_limit_per_key=5,
                         rate_limit_window_seconds=60, max_request_bytes=300_000, max_upload_bytes=200_000)
    yield from make_env(settings, {"vol": "volunteer", "vol2": "volunteer"})


def _obs_count(env: Env) -> int:
    with env.session() as s:
        return int(s.scalar(select(func.count()).select_from(Observation)) or 0)


def _media_files(env: Env) -> list[Path]:
    return [p for p in env.settings.media_path.rglob("*") if p.is_file()]


# -- sizes and counts --------------------------------------------------------------------------------


def test_request_and_photo_size_limits_cover_observations(limited: Env) -> None:
    c, h = limited.client, limited.h("vol")
    big = photo_bytes(size=(64, 48)) + b"\0" * 250_000  # a valid JPEG padded over the per-photo limit
    # One photo over the per-photo limit.
    r = c.post("/api/v1/observations", headers=h, data=FORM, files=[("photos", ("a.jpg", big, "image/jpeg"))])
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", r.text
    # Two photos, each under the limit, together over the request limit (refused before the body is read).
    half = photo_bytes() + b"\0" * 160_000
    r = c.post("/api/v1/observations", headers=h, data=FORM,
               files=[("photos", (f"{i}.jpg", half, "image/jpeg")) for i in range(2)])
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", r.text
    # The same for /identify.
    r = c.post("/api/v1/identify", files=[("images", ("a.jpg", big, "image/jpeg"))])
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert _obs_count(limited) == 0 and _media_files(limited) == []


def test_too_many_photos_is_refused_and_writes_nothing(limited: Env) -> None:
    c, h = limited.client, limited.h("vol")
    n = limited.settings.max_images + 1
    r = c.post("/api/v1/observations", headers=h, data=FORM,
               files=[("photos", (f"{i}.jpg", photo_bytes((200, 10 * i, 10)), "image/jpeg"))
                      for i in range(n)])
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_photos", r.text
    r = c.post("/api/v1/identify",
               files=[("images", (f"{i}.jpg", photo_bytes(), "image/jpeg")) for i in range(n)])
    assert r.status_code == 422 and "at most" in r.json()["error"]["message"]
    assert _obs_count(limited) == 0 and _media_files(limited) == []


# -- rate limits ---------------------------------------------------------------------------------------

POLICY_RE = re.compile(r'^"(ip|key)";q=(\d+);w=(\d+)$')
LIMIT_RE = re.compile(r'^"(ip|key)";r=(\d+);t=(\d+)$')


def _fields(value: str, pattern: re.Pattern[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for item in value.split(", "):
        m = pattern.fullmatch(item)
        assert m, value
        out[m[1]] = (int(m[2]), int(m[3]))
    return out


def test_rate_limit_per_key_with_standard_fields(limited: Env) -> None:
    c = limited.client
    seen = []
    for _ in range(5):
        r = c.get("/api/v1/users/me", headers=limited.h("vol"))
        assert r.status_code == 200
        assert _fields(r.headers["ratelimit-policy"], POLICY_RE) == {"ip": (8, 60), "key": (5, 60)}
        seen.append(_fields(r.headers["ratelimit"], LIMIT_RE))
    assert [s["key"][0] for s in seen] == [4, 3, 2, 1, 0]
    assert [s["ip"][0] for s in seen] == [7, 6, 5, 4, 3]
    assert all(0 < s["key"][1] <= 60 for s in seen)
    r = c.get("/api/v1/users/me", headers=limited.h("vol"))
    assert r.status_code == 429
    body = r.json()["error"]
    assert body["code"] == "rate_limited" and "API key" in body["message"]
    assert 0 < int(r.headers["retry-after"]) <= 60
    assert _fields(r.headers["ratelimit"], LIMIT_RE)["key"][0] == 0
    # Another key from the same address still works (until the address quota runs out).
    assert [c.get("/api/v1/users/me", headers=limited.h("vol2")).status_code for _ in range(3)] == [
        200, 200, 429]  # the 429 of the first key counted too: the address has used 8
    # Health and readiness are never limited.
    assert c.get("/api/v1/health").status_code == 200
    assert "ratelimit" not in c.get("/api/v1/health").headers


def test_rate_limit_per_ip_for_anonymous_identify(limited: Env) -> None:
    c = limited.client
    files = [("images", ("a.jpg", photo_bytes(), "image/jpeg"))]
    statuses = [c.post("/api/v1/identify", files=files).status_code for _ in range(9)]
    assert statuses == [200] * 8 + [429]
    r = c.post("/api/v1/identify", files=files)
    assert r.status_code == 429 and "address" in r.json()["error"]["message"]
    assert "ratelimit-policy" in r.headers and "retry-after" in r.headers
    # Made-up keys do not escape the address quota.
    r = c.get("/api/v1/users/me", headers={"Authorization": "Bearer pk_made_up"})
    assert r.status_code == 429


def test_rate_limit_window_restarts() -> None:
    async def run() -> None:
        counter = Quota("ip", 2, 2, make_storage())
        assert [(await counter.hit("a")).allowed for _ in range(3)] == [True, True, False]
        await asyncio.sleep(1.5)
        d = await counter.hit("a")
        assert not d.allowed and d.reset == 1
        await asyncio.sleep(0.6)
        d = await counter.hit("a")
        assert d.allowed and d.remaining == 1 and d.reset == 2
        # Memory stays bounded however many identities come.
        storage = make_storage(max_entries=100)
        small = Quota("ip", 1, 10, storage)
        for i in range(10_000):
            await small.hit(f"client-{i}")
        assert isinstance(storage, BoundedMemoryStorage) and len(storage) <= 100

    asyncio.run(run())


def test_rate_limit_storage_is_a_setting(tmp_path: Path, models_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().rate_limit_storage == "memory://"
    monkeypatch.setenv("POLLINID_RATE_LIMIT_STORAGE", "async+memory://")
    settings = _settings(tmp_path, models_dir, rate_limit_per_ip=2)
    assert settings.rate_limit_storage == "async+memory://"
    assert not isinstance(make_storage(settings.rate_limit_storage), BoundedMemoryStorage)
    with TestClient(create_app(settings)) as c:
        assert [c.get("/api/v1/taxa").status_code for _ in range(3)] == [200, 200, 429]


def test_rate_limit_can_be_disabled(tmp_path: Path, models_dir: Path) -> None:
    settings = _settings(tmp_path, models_dir, rate_limit_enabled=False, rate_limit_per_ip=1)
    with TestClient(create_app(settings)) as c:
        for _ in range(3):
            r = c.get("/api/v1/taxa")
            assert r.status_code == 200 and "ratelimit" not in r.headers
        assert "429" not in c.get("/openapi.json").json()["paths"]["/api/v1/taxa"]["get"]["responses"]


# -- CORS and security headers ---------------------------------------------------------------------------


def test_cors_is_off_by_default_and_configurable(tmp_path: Path, models_dir: Path) -> None:
    origin = "https://pollinators.example.org"
    with TestClient(create_app(_settings(tmp_path / "a", models_dir))) as c:
        r = c.get("/api/v1/taxa", headers={"Origin": origin})
        assert "access-control-allow-origin" not in r.headers
        r = c.options("/api/v1/identify", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in r.headers
    settings = _settings(tmp_path / "b", models_dir, cors_origins=[origin], rate_limit_per_ip=1)
    with TestClient(create_app(settings)) as c:
        r = c.options("/api/v1/identify", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "authorization"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in r.headers
        r = c.get("/api/v1/taxa", headers={"Origin": origin})
        assert r.headers["access-control-allow-origin"] == origin
        assert "ratelimit" in r.headers["access-control-expose-headers"].lower()
        # A 429 still carries CORS headers, so a browser client can read it.
        r = c.get("/api/v1/taxa", headers={"Origin": origin})
        assert r.status_code == 429 and r.headers["access-control-allow-origin"] == origin
        r = c.get("/api/v1/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_cors_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLLINID_CORS_ORIGINS", "https://a.example, https://b.example")
    assert Settings().cors_origins == ["https://a.example", "https://b.example"]
    monkeypatch.delenv("POLLINID_CORS_ORIGINS")
    assert Settings().cors_origins == []


def test_security_headers_on_pages_and_api(limited: Env) -> None:
    c = limited.client
    page = c.get("/")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert "strict-transport-security" not in page.headers  # off unless served over HTTPS
    me = c.get("/api/v1/users/me", headers=limited.h("vol"))
    assert me.headers["cache-control"] == "no-store"
    assert me.headers["x-content-type-options"] == "nosniff"
    for r in (c.get("/api/v1/observations"),  # 401
              c.post("/api/v1/identify", files=[("images", ("a", b"", "image/jpeg"))])):  # 422
        assert r.headers["cache-control"] == "no-store" and r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-type"].startswith("application/json")


def test_hsts_when_configured(tmp_path: Path, models_dir: Path) -> None:
    with TestClient(create_app(_settings(tmp_path, models_dir, hsts_seconds=31536000))) as c:
        for path in ("/", "/api/v1/health"):
            assert c.get(path).headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"


def test_openapi_documents_the_error_model(limited: Env) -> None:
    schema = limited.client.get("/openapi.json").json()
    assert "ErrorResponse" in schema["components"]["schemas"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    op = schema["paths"]["/api/v1/observations"]["post"]["responses"]
    for code in ("401", "403", "408", "413", "415", "422", "429"):
        schema_ref = op[code]["content"]["application/json"]["schema"]
        assert schema_ref == {"$ref": "#/components/schemas/ErrorResponse"}, code
    assert "Retry-After" in op["429"]["headers"]


# -- slow uploads (a real server) ----------------------------------------------------------------------


def test_a_slow_upload_gets_408_and_does_not_hold_the_service(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "models", "tiny", "1")
    url = f"sqlite:///{tmp_path / 'slow.sqlite3'}"
    keys, _ = create_users(url, LiveService.secret, {"vol": "volunteer"})
    service = LiveService(tmp_path / "data", url, tmp_path / "models",
                          env={"POLLINID_BODY_TIMEOUT_SECONDS": "2"})
    with service:
        boundary = "slowloris"
        head = (f"POST /api/v1/observations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {keys['vol']}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n")
        socks = []
        t0 = time.monotonic()
        for _ in range(3):  # three slow clients at once
            s = socket.create_connection(("127.0.0.1", service.port), timeout=15)
            s.sendall(head.encode() + f"--{boundary}\r\n".encode())
            socks.append(s)
        # Meanwhile the service answers others.
        import httpx

        r = httpx.post(f"{service.url}/api/v1/identify",
                       files=[("images", ("a.jpg", photo_bytes(), "image/jpeg"))])
        assert r.status_code == 200
        for s in socks:
            s.sendall(b"Content-Disposition: form-data; name=")  # a trickle, never the whole body
        answers = []
        for s in socks:
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            answers.append(data.decode(errors="replace"))
            s.close()
        elapsed = time.monotonic() - t0
        for a in answers:
            assert a.startswith("HTTP/1.1 408"), a[:200]
            assert '"request_timeout"' in a
        assert elapsed < 12, elapsed
        r = httpx.get(f"{service.url}/api/v1/ready")
        assert r.status_code == 200
