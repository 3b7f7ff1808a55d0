"""The real Redis the tests use (127.0.0.1:6379 unless ``POLLINID_TEST_REDIS_URL`` says otherwise).

CI sets ``POLLINID_TEST_REQUIRE_REDIS=1`` (``.ci/run`` starts Redis), so that an unreachable Redis fails the
run instead of skipping the shared-limit tests; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

REDIS_URL = os.environ.get("POLLINID_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_REDIS = os.environ.get("POLLINID_TEST_REQUIRE_REDIS", "") not in ("", "0", "false")


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def _reachable() -> str | None:
    """None when Redis answers PING, else why not."""
    try:
        with redis_client() as client:
            client.ping()
        return None
    except (redis.RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture
def redis_url() -> str:
    """The test Redis's URL; fails (CI) or skips (elsewhere) when it does not answer."""
    why = _reachable()
    if why is not None:
        if REQUIRE_REDIS:
            pytest.fail(f"Redis is required (POLLINID_TEST_REQUIRE_REDIS) but not reachable at {REDIS_URL}: {why}")
        pytest.skip(f"Redis not reachable at {REDIS_URL} ({why}); CI starts one (.ci/run)")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own (so runs and tests never share counters); its keys go afterwards."""
    prefix = f"pollinid-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    with redis_client() as client:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)


def keys_under(prefix: str) -> dict[str, int]:
    """The keys under ``prefix`` and their time to live in milliseconds (-1: none). In milliseconds because TTL's
    whole seconds round a key with under half a second left down to 0; a key that expires between the scan and
    the read is left out."""
    with redis_client() as client:
        ttls = {key.decode(): int(client.pttl(key)) for key in client.scan_iter(match=f"{prefix}:*", count=1000)}
    return {key: ttl for key, ttl in ttls.items() if ttl != -2}
