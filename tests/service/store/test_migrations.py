"""Alembic migrations: same schema as the ORM, reversible, concurrent-safe, and applied at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import inspect

from service.api.app import create_app
from service.cli.main import main
from service.settings import Settings
from service.store.db import create_db_engine
from service.store.migrations import current_revision, downgrade, head_revision, upgrade
from service.store.tables import Base

ROOT = Path(__file__).resolve().parents[3]


def _diff(engine) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, Base.metadata)


def test_migrations_produce_the_orm_schema(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        assert _diff(engine) == []
        tables = set(inspect(engine).get_table_names())
        assert {
            "users",
            "api_keys",
            "observations",
            "photos",
            "identifications",
            "taxa",
            "taxon_labels",
            "model_versions",
        } <= tables
    finally:
        engine.dispose()


def test_downgrade_to_base_and_up_again(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        upgrade(engine)
        downgrade(engine, "base")
        assert current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(engine)
        assert _diff(engine) == []
    finally:
        engine.dispose()


def test_concurrent_upgrades_from_several_processes_apply_once(database_url: str) -> None:
    code = (
        "import sys; from service.store.db import create_db_engine; from service.store.migrations import upgrade; "
        "e = create_db_engine(sys.argv[1]); upgrade(e); e.dispose()"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, database_url], cwd=ROOT, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    engine = create_db_engine(database_url)
    try:
        assert current_revision(engine) == head_revision()
        assert _diff(engine) == []
    finally:
        engine.dispose()


def test_the_service_migrates_at_start(settings: Settings) -> None:
    with TestClient(create_app(settings)):
        pass
    engine = create_db_engine(settings.resolved_database_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_db_cli(database_url: str, monkeypatch, capsys, tmp_path) -> None:
    from service.settings import get_settings

    monkeypatch.setenv("POLLINID_DATABASE_URL", database_url)
    monkeypatch.setenv("POLLINID_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        assert main(["db", "current"]) == 1  # empty database: not at head
        assert main(["db", "upgrade"]) == 0
        assert main(["db", "current"]) == 0
        out = capsys.readouterr().out
        assert f"current: {head_revision()}" in out
        assert main(["db", "downgrade", "base"]) == 0
        assert "(empty database)" in (main(["db", "current"]), capsys.readouterr().out)[1]
    finally:
        get_settings.cache_clear()
