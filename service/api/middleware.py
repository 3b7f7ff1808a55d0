"""ASGI middleware: a cap on the size of every request body, and on the photo uploads handled at once.

A request whose ``Content-Length`` exceeds the cap is answered 413 at once, before its body is read; a
body streamed without a length is counted as it arrives and refused as soon as it passes the cap.

:class:`UploadLimitMiddleware` lets at most N photo uploads be read and processed at once; the others
wait for a slot without reading their bodies (uvicorn's flow control keeps at most ~64 KiB of each in
memory), and past a deadline get ``503`` with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Iterable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_body

logger = logging.getLogger(__name__)


class BodySizeLimitMiddleware:
    """Refuse request bodies larger than ``max_bytes`` with a 413 JSON error."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    def _message(self, size: int | None = None) -> str:
        got = f" ({size} bytes)" if size is not None else ""
        return f"the request body is too large{got}; the limit is {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: int | None = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
                break
        if length is not None and length > self.max_bytes:
            await _send_json(send, 413, error_body("payload_too_large", self._message(length),
                                                   {"limit_bytes": self.max_bytes}))
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPExceptions met while reading the body; the app's handler turns
                    # it into the JSON error.
                    raise HTTPException(413, detail=self._message())
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


class UploadBudget:
    """Upload slots and bytes in use, shared by the requests of one event loop.

    A request takes one slot and its announced size (``Content-Length``); it waits while either would go
    over the limit (a request alone is always admitted, however large: the body-size cap bounds it).
    """

    def __init__(self, slots: int, max_bytes: int) -> None:
        self.slots = slots
        self.max_bytes = max_bytes
        self.used_slots = 0
        self.used_bytes = 0
        self._changed = asyncio.Condition()

    def _fits(self, size: int) -> bool:
        if self.slots > 0 and self.used_slots >= self.slots:
            return False
        return self.max_bytes <= 0 or self.used_slots == 0 or self.used_bytes + size <= self.max_bytes

    async def acquire(self, size: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._fits(size))
            self.used_slots += 1
            self.used_bytes += size

    async def release(self, size: int) -> None:
        async with self._changed:
            self.used_slots -= 1
            self.used_bytes -= size
            self._changed.notify_all()


class UploadLimitMiddleware:
    """Bound the photo uploads (POST to ``paths``) read and handled at once, per process.

    At most ``limit`` requests, holding together at most ``max_bytes`` announced bytes (``Content-Length``;
    a body without one counts as ``default_size``), are in the application at once. A request over either
    limit waits up to ``wait_seconds`` without reading its body; then the body is read and thrown away (so
    that the client, still sending, can read the answer; at most ``drain_seconds``) and it gets ``503``
    ``{"error": {"code": "busy", ...}}`` with ``Retry-After``.
    """

    def __init__(self, app: ASGIApp, *, paths: Iterable[str], limit: int, wait_seconds: float,
                 max_bytes: int = 0, default_size: int = 0, retry_after: int = 5,
                 drain_seconds: float = 5.0) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.limit = int(limit)
        self.max_bytes = int(max_bytes)
        self.default_size = int(default_size)
        self.wait_seconds = float(wait_seconds)
        self.retry_after = int(retry_after)
        self.drain_seconds = float(drain_seconds)
        self._budget: tuple[asyncio.AbstractEventLoop, UploadBudget] | None = None

    @property
    def budget(self) -> UploadBudget:
        loop = asyncio.get_running_loop()
        if self._budget is None or self._budget[0] is not loop:
            self._budget = (loop, UploadBudget(self.limit, self.max_bytes))
        return self._budget[1]

    def _size(self, scope: Scope) -> int:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    return max(0, int(value))
                except ValueError:
                    break
        return self.default_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if ((self.limit <= 0 and self.max_bytes <= 0) or scope["type"] != "http"
                or scope.get("method") != "POST" or scope.get("path") not in self.paths):
            await self.app(scope, receive, send)
            return
        budget = self.budget
        size = self._size(scope)
        try:
            await asyncio.wait_for(budget.acquire(size), timeout=self.wait_seconds)
        except TimeoutError:
            await self._refuse(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            await budget.release(size)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        budget = self.budget
        logger.warning("refusing %s %s: %d uploads (%d bytes) in progress", scope.get("method"),
                       scope.get("path"), budget.used_slots, budget.used_bytes)
        deadline = time.monotonic() + self.drain_seconds
        try:  # discard what the client is still sending, chunk by chunk (never held)
            while time.monotonic() < deadline:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
        except Exception:  # a timeout, a disconnect, a body over the size cap: answer anyway
            pass
        retry = max(1, math.ceil(self.retry_after))
        body = error_body("busy", f"the service is handling as many uploads as it may; retry in {retry} s",
                          {"retry_after_seconds": retry, "max_concurrent_uploads": self.limit,
                           "max_upload_bytes_in_flight": self.max_bytes})
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()),
                                (b"retry-after", str(retry).encode())]})
        await send({"type": "http.response.body", "body": payload})
