"""``GET /metrics``: Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.metrics import render

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
def read_metrics() -> Response:
    """Prometheus metrics of this process (of all workers when PROMETHEUS_MULTIPROC_DIR is set)."""
    body, content_type = render()
    return Response(content=body, media_type=content_type)
