"""The FastAPI application: ``create_app(settings)`` wires everything in one place.

Heavy resources (database engine, ONNX model, batcher) are created in the lifespan, never at import
time, and kept on ``app.state``; routes reach them through the dependencies in :mod:`service.deps`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.db import create_db_engine, init_db, make_session_factory
from service.errors import register_exception_handlers
from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.media_path.mkdir(parents=True, exist_ok=True)
        engine = create_db_engine(settings.resolved_database_url)
        init_db(engine)
        app.state.engine = engine
        app.state.sessionmaker = make_session_factory(engine)
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(
        title="pollinid",
        version=__version__,
        description="Identify pollinating insects from photos; record, validate and learn from observations.",
        lifespan=lifespan,
        docs_url=None,  # served from local assets by mount_pages: no CDN
        redoc_url=None,
    )
    app.state.settings = settings
    register_exception_handlers(app)

    from service.routes import health

    app.include_router(health.router, prefix="/api/v1")

    # Web pages last, so API routes always win.
    from service.routes.pages import mount_pages

    mount_pages(app, settings.frontend_dir)
    return app
