"""Fixtures for the service tests: a running app on the tiny real ONNX model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings


@pytest.fixture
def sqlite_settings(tmp_path: Path, sqlite_url: str, models_dir: Path) -> Settings:
    """Like ``settings`` but on SQLite only, for tests whose subject is not the database."""
    return Settings(data_dir=tmp_path / "data", database_url=sqlite_url, models_dir=models_dir,
                    max_wait_ms=2.0)


@pytest.fixture
def client(sqlite_settings: Settings) -> Iterator[TestClient]:
    """A started app (lifespan run) serving tiny/1 on SQLite."""
    with TestClient(create_app(sqlite_settings)) as test_client:
        yield test_client
