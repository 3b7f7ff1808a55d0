"""ASGI entry point for uvicorn: ``uvicorn service.asgi:app`` (settings from the environment)."""

from service.app import create_app

app = create_app()
