"""Identifications of an observation: add, list (the audit trail), withdraw."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, status

from service.accounts import ALL_ROLES
from service.api.deps import CurrentUser, SessionDep, SettingsDep, require_role
from service.api.errors import BODY_ERRORS, errors
from service.api.schemas.identifications import IdentificationCreate, IdentificationResult, IdentificationsPublic
from service.validation import identifications as validation

router = APIRouter(
    prefix="/observations/{observation_id}/identifications",
    tags=["identifications"],
    dependencies=[Depends(require_role(*ALL_ROLES))],
    responses=errors(401, 403, 404, 422),
)


@router.post("", response_model=IdentificationResult, status_code=status.HTTP_201_CREATED,
             responses=errors(*BODY_ERRORS))
def create_identification(
    observation_id: int,
    body: IdentificationCreate,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
) -> Any:
    """Identify an observation (agree, propose, cannot tell, not an insect); the consensus is updated."""
    added = validation.add_identification(
        session,
        settings,
        user,
        observation_id,
        kind=body.kind,
        taxon=body.taxon,
        comment=body.comment,
        disagreement=body.disagreement,
    )
    session.commit()
    return {
        "identification": validation.identification_public(session, [added.identification])[0],
        "consensus": validation.consensus_public(session, added.observation),
    }


@router.get("", response_model=IdentificationsPublic)
def list_identifications(observation_id: int, user: CurrentUser, session: SessionDep) -> Any:
    """Every identification ever made on the observation, withdrawn ones included, oldest first."""
    rows = validation.list_identifications(session, user, observation_id)
    return {"data": validation.identification_public(session, rows), "count": len(rows)}


@router.post("/{identification_id}/withdraw", response_model=IdentificationResult,
             responses=errors({409: "the identification is already withdrawn"}))
def withdraw_identification(
    observation_id: int, identification_id: int, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> Any:
    """Withdraw an identification (never deleted: it stays in the history)."""
    done = validation.withdraw_identification(session, settings, user, observation_id, identification_id)
    session.commit()
    return {
        "identification": validation.identification_public(session, [done.identification])[0],
        "consensus": validation.consensus_public(session, done.observation),
    }
