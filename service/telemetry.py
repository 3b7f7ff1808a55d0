"""Prometheus metrics: requests, latencies, errors, batch sizes and the active model.

The metric objects are module-level (Prometheus keeps one registry per process); every app instance
records into them. With several uvicorn workers, set ``PROMETHEUS_MULTIPROC_DIR`` to an empty folder
before the service starts: each worker then writes its samples there and ``/metrics`` aggregates all
workers (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)

REQUESTS = Counter("pollinid_http_requests_total", "HTTP requests by method, route and status code",
                   ["method", "route", "status"])
LATENCY = Histogram("pollinid_http_request_duration_seconds", "HTTP request latency by route",
                    ["method", "route"], buckets=LATENCY_BUCKETS)
ERRORS = Counter("pollinid_http_errors_total", "HTTP responses with status >= 400, by status code and route",
                 ["status", "route"])
BATCH_SIZE = Histogram("pollinid_inference_batch_size", "photos per ONNX Runtime call", buckets=BATCH_BUCKETS)
INFERENCE_SECONDS = Histogram("pollinid_inference_seconds", "duration of one ONNX Runtime call (one batch)",
                              buckets=LATENCY_BUCKETS)
DECODE_SECONDS = Histogram("pollinid_decode_seconds", "decoding and preprocessing of one photo",
                           buckets=LATENCY_BUCKETS)
PHOTOS = Counter("pollinid_identified_photos_total", "photos identified")
OUT_OF_DISTRIBUTION = Counter("pollinid_out_of_distribution_photos_total",
                              "photos whose energy score was below the model's OOD threshold")
MODEL_ACTIVE = Gauge("pollinid_model_active", "1 for the model version this process serves",
                     ["name", "version", "provider"], multiprocess_mode="livemax")
RATE_LIMIT_LOCAL_DECISIONS = Counter(
    "pollinid_rate_limit_local_decisions_total",
    "rate-limit decisions made on this process's counters because the shared Redis failed or was slow")
MODEL_LOADED = Gauge("pollinid_model_loaded", "1 when a model is loaded and identify can answer",
                     multiprocess_mode="livemin")


def record_batch(size: int, seconds: float) -> None:
    """Hook for :class:`service.inference.batching.MicroBatcher`."""
    BATCH_SIZE.observe(size)
    INFERENCE_SECONDS.observe(seconds)


def record_model_swap(old: Any, new: Any) -> None:
    """Hook for :meth:`service.inference.registry.ModelRegistry.on_swap`."""
    if old is not None:
        MODEL_ACTIVE.labels(old.name, old.version, old.provider).set(0)
    if new is not None:
        MODEL_ACTIVE.labels(new.name, new.version, new.provider).set(1)
    MODEL_LOADED.set(1 if new is not None else 0)


def render() -> tuple[bytes, str]:
    """The exposition text (all workers' samples in multiprocess mode) and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def _route_of(scope: Scope) -> str:
    """The matched route's path template (``/api/v1/observations/{id}``), or ``unmatched``."""
    # FastAPI >= 0.130 keeps routers included with a prefix as such; the full template of the matched
    # route is on its "effective route context". Older versions put the full path on the route itself.
    ctx = scope.get("fastapi")
    effective = ctx.get("effective_route_context") if isinstance(ctx, dict) else None
    for candidate in (effective, scope.get("route")):
        path = getattr(candidate, "path_format", None) or getattr(candidate, "path", None)
        if isinstance(path, str) and path:
            return path
    return "unmatched"  # never the raw path: unknown URLs must not create new series


class MetricsMiddleware:
    """Count requests and errors and time them per route template; adds ``X-Process-Time-Ms``.

    The header is written when the response starts, after the handler ran and the body was rendered, so
    it measures the server's whole work except writing to the socket.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                elapsed = (time.perf_counter() - start) * 1000.0
                headers = list(message.get("headers", []))
                headers.append((b"x-process-time-ms", f"{elapsed:.2f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = _route_of(scope)
            method = scope.get("method", "GET")
            REQUESTS.labels(method, route, str(status)).inc()
            LATENCY.labels(method, route).observe(time.perf_counter() - start)
            if status >= 400:
                ERRORS.labels(str(status), route).inc()
