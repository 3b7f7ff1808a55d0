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

**Counters are kept per process** (fixed windows in memory, bounded in size), not in the database: the
hot path (anonymous ``/identify``) touches no database, and a counter row written on every request would
put a write transaction (on SQLite: the single database write lock) in front of every request, making the
limiter the bottleneck it is meant to prevent. With ``W`` uvicorn workers or replicas a client may get up
to ``W`` times the quota in the worst case (connections are spread over workers by the kernel); set the
quotas per process accordingly, or limit at the reverse proxy for one global figure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.errors import error_body

logger = logging.getLogger(__name__)

EXEMPT_PATHS = frozenset({"/api/v1/health", "/api/v1/ready"})


@dataclass(frozen=True)
class Decision:
    """The outcome of one hit on one quota."""

    policy: str
    quota: int
    window: int
    remaining: int
    reset: int  # seconds until this client's window restarts
    allowed: bool


class FixedWindowCounter:
    """Requests per identity in fixed windows that start at the identity's first request.

    At most ``max_entries`` identities are tracked; past that, expired windows are dropped first, then
    the oldest windows (a forgotten identity starts afresh, which errs on the side of serving).
    """

    def __init__(self, name: str, quota: int, window: int, *, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.quota = int(quota)
        self.window = int(window)
        self.max_entries = max_entries
        self.clock = clock
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()  # ident -> (start, count)

    def hit(self, ident: str) -> Decision:
        """Count one request of ``ident`` and say whether it is within the quota."""
        now = self.clock()
        start, count = self._windows.get(ident, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
            self._windows.pop(ident, None)
        count += 1
        if ident not in self._windows:
            self._make_room(now)
        self._windows[ident] = (start, count)
        reset = max(1, math.ceil(start + self.window - now))
        return Decision(policy=self.name, quota=self.quota, window=self.window,
                        remaining=max(0, self.quota - count), reset=reset, allowed=count <= self.quota)

    def _make_room(self, now: float) -> None:
        if len(self._windows) < self.max_entries:
            return
        expired = [k for k, (start, _) in self._windows.items() if now - start >= self.window]
        for k in expired:
            del self._windows[k]
        while len(self._windows) >= self.max_entries:
            self._windows.popitem(last=False)

    def __len__(self) -> int:
        return len(self._windows)


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
    """

    def __init__(self, app: ASGIApp, *, per_ip: int, per_key: int, window: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.by_ip = FixedWindowCounter("ip", per_ip, window, clock=clock) if per_ip > 0 else None
        self.by_key = FixedWindowCounter("key", per_key, window, clock=clock) if per_key > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (scope["type"] != "http" or not path.startswith("/api/") or path in EXEMPT_PATHS
                or scope.get("method") == "OPTIONS"):
            await self.app(scope, receive, send)
            return
        decisions: list[Decision] = []
        if self.by_ip is not None:
            client = scope.get("client")
            decisions.append(self.by_ip.hit(client[0] if client else "unknown"))
        key = _bearer(scope) if self.by_key is not None else None
        if key is not None and self.by_key is not None:
            decisions.append(self.by_key.hit(hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()))
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
