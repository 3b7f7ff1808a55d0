"""The web pages (volunteer, specialist, admin), served from the frontend folder with a strict CSP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import Response
from starlette.types import Scope

from service.core.languages import language_names

PAGES = {"/": "index.html", "/expert": "expert.html", "/admin": "admin.html"}

# No external origin is ever needed: pages, scripts, styles and photos all come from the service.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Permissions-Policy": "camera=(self), geolocation=(self), microphone=()",
}


class _StaticWithHeaders(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update({"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
        return response


def mount_docs(app: FastAPI) -> None:
    """OpenAPI docs at ``/docs`` with Swagger UI served from the installed package (works offline)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="pollinid API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css", swagger_favicon_url="data:,")


def mount_pages(app: FastAPI, frontend_dir: Path) -> None:
    """Serve the pages at ``/``, ``/expert``, ``/admin``, their assets at ``/static``, and ``/docs``."""
    mount_docs(app)
    router = APIRouter(include_in_schema=False)

    def _page(filename: str) -> Callable[[], FileResponse]:
        def handler() -> FileResponse:
            return FileResponse(frontend_dir / filename, media_type="text/html",
                                headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})
        return handler

    for path, filename in PAGES.items():
        if (frontend_dir / filename).is_file():
            router.add_api_route(path, _page(filename), methods=["GET"])

    def language_list() -> JSONResponse:
        # The pages' language switch: one entry per catalogue file, so adding a language is adding its file.
        return JSONResponse(language_names(), headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    router.add_api_route("/static/i18n/languages.json", language_list, methods=["GET"])
    app.include_router(router)
    static = frontend_dir / "static"
    if static.is_dir():
        # Gzipped when the browser accepts it: the offline map's data (static/map/) shrinks to about a third.
        app.mount("/static", GZipMiddleware(_StaticWithHeaders(directory=static), minimum_size=1024, compresslevel=6),
                  name="static")
