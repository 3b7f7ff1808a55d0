"""Data subcommands: ``pollinid db``, ``users``, ``import taxonomy`` and ``export-data``."""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.core.vocabulary import ExportKind, Role


def register(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="database schema migrations")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_sub.required = True
    p = db_sub.add_parser("upgrade", help="apply migrations (default: up to head)")
    p.add_argument("revision", nargs="?", default="head")
    p.set_defaults(func=db_upgrade)
    p = db_sub.add_parser("downgrade", help="revert migrations (default: one step)")
    p.add_argument("revision", nargs="?", default="-1")
    p.set_defaults(func=db_downgrade)
    p = db_sub.add_parser("current", help="show the database's revision and the code's head")
    p.set_defaults(func=db_current)

    users = sub.add_parser("users", help="users and API keys")
    u_sub = users.add_subparsers(dest="users_command", metavar="ACTION")
    u_sub.required = True
    p = u_sub.add_parser("create", help="create a user; prints the API key as the last line")
    p.add_argument("--name", required=True)
    p.add_argument("--role", required=True, choices=[r.value for r in Role])
    p.set_defaults(func=users_create)
    p = u_sub.add_parser("list", help="list users and their keys")
    p.set_defaults(func=users_list)
    p = u_sub.add_parser("revoke", help="revoke one key (--key-id) or every key of a user (--name)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--key-id", type=int)
    group.add_argument("--name")
    p.set_defaults(func=users_revoke)
    p = u_sub.add_parser("add-key", help="create another key for a user; prints it as the last line")
    p.add_argument("--name", required=True)
    p.set_defaults(func=users_add_key)

    imp = sub.add_parser("import", help="import reference data")
    i_sub = imp.add_subparsers(dest="import_command", metavar="WHAT")
    i_sub.required = True
    p = i_sub.add_parser(
        "taxonomy", help="load taxa from a CSV (label,scientific_name,common_name[,rank],genus,family,order)"
    )
    p.add_argument("file", type=Path)
    p.set_defaults(func=import_taxonomy)

    exp = sub.add_parser("export-data", help="export observations: dwca, csv or training manifest")
    exp.add_argument("kind", choices=[k.value for k in ExportKind])
    exp.add_argument("--out", type=Path, required=True, help="file to write")
    exp.set_defaults(func=export_data)


@contextmanager
def _engine() -> Iterator[tuple[Any, Any]]:
    """The configured database's engine and the settings, for one command; the engine is disposed after."""
    from service.settings import get_settings
    from service.store.db import create_db_engine

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(settings.resolved_database_url)
    try:
        yield engine, settings
    finally:
        engine.dispose()


@contextmanager
def _database() -> Iterator[tuple[Any, Any]]:
    """The settings and a session factory on the configured database, migrated to head, for one command."""
    from service.store.db import init_db, make_session_factory

    with _engine() as (engine, settings):
        init_db(engine)
        yield settings, make_session_factory(engine)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def db_upgrade(args: argparse.Namespace) -> int:
    from service.store.migrations import current_revision, upgrade

    with _engine() as (engine, _):
        upgrade(engine, args.revision)
        print(f"database at revision {current_revision(engine)}")
    return 0


def db_downgrade(args: argparse.Namespace) -> int:
    from service.store.migrations import current_revision, downgrade

    with _engine() as (engine, _):
        downgrade(engine, args.revision)
        print(f"database at revision {current_revision(engine)}")
    return 0


def db_current(args: argparse.Namespace) -> int:
    from service.store.migrations import current_revision, head_revision

    with _engine() as (engine, _):
        current, head = current_revision(engine), head_revision()
    print(f"current: {current or '(empty database)'}")
    print(f"head:    {head}")
    return 0 if current == head else 1


def users_create(args: argparse.Namespace) -> int:
    from service import accounts as auth
    from service.core.errors import PollinidError

    try:
        with _database() as (settings, factory), factory() as session:
            user, key = auth.create_user(session=session, settings=settings, name=args.name, role=args.role)
            session.commit()
            print(f"created {user.role} {user.name!r} (id {user.id}); the API key is shown once:")
            print(key)
    except PollinidError as exc:
        return _fail(exc.message)
    return 0


def users_add_key(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from service import accounts as auth
    from service.store.tables import User

    with _database() as (settings, factory), factory() as session:
        user = session.scalar(select(User).where(User.name == args.name))
        if user is None:
            return _fail(f"no user named {args.name!r}")
        row, key = auth.create_key(session=session, settings=settings, user=user)
        session.commit()
        print(f"new key {row.id} for {user.name!r}; shown once:")
        print(key)
    return 0


def users_list(args: argparse.Namespace) -> int:
    from service import accounts as auth

    with _database() as (_, factory), factory() as session:
        print(f"{'id':>5}  {'role':<9}  {'active':<6}  {'keys (id:prefix, * = revoked)':<40}  name")
        for u in auth.list_users(session=session):
            keys = " ".join(f"{k.id}:{k.prefix}{'*' if k.revoked_at else ''}" for k in u.keys)
            print(f"{u.id:>5}  {u.role:<9}  {u.active!s:<6}  {keys:<40}  {u.name}")
    return 0


def users_revoke(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from service import accounts as auth
    from service.core.errors import PollinidError
    from service.store.tables import User

    try:
        with _database() as (_, factory), factory() as session:
            if args.key_id is not None:
                auth.revoke_key(session=session, key_id=args.key_id)
                print(f"revoked key {args.key_id}")
            else:
                user = session.scalar(select(User).where(User.name == args.name))
                if user is None:
                    return _fail(f"no user named {args.name!r}")
                n = auth.revoke_user_keys(session=session, user_id=user.id)
                print(f"revoked {n} key(s) of {user.name!r}")
            session.commit()
    except PollinidError as exc:
        return _fail(exc.message)
    return 0


def import_taxonomy(args: argparse.Namespace) -> int:
    """Load a taxonomy CSV; its optional ``rank`` column places each label (species when missing; ``none``
    for a label that is not a taxon, such as ``no_insect``). A bad file or rank exits 2 with the line."""
    from service.core.errors import PollinidError
    from service.observations.taxa import import_taxonomy_csv

    if not args.file.is_file():
        return _fail(f"{args.file} is not a file")
    with _database() as (_, factory):
        with factory() as session:
            try:
                result = import_taxonomy_csv(session, args.file)
            except (ValueError, csv.Error) as exc:  # UnicodeDecodeError is a ValueError
                return _fail(str(exc))
            except PollinidError as exc:
                return _fail(exc.message)
            session.commit()
        print(f"taxa: {result.created} created, {result.updated} updated, {result.labels} labels mapped")
    return 0


def export_data(args: argparse.Namespace) -> int:
    from service.exports.kinds import export

    with _database() as (settings, factory):
        with factory() as session:
            result = export(session, settings, args.kind, args.out)
        extra = f", {result.media} photos" if result.kind != ExportKind.csv else ""
        print(f"wrote {result.kind} export of {result.records} records{extra} to {result.path}")
    return 0
