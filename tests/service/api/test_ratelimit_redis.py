"""Shared rate limits on a real Redis: two app instances count together, keys are namespaced and expire; with
Redis down, slow, or back again, the service keeps answering and falls back to (and recovers from) counting
in the process."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from service.api.app import create_app
from service.api.ratelimit import Quota, SharedCounters, redacted
from service.settings import Settings
from tests.helpers import photo_bytes
from tests.service.api.redis_support import keys_under, redis_prefix, redis_url  # noqa: F401 (fixtures)

LIMIT_RE = re.compile(r'"(ip|key)";r=(\d+);t=(\d+)')
LOCAL = "pollinid_rate_limit_local_decisions_total"


def _settings(root: Path, models_dir: Path, **extra: Any) -> Settings:
    """One instance's settings: its own data folder and database (no shared local disk)."""
    root.mkdir(parents=True, exist_ok=True)
    return Settings(data_dir=root / "data", database_url=f"sqlite:///{root / 'db.sqlite3'}", models_dir=models_dir,
                    max_wait_ms=2.0, **extra)


def _remaining(r: Any) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in LIMIT_RE.finditer(r.headers["ratelimit"])}


def _local_decisions() -> float:
    return REGISTRY.get_sample_value(LOCAL) or 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_instances_share_the_quota_in_redis(tmp_path: Path, models_dir: Path, redis_url: str,  # noqa: F811
                                                redis_prefix: str) -> None:  # noqa: F811
    shared = {"redis_url": redis_url, "redis_key_prefix": redis_prefix, "rate_limit_per_ip": 4,
              "rate_limit_per_key": 2, "rate_limit_window_seconds": 2}
    other = f"{redis_prefix}-other"
    before = _local_decisions()
    with (TestClient(create_app(_settings(tmp_path / "a", models_dir, **shared))) as a,
          TestClient(create_app(_settings(tmp_path / "b", models_dir, **shared))) as b,
          TestClient(create_app(_settings(tmp_path / "c", models_dir, **{**shared, "redis_key_prefix": other}))) as c):
        # A client over its address quota on A is limited on B: one count for both instances.
        answers = [a.get("/api/v1/taxa") for _ in range(3)] + [b.get("/api/v1/taxa")]
        assert [r.status_code for r in answers] == [200] * 4
        assert [_remaining(r)["ip"] for r in answers] == [3, 2, 1, 0]
        assert answers[0].headers["ratelimit-policy"] == '"ip";q=4;w=2'
        r = b.get("/api/v1/taxa")
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 2 and _remaining(r)["ip"] == 0
        assert a.get("/api/v1/taxa").status_code == 429
        # Another deployment on the same Redis (another prefix) counts apart.
        assert c.get("/api/v1/taxa").status_code == 200
        keys = keys_under(redis_prefix)
        assert list(keys) == [f"{redis_prefix}:ratelimit/ip/testclient/4/2/second"], keys
        assert all(0 < ttl <= 2000 for ttl in keys.values()), keys  # every counter expires with its window (ms)
        assert keys_under(other) and not set(keys_under(other)) & set(keys)
        # The counters expire: once the window is over the key is gone and both instances serve again.
        deadline = time.monotonic() + 5
        while keys_under(redis_prefix) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert keys_under(redis_prefix) == {}
        r = b.get("/api/v1/taxa")
        assert r.status_code == 200 and _remaining(r)["ip"] == 3

        # The per-key quota is shared too, and Redis holds a digest of the key, never the key.
        bearer = {"Authorization": "Bearer pk_shared_by_two_instances"}
        a.get("/api/v1/taxa", headers=bearer)
        b.get("/api/v1/taxa", headers=bearer)
        r = a.get("/api/v1/taxa", headers=bearer)
        assert r.status_code == 429 and "API key" in r.json()["error"]["message"]
        assert not any("pk_shared" in k for k in keys_under(redis_prefix))
    assert _local_decisions() == before  # every decision was made in Redis


def test_redis_down_falls_back_to_local_limits(tmp_path: Path, models_dir: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://:secret@127.0.0.1:{_free_port()}/0"  # nothing listens there: connections are refused
    settings = _settings(tmp_path, models_dir, redis_url=url, rate_limit_per_ip=3, redis_timeout_seconds=0.2)
    files = [("images", ("a.jpg", photo_bytes(), "image/jpeg"))]
    before = _local_decisions()
    caplog.set_level(logging.WARNING, logger="service.api.ratelimit")
    with TestClient(create_app(settings)) as c:
        answers, latencies = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            answers.append(c.post("/api/v1/identify", files=files))
            latencies.append(time.perf_counter() - t0)
    # /identify keeps working, limited by this process's counters, with the usual fields.
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429], [r.text for r in answers]
    assert [_remaining(r)["ip"] for r in answers] == [2, 1, 0, 0, 0]
    assert answers[3].json()["error"]["code"] == "rate_limited" and "retry-after" in answers[3].headers
    assert max(latencies) < 1.0, latencies
    assert _local_decisions() - before == 5
    # Said once (not once per request), without the password.
    warnings = [rec.getMessage() for rec in caplog.records if "Redis" in rec.getMessage()]
    assert len(warnings) == 1 and "counting in this process" in warnings[0], warnings
    assert "secret" not in warnings[0] and redacted(url) in warnings[0]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on loopback that accepts connections and never answers (a Redis that hangs)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for s in held:
        s.close()
    server.close()


def test_slow_redis_costs_one_timeout_then_counts_locally(tmp_path: Path, models_dir: Path,
                                                           silent_server: int) -> None:
    settings = _settings(tmp_path, models_dir, redis_url=f"redis://127.0.0.1:{silent_server}/0",
                         rate_limit_per_ip=3, redis_timeout_seconds=0.2)
    with TestClient(create_app(settings)) as c:
        latencies, statuses = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            statuses.append(c.get("/api/v1/taxa").status_code)
            latencies.append(time.perf_counter() - t0)
    assert statuses == [200, 200, 200, 429, 429]
    # The first request waits for the timeout (0.2 s), the next ones do not wait for Redis at all.
    assert 0.15 <= latencies[0] < 1.0, latencies
    assert max(latencies[1:]) < 0.15, latencies


def test_settings_name_redis_and_its_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().redis_url is None and Settings().redis_key_prefix == "pollinid"
    monkeypatch.setenv("POLLINID_REDIS_URL", "redis://10.0.0.5:6379/2")
    monkeypatch.setenv("POLLINID_REDIS_KEY_PREFIX", "pollinid-fr")
    monkeypatch.setenv("POLLINID_REDIS_TIMEOUT_SECONDS", "0.5")
    s = Settings()
    assert (s.redis_url, s.redis_key_prefix, s.redis_timeout_seconds) == ("redis://10.0.0.5:6379/2", "pollinid-fr", 0.5)
    monkeypatch.setenv("POLLINID_REDIS_URL", "")
    assert Settings().redis_url is None
    for bad in ("http://10.0.0.5:6379", "10.0.0.5:6379"):
        monkeypatch.setenv("POLLINID_REDIS_URL", bad)
        with pytest.raises(ValueError, match="redis_url"):
            Settings()
    monkeypatch.delenv("POLLINID_REDIS_URL")
    monkeypatch.setenv("POLLINID_REDIS_KEY_PREFIX", "two words")
    with pytest.raises(ValueError):
        Settings()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server program")
def test_counting_moves_back_to_redis_when_it_returns(tmp_path: Path) -> None:
    """Redis absent: local counts; a Redis starts on that port: counts are shared again after the retry delay;
    it stops: local again. A second counter on the same Redis sees only what was counted there."""
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    prefix = "pollinid-test-recovery"  # a Redis of this test's own, gone afterwards

    async def scenario(start: Any, stop: Any) -> None:
        one = SharedCounters(url, key_prefix=prefix, timeout=0.2, retry_seconds=0.3)
        two = SharedCounters(url, key_prefix=prefix, timeout=0.2, retry_seconds=0.3)
        q1, q2 = Quota("ip", 100, 60, one), Quota("ip", 100, 60, two)
        assert (await q1.hit("x")).remaining == 99 and not one.up  # local: Redis is not there
        start()
        await asyncio.sleep(0.35)
        assert one.up
        assert (await q1.hit("x")).remaining == 99  # the first count in Redis (local counts are not carried)
        assert one.up and (await q2.hit("x")).remaining == 98  # the other process sees it
        stop()
        d = await q1.hit("x")
        assert not one.up and d.allowed and d.remaining == 98  # local again: this process's second count
        await one.aclose()
        await two.aclose()

    proc: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        proc.append(subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(tmp_path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop() -> None:
        proc[0].terminate()
        proc[0].wait(10)

    try:
        asyncio.run(scenario(start, stop))
    finally:
        for p in proc:
            if p.poll() is None:
                p.kill()
                p.wait()
