"""Look-ups the exports share: taxa with their lineages, user names, timestamps as written in exports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.clock import as_utc
from service.core.modelcard import NOT_A_TAXON
from service.core.vocabulary import ExportKind
from service.store.tables import Taxon, User


@dataclass
class ExportResult:
    kind: ExportKind
    path: Path
    records: int
    media: int = 0


class TaxonCache:
    """Cached look-ups of taxa, their lineages and labels."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.by_id: dict[int, Taxon] = {}

    def get(self, taxon_id: int | None) -> Taxon | None:
        """The taxon, or None; a row that is not a taxon (rank ``none``, left by an older sync of
        ``no_insect``) is never exported as one."""
        if taxon_id is None:
            return None
        if taxon_id not in self.by_id:
            t = self.session.get(Taxon, taxon_id)
            if t is None or t.rank == NOT_A_TAXON:
                return None
            self.by_id[taxon_id] = t
        return self.by_id[taxon_id]

    def lineage(self, taxon: Taxon) -> dict[str, str]:
        """``{rank: scientific name}`` for the taxon and its ancestors."""
        out: dict[str, str] = {}
        for part in taxon.path.strip("/").split("/"):
            if part and (t := self.get(int(part))) is not None:
                out[t.rank] = t.scientific_name
        return out


def user_names(session: Session) -> dict[int, str]:
    return dict(session.execute(select(User.id, User.name)).all())


def iso_z(value: datetime | None) -> str:
    """ISO 8601 in UTC with a ``Z`` (empty for None)."""
    v = as_utc(value)
    return v.isoformat().replace("+00:00", "Z") if v else ""
