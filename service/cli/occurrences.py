"""``pollinid occurrences import|list|delete``: occurrence downloads (GBIF Darwin Core Archives) as
where-and-when evidence for the suggestions (see :mod:`service.nearby`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.cli.data import _database, _fail


def register(sub: argparse._SubParsersAction) -> None:
    occ = sub.add_parser("occurrences", help="occurrence downloads (GBIF Darwin Core Archives) used as "
                                             "where-and-when evidence")
    o_sub = occ.add_subparsers(dest="occurrences_command", metavar="ACTION")
    o_sub.required = True
    p = o_sub.add_parser("import", help="import a Darwin Core Archive (.zip); all rows or none")
    p.add_argument("file", type=Path)
    p.set_defaults(func=occurrences_import)
    p = o_sub.add_parser("list", help="list the imports and their counts")
    p.set_defaults(func=occurrences_list)
    p = o_sub.add_parser("delete", help="delete one import and its records")
    p.add_argument("import_id", type=int)
    p.set_defaults(func=occurrences_delete)


def occurrences_import(args: argparse.Namespace) -> int:
    from service.core.errors import PollinidError
    from service.nearby.occurrences import OccurrenceLimits, import_archive

    if not args.file.is_file():
        return _fail(f"no file {args.file}")
    try:
        with _database() as (settings, factory), factory() as session:
            row = import_archive(session, args.file, file_name=args.file.name,
                                 limits=OccurrenceLimits.from_settings(settings))
            print(f"import {row.id} ({row.file_name}): {row.rows_read} rows read, {row.rows_imported} imported, "
                  f"{row.rows_unknown_taxon} of taxa the installation does not know, {row.rows_incomplete} "
                  "without place or month")
    except PollinidError as exc:
        return _fail(exc.message)
    return 0


def occurrences_list(args: argparse.Namespace) -> int:
    from service.nearby.occurrences import list_imports, record_count

    with _database() as (_, factory), factory() as session:
        print(f"{'id':>5}  {'read':>9}  {'imported':>9}  {'unknown':>9}  {'no place':>9}  "
              f"{'imported at':<20}  file")
        for r in list_imports(session):
            print(f"{r.id:>5}  {r.rows_read:>9}  {r.rows_imported:>9}  {r.rows_unknown_taxon:>9}  "
                  f"{r.rows_incomplete:>9}  {r.created_at:%Y-%m-%d %H:%M:%S}  {r.file_name}")
        print(f"{record_count(session)} occurrence records in all")
    return 0


def occurrences_delete(args: argparse.Namespace) -> int:
    from service.core.errors import PollinidError
    from service.nearby.occurrences import delete_import

    try:
        with _database() as (_, factory), factory() as session:
            n = delete_import(session, args.import_id)
            print(f"deleted import {args.import_id} and its {n} records")
    except PollinidError as exc:
        return _fail(exc.message)
    return 0
