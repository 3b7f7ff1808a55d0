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

The counting is done by the ``limits`` library (fixed windows that start at an identity's first request)
in the storage named by ``settings.rate_limit_storage``: ``memory://`` (the default) keeps the counters in
the process, bounded in size (:class:`BoundedMemoryStorage`), so that the hot path (anonymous
``/identify``) touches no database and no network; with ``W`` uvicorn workers or replicas a client may then
get up to ``W`` times the quota (connections are spread over workers by the kernel). A shared storage such
as ``redis://host:6379`` gives one count for every process. The counters are never kept in the service's
database: a counter row written on every request would put a write transaction (on SQLite: the single
database write lock) in front of every request, making the limiter the bottleneck it is meant to prevent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_body

logger = logging.getLogger(__name__)

EXEMPT_PATHS = frozenset({"/api/v1/health", "/api/v1/ready"})
MEMORY = "memory://"


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


def make_storage(uri: str = MEMORY, *, max_entries: int = 100_000) -> Storage:
    """The counters' storage for ``uri``: ``memory://`` (bounded, this process) or any ``limits`` storage
    URI (``redis://host:6379``, ...), used through its asyncio implementation."""
    if uri == MEMORY:
        return BoundedMemoryStorage(max_entries=max_entries)
    storage = storage_from_string(uri if uri.startswith("async+") else f"async+{uri}")
    assert isinstance(storage, Storage)
    return storage


class Quota:
    """``quota`` requests per ``window`` seconds for each identity, counted in ``storage`` under ``name``."""

    def __init__(self, name: str, quota: int, window: int, storage: Storage) -> None:
        self.name = name
        self.quota = int(quota)
        self.window = int(window)
        self.item: RateLimitItem = RateLimitItemPerSecond(self.quota, self.window, namespace="pollinid")
        self.limiter = FixedWindowRateLimiter(storage)

    async def hit(self, ident: str) -> Decision:
        """Count one request of ``ident`` and say whether it is within the quota."""
        allowed = await self.limiter.hit(self.item, self.name, ident)
        reset_at, remaining = await self.limiter.get_window_stats(self.item, self.name, ident)
        reset = max(1, math.ceil(reset_at - time.time()))
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
        storage: where the counters are kept (see :func:`make_storage`).
    """

    def __init__(self, app: ASGIApp, *, per_ip: int, per_key: int, window: int, storage: str = MEMORY) -> None:
        self.app = app
        counters = make_storage(storage)
        self.by_ip = Quota("ip", per_ip, window, counters) if per_ip > 0 else None
        self.by_key = Quota("key", per_key, window, counters) if per_key > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
