"""Shared fixtures: a real database per test (SQLite, and PostgreSQL when reachable), settings, app."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.settings import Settings

POSTGRES_ADMIN_URL = os.environ.get("POLLINID_TEST_POSTGRES_URL",
                                    "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# CI sets this so that an unreachable PostgreSQL fails the run instead of skipping half the suite.
REQUIRE_POSTGRES = os.environ.get("POLLINID_TEST_REQUIRE_POSTGRES", "") not in ("", "0", "false")


def _postgres_available() -> bool:
    try:
        engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


_PG_AVAILABLE: bool | None = None


def postgres_available() -> bool:
    global _PG_AVAILABLE
    if _PG_AVAILABLE is None:
        _PG_AVAILABLE = _postgres_available()
    return _PG_AVAILABLE


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    if not postgres_available():
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required but not reachable at {POSTGRES_ADMIN_URL}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}")
    name = f"pollinid_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that takes this runs on a fresh SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pollinid.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'pollinid.sqlite3'}"


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A models folder holding one tiny, real ONNX model (tiny/1)."""
    from tests.helpers import write_tiny_model

    root = tmp_path / "models"
    write_tiny_model(root, "tiny", "1")
    return root


@pytest.fixture
def settings(tmp_path: Path, database_url: str, models_dir: Path) -> Settings:
    """Settings for one test: its own data folder, database and models folder."""
    return Settings(data_dir=tmp_path / "data", database_url=database_url, models_dir=models_dir,
                    max_wait_ms=2.0, retrain_data_roots=[tmp_path])


# -- a real S3-protocol server on loopback (moto's standalone server, from PyPI: pure Python, no internet) ----


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of an S3 server (``python -m moto.server``) started for this test session, in its own process."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


S3_CREDENTIALS = {"s3_access_key_id": "testing", "s3_secret_access_key": "testing", "s3_region": "us-east-1"}


@pytest.fixture
def object_store_url(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the session's S3 server: ``s3://<bucket>/pollinid``."""
    import boto3

    bucket = f"pollinid-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/pollinid"


@pytest.fixture
def s3_settings(settings: Settings, s3_endpoint: str, object_store_url: str) -> Settings:
    """``settings`` (SQLite and PostgreSQL) with photos and trained models in a fresh bucket."""
    return settings.model_copy(update={"object_store_url": object_store_url, "s3_endpoint_url": s3_endpoint,
                                       **S3_CREDENTIALS})
