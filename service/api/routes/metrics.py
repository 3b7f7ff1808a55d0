"""``GET /metrics``: Prometheus exposition (``settings.metrics_enabled``, ``settings.metrics_token``)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from service.core.errors import NotFound, Unauthorized
from service.telemetry import render

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
def read_metrics(request: Request) -> Response:
    """Prometheus metrics of this process (of all workers when PROMETHEUS_MULTIPROC_DIR is set)."""
    settings = request.app.state.settings
    if not settings.metrics_enabled:
        raise NotFound("not found")
    if settings.metrics_token:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 settings.metrics_token.encode()):
            raise Unauthorized("the metrics need the metrics token: Authorization: Bearer <token>")
    body, content_type = render()
    return Response(content=body, media_type=content_type)
