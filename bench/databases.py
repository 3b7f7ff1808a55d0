"""Throw-away databases for the benchmarks: a SQLite file, or a fresh PostgreSQL database dropped after."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

PG_ADMIN = os.environ.get("POLLINID_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def make_database(kind: str, workdir: Path, prefix: str = "bench") -> tuple[str, Callable[[], None] | None]:
    """Return ``(url, drop)`` for a new ``sqlite`` or ``postgresql`` database; ``drop`` is None for SQLite."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    if kind == "sqlite":
        return f"sqlite:///{workdir / f'{prefix}.sqlite3'}", None
    name = f"pollinid_{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False), drop
