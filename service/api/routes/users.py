"""The caller's own account."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.accounts import ALL_ROLES
from service.api.deps import CurrentUser, require_role
from service.api.errors import errors
from service.api.schemas.users import Me

router = APIRouter(prefix="/users", tags=["users"], dependencies=[Depends(require_role(*ALL_ROLES))],
                   responses=errors(401, 403))


@router.get("/me", response_model=Me)
def read_me(user: CurrentUser) -> Me:
    """Who the API key belongs to, and their role."""
    return Me.model_validate(user)
