"""Taxa: prefix search and one taxon with its ancestors (public).

``common_name`` is in the language ``Accept-Language`` chose (null where that language has no name);
``common_names`` lists every known name by language.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.api.deps import SessionDep
from service.api.errors import errors
from service.api.languages import LanguageDep
from service.api.schemas.taxa import TaxaPublic, TaxonDetail, TaxonPublic
from service.core.languages import name_in
from service.observations import taxa
from service.store.tables import Taxon

router = APIRouter(prefix="/taxa", tags=["taxa"])


def public_taxa(session: Session, rows: Iterable[Taxon], language: str) -> list[TaxonPublic]:
    """Taxa as the API shows them, named in ``language``."""
    rows = list(rows)
    names = taxa.common_names(session, rows)
    out = []
    for t in rows:
        known = names.get(t.id, {})
        values: dict[str, Any] = {**TaxonPublic.model_validate(t).model_dump(), "common_names": known,
                                  "common_name": name_in(t.common_name, known, language)}
        out.append(TaxonPublic.model_validate(values))
    return out


@router.get("", response_model=TaxaPublic, responses=errors(422))
def list_taxa(
    session: SessionDep,
    language: LanguageDep,
    q: str | None = Query(
        None, max_length=200,
        description="prefix of a scientific or common name (in any language), or of one of its words"
    ),
    rank: str | None = Query(None, max_length=32),
    limit: int = Query(20, ge=1, le=200),
    offset: int = Query(0, ge=0),
) -> TaxaPublic:
    """Search taxa by name prefix (case-insensitive), names starting with the query first."""
    rows, count = taxa.search_taxa(session, q, rank=rank, limit=limit, offset=offset)
    return TaxaPublic(data=public_taxa(session, rows, language), count=count)


@router.get("/{taxon_id}", response_model=TaxonDetail, responses=errors(404, 422))
def read_taxon(taxon_id: int, session: SessionDep, language: LanguageDep) -> TaxonDetail:
    """One taxon with its ancestors (root first), children and model labels."""
    taxon = taxa.get_taxon(session, taxon_id)
    children = list(session.scalars(
        select(Taxon).where(Taxon.parent_id == taxon.id).order_by(Taxon.scientific_name)
    ))
    return TaxonDetail.model_validate(
        {
            **public_taxa(session, [taxon], language)[0].model_dump(),
            "ancestors": public_taxa(session, taxa.ancestors(session, taxon), language),
            "children": public_taxa(session, children, language),
            "labels": taxa.labels_of(session, taxon.id),
        }
    )
