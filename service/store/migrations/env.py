"""Alembic environment: runs on the connection given by :func:`service.store.migrations.alembic_config`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from service.store.db import create_db_engine
from service.store.tables import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection or sqlalchemy.url given to the pollinid migrations")
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():  # pragma: no cover - pollinid always migrates online
    raise RuntimeError("offline (SQL script) migrations are not supported; use `pollinid db upgrade`")
run_migrations_online()
