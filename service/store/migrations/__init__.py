"""Alembic migrations, configured in code (no ``alembic.ini`` needed).

:func:`upgrade` is what the service runs when it starts and what ``pollinid db upgrade`` runs. On
PostgreSQL it holds an advisory lock, so several processes starting at once apply each migration once;
on SQLite the migration transaction starts with ``BEGIN IMMEDIATE`` (see :mod:`service.store.db`), which
serialises them the same way.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent
# An arbitrary constant identifying "pollinid schema migration" among PostgreSQL advisory locks.
MIGRATION_LOCK_KEY = 0x706F6C6C696E6964 & 0x7FFFFFFFFFFFFFFF
# Alembic's ``context`` is process-global: migrations run one at a time per process.
_process_lock = threading.Lock()


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic configuration pointing at these migrations.

    Args:
        connection: run the migrations on this connection (preferred: the caller owns locking).
        url: else connect to this database URL.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    """The newest revision shipped with this code."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _run_locked(engine: Engine, action: str, revision: str) -> None:
    with _process_lock, engine.connect() as conn:
        is_pg = conn.dialect.name == "postgresql"
        if is_pg:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            conn.commit()
        try:
            cfg = alembic_config(connection=conn)
            if action == "upgrade":
                command.upgrade(cfg, revision)
            else:
                command.downgrade(cfg, revision)
            conn.commit()
        finally:
            if is_pg:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                conn.commit()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``; safe when several processes do it at the same time."""
    before = current_revision(engine)
    _run_locked(engine, "upgrade", revision)
    after = current_revision(engine)
    if before != after:
        logger.info("database migrated from %s to %s", before, after)


def downgrade(engine: Engine, revision: str = "-1") -> None:
    """Revert migrations down to ``revision`` (``-1``: one step, ``base``: everything)."""
    _run_locked(engine, "downgrade", revision)
