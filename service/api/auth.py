"""Who is asking: the API key of a request, its user, and the role checks routes depend on.

Users, keys and roles themselves live in :mod:`service.accounts`; the dependency aliases routes use
(``CurrentUser``, ``require_role``) in :mod:`service.api.deps`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import Request
from sqlalchemy.orm import Session

from service.accounts import Role, authenticate
from service.core.errors import Forbidden, Unauthorized
from service.store.tables import User


def bearer_key(request: Request) -> str | None:
    """The key from ``Authorization: Bearer <key>``; None when the header is absent.

    Raises:
        Unauthorized: a header that is not a bearer token.
    """
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send the API key as 'Authorization: Bearer <key>'")
    return token


def _user_from_request(request: Request, session: Session, *, required: bool) -> User | None:
    cached = getattr(request.state, "user", None)
    if cached is not None:
        return cached
    key = bearer_key(request)
    if key is None:
        if required:
            raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
        return None
    user = authenticate(session=session, settings=request.app.state.settings, key=key)
    # End the look-up's transaction: on SQLite it holds the database lock (BEGIN IMMEDIATE), which must
    # not last for the whole request. The user stays loaded (the sessions do not expire on commit).
    session.commit()
    if user is None:
        raise Unauthorized("the API key is unknown or revoked")
    request.state.user = user
    return user


def current_user(request: Request, session: Session) -> User:
    user = _user_from_request(request, session, required=True)
    assert user is not None
    return user


def identify_user(request: Request, session: Session) -> User | None:
    """For ``/identify``: a key is needed only when ``settings.identify_requires_key`` is set."""
    required = bool(request.app.state.settings.identify_requires_key)
    return _user_from_request(request, session, required=required)


def role_checker(roles: Sequence[Role]) -> Callable[[User], User]:
    """A function that passes users with one of ``roles`` and raises :class:`Forbidden` for others."""
    allowed = tuple(Role(r) for r in roles)

    def check(user: User) -> User:
        if user.role not in allowed:
            raise Forbidden(
                f"this needs the role {' or '.join(r.value for r in allowed)}; your role is {user.role}"
            )
        return user

    check.roles = allowed  # type: ignore[attr-defined]
    return check
