"""Observations stored: create one (atomically, once per idempotency key), find it, read it, edit it.

Creating one is atomic: the photos are written content-addressed (see :mod:`service.store.storage`: the local
media folder or the object store), the rows are inserted, and the transaction commits; on any failure the rows
are rolled back and the objects this request created are removed (unless another committed observation now
uses them). An object store that is down fails the upload with a 503 before anything is committed.

The other rooms of an observation: :mod:`~service.observations.photos` (uploads, decoding, EXIF),
:mod:`~service.observations.metadata` (the fields and their checks), :mod:`~service.observations.prediction`
(the model's answer kept with it), :mod:`~service.observations.queries` (filters and pages) and
:mod:`~service.observations.public` (the API representation).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.accounts import Role
from service.core.errors import Forbidden, InvalidRequest, NotFound
from service.core.vocabulary import ObservationStatus
from service.observations.metadata import (
    TEXT_FIELDS,
    ObservationInput,
    check_coordinates,
    check_licence,
    check_observed_at,
    check_text,
    resolve_metadata,
)
from service.observations.photos import UploadedPhoto
from service.observations.prediction import PredictionFields, prediction_columns
from service.observations.taxa import resolve_taxon
from service.settings import Settings
from service.store import storage
from service.store.objects import media_store
from service.store.tables import Observation, Photo, User, utcnow

logger = logging.getLogger(__name__)

IDEMPOTENCY_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{7,127}$")


class InvalidIdempotencyKey(InvalidRequest):
    code = "invalid_idempotency_key"


def check_idempotency_key(value: str | None) -> str | None:
    """The key if well-formed (8–128 of ``A-Za-z0-9_.:-``), None when absent.

    Raises:
        InvalidIdempotencyKey: a malformed key.
    """
    if value is None:
        return None
    if not IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise InvalidIdempotencyKey(
            "Idempotency-Key must be 8 to 128 characters of letters, digits and _.:- (a UUID works)"
        )
    return value


# -- create --------------------------------------------------------------------------------------------


@dataclass
class Created:
    observation: Observation
    replayed: bool


def find_by_idempotency_key(session: Session, observer_id: int, key: str) -> Observation | None:
    return session.scalar(
        select(Observation).where(Observation.observer_id == observer_id, Observation.idempotency_key == key)
    )


def _replay(existing: Observation, fingerprint: str) -> Created:
    if existing.request_fingerprint and existing.request_fingerprint != fingerprint:
        raise InvalidIdempotencyKey(
            "this Idempotency-Key was already used for a different observation",
            detail={"observation_id": existing.id},
        )
    return Created(existing, replayed=True)


def create_observation(
    *,
    factory: sessionmaker[Session],
    settings: Settings,
    observer: User,
    meta: ObservationInput,
    photos: Sequence[UploadedPhoto],
    prediction: PredictionFields | None,
    idempotency_key: str | None = None,
) -> Created:
    """Store an observation with its photos and prediction, all or nothing.

    Returns the new observation, or the earlier one when ``idempotency_key`` was already used by this
    observer for the same request.
    """
    fingerprint = meta.fingerprint(p.sha256 for p in photos)
    with factory() as session:
        if idempotency_key:
            existing = find_by_idempotency_key(session, observer.id, idempotency_key)
            if existing is not None:
                return _replay(existing, fingerprint)
        resolved = resolve_metadata(session, meta, photos)
        session.rollback()  # end the read transaction before the slow part

    root = media_store(settings)  # the local media folder, or the object store's media/
    blobs = {p.sha256: p.data for p in photos}
    created_files: list[str] = []
    try:
        for sha, data in blobs.items():
            if storage.write_media(root, sha, data):
                created_files.append(sha)
        with factory() as session:
            try:
                obs = Observation(
                    observer_id=observer.id,
                    idempotency_key=idempotency_key,
                    request_fingerprint=fingerprint,
                    status=ObservationStatus.needs_id.value,
                    **resolved.__dict__,
                    **prediction_columns(session, prediction),
                )
                obs.photos = [
                    Photo(
                        position=i,
                        sha256=p.sha256,
                        mime_type=p.decoded.mime_type,
                        width=p.width,
                        height=p.height,
                        size_bytes=len(p.data),
                    )
                    for i, p in enumerate(photos)
                ]
                session.add(obs)
                session.flush()
                storage.lock_media(session, blobs)
                storage.ensure_media(root, blobs)
                session.commit()
            except IntegrityError:
                # Another request with the same Idempotency-Key committed first. Look it up, then end this
                # transaction *before* removing our files: on SQLite every transaction holds the database
                # write lock (BEGIN IMMEDIATE), and the clean-up opens its own session, which would wait
                # for this one until the busy timeout (issue 16: a 30 s stall for everyone, then a 500).
                session.rollback()
                existing = (find_by_idempotency_key(session, observer.id, idempotency_key)
                            if idempotency_key else None)
                session.commit()  # ends the read; expire_on_commit=False keeps ``existing`` loaded
                if existing is None:
                    raise
                replay = _replay(existing, fingerprint)
            else:
                # Load what the response needs while the session is open.
                _ = obs.photos
                return Created(obs, replayed=False)
        storage.remove_unreferenced(factory, root, created_files)
        return replay
    except BaseException:
        try:
            storage.remove_unreferenced(factory, root, created_files)
        except Exception:  # the start-up cleaner will get them
            logger.warning("could not remove the files of a failed upload", exc_info=True)
        raise


# -- read and update -----------------------------------------------------------------------------------


def can_see_all(user: User) -> bool:
    return user.role in (Role.expert, Role.admin)


def get_observation_for(
    session: Session, user: User, observation_id: int, *, for_update: bool = False
) -> Observation:
    """The observation if ``user`` may see it; volunteers get 404 for other people's observations."""
    stmt = select(Observation).where(Observation.id == observation_id)
    if for_update:
        stmt = stmt.with_for_update()
    obs = session.scalar(stmt)
    if obs is None or (not can_see_all(user) and obs.observer_id != user.id):
        raise NotFound(f"observation {observation_id} not found")
    return obs


EDITABLE = (
    "observed_at",
    "latitude",
    "longitude",
    "coordinate_precision_m",
    "flower",
    "flower_taxon",
    "session_id",
    "licence",
    "notes",
)


def update_observation(
    session: Session, user: User, obs: Observation, changes: dict[str, Any]
) -> Observation:
    """Apply a PATCH from the observer (or an admin). The caller commits."""
    if obs.observer_id != user.id and user.role != Role.admin:
        raise Forbidden("only the observer or an admin can edit an observation")
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise InvalidRequest(f"cannot edit {sorted(unknown)}; editable: {list(EDITABLE)}")
    for name in TEXT_FIELDS:
        check_text(name, changes.get(name))
    if "observed_at" in changes:
        if changes["observed_at"] is None:
            raise InvalidRequest("observed_at cannot be removed")
        obs.observed_at = check_observed_at(changes["observed_at"])
        obs.observed_at_source = "user"
    if {"latitude", "longitude", "coordinate_precision_m"} & set(changes):
        lat = changes.get("latitude", obs.latitude)
        lon = changes.get("longitude", obs.longitude)
        precision = changes.get("coordinate_precision_m", obs.coordinate_precision_m)
        check_coordinates(lat, lon, precision)
        if "latitude" in changes or "longitude" in changes:
            obs.location_source = "user" if lat is not None else None
        obs.latitude, obs.longitude, obs.coordinate_precision_m = lat, lon, precision
    if "flower" in changes:
        obs.flower_text = changes["flower"] or None
    if "flower_taxon" in changes:
        ref = changes["flower_taxon"]
        obs.flower_taxon_id = resolve_taxon(session, ref).id if ref not in (None, "") else None
    if "session_id" in changes:
        obs.session_id = changes["session_id"] or None
    if "licence" in changes:
        if changes["licence"] is None:
            raise InvalidRequest("licence cannot be removed")
        obs.licence = check_licence(changes["licence"])
    if "notes" in changes:
        obs.notes = changes["notes"] or None
    obs.updated_at = utcnow()
    session.flush()
    return obs
