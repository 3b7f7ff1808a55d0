"""The specialists' validation queue: the most uncertain observations first, leased to one expert."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status

from service.accounts import Role
from service.api.deps import CurrentUser, SessionDep, SettingsDep, require_role
from service.api.errors import errors
from service.api.schemas.observations import QueuePublic
from service.observations.public import to_public
from service.validation import queue

router = APIRouter(
    prefix="/validation", tags=["validation"], dependencies=[Depends(require_role(Role.expert, Role.admin))],
    responses=errors(401, 403),
)


@router.get("/queue", response_model=QueuePublic, responses=errors(422))
def read_queue(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    taxon: Annotated[str | None, Query(max_length=255, description="only this taxon group")] = None,
) -> Any:
    """Lease the most uncertain observations that need an identification (lowest top-1 score first)."""
    rows, expires = queue.claim_queue(session, settings, user, limit=limit, taxon=taxon)
    session.commit()
    public = to_public(session, rows)
    return {"data": [{"observation": o, "lease_expires_at": expires} for o in public], "count": len(public)}


@router.delete("/queue/{observation_id}/lease", status_code=status.HTTP_204_NO_CONTENT,
               responses=errors(404, 422, {409: "the observation is not leased to this expert"}))
def release_lease(observation_id: int, user: CurrentUser, session: SessionDep) -> None:
    """Give a leased observation back to the queue."""
    queue.release_lease(session, user, observation_id)
    session.commit()
