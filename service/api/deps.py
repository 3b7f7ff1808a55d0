"""FastAPI dependencies: what routes receive (sessions, settings, classifier, current user)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service import accounts as auth
from service.accounts import Role
from service.core.errors import ModelUnavailable
from service.inference.classifier import Classifier
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


def get_classifier(request: Request) -> Classifier:
    """The classifier serving now; 503 ``model_unavailable`` when no model is loaded."""
    clf: Classifier | None = request.app.state.registry.current
    if clf is None:
        raise ModelUnavailable("no model is loaded; the service cannot identify photos yet")
    return clf


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
ClassifierDep = Annotated[Classifier, Depends(get_classifier)]


# -- users and roles (see service.accounts) -----------------------------------------------------------------


def get_current_user(request: Request, session: SessionDep) -> User:
    """The user of the ``Authorization: Bearer <key>`` header; 401 without a valid key."""
    return auth.current_user(request, session)


def get_optional_user(request: Request, session: SessionDep) -> User | None:
    """The user when a key is sent, else None; a bad key is still a 401."""
    return auth.optional_user(request, session)


def get_identify_user(request: Request, session: SessionDep) -> User | None:
    """For ``/identify``: a key is required only with ``settings.identify_requires_key``."""
    return auth.identify_user(request, session)


CurrentUser = Annotated[User, Depends(get_current_user)]
OptionalUser = Annotated[User | None, Depends(get_optional_user)]
IdentifyUser = Annotated[User | None, Depends(get_identify_user)]


def require_role(*roles: Role) -> Callable[..., User]:
    """A dependency admitting only ``roles``: 401 without a key, 403 with another role.

    Attach it at router level: ``APIRouter(dependencies=[Depends(require_role(Role.expert, Role.admin))])``.
    """
    check = auth.role_checker(roles)

    def dependency(user: CurrentUser) -> User:
        return check(user)

    dependency.pollinid_roles = check.roles  # type: ignore[attr-defined]
    return dependency


def require_identify_access() -> Callable[..., User | None]:
    """Router-level dependency for ``/identify``: public unless ``settings.identify_requires_key``."""

    def dependency(user: IdentifyUser) -> User | None:
        return user

    dependency.pollinid_identify = True  # type: ignore[attr-defined]
    return dependency
