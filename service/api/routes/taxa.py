"""Taxa: prefix search and one taxon with its ancestors (public)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from sqlalchemy import select

from service.api.deps import SessionDep
from service.api.errors import errors
from service.api.schemas.taxa import TaxaPublic, TaxonDetail, TaxonPublic
from service.observations import taxa
from service.store.tables import Taxon

router = APIRouter(prefix="/taxa", tags=["taxa"])


@router.get("", response_model=TaxaPublic, responses=errors(422))
def list_taxa(
    session: SessionDep,
    q: str | None = Query(
        None, max_length=200, description="prefix of a scientific or common name, or of one of its words"
    ),
    rank: str | None = Query(None, max_length=32),
    limit: int = Query(20, ge=1, le=200),
    offset: int = Query(0, ge=0),
) -> TaxaPublic:
    """Search taxa by name prefix (case-insensitive), names starting with the query first."""
    rows, count = taxa.search_taxa(session, q, rank=rank, limit=limit, offset=offset)
    return TaxaPublic(data=[TaxonPublic.model_validate(t) for t in rows], count=count)


@router.get("/{taxon_id}", response_model=TaxonDetail, responses=errors(404, 422))
def read_taxon(taxon_id: int, session: SessionDep) -> TaxonDetail:
    """One taxon with its ancestors (root first), children and model labels."""
    taxon = taxa.get_taxon(session, taxon_id)
    children = session.scalars(
        select(Taxon).where(Taxon.parent_id == taxon.id).order_by(Taxon.scientific_name)
    )
    return TaxonDetail.model_validate(
        {
            **TaxonPublic.model_validate(taxon).model_dump(),
            "ancestors": [TaxonPublic.model_validate(a) for a in taxa.ancestors(session, taxon)],
            "children": [TaxonPublic.model_validate(c) for c in children],
            "labels": taxa.labels_of(session, taxon.id),
        }
    )
