"""HTTP hardening: security headers, a deadline on request bodies, CORS and the rate limits, wired once.

:func:`install_hardening` adds, from the outside in:

* **CORS** for the origins in ``settings.cors_origins`` only (default none: the pages are same-origin);
  bearer keys, no cookies, so credentials are never allowed; the rate-limit fields are exposed.
* **Security headers** on every answer: ``X-Content-Type-Options: nosniff``; on ``/api/`` answers also
  ``Cache-Control: no-store`` (unless the route chose its own caching, as media does), ``Referrer-Policy``
  and ``X-Frame-Options``; ``Strict-Transport-Security`` when ``settings.hsts_seconds`` is set (only
  when the service is reached over HTTPS). The pages carry their own CSP (:mod:`service.api.routes.pages`).
* **Rate limits** (:mod:`service.api.ratelimit`), unless ``settings.rate_limit_enabled`` is off.
* **A body deadline**: a request body must arrive within ``settings.body_timeout_seconds`` of the first
  read, else ``408`` (a slow-loris upload cannot hold a request open forever). uvicorn closes idle
  keep-alive connections after ``--timeout-keep-alive`` seconds (default 5); slow *headers* are the
  reverse proxy's job (nginx ``client_header_timeout``). See docs/hardening.md.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.ratelimit import RateLimitMiddleware
from service.settings import Settings

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"


class SecurityHeadersMiddleware:
    """Add the security headers (see the module docstring) to every HTTP answer that lacks them."""

    def __init__(self, app: ASGIApp, *, hsts_seconds: int = 0) -> None:
        self.app = app
        self.hsts = f"max-age={int(hsts_seconds)}; includeSubDomains".encode() if hsts_seconds > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_api = scope.get("path", "").startswith(API_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra: list[tuple[bytes, bytes]] = [(b"x-content-type-options", b"nosniff")]
                if self.hsts is not None:
                    extra.append((b"strict-transport-security", self.hsts))
                if is_api:
                    # API answers are per caller (keys, private observations): never stored by a cache
                    # unless the route said otherwise (media: private, immutable).
                    extra += [(b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer"),
                              (b"x-frame-options", b"DENY")]
                headers += [(k, v) for k, v in extra if k not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyTimeoutMiddleware:
    """Answer ``408`` when a request body has not fully arrived ``timeout`` seconds after the first read."""

    def __init__(self, app: ASGIApp, *, timeout: float) -> None:
        self.app = app
        self.timeout = float(timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        complete = False
        timeout = self.timeout

        async def timed_receive() -> Message:
            nonlocal deadline, complete
            if complete:  # after the body only a disconnect can come: wait for it as long as needed
                return await receive()
            if deadline is None:
                deadline = loop.time() + timeout
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - loop.time()))
            except TimeoutError:
                logger.info("request body of %s %s not received within %.0f s", scope.get("method"),
                            scope.get("path"), timeout)
                # FastAPI re-raises HTTPExceptions met while reading the body; the app's handler turns it
                # into the JSON error.
                raise HTTPException(408, detail=f"the request body did not arrive within {timeout:g} s"
                                    ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, timed_receive, send)


def trust_forwarded_headers(app: FastAPI, settings: Settings) -> None:
    """Believe ``X-Forwarded-For``/``-Proto`` only from ``settings.trusted_proxies`` (none by default).

    uvicorn's own proxy-header handling trusts loopback by default; ``pollinid serve`` turns it off and this
    middleware, added last (outermost), does the job with the configured addresses only. Run bare uvicorn
    with ``--no-proxy-headers`` for the same guarantee.
    """
    if settings.trusted_proxies:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.trusted_proxies))


def install_hardening(app: FastAPI, settings: Settings) -> None:
    """Add the body deadline, rate limits, security headers and CORS middleware to ``app``.

    Call it after the body-size middleware and before the metrics middleware, so that the order from the
    outside in is: metrics, CORS, security headers, rate limits, body deadline, body size, routes (CORS
    and security headers then also reach 429, 413 and 408 answers).
    """
    app.add_middleware(BodyTimeoutMiddleware, timeout=settings.body_timeout_seconds)
    if settings.rate_limit_enabled and (settings.rate_limit_per_ip > 0 or settings.rate_limit_per_key > 0):
        app.add_middleware(RateLimitMiddleware, per_ip=settings.rate_limit_per_ip,
                           per_key=settings.rate_limit_per_key, window=settings.rate_limit_window_seconds,
                           storage=settings.rate_limit_storage, redis_url=settings.redis_url,
                           redis_key_prefix=settings.redis_key_prefix, redis_timeout=settings.redis_timeout_seconds)
    app.add_middleware(SecurityHeadersMiddleware, hsts_seconds=settings.hsts_seconds)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["RateLimit", "RateLimit-Policy", "Retry-After", "Idempotent-Replayed"],
            allow_credentials=False,
            max_age=600,
        )
