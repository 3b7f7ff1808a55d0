"""Live accuracy of the model versions, measured on validated observations."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.accounts import Role
from service.api.deps import SessionDep, require_role
from service.api.errors import errors
from service.api.schemas.observations import ModelAccuracy, ModelAccuracyPublic
from service.exports.model_accuracy import model_accuracy

router = APIRouter(
    prefix="/stats", tags=["stats"], dependencies=[Depends(require_role(Role.expert, Role.admin))],
    responses=errors(401, 403),
)


@router.get("/models", response_model=ModelAccuracyPublic)
def read_model_stats(session: SessionDep) -> ModelAccuracyPublic:
    """Per model version: how often its top-1 and top-3 matched the later validated taxon."""
    rows = [ModelAccuracy.model_validate(r) for r in model_accuracy(session)]
    return ModelAccuracyPublic(data=rows, count=len(rows))
