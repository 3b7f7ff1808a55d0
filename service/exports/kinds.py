"""The export kinds (dwca, csv, training): their writers, file names and media types, and one entry point."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from service.core.errors import InvalidRequest
from service.core.vocabulary import ExportKind
from service.exports.csv_table import write_csv
from service.exports.darwin_core import write_dwca
from service.exports.lookups import ExportResult
from service.exports.training_manifest import write_training_manifest
from service.settings import Settings

logger = logging.getLogger(__name__)


WRITERS: dict[str, Callable[[Session, Settings, Path], ExportResult]] = {
    ExportKind.dwca: write_dwca,
    ExportKind.csv: write_csv,
    ExportKind.training: write_training_manifest,
}
MEDIA_TYPES: dict[str, tuple[str, str]] = {
    ExportKind.dwca: ("application/zip", "pollinid-dwca.zip"),
    ExportKind.csv: ("text/csv", "pollinid-observations.csv"),
    ExportKind.training: ("text/csv", "pollinid-training-manifest.csv"),
}
EXPORT_KINDS: tuple[str, ...] = tuple(k.value for k in ExportKind)


def export(session: Session, settings: Settings, kind: str, out: Path) -> ExportResult:
    """Write the export ``kind`` (dwca, csv or training) to ``out``."""
    writer = WRITERS.get(kind)
    if writer is None:
        raise InvalidRequest(f"unknown export {kind!r}; known: {list(EXPORT_KINDS)}")
    result = writer(session, settings, out)
    logger.info("exported %s: %d records to %s", kind, result.records, out)
    return result
