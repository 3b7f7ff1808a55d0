"""FastAPI dependencies: what routes receive (sessions, settings, model registry, current user)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.accounts import Role
from service.api import auth
from service.inference.registry import ModelRegistry
from service.settings import Settings
from service.store.tables import User


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """One database session per request; the caller commits, anything else is rolled back."""
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.close()


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]


# -- the identification runtime (see service.inference.identify) -------------------------------------------


def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]


# -- users and roles (see service.api.auth) -----------------------------------------------------------------


def get_current_user(request: Request, session: SessionDep) -> User:
    """The user of the ``Authorization: Bearer <key>`` header; 401 without a valid key."""
    return auth.current_user(request, session)


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_role(*roles: Role) -> Callable[..., User]:
    """A dependency admitting only ``roles``: 401 without a key, 403 with another role.

    Attach it at router level: ``APIRouter(dependencies=[Depends(require_role(Role.expert, Role.admin))])``.
    """
    check = auth.role_checker(roles)

    def dependency(user: CurrentUser) -> User:
        return check(user)

    dependency.pollinid_roles = check.roles  # type: ignore[attr-defined]
    return dependency
