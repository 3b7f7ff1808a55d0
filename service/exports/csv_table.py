"""Every observation as one CSV row, safe to open in a spreadsheet."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.vocabulary import ExportKind
from service.exports.atomic import atomic_write
from service.exports.lookups import ExportResult, TaxonCache, iso_z, user_names
from service.settings import Settings
from service.store.tables import Observation

CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "observer_id",
    "observer",
    "session_id",
    "observed_at",
    "latitude",
    "longitude",
    "coordinate_precision_m",
    "status",
    "taxon_id",
    "scientific_name",
    "taxon_rank",
    "community_taxon_id",
    "consensus_score",
    "identification_count",
    "model_name",
    "model_version",
    "predicted_taxon_id",
    "top1_score",
    "flower",
    "licence",
    "notes",
    "photos",
    "created_at",
)


# A cell starting with one of these is run as a formula by spreadsheets (CSV injection).
FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text: text starting with a formula prefix gets a ``'``.

    OWASP's advice for CSV injection. Numbers are left as they are (a negative longitude stays a number);
    so is every other text. Rows stay one line each: CR and LF inside text are kept (quoted by csv).
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def write_csv(session: Session, settings: Settings, out: Path) -> ExportResult:
    """Write every observation as one CSV row (photos as space-separated sha256).

    Text typed by users (names, flower, session, notes) may start with ``=``, ``+``, ``-`` or ``@``:
    such cells are prefixed with ``'`` (:func:`csv_cell`) so that spreadsheets do not run them.
    """
    names = user_names(session)
    taxa = TaxonCache(session)
    n = 0
    with atomic_write(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for obs in session.scalars(
            select(Observation).order_by(Observation.id).execution_options(yield_per=500)
        ):
            taxon = taxa.get(obs.taxon_id)
            flower = taxa.get(obs.flower_taxon_id)
            writer.writerow(
                csv_cell(v) for v in [
                    obs.id,
                    obs.observer_id,
                    names.get(obs.observer_id, ""),
                    obs.session_id or "",
                    iso_z(obs.observed_at),
                    obs.latitude,
                    obs.longitude,
                    obs.coordinate_precision_m,
                    obs.status,
                    obs.taxon_id,
                    taxon.scientific_name if taxon else "",
                    taxon.rank if taxon else "",
                    obs.community_taxon_id,
                    obs.consensus_score,
                    obs.identification_count,
                    obs.model_name,
                    obs.model_version,
                    obs.predicted_taxon_id,
                    obs.top1_score,
                    flower.scientific_name if flower else (obs.flower_text or ""),
                    obs.licence,
                    obs.notes or "",
                    " ".join(p.sha256 for p in obs.photos),
                    iso_z(obs.created_at),
                ]
            )
            n += 1
    return ExportResult(ExportKind.csv, out, n)
