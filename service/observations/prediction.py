"""The model's prediction kept with an observation: read from an identify answer, stored as columns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from service.observations.taxa import labels_to_taxa


@dataclass
class PredictionFields:
    model_name: str
    model_version: str
    labels: list[str]
    scores: list[float]
    result: dict[str, Any] = field(default_factory=dict)


def prediction_from_response(response: Any) -> PredictionFields | None:
    """Model, labels and calibrated scores from an identify answer (a pydantic model or a dict)."""
    if response is None:
        return None
    data: dict[str, Any] = (
        response.model_dump(mode="json") if hasattr(response, "model_dump") else dict(response)
    )
    model = data.get("model") or {}
    labels: list[str] = []
    scores: list[float] = []
    for r in data.get("results") or []:
        taxon = r.get("taxon")
        label = r.get("label") or (taxon.get("label") if isinstance(taxon, dict) else taxon)
        if label is None or r.get("score") is None:
            continue
        labels.append(str(label))
        scores.append(float(r["score"]))
    if not model.get("name") or not model.get("version"):
        return None
    return PredictionFields(
        model_name=str(model["name"]),
        model_version=str(model["version"]),
        labels=labels,
        scores=scores,
        result=data,
    )


def prediction_columns(session: Session, pred: PredictionFields | None) -> dict[str, Any]:
    """The observation's columns for ``pred`` (none without a prediction)."""
    if pred is None:
        return {}
    taxa = labels_to_taxa(session, pred.labels)
    top1 = pred.scores[0] if pred.scores else None
    margin = (pred.scores[0] - pred.scores[1]) if len(pred.scores) > 1 else top1
    # Keep what the answer says about the observation; per-photo details and timings stay out of the row.
    stored = {
        k: v for k, v in pred.result.items() if k in ("model", "results", "rollup", "out_of_distribution")
    }
    stored["top_k"] = [
        {"label": lbl, "score": s, "taxon_id": taxa.get(lbl)}
        for lbl, s in zip(pred.labels, pred.scores, strict=True)
    ]
    predicted = taxa.get(pred.labels[0]) if pred.labels else None
    return {
        "model_name": pred.model_name,
        "model_version": pred.model_version,
        "top1_score": top1,
        "top_margin": margin,
        "predicted_taxon_id": predicted,
        "taxon_id": predicted,
        "prediction": stored,
    }
