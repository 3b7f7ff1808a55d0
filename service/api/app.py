"""The FastAPI application: ``create_app(settings)`` wires everything in one place.

Heavy resources (database engine, ONNX model, batcher) are created in the lifespan, never at import
time, and kept on ``app.state``; routes reach them through the dependencies in :mod:`service.api.deps`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.api.errors import register_exception_handlers
from service.settings import Settings, get_settings
from service.store.db import create_db_engine, init_db, make_session_factory

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
        from service.inference.identify import start_identification, stop_identification

        await start_identification(app.state, settings)  # registry + active model, batcher, model poller
        # Retrained versions (data folder) are listed next to the releases, with the state read from disk.
        from service.inference.versions import attach_trained_models

        await attach_trained_models(app.state.registry, settings.trained_models_path)
        from service.observations.taxa import install_taxa_sync
        from service.store.objects import StorageUnavailable, media_store
        from service.store.storage import clean_orphans

        install_taxa_sync(app.state)  # taxa of the model cards, now and on every swap
        try:  # photos left by a crashed upload (the local folder or the object store)
            clean_orphans(app.state.sessionmaker, media_store(settings), grace_seconds=settings.orphan_grace_seconds)
        except StorageUnavailable as exc:  # serve anyway: /identify needs no store; the next start cleans
            logger.warning("orphan photos not cleaned at start: %s", exc.message)
        from service.store.housekeeping import start_housekeeping, stop_housekeeping, tune_allocator

        tune_allocator(settings)  # large upload buffers go back to the system when freed
        start_housekeeping(app.state, settings)  # old temporary files, periodically (not only at start)
        try:
            yield
        finally:
            await stop_housekeeping(app.state)
            await stop_identification(app.state)
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

    from service.api.middleware import BodySizeLimitMiddleware, UploadLimitMiddleware
    from service.telemetry import MetricsMiddleware

    # Innermost: a waiting upload has read nothing; an admitted one is still under the size cap and deadline.
    app.add_middleware(UploadLimitMiddleware, paths=("/api/v1/identify", "/api/v1/observations"),
                       limit=settings.max_concurrent_uploads, wait_seconds=settings.upload_queue_seconds,
                       max_bytes=settings.max_upload_bytes_in_flight, default_size=settings.max_request_bytes)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    from service.api.languages import LanguageHeadersMiddleware

    app.add_middleware(LanguageHeadersMiddleware)  # Content-Language / Vary of answers that chose a language
    from service.api.security import install_hardening

    install_hardening(app, settings)  # body deadline, rate limits, security headers, CORS
    app.add_middleware(MetricsMiddleware)  # outermost: times and counts everything, 413s included
    from service.api.security import trust_forwarded_headers

    trust_forwarded_headers(app, settings)  # outermost of all: the client address every layer sees

    from service.api.errors import errors
    from service.api.routes import (
        admin,
        exports,
        health,
        identifications,
        identify,
        jobs,
        media,
        metrics,
        models,
        observations,
        references,
        stats,
        taxa,
        users,
        validation,
        vocabulary,
    )

    app.include_router(health.router, prefix="/api/v1")  # never rate limited
    app.include_router(metrics.router)
    # Every other API route counts against the rate limits (service.api.ratelimit) and may answer 429.
    limited = errors(429) if settings.rate_limit_enabled else None
    for module in (identify, users, admin, observations, identifications, validation, taxa, references, media,
                   stats, exports, jobs, models, vocabulary):
        app.include_router(module.router, prefix="/api/v1", responses=limited)

    # Web pages last, so API routes always win.
    from service.api.routes.pages import mount_pages

    mount_pages(app, settings.frontend_dir)
    return app
