"""Observations as the API shows them, and the batched look-ups of taxa and user names they need."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.clock import as_utc
from service.store.tables import Observation, Taxon, User


def taxon_dict(t: Taxon | None) -> dict[str, Any] | None:
    if t is None:
        return None
    return {
        "id": t.id,
        "scientific_name": t.scientific_name,
        "common_name": t.common_name,
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


def to_public(session: Session, rows: Sequence[Observation]) -> list[dict[str, Any]]:
    """Observations as :class:`~service.api.schemas.observations.ObservationPublic` dicts (batched look-ups)."""
    taxon_ids = {
        i
        for o in rows
        for i in (o.taxon_id, o.community_taxon_id, o.flower_taxon_id, o.predicted_taxon_id)
        if i is not None
    }
    taxa = taxa_by_id(session, taxon_ids)
    names = user_names(session, {o.observer_id for o in rows})
    out = []
    for o in rows:
        prediction = None
        if o.model_name:
            prediction = {
                "model_name": o.model_name,
                "model_version": o.model_version,
                "top1_score": o.top1_score,
                "top_margin": o.top_margin,
                "taxon": taxon_dict(taxa.get(o.predicted_taxon_id or -1)),
                "result": o.prediction,
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
                "flower_taxon": taxon_dict(taxa.get(o.flower_taxon_id or -1)),
                "licence": o.licence,
                "notes": o.notes,
                "status": o.status,
                "taxon": taxon_dict(taxa.get(o.taxon_id or -1)),
                "community_taxon": taxon_dict(taxa.get(o.community_taxon_id or -1)),
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
