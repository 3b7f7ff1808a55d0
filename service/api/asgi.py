"""ASGI entry point for uvicorn: ``uvicorn service.api.asgi:app`` (settings from the environment)."""

from service.api.app import create_app

app = create_app()
