"""Identifications of an observation, and the consensus they lead to.

Adding or withdrawing an identification locks the observation row (``SELECT … FOR UPDATE`` on PostgreSQL;
SQLite's ``BEGIN IMMEDIATE`` transaction is already exclusive), then recomputes the consensus from every
current identification in the same transaction, so concurrent identifications never lose an update.
The specialists' queue of observations to identify is :mod:`service.validation.queue`; the consensus rule
itself, pure, is :mod:`service.validation.consensus`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.accounts import Role
from service.core.clock import as_utc
from service.core.errors import Conflict, Forbidden, InvalidRequest, NotFound
from service.observations.public import taxa_by_id, taxon_dict, user_names
from service.observations.store import get_observation_for
from service.observations.taxa import lineages, resolve_taxon
from service.settings import Settings
from service.store.tables import Identification, Observation, Taxon, User, utcnow
from service.validation.consensus import Consensus, Kind, Status, Vote, community_taxon

logger = logging.getLogger(__name__)

KINDS = tuple(k.value for k in Kind)


def vote_weight(role: str, settings: Settings) -> float:
    return settings.consensus_specialist_weight if role == Role.expert else 1.0


def current_identifications(session: Session, observation_id: int) -> list[Identification]:
    return list(
        session.scalars(
            select(Identification)
            .where(Identification.observation_id == observation_id, Identification.current.is_(True))
            .order_by(Identification.id)
        )
    )


def recompute_consensus(session: Session, obs: Observation, settings: Settings) -> Consensus:
    """Apply the community-taxon rule to ``obs``'s current identifications and store the result."""
    ids = current_identifications(session, obs.id)
    paths = lineages(session, [i.taxon_id for i in ids if i.taxon_id is not None])
    votes = [
        Vote(
            kind=Kind(i.kind),
            lineage=paths.get(i.taxon_id, ()) if i.taxon_id else (),
            weight=vote_weight(i.user_role, settings),
            disagreement=i.disagreement,
        )
        for i in ids
    ]
    result = community_taxon(
        votes, min_agreements=settings.consensus_min_agreements, threshold=settings.consensus_threshold
    )
    was_validated = obs.status == Status.validated
    obs.status = result.status.value
    obs.community_taxon_id = result.taxon
    obs.consensus_score = result.score
    obs.agreement_weight = result.agreements
    obs.identification_count = len(ids)
    # The best current taxon; none once the specialists found no insect in the photos.
    obs.taxon_id = (result.taxon if result.taxon is not None
                    else None if result.status == Status.not_an_insect else obs.predicted_taxon_id)
    if obs.status == Status.validated and not was_validated:
        obs.validated_at = utcnow()
    elif obs.status != Status.validated:
        obs.validated_at = None
    obs.updated_at = utcnow()
    return result


def _suggestion(session: Session, obs: Observation) -> dict[str, Any] | None:
    """What the identifier was shown: the model's suggestion and the community taxon at that moment."""
    out: dict[str, Any] = {}
    if obs.model_name:
        out["model"] = {"name": obs.model_name, "version": obs.model_version}
        out["taxon_id"] = obs.predicted_taxon_id
        out["score"] = obs.top1_score
        top_k = (obs.prediction or {}).get("top_k")
        if top_k:
            out["top_k"] = top_k
    if obs.community_taxon_id is not None:
        out["community_taxon_id"] = obs.community_taxon_id
    out["status"] = obs.status
    return out or None


@dataclass
class Added:
    identification: Identification
    observation: Observation
    consensus: Consensus


def add_identification(
    session: Session,
    settings: Settings,
    user: User,
    observation_id: int,
    *,
    kind: str,
    taxon: int | str | None,
    comment: str | None = None,
    disagreement: bool = False,
) -> Added:
    """Record ``user``'s identification, supersede their previous one, and recompute the consensus.

    The caller commits.

    Raises:
        NotFound: no such observation (or a volunteer's view of someone else's).
        UnknownTaxon: the taxon does not exist.
        InvalidRequest: a kind that needs a taxon without one, or the reverse.
    """
    if kind not in KINDS:
        raise InvalidRequest(f"unknown kind {kind!r}; known: {list(KINDS)}")
    obs = get_observation_for(session, user, observation_id, for_update=True)
    taxon_row: Taxon | None = None
    if kind in (Kind.agree, Kind.propose):
        if taxon is None and kind == Kind.agree:
            target = obs.community_taxon_id or obs.predicted_taxon_id
            if target is None:
                raise InvalidRequest(
                    "nothing to agree with: no community taxon and no model suggestion; name a taxon",
                    detail={"field": "taxon"},
                )
            taxon = target
        if taxon is None:
            raise InvalidRequest("a 'propose' identification names a taxon", detail={"field": "taxon"})
        taxon_row = resolve_taxon(session, taxon)
    elif taxon is not None:
        raise InvalidRequest(f"a {kind!r} identification names no taxon", detail={"field": "taxon"})
    if disagreement and taxon_row is None:
        raise InvalidRequest("'disagreement' only applies with a taxon")

    now = utcnow()
    session.execute(
        update(Identification)
        .where(
            Identification.observation_id == obs.id,
            Identification.user_id == user.id,
            Identification.current.is_(True),
        )
        .values(current=False)
    )
    ident = Identification(
        observation_id=obs.id,
        user_id=user.id,
        user_role=user.role,
        kind=kind,
        taxon_id=taxon_row.id if taxon_row else None,
        disagreement=disagreement,
        comment=comment,
        model_suggestion=_suggestion(session, obs),
        current=True,
        created_at=now,
    )
    session.add(ident)
    session.flush()
    if obs.lease_user_id == user.id:
        obs.lease_user_id, obs.lease_expires_at = None, None
    result = recompute_consensus(session, obs, settings)
    session.flush()
    return Added(ident, obs, result)


def withdraw_identification(
    session: Session, settings: Settings, user: User, observation_id: int, identification_id: int
) -> Added:
    """Withdraw one of ``user``'s identifications (admins: anyone's); it stays in the history."""
    obs = get_observation_for(session, user, observation_id, for_update=True)
    ident = session.get(Identification, identification_id)
    if ident is None or ident.observation_id != obs.id:
        raise NotFound(f"identification {identification_id} not found on observation {observation_id}")
    if ident.user_id != user.id and user.role != Role.admin:
        raise Forbidden("only its author or an admin can withdraw an identification")
    if ident.withdrawn_at is not None:
        raise Conflict(f"identification {identification_id} is already withdrawn")
    ident.withdrawn_at = utcnow()
    ident.current = False
    session.flush()
    result = recompute_consensus(session, obs, settings)
    session.flush()
    return Added(ident, obs, result)


def list_identifications(session: Session, user: User, observation_id: int) -> list[Identification]:
    """The whole history of an observation's identifications, oldest first."""
    obs = get_observation_for(session, user, observation_id)
    return list(
        session.scalars(
            select(Identification).where(Identification.observation_id == obs.id).order_by(Identification.id)
        )
    )


def identification_public(session: Session, rows: list[Identification]) -> list[dict[str, Any]]:
    taxa = taxa_by_id(session, {r.taxon_id for r in rows if r.taxon_id is not None})
    names = user_names(session, {r.user_id for r in rows})
    return [
        {
            "id": r.id,
            "observation_id": r.observation_id,
            "user_id": r.user_id,
            "user_name": names.get(r.user_id),
            "user_role": r.user_role,
            "kind": r.kind,
            "taxon": taxon_dict(taxa.get(r.taxon_id or -1)),
            "disagreement": r.disagreement,
            "comment": r.comment,
            "model_suggestion": r.model_suggestion,
            "current": r.current,
            "created_at": as_utc(r.created_at),
            "withdrawn_at": as_utc(r.withdrawn_at),
        }
        for r in rows
    ]


def consensus_public(session: Session, obs: Observation) -> dict[str, Any]:
    taxon = session.get(Taxon, obs.community_taxon_id) if obs.community_taxon_id else None
    return {
        "status": obs.status,
        "taxon": taxon_dict(taxon),
        "score": obs.consensus_score,
        "agreement_weight": obs.agreement_weight,
        "identification_count": obs.identification_count,
    }
