"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict[str, str]:
    """Liveness: the process is up."""
    return {"status": "ok"}


@router.get("/ready")
def ready(request: Request) -> Any:
    """Readiness: database reachable and a model loaded."""
    from service.db import ping

    db_ok = ping(request.app.state.engine)
    return {"ready": db_ok, "database": db_ok}
