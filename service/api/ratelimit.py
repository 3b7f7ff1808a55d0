"""Rate limits per client address and per API key, advertised with the IETF ``RateLimit`` header fields.

Every ``/api/`` request (health and readiness excepted) counts against two quotas:

* ``"ip"``: requests per window from one client address (``scope["client"]``; behind a reverse proxy set
  ``POLLINID_TRUSTED_PROXIES=<proxy>`` so that this is the real client; forwarded headers from anyone
  else are ignored, see :func:`service.api.security.trust_forwarded_headers`);
* ``"key"``: requests per window made with one API key (``Authorization: Bearer ...``), counted by a
  digest of the key, before the key is checked (a flood of made-up keys is still held by the IP quota).

Each answer carries the fields of draft-ietf-httpapi-ratelimit-headers (as Pl@ntNet's API does)::

    RateLimit-Policy: "ip";q=1200;w=60, "key";q=600;w=60
    RateLimit: "ip";r=1187;t=42, "key";r=596;t=42

``q`` is the quota, ``w`` the window in seconds, ``r`` what remains and ``t`` the seconds until the
window of this client restarts. Past a quota the answer is ``429`` with ``Retry-After`` and the usual
JSON error (code ``rate_limited``).

The counting is done by the ``limits`` library (fixed windows that start at an identity's first request).
By default (``memory://``) the counters live in the process, bounded in size (:class:`BoundedMemoryStorage`),
so that the hot path (anonymous ``/identify``) touches no database and no network; with ``W`` uvicorn
workers or replicas a client may then get up to ``W`` times the quota (connections are spread over workers
by the kernel). With ``settings.redis_url`` (``POLLINID_REDIS_URL=redis://host:6379/0``) the counters live
in Redis (:class:`SharedCounters`, redis-py's asyncio client), one count for every process and replica,
under ``settings.redis_key_prefix`` so that several deployments can share one Redis. The counters are never
kept in the service's database: a counter row written on every request would put a write transaction (on
SQLite: the single database write lock) in front of every request, making the limiter the bottleneck it is
meant to prevent.

Redis down or slow does not take the service down: each decision waits at most
``settings.redis_timeout_seconds`` for Redis; past it (or on any Redis error) the process counts on its own
in-process counters (the same quotas, per process) and leaves Redis alone for a few seconds before trying
again. The switch is logged (once a minute at most while Redis stays away) and counted in
``pollinid_rate_limit_local_decisions_total``. Rate limiting is the only use of Redis here, so no route
needs it to answer: failing over to local counters keeps ``/identify`` and every other route working.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.storage import storage_from_string
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_body
from service.telemetry import RATE_LIMIT_LOCAL_DECISIONS

logger = logging.getLogger(__name__)

EXEMPT_PATHS = frozenset({"/api/v1/health", "/api/v1/ready"})
MEMORY = "memory://"
REDIS_SCHEMES = ("redis", "rediss", "redis+unix")
# While Redis is away, how long a process counts locally before it tries Redis again, and how often at most
# it says so in the log.
REDIS_RETRY_SECONDS = 5.0
REDIS_WARN_SECONDS = 60.0


@dataclass(frozen=True)
class Decision:
    """The outcome of one hit on one quota."""

    policy: str
    quota: int
    window: int
    remaining: int
    reset: int  # seconds until this client's window restarts
    allowed: bool


class BoundedMemoryStorage(MemoryStorage):
    """``limits``' in-process storage holding at most ``max_entries`` windows.

    Expired windows go first (``limits`` drops them as they expire), then the oldest: a forgotten identity
    starts afresh, which errs on the side of serving. A flood of made-up identities cannot exhaust memory.
    """

    def __init__(self, *, max_entries: int = 100_000) -> None:
        super().__init__()
        self.max_entries = max_entries

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        await self.get(key)  # drops the key's window if it has expired
        if key not in self.expirations:
            while len(self.expirations) >= self.max_entries:  # oldest window first (insertion order)
                await self.clear(next(iter(self.expirations)))
        return await super().incr(key, expiry, amount)

    def __len__(self) -> int:
        return len(self.expirations)


def is_redis_url(uri: str) -> bool:
    """Whether ``uri`` names a Redis server (``redis://``, ``rediss://``, ``redis+unix://``, or ``async+`` of these)."""
    return urlsplit(uri.removeprefix("async+")).scheme in REDIS_SCHEMES


def redacted(uri: str) -> str:
    """``uri`` without its password, for logs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def make_storage(uri: str = MEMORY, *, max_entries: int = 100_000) -> Storage:
    """The counters' storage for ``uri``: ``memory://`` (bounded, this process) or any other ``limits`` storage
    URI, used through its asyncio implementation. Redis URLs go through :class:`SharedCounters`."""
    if uri == MEMORY:
        return BoundedMemoryStorage(max_entries=max_entries)
    storage = storage_from_string(uri if uri.startswith("async+") else f"async+{uri}")
    assert isinstance(storage, Storage)
    return storage


def redis_storage(url: str, *, key_prefix: str, timeout: float) -> Storage:
    """``limits``' asyncio Redis storage on redis-py for ``url``: keys under ``key_prefix``, every connect and
    read bounded by ``timeout`` seconds, and no retry (a failed call falls back at once, see
    :class:`SharedCounters`; redis-py's default would retry three times with seconds of backoff)."""
    uri = url.removeprefix("async+")
    if not is_redis_url(uri):
        raise ValueError(f"not a Redis URL (redis://, rediss:// or redis+unix://): {redacted(uri)}")
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                               "retry": Retry(NoBackoff(), 0), "health_check_interval": 30}
    storage = storage_from_string(f"async+{uri}", implementation="redispy", key_prefix=key_prefix, **options)
    assert isinstance(storage, Storage)
    return storage


class SharedCounters:
    """Counters in Redis, shared by every process and replica, with this process's counters as the fallback.

    Each decision waits at most ``timeout`` seconds for Redis. When Redis fails (refused, unreachable, slower
    than ``timeout``, or an error answer), decisions are made on ``local`` (the same quotas, counted in this
    process) and Redis is left alone for ``retry_seconds``; the first decision after that tries Redis again.
    What was counted locally during an outage is not carried over to Redis.

    redis-py's asyncio connections belong to the event loop that opened them: a new loop (a second
    ``TestClient`` on the same app) gets a new client; :meth:`aclose` closes the current one.
    """

    def __init__(self, url: str, *, key_prefix: str, timeout: float, retry_seconds: float = REDIS_RETRY_SECONDS,
                 local: BoundedMemoryStorage | None = None) -> None:
        self.url, self.key_prefix, self.timeout = url, key_prefix, float(timeout)
        self.retry_seconds = float(retry_seconds)
        self.where = redacted(url)
        self.local = local if local is not None else BoundedMemoryStorage()
        self.local_limiter = FixedWindowRateLimiter(self.local)
        self._storage = redis_storage(url, key_prefix=key_prefix, timeout=self.timeout)  # checks the URL now
        self._limiter = FixedWindowRateLimiter(self._storage)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._down_until = 0.0  # time.monotonic() before which Redis is not tried
        self._down_since: float | None = None
        self._warned_at = -math.inf
        self.errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

    @property
    def up(self) -> bool:
        """False while Redis is being left alone after a failure."""
        return time.monotonic() >= self._down_until

    def limiter(self) -> FixedWindowRateLimiter:
        """The Redis limiter for the running event loop."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                self._storage = redis_storage(self.url, key_prefix=self.key_prefix, timeout=self.timeout)
                self._limiter = FixedWindowRateLimiter(self._storage)
            self._loop = loop
        return self._limiter

    def failed(self, exc: BaseException) -> None:
        """Redis failed: count locally for ``retry_seconds``; say so (at most once a minute)."""
        now = time.monotonic()
        self._down_until = now + self.retry_seconds
        if self._down_since is None:
            self._down_since = now
        if now - self._warned_at >= REDIS_WARN_SECONDS:
            self._warned_at = now
            why = str(exc) or f"no answer within {self.timeout:g} s"
            logger.warning("rate limits: Redis at %s failed (%s: %s); counting in this process until it answers "
                           "(next try in %.0f s)", self.where, type(exc).__name__, why, self.retry_seconds)

    def succeeded(self) -> None:
        if self._down_since is not None:
            logger.warning("rate limits: Redis at %s answers again after %.0f s; counters shared again",
                           self.where, time.monotonic() - self._down_since)
            self._down_since = None
            self._warned_at = -math.inf

    async def aclose(self) -> None:
        """Close this loop's Redis connections (the app's shutdown)."""
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        if client is not None and self._loop is asyncio.get_running_loop():
            with contextlib.suppress(*self.errors):  # closing a dead connection
                await client.aclose()


class Quota:
    """``quota`` requests per ``window`` seconds for each identity, counted under ``name`` in ``storage``: a
    ``limits`` storage (this process) or :class:`SharedCounters` (Redis, falling back to this process)."""

    def __init__(self, name: str, quota: int, window: int, storage: Storage | SharedCounters) -> None:
        self.name = name
        self.quota = int(quota)
        self.window = int(window)
        self.item: RateLimitItem = RateLimitItemPerSecond(self.quota, self.window, namespace="ratelimit")
        self.shared = storage if isinstance(storage, SharedCounters) else None
        self.limiter = storage.local_limiter if isinstance(storage, SharedCounters) else FixedWindowRateLimiter(
            storage)

    async def _count(self, limiter: FixedWindowRateLimiter, ident: str) -> tuple[bool, float, int]:
        allowed = await limiter.hit(self.item, self.name, ident)
        reset_at, remaining = await limiter.get_window_stats(self.item, self.name, ident)
        return allowed, reset_at, remaining

    async def hit(self, ident: str) -> Decision:
        """Count one request of ``ident`` and say whether it is within the quota."""
        shared = self.shared
        counted: tuple[bool, float, int] | None = None
        if shared is not None and shared.up:
            try:
                async with asyncio.timeout(shared.timeout):
                    counted = await self._count(shared.limiter(), ident)
            except shared.errors as exc:
                shared.failed(exc)
            else:
                shared.succeeded()
        if counted is None:
            if shared is not None:
                RATE_LIMIT_LOCAL_DECISIONS.inc()
            counted = await self._count(self.limiter, ident)
        allowed, reset_at, remaining = counted
        # Redis keeps whole seconds of TTL: never say more than the window.
        reset = min(self.window, max(1, math.ceil(reset_at - time.time())))
        return Decision(policy=self.name, quota=self.quota, window=self.window, remaining=remaining,
                        reset=reset, allowed=allowed)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


def policy_header(decisions: list[Decision]) -> str:
    """The ``RateLimit-Policy`` field value for these quotas."""
    return ", ".join(f'"{d.policy}";q={d.quota};w={d.window}' for d in decisions)


def ratelimit_header(decisions: list[Decision]) -> str:
    """The ``RateLimit`` field value (remaining and reset of each quota)."""
    return ", ".join(f'"{d.policy}";r={d.remaining};t={d.reset}' for d in decisions)


class RateLimitMiddleware:
    """Apply the per-address and per-key quotas to ``/api/`` requests and add the RateLimit fields.

    Args:
        app: the wrapped application.
        per_ip: requests per window per client address (0: no address quota).
        per_key: requests per window per API key (0: no key quota).
        window: the window, seconds.
        storage: where the counters are kept (see :func:`make_storage`) when there is no ``redis_url``.
        redis_url: a Redis server for counters shared by every process (:class:`SharedCounters`); a Redis URL
            given as ``storage`` means the same.
        redis_key_prefix: the prefix of every key in Redis.
        redis_timeout: the longest a decision waits for Redis, seconds, before counting locally.
    """

    def __init__(self, app: ASGIApp, *, per_ip: int, per_key: int, window: int, storage: str = MEMORY,
                 redis_url: str | None = None, redis_key_prefix: str = "pollinid", redis_timeout: float = 0.2,
                 redis_retry_seconds: float = REDIS_RETRY_SECONDS) -> None:
        self.app = app
        if redis_url is None and is_redis_url(storage):
            redis_url = storage
        counters: Storage | SharedCounters
        self.shared: SharedCounters | None
        if redis_url:
            counters = self.shared = SharedCounters(redis_url, key_prefix=redis_key_prefix, timeout=redis_timeout,
                                                    retry_seconds=redis_retry_seconds)
        else:
            counters, self.shared = make_storage(storage), None
        self.by_ip = Quota("ip", per_ip, window, counters) if per_ip > 0 else None
        self.by_key = Quota("key", per_key, window, counters) if per_key > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.shared is not None:
            shared = self.shared

            async def close_on_shutdown(message: Message) -> None:
                if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                    await shared.aclose()
                await send(message)

            await self.app(scope, receive, close_on_shutdown)
            return
        path = scope.get("path", "")
        if (scope["type"] != "http" or not path.startswith("/api/") or path in EXEMPT_PATHS
                or scope.get("method") == "OPTIONS"):
            await self.app(scope, receive, send)
            return
        decisions: list[Decision] = []
        if self.by_ip is not None:
            client = scope.get("client")
            decisions.append(await self.by_ip.hit(client[0] if client else "unknown"))
        key = _bearer(scope) if self.by_key is not None else None
        if key is not None and self.by_key is not None:
            decisions.append(await self.by_key.hit(hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()))
        if not decisions:
            await self.app(scope, receive, send)
            return
        fields = [(b"ratelimit-policy", policy_header(decisions).encode()),
                  (b"ratelimit", ratelimit_header(decisions).encode())]
        refused = [d for d in decisions if not d.allowed]
        if refused:
            retry = max(d.reset for d in refused)
            which = " and ".join("address" if d.policy == "ip" else "API key" for d in refused)
            body = json.dumps(error_body(
                "rate_limited", f"too many requests for this {which}; retry in {retry} s",
                {"retry_after_seconds": retry,
                 "policies": [{"policy": d.policy, "quota": d.quota, "window_seconds": d.window}
                              for d in refused]},
            )).encode()
            await send({"type": "http.response.start", "status": 429,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"retry-after", str(retry).encode()), *fields]})
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *fields]
            await send(message)

        await self.app(scope, receive, send_with_fields)
