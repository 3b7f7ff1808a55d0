"""Users, roles and API keys.

A key is shown once, when it is created. The database keeps only ``HMAC-SHA256(secret_key, key)``, so a
stolen database does not reveal usable keys without the server secret; look-ups go by that digest and the
final comparison is constant-time. Clients send ``Authorization: Bearer <key>``; reading it from a request
is the HTTP layer's job (:mod:`service.api.auth`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core.errors import Conflict, InvalidRequest, NotFound
from service.core.vocabulary import Role
from service.settings import Settings
from service.store.tables import ApiKey, User, utcnow

logger = logging.getLogger(__name__)

KEY_PREFIX = "pk_"

ALL_ROLES: tuple[Role, ...] = tuple(Role)


def parse_role(value: str) -> Role:
    """The :class:`Role` named ``value``; a clear error names the valid roles."""
    try:
        return Role(value)
    except ValueError:
        raise InvalidRequest(f"unknown role {value!r}; known: {[r.value for r in ALL_ROLES]}") from None


def hash_key(secret: str, key: str) -> str:
    """HMAC-SHA256 of an API key under the server secret, as hex."""
    return hmac.new(secret.encode("utf-8"), key.encode("utf-8"), hashlib.sha256).hexdigest()


def generate_key() -> str:
    """A new random API key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


# -- users and keys ------------------------------------------------------------------------------------


def create_key(*, session: Session, settings: Settings, user: User) -> tuple[ApiKey, str]:
    """Create a key for ``user``. Returns the row and the key itself, which is never stored."""
    key = generate_key()
    row = ApiKey(user_id=user.id, prefix=key[:10], key_hash=hash_key(settings.secret_key, key))
    session.add(row)
    session.flush()
    return row, key


def create_user(*, session: Session, settings: Settings, name: str, role: str) -> tuple[User, str]:
    """Create a user with one API key. The caller commits.

    Raises:
        InvalidRequest: empty name or unknown role.
        Conflict: the name is taken.
    """
    name = name.strip()
    if not name:
        raise InvalidRequest("a user needs a non-empty name")
    user = User(name=name, role=parse_role(role).value)
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a user named {name!r} already exists") from None
    _, key = create_key(session=session, settings=settings, user=user)
    return user, key


def get_user(*, session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user


def ensure_an_admin_remains(*, session: Session, user: User, role: Role | None, active: bool | None) -> None:
    """Refuse a change that would leave no active admin (demoting or deactivating the last one).

    The active admins' rows are locked first (``FOR UPDATE`` on PostgreSQL; SQLite's write transaction is
    already exclusive), so two admins demoting each other at once cannot both succeed.

    Raises:
        Conflict: ``user`` is the last active admin and would stop being one.
    """
    loses_admin = (role is not None and role != Role.admin) or active is False
    if user.role != Role.admin or not user.active or not loses_admin:
        return
    admins = list(session.scalars(select(User.id).where(User.role == Role.admin.value, User.active.is_(True))
                                  .order_by(User.id).with_for_update()))
    if admins == [user.id]:
        raise Conflict("this is the last active admin: make another user admin first",
                       detail={"user_id": user.id})


def list_users(*, session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id)))


def revoke_key(*, session: Session, key_id: int, user_id: int | None = None) -> ApiKey:
    """Revoke one key (idempotent). With ``user_id``, the key must belong to that user."""
    row = session.get(ApiKey, key_id)
    if row is None or (user_id is not None and row.user_id != user_id):
        raise NotFound(f"API key {key_id} not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    session.flush()
    return row


def revoke_user_keys(*, session: Session, user_id: int) -> int:
    """Revoke every key of a user; returns how many were active."""
    user = get_user(session=session, user_id=user_id)
    count = 0
    for row in user.keys:
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            count += 1
    session.flush()
    return count


def authenticate(*, session: Session, settings: Settings, key: str) -> User | None:
    """The active user owning an unrevoked ``key``, else None."""
    digest = hash_key(settings.secret_key, key)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    if row.revoked_at is not None or not row.user.active:
        return None
    return row.user
