"""Live model accuracy: how often each model version was right about the observations validated since."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.vocabulary import ObservationStatus
from service.exports.lookups import TaxonCache
from service.store.tables import Observation, Taxon


def model_accuracy(session: Session) -> list[dict[str, Any]]:
    """Per model version: how often its top-1 and top-3 were right about the later validated taxon.

    A prediction is right when the predicted label's taxon is the community taxon or lies below it (a
    species predicted inside a validated genus counts).
    """
    taxa = TaxonCache(session)
    stats: dict[tuple[str, str], list[int]] = {}
    stmt = select(Observation).where(
        Observation.status == ObservationStatus.validated.value,
        Observation.model_name.is_not(None),
        Observation.community_taxon_id.is_not(None),
    )
    for obs in session.scalars(stmt.execution_options(yield_per=500)):
        truth = taxa.get(obs.community_taxon_id)
        if truth is None:
            continue
        top_k = (obs.prediction or {}).get("top_k") or []

        def hit(entry: dict[str, Any], truth: Taxon = truth) -> bool:
            t = taxa.get(entry.get("taxon_id"))
            return t is not None and t.path.startswith(truth.path)

        entry = stats.setdefault((obs.model_name or "", obs.model_version or ""), [0, 0, 0])
        entry[0] += 1
        entry[1] += int(bool(top_k) and hit(top_k[0]))
        entry[2] += int(any(hit(e) for e in top_k[:3]))
    out = []
    for (name, version), (n, t1, t3) in sorted(stats.items()):
        out.append(
            {
                "model_name": name,
                "model_version": version,
                "validated": n,
                "top1_correct": t1,
                "top3_correct": t3,
                "top1_accuracy": t1 / n if n else None,
                "top3_accuracy": t3 / n if n else None,
            }
        )
    return out
