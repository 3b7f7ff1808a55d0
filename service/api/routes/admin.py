"""Admins manage users and their API keys."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, status

from service import accounts as auth
from service.accounts import Role
from service.api.deps import SessionDep, SettingsDep, require_role
from service.api.errors import BODY_ERRORS, errors
from service.api.routes import occurrences
from service.api.schemas.users import (
    ApiKeyCreated,
    ApiKeyPublic,
    UserCreate,
    UserCreated,
    UserPublic,
    UsersPublic,
    UserUpdate,
)

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_role(Role.admin))],
                   responses=errors(401, 403))


@router.post("/users", response_model=UserCreated, status_code=status.HTTP_201_CREATED,
             responses=errors(*BODY_ERRORS, {409: "a user with this name exists"}))
def create_user(body: UserCreate, session: SessionDep, settings: SettingsDep) -> UserCreated:
    """Create a user with one API key; the key is in this answer only."""
    user, key = auth.create_user(session=session, settings=settings, name=body.name, role=body.role)
    session.commit()
    return UserCreated.model_validate({**UserPublic.model_validate(user).model_dump(), "key": key})


@router.get("/users", response_model=UsersPublic, responses=errors(422))
def list_users(
    session: SessionDep, limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)
) -> UsersPublic:
    """All users with their keys (never the keys themselves)."""
    users = auth.list_users(session=session)
    return UsersPublic(
        data=[UserPublic.model_validate(u) for u in users[offset : offset + limit]], count=len(users)
    )


@router.get("/users/{user_id}", response_model=UserPublic, responses=errors(404, 422))
def read_user(user_id: int, session: SessionDep) -> UserPublic:
    """One user with their keys."""
    return UserPublic.model_validate(auth.get_user(session=session, user_id=user_id))


@router.patch("/users/{user_id}", response_model=UserPublic,
              responses=errors(*BODY_ERRORS, 404, {409: "this is the last active admin"}))
def update_user(user_id: int, body: UserUpdate, session: SessionDep) -> UserPublic:
    """Change a user's role, or deactivate them (their keys stop working); the last admin stays one."""
    user = auth.get_user(session=session, user_id=user_id)
    role = auth.parse_role(body.role) if body.role is not None else None
    auth.ensure_an_admin_remains(session=session, user=user, role=role, active=body.active)
    if role is not None:
        user.role = role.value
    if body.active is not None:
        user.active = body.active
    session.commit()
    return UserPublic.model_validate(user)


@router.post("/users/{user_id}/keys", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED,
             responses=errors(404, 422))
def create_key(user_id: int, session: SessionDep, settings: SettingsDep) -> ApiKeyCreated:
    """Create another API key for a user; the key is in this answer only."""
    user = auth.get_user(session=session, user_id=user_id)
    row, key = auth.create_key(session=session, settings=settings, user=user)
    session.commit()
    return ApiKeyCreated.model_validate({**ApiKeyPublic.model_validate(row).model_dump(), "key": key})


@router.post("/users/{user_id}/keys/{key_id}/revoke", response_model=ApiKeyPublic, responses=errors(404, 422))
def revoke_key(user_id: int, key_id: int, session: SessionDep) -> ApiKeyPublic:
    """Revoke one API key; it stops working at once."""
    row = auth.revoke_key(session=session, key_id=key_id, user_id=user_id)
    session.commit()
    return ApiKeyPublic.model_validate(row)


# Occurrence downloads (where-and-when evidence): /admin/occurrences, under this router's admin role.
router.include_router(occurrences.router)
