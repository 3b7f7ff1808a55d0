"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.api.errors import errors
from service.store.db import ping

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict[str, str]:
    """Liveness: the process is up."""
    return {"status": "ok"}


@router.get("/ready", responses=errors({503: "not ready: no model loaded or database unreachable"}))
async def ready(request: Request) -> Any:
    """Readiness: a model loaded (name, version, provider) and the database reachable; 503 otherwise."""
    state = request.app.state
    db_ok = await run_in_threadpool(ping, state.engine)
    registry = getattr(state, "registry", None)
    clf = registry.current if registry is not None else None
    batcher = getattr(state, "batcher", None)
    batching_ok = batcher is not None and batcher.running
    is_ready = bool(db_ok and clf is not None and batching_ok)
    body: dict[str, Any] = {
        "ready": is_ready,
        "database": db_ok,
        "model": {"name": clf.name, "version": clf.version} if clf is not None else None,
        "provider": clf.provider if clf is not None else None,
        "batching": batching_ok,
    }
    if not is_ready:
        reasons = []
        if clf is None:
            reasons.append("no model loaded" + (f": {registry.last_error}" if registry and registry.last_error
                                                else ""))
        if not db_ok:
            reasons.append("database not reachable")
        if not batching_ok:
            reasons.append("inference thread not running")
        body["reasons"] = reasons
        body["error"] = {"code": "not_ready", "message": "; ".join(reasons)}
    return JSONResponse(body, status_code=200 if is_ready else 503)
