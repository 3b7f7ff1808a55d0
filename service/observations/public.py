"""Observations as the API shows them, and the batched look-ups of taxa and user names they need."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.clock import as_utc
from service.core.languages import DEFAULT_LANGUAGE, localize_answer, name_in
from service.observations.taxa import common_names
from service.store.tables import Observation, Taxon, User


def taxon_dict(t: Taxon | None, names: dict[int, dict[str, str]] | None = None,
               language: str = DEFAULT_LANGUAGE) -> dict[str, Any] | None:
    """A taxon as the API shows it; ``names`` (:func:`~service.observations.taxa.common_names`) gives its
    ``common_names`` and its ``common_name`` in ``language`` (null where that language has none)."""
    if t is None:
        return None
    known = (names or {}).get(t.id)
    if known is None:
        known = {DEFAULT_LANGUAGE: t.common_name} if t.common_name else {}
    return {
        "id": t.id,
        "scientific_name": t.scientific_name,
        "common_name": name_in(t.common_name, known, language),
        "common_names": known,
        "rank": t.rank,
        "parent_id": t.parent_id,
        "group": t.group,
    }


def taxa_by_id(session: Session, ids: set[int]) -> dict[int, Taxon]:
    """The taxa with these ids, in one query."""
    return {t.id: t for t in session.scalars(select(Taxon).where(Taxon.id.in_(ids)))} if ids else {}


def user_names(session: Session, ids: set[int]) -> dict[int, str]:
    """User names by id, in one query."""
    if not ids:
        return {}
    return {uid: name for uid, name in session.execute(select(User.id, User.name).where(User.id.in_(ids)))}


def to_public(session: Session, rows: Sequence[Observation],
              language: str = DEFAULT_LANGUAGE) -> list[dict[str, Any]]:
    """Observations as :class:`~service.api.schemas.observations.ObservationPublic` dicts (batched look-ups),
    taxa named in ``language`` (the stored prediction too: its taxa's names and its answer's sentence)."""
    taxon_ids = {
        i
        for o in rows
        for i in (o.taxon_id, o.community_taxon_id, o.flower_taxon_id, o.predicted_taxon_id)
        if i is not None
    }
    taxa = taxa_by_id(session, taxon_ids)
    known = common_names(session, taxa.values())
    names = user_names(session, {o.observer_id for o in rows})

    def named(taxon_id: int | None) -> dict[str, Any] | None:
        return taxon_dict(taxa.get(taxon_id or -1), known, language)

    out = []
    for o in rows:
        prediction = None
        if o.model_name:
            prediction = {
                "model_name": o.model_name,
                "model_version": o.model_version,
                "top1_score": o.top1_score,
                "top_margin": o.top_margin,
                "taxon": named(o.predicted_taxon_id),
                "result": localize_answer(o.prediction, language) if isinstance(o.prediction, dict)
                else o.prediction,
            }
        out.append(
            {
                "id": o.id,
                "observer_id": o.observer_id,
                "observer_name": names.get(o.observer_id),
                "session_id": o.session_id,
                "observed_at": as_utc(o.observed_at),
                "observed_at_source": o.observed_at_source,
                "latitude": o.latitude,
                "longitude": o.longitude,
                "coordinate_precision_m": o.coordinate_precision_m,
                "location_source": o.location_source,
                "flower_text": o.flower_text,
                "flower_taxon": named(o.flower_taxon_id),
                "licence": o.licence,
                "notes": o.notes,
                "status": o.status,
                "taxon": named(o.taxon_id),
                "community_taxon": named(o.community_taxon_id),
                "consensus_score": o.consensus_score,
                "identification_count": o.identification_count,
                "photos": [
                    {
                        "position": p.position,
                        "sha256": p.sha256,
                        "url": f"/api/v1/media/{p.sha256}",
                        "mime_type": p.mime_type,
                        "width": p.width,
                        "height": p.height,
                        "size_bytes": p.size_bytes,
                    }
                    for p in o.photos
                ],
                "prediction": prediction,
                "created_at": as_utc(o.created_at),
                "updated_at": as_utc(o.updated_at),
            }
        )
    return out
