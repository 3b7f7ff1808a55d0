"""The specialists' validation queue: the most uncertain observations first, each leased to one expert.

The queue can be narrowed by taxon, rank of the model's answer, place and date
(:mod:`service.validation.filters`); the filters never change the order nor how leases work.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, exists, func, or_, select
from sqlalchemy.orm import Session

from service.accounts import Role
from service.core.clock import as_utc
from service.core.errors import Conflict, InvalidRequest, NotFound
from service.core.vocabulary import ObservationStatus
from service.observations.taxa import resolve_taxon
from service.settings import Settings
from service.store.tables import Identification, Observation, User, utcnow
from service.validation.filters import QueueFilter


def queue_conditions(user: User, now: datetime, filters: QueueFilter | None) -> list[ColumnElement[bool]]:
    already = exists().where(
        Identification.observation_id == Observation.id, Identification.user_id == user.id
    )
    cond: list[ColumnElement[bool]] = [
        Observation.status == ObservationStatus.needs_id.value,
        Observation.observer_id != user.id,
        ~already,
        or_(
            Observation.lease_user_id.is_(None),
            Observation.lease_user_id == user.id,
            Observation.lease_expires_at.is_(None),
            Observation.lease_expires_at < now,
        ),
    ]
    if filters is not None:
        cond.extend(filters.conditions())
    return cond


def claim_queue(
    session: Session, settings: Settings, user: User, *, limit: int = 10, taxon: int | str | None = None,
    filters: QueueFilter | None = None,
) -> tuple[list[Observation], datetime]:
    """Lease the ``limit`` most uncertain ``needs_id`` observations to ``user``. The caller commits.

    ``filters`` (:func:`service.validation.filters.parse_queue_filter`) narrows the queue; ``taxon`` alone
    is a shortcut for a taxon filter.

    One expert holds at most ``settings.queue_max_leases_per_expert`` leases at a time (the rest of the
    queue stays available to the others); past it, only the items already leased to them come back.

    Order: lowest calibrated top-1 score first (no prediction counts as 0), then the smallest margin
    between the first two scores, then the oldest. An expert never gets their own observations or ones
    they already identified, nor one leased to another expert whose lease has not expired. Items already
    leased to ``user`` come back (with a renewed lease). On PostgreSQL the rows are claimed with
    ``FOR UPDATE SKIP LOCKED``, so two experts asking at the same moment get different items.
    """
    if limit < 1 or limit > 100:
        raise InvalidRequest("limit must be between 1 and 100")
    if taxon is not None and taxon != "":
        filters = replace(filters or QueueFilter(), taxon=resolve_taxon(session, taxon))
    now = utcnow()
    expires = now + timedelta(seconds=settings.queue_lease_seconds)
    stmt = (
        select(Observation)
        .where(*queue_conditions(user, now, filters))
        .order_by(
            func.coalesce(Observation.top1_score, 0.0),
            func.coalesce(Observation.top_margin, 0.0),
            Observation.created_at,
            Observation.id,
        )
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True, of=Observation)
    # At most queue_max_leases_per_expert items leased to one expert at a time (still in their queue: an
    # item they identified no longer counts); past it, a claim only renews what they already hold.
    held = set(session.scalars(select(Observation.id).where(
        *queue_conditions(user, now, None), Observation.lease_user_id == user.id,
        Observation.lease_expires_at > now)))
    room = max(0, settings.queue_max_leases_per_expert - len(held))
    rows = []
    for obs in session.scalars(stmt):
        if obs.id not in held:
            if room <= 0:
                continue
            room -= 1
        rows.append(obs)
    for obs in rows:
        obs.lease_user_id, obs.lease_expires_at = user.id, expires
    session.flush()
    return rows, expires


def release_lease(session: Session, user: User, observation_id: int) -> None:
    """Give a leased item back to the queue.

    Idempotent: an item nobody holds (never leased, given back already, or its lease expired) is left as it is, so a
    page that gives the same lease back twice (a filter change crossing a prefetch) gets no error. Only a lease that
    another expert holds now is refused.
    """
    obs = session.get(Observation, observation_id, with_for_update=True)
    if obs is None:
        raise NotFound(f"observation {observation_id} not found")
    if not lease_active(obs):
        return
    if obs.lease_user_id != user.id and user.role != Role.admin:
        raise Conflict("this observation is not leased to you")
    obs.lease_user_id, obs.lease_expires_at = None, None
    session.flush()


def lease_active(obs: Observation, now: datetime | None = None) -> bool:
    now = now or utcnow()
    exp = as_utc(obs.lease_expires_at)
    return obs.lease_user_id is not None and exp is not None and exp > now
