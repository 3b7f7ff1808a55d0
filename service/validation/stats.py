"""A specialist's day: how many observations they identified since midnight in their own time zone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.vocabulary import IdentificationKind as Kind
from service.store.tables import Identification, User, utcnow
from service.validation.filters import local_midnight


@dataclass(frozen=True)
class DayStats:
    since: datetime  # local midnight, in the asked time zone
    until: datetime  # the next local midnight
    by_kind: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())


def identified_today(session: Session, user: User, zone: ZoneInfo, now: datetime | None = None) -> DayStats:
    """``user``'s current identifications made since local midnight in ``zone``, counted by kind.

    One observation counts once: a person's newer identification supersedes their older one, and a
    withdrawn one no longer counts. One ``GROUP BY`` query over the identifications table (by user).
    """
    now = now or utcnow()
    since, until = local_midnight(zone, now), local_midnight(zone, now, days=1)
    rows = session.execute(
        select(Identification.kind, func.count())
        .where(Identification.user_id == user.id, Identification.current.is_(True),
               Identification.created_at >= since, Identification.created_at < until)
        .group_by(Identification.kind)
    ).all()
    counts = {k.value: 0 for k in Kind}
    for kind, n in rows:
        counts[str(kind)] = int(n)
    return DayStats(since=since.astimezone(zone), until=until.astimezone(zone), by_kind=counts)
