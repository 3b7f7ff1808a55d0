"""Database engine and sessions: SQLite file by default (WAL, foreign keys), PostgreSQL by URL."""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from service.core.errors import InvalidRequest

logger = logging.getLogger(__name__)


def _has_nul(parameters: Any) -> bool:
    if isinstance(parameters, str):
        return "\x00" in parameters
    if isinstance(parameters, dict):
        return any(_has_nul(v) for v in parameters.values())
    if isinstance(parameters, (list, tuple)):
        return any(_has_nul(v) for v in parameters)
    return False


def _refuse_nul(engine: Engine) -> None:
    """Refuse text containing NUL (0x00) on every backend, before it reaches the database.

    PostgreSQL cannot store NUL in text and fails the statement; SQLite stores it, and it then travels into
    exports. Routes check their own fields with clear messages; this is the net under all of them.
    """

    @event.listens_for(engine, "before_cursor_execute")
    def _check(_conn: Any, _cursor: Any, _statement: str, parameters: Any, _context: Any,
               _executemany: bool) -> None:
        if parameters and _has_nul(parameters):
            raise InvalidRequest("text must not contain NUL (0x00) characters")


def _null_safe(fn: Callable[[float], float]) -> Callable[[float | None], float | None]:
    return lambda x: None if x is None else fn(x)


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine with the settings pollinid relies on for each backend."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            # Let SQLAlchemy own transactions: pysqlite's implicit BEGIN would defer write locks.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            try:  # the SQL math functions (distances in the specialists' queue), when this SQLite lacks them
                cur.execute("SELECT sin(0), cos(0)")
            except sqlite3.OperationalError:
                for name, fn in (("sin", math.sin), ("cos", math.cos)):
                    dbapi_conn.create_function(name, 1, _null_safe(fn), deterministic=True)
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # IMMEDIATE takes the write lock at BEGIN, so read-then-write transactions never deadlock.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        _refuse_nul(engine)
        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, **kwargs)
    _refuse_nul(engine)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def ping(engine: Engine) -> bool:
    """True when the database answers a trivial query."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        logger.warning("database is not reachable", exc_info=True)
        return False


def init_db(engine: Engine) -> None:
    """Bring the schema up to date: apply the Alembic migrations up to head.

    Safe when several processes start at once (see :func:`service.store.migrations.upgrade`).
    """
    from service.store.migrations import upgrade

    upgrade(engine, "head")
