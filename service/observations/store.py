"""Observations: a volunteer's 1–5 photos, when and where, the visited flower, and the model's prediction.

Creating one is atomic: the photos are written content-addressed (see :mod:`service.store.storage`), the rows
are inserted, and the transaction commits; on any failure the rows are rolled back and the files this
request created are removed (unless another committed observation now uses them).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.accounts import Role
from service.core.errors import Forbidden, InvalidRequest, NotFound, PayloadTooLarge
from service.core.imaging import DecodedImage, DecodeLimits, decode_image
from service.observations.taxa import labels_to_taxa, resolve_taxon, subtree_condition
from service.settings import Settings
from service.store import storage
from service.store.tables import Observation, Photo, Taxon, User, utcnow

logger = logging.getLogger(__name__)

LICENCES: tuple[str, ...] = ("CC0", "CC-BY", "CC-BY-NC")
STATUSES: tuple[str, ...] = ("needs_id", "validated", "disputed", "cannot_tell", "not_an_insect")
IDEMPOTENCY_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{7,127}$")
FUTURE_TOLERANCE = timedelta(minutes=10)
EARLIEST = datetime(1800, 1, 1, tzinfo=UTC)  # museum and herbarium records; nothing older is plausible

# EXIF tags (Pillow numbers).
_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_DATETIME = 306
_DATETIME_ORIGINAL = 36867
_OFFSET_TIME_ORIGINAL = 36881


class TooManyPhotos(InvalidRequest):
    code = "too_many_photos"


class InvalidIdempotencyKey(InvalidRequest):
    code = "invalid_idempotency_key"


def as_utc(value: datetime | None) -> datetime | None:
    """Aware UTC datetime; naive values (SQLite, EXIF without offset) are taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


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


# -- photos and EXIF -----------------------------------------------------------------------------------


@dataclass
class UploadedPhoto:
    """One uploaded photo, decoded and hashed."""

    data: bytes
    sha256: str
    decoded: DecodedImage

    @property
    def width(self) -> int:
        return self.decoded.original_size[0]

    @property
    def height(self) -> int:
        return self.decoded.original_size[1]


def decode_uploads(blobs: Sequence[bytes], settings: Settings) -> list[UploadedPhoto]:
    """Check the count, size and content of the uploaded photos.

    Raises:
        InvalidRequest / TooManyPhotos: no photo or more than ``settings.max_images``.
        InvalidImage, UnsupportedMediaType, PayloadTooLarge: see :func:`service.core.imaging.decode_image`.
    """
    if not blobs:
        raise InvalidRequest("an observation needs at least one photo (field 'photos')")
    if len(blobs) > settings.max_images:
        raise TooManyPhotos(
            f"{len(blobs)} photos sent; an observation has at most {settings.max_images}",
            detail={"max_images": settings.max_images, "received": len(blobs)},
        )
    total = sum(len(b) for b in blobs)
    if total > settings.max_request_bytes:
        raise PayloadTooLarge(f"{total} bytes of photos; the limit is {settings.max_request_bytes}")
    limits = DecodeLimits(
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
    )
    out = []
    for i, data in enumerate(blobs):
        try:
            decoded = decode_image(data, limits=limits, min_side=512, keep_exif=True)
        except Exception as exc:
            if hasattr(exc, "message"):
                exc.message = f"photo {i + 1}: {exc.message}"
            raise
        # Only the metadata (format, size, EXIF) is kept: the pixels are freed now, so that many uploads
        # in flight do not each hold a decoded photo (the prediction decodes again, at the model's size).
        decoded.image.close()
        out.append(UploadedPhoto(data=data, sha256=hashlib.sha256(data).hexdigest(), decoded=decoded))
    return out


def _ratio(value: Any) -> float:
    if isinstance(value, tuple) and len(value) == 2:
        return float(value[0]) / float(value[1])
    return float(value)


def exif_datetime(exif: Any) -> datetime | None:
    """DateTimeOriginal (else DateTime) from EXIF, in UTC; None when absent or absurd."""
    if not exif:
        return None
    try:
        sub = exif.get_ifd(_EXIF_IFD) or {}
        raw = sub.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
        if not raw:
            return None
        raw = raw.decode() if isinstance(raw, bytes) else str(raw)
        value = datetime.strptime(raw.strip().rstrip("\x00"), "%Y:%m:%d %H:%M:%S")
        offset = sub.get(_OFFSET_TIME_ORIGINAL)
        if offset:
            offset = offset.decode() if isinstance(offset, bytes) else str(offset)
            m = re.fullmatch(r"([+-])(\d{2}):(\d{2})", offset.strip().rstrip("\x00"))
            if m:
                delta = timedelta(hours=int(m[2]), minutes=int(m[3]))
                return (value - delta if m[1] == "+" else value + delta).replace(tzinfo=UTC)
        return value.replace(tzinfo=UTC)
    except Exception:
        logger.debug("ignoring unreadable EXIF date", exc_info=True)
        return None


def exif_gps(exif: Any) -> tuple[float, float, float | None] | None:
    """(latitude, longitude, horizontal error in metres or None) from EXIF GPS; None when absent or absurd."""
    if not exif:
        return None
    try:
        gps = exif.get_ifd(_GPS_IFD)
        if not gps or 2 not in gps or 4 not in gps:
            return None

        def degrees(dms: Any, ref: Any, negative: str) -> float:
            d, m, s = (_ratio(x) for x in dms)
            value = d + m / 60.0 + s / 3600.0
            ref = ref.decode() if isinstance(ref, bytes) else str(ref or "")
            return -value if ref.strip().upper().startswith(negative) else value

        lat = degrees(gps[2], gps.get(1), "S")
        lon = degrees(gps[4], gps.get(3), "W")
        if not (-90 <= lat <= 90 and -180 <= lon <= 180) or lat != lat or lon != lon:
            return None
        err = gps.get(31)
        precision = _ratio(err) if err is not None else None
        if precision is not None and not (0 <= precision <= 1_000_000):
            precision = None
        return lat, lon, precision
    except Exception:
        logger.debug("ignoring unreadable EXIF GPS", exc_info=True)
        return None


# -- metadata ------------------------------------------------------------------------------------------


@dataclass
class ObservationInput:
    """Metadata of a new observation as sent (photos' EXIF fills what is missing)."""

    observed_at: datetime | None = None
    latitude: float | None = None
    longitude: float | None = None
    coordinate_precision_m: float | None = None
    flower: str | None = None
    flower_taxon: str | None = None
    session_id: str | None = None
    licence: str = "CC-BY"
    notes: str | None = None

    def fingerprint(self, shas: Iterable[str]) -> str:
        """A digest of the request, to tell a true retry from a reused idempotency key."""
        body = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.__dict__.items()}
        body["photos"] = list(shas)
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def check_observed_at(value: datetime, *, now: datetime | None = None) -> datetime:
    value = as_utc(value)  # type: ignore[assignment]
    now = now or utcnow()
    if value > now + FUTURE_TOLERANCE:
        raise InvalidRequest(
            f"observed_at {value.isoformat()} is in the future", detail={"field": "observed_at"}
        )
    if value < EARLIEST:
        raise InvalidRequest(
            f"observed_at {value.isoformat()} is before 1800", detail={"field": "observed_at"}
        )
    return value


TEXT_FIELDS: tuple[str, ...] = ("flower", "flower_taxon", "session_id", "notes")


def check_text(field_name: str, value: Any) -> None:
    """Refuse NUL characters in a free-text field (PostgreSQL cannot store them; exports must not carry them).

    Raises:
        InvalidRequest: ``value`` is a string holding ``\\x00``.
    """
    if isinstance(value, str) and "\x00" in value:
        raise InvalidRequest(f"{field_name} must not contain NUL (0x00) characters",
                             detail={"field": field_name})


def check_coordinates(lat: float | None, lon: float | None, precision: float | None) -> None:
    if (lat is None) != (lon is None):
        raise InvalidRequest("send both latitude and longitude, or neither")
    if lat is not None and not (-90 <= lat <= 90):
        raise InvalidRequest(f"latitude {lat} is out of range [-90, 90]", detail={"field": "latitude"})
    if lon is not None and not (-180 <= lon <= 180):
        raise InvalidRequest(f"longitude {lon} is out of range [-180, 180]", detail={"field": "longitude"})
    if precision is not None and not (0 <= precision <= 1_000_000):
        raise InvalidRequest("coordinate_precision_m must be between 0 and 1,000,000 metres")


def check_licence(value: str) -> str:
    if value not in LICENCES:
        raise InvalidRequest(
            f"unknown licence {value!r}; known: {list(LICENCES)}", detail={"field": "licence"}
        )
    return value


@dataclass
class ResolvedMetadata:
    observed_at: datetime
    observed_at_source: str
    latitude: float | None
    longitude: float | None
    coordinate_precision_m: float | None
    location_source: str | None
    flower_text: str | None
    flower_taxon_id: int | None
    session_id: str | None
    licence: str
    notes: str | None


def resolve_metadata(
    session: Session, meta: ObservationInput, photos: Sequence[UploadedPhoto]
) -> ResolvedMetadata:
    """Validate the metadata; take the date and position from the photos' EXIF when they are missing."""
    for name in TEXT_FIELDS:
        check_text(name, getattr(meta, name))
    licence = check_licence(meta.licence)
    check_coordinates(meta.latitude, meta.longitude, meta.coordinate_precision_m)
    observed_at, source = meta.observed_at, "user"
    if observed_at is None:
        observed_at = next((d for p in photos if (d := exif_datetime(p.decoded.exif)) is not None), None)
        source = "exif"
    if observed_at is None:
        raise InvalidRequest(
            "observed_at is missing and none of the photos has an EXIF date", detail={"field": "observed_at"}
        )
    observed_at = check_observed_at(observed_at)
    lat, lon, precision, loc_source = meta.latitude, meta.longitude, meta.coordinate_precision_m, None
    if lat is not None:
        loc_source = "user"
    else:
        gps = next((g for p in photos if (g := exif_gps(p.decoded.exif)) is not None), None)
        if gps is not None:
            lat, lon, exif_precision = gps
            precision = precision if precision is not None else exif_precision
            loc_source = "exif"
    flower_taxon_id = resolve_taxon(session, meta.flower_taxon).id if meta.flower_taxon else None
    return ResolvedMetadata(
        observed_at=observed_at,
        observed_at_source=source,
        latitude=lat,
        longitude=lon,
        coordinate_precision_m=precision,
        location_source=loc_source,
        flower_text=(meta.flower or None),
        flower_taxon_id=flower_taxon_id,
        session_id=meta.session_id or None,
        licence=licence,
        notes=meta.notes or None,
    )


# -- the model's prediction ----------------------------------------------------------------------------


@dataclass
class PredictionFields:
    model_name: str
    model_version: str
    labels: list[str]
    scores: list[float]
    result: dict[str, Any] = field(default_factory=dict)


def prediction_from_response(response: Any) -> PredictionFields | None:
    """Model, labels and calibrated scores from an identify answer (a pydantic model or a dict)."""
    if response is None:
        return None
    data: dict[str, Any] = (
        response.model_dump(mode="json") if hasattr(response, "model_dump") else dict(response)
    )
    model = data.get("model") or {}
    labels: list[str] = []
    scores: list[float] = []
    for r in data.get("results") or []:
        taxon = r.get("taxon")
        label = r.get("label") or (taxon.get("label") if isinstance(taxon, dict) else taxon)
        if label is None or r.get("score") is None:
            continue
        labels.append(str(label))
        scores.append(float(r["score"]))
    if not model.get("name") or not model.get("version"):
        return None
    return PredictionFields(
        model_name=str(model["name"]),
        model_version=str(model["version"]),
        labels=labels,
        scores=scores,
        result=data,
    )


def _prediction_columns(session: Session, pred: PredictionFields | None) -> dict[str, Any]:
    if pred is None:
        return {}
    taxa = labels_to_taxa(session, pred.labels)
    top1 = pred.scores[0] if pred.scores else None
    margin = (pred.scores[0] - pred.scores[1]) if len(pred.scores) > 1 else top1
    # Keep what the answer says about the observation; per-photo details and timings stay out of the row.
    stored = {
        k: v for k, v in pred.result.items() if k in ("model", "results", "rollup", "out_of_distribution")
    }
    stored["top_k"] = [
        {"label": lbl, "score": s, "taxon_id": taxa.get(lbl)}
        for lbl, s in zip(pred.labels, pred.scores, strict=True)
    ]
    predicted = taxa.get(pred.labels[0]) if pred.labels else None
    return {
        "model_name": pred.model_name,
        "model_version": pred.model_version,
        "top1_score": top1,
        "top_margin": margin,
        "predicted_taxon_id": predicted,
        "taxon_id": predicted,
        "prediction": stored,
    }


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

    root: Path = settings.media_path
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
                    status="needs_id",
                    **resolved.__dict__,
                    **_prediction_columns(session, prediction),
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


# -- read, list, update --------------------------------------------------------------------------------


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


@dataclass
class ObservationFilters:
    status: str | None = None
    taxon: str | None = None
    observer: int | None = None
    session_id: str | None = None
    observed_from: datetime | None = None
    observed_to: datetime | None = None
    bbox: str | None = None
    limit: int = 50
    offset: int = 0
    cursor: str | None = None


def parse_bbox(value: str) -> tuple[float, float, float, float]:
    """``min_lon,min_lat,max_lon,max_lat`` (GeoJSON order); a box may cross the antimeridian."""
    try:
        parts = [float(p) for p in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4 or any(p != p for p in parts):
        raise InvalidRequest(
            "bbox must be four numbers: min_lon,min_lat,max_lon,max_lat", detail={"field": "bbox"}
        )
    min_lon, min_lat, max_lon, max_lat = parts
    if not (-180 <= min_lon <= 180 and -180 <= max_lon <= 180 and -90 <= min_lat <= max_lat <= 90):
        raise InvalidRequest(
            "bbox is out of range: longitudes in [-180, 180], latitudes in [-90, 90] with min_lat <= max_lat",
            detail={"field": "bbox"},
        )
    return min_lon, min_lat, max_lon, max_lat


def encode_cursor(obs_id: int) -> str:
    return base64.urlsafe_b64encode(f"o:{obs_id}".encode()).decode().rstrip("=")


def decode_cursor(value: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        if not raw.startswith("o:"):
            raise ValueError(raw)
        return int(raw[2:])
    except Exception:
        raise InvalidRequest(
            "malformed cursor; pass back the next_cursor of a previous page", detail={"field": "cursor"}
        ) from None


def filter_conditions(session: Session, user: User, f: ObservationFilters) -> list[ColumnElement[bool]]:
    cond: list[ColumnElement[bool]] = []
    if not can_see_all(user):
        cond.append(Observation.observer_id == user.id)
    if f.status is not None:
        if f.status not in STATUSES:
            raise InvalidRequest(f"unknown status {f.status!r}; known: {list(STATUSES)}")
        cond.append(Observation.status == f.status)
    if f.taxon is not None:
        cond.append(subtree_condition(Observation.taxon_id, resolve_taxon(session, f.taxon)))
    if f.observer is not None:
        cond.append(Observation.observer_id == f.observer)
    if f.session_id is not None:
        cond.append(Observation.session_id == f.session_id)
    if f.observed_from is not None:
        cond.append(Observation.observed_at >= as_utc(f.observed_from))
    if f.observed_to is not None:
        cond.append(Observation.observed_at <= as_utc(f.observed_to))
    if f.bbox is not None:
        min_lon, min_lat, max_lon, max_lat = parse_bbox(f.bbox)
        cond.append(Observation.latitude.between(min_lat, max_lat))
        if min_lon <= max_lon:
            cond.append(Observation.longitude.between(min_lon, max_lon))
        else:
            cond.append(or_(Observation.longitude >= min_lon, Observation.longitude <= max_lon))
    return cond


def list_observations(
    session: Session, user: User, f: ObservationFilters
) -> tuple[list[Observation], int, str | None]:
    """One page of the observations ``user`` may see, newest first, with the total count and next cursor."""
    cond = filter_conditions(session, user, f)
    count = session.scalar(select(func.count(Observation.id)).where(*cond)) or 0
    stmt = select(Observation).where(*cond)
    # A cursor (the last id of the previous page) wins over an offset.
    stmt = stmt.where(Observation.id < decode_cursor(f.cursor)) if f.cursor else stmt.offset(f.offset)
    rows = list(session.scalars(stmt.order_by(Observation.id.desc()).limit(f.limit)))
    next_cursor = encode_cursor(rows[-1].id) if len(rows) == f.limit else None
    return rows, int(count), next_cursor


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


# -- public representation -----------------------------------------------------------------------------


def taxon_dict(t: Taxon | None) -> dict[str, Any] | None:
    if t is None:
        return None
    return {
        "id": t.id,
        "scientific_name": t.scientific_name,
        "common_name": t.common_name,
        "rank": t.rank,
        "parent_id": t.parent_id,
        "group": t.group,
    }


def taxa_by_id(session: Session, ids: set[int]) -> dict[int, Taxon]:
    """The taxa with these ids, in one query."""
    return {t.id: t for t in session.scalars(select(Taxon).where(Taxon.id.in_(ids)))} if ids else {}


def user_names(session: Session, ids: set[int]) -> dict[int, str]:
    """User names by id, in one query."""
    if not ids:
        return {}
    return {uid: name for uid, name in session.execute(select(User.id, User.name).where(User.id.in_(ids)))}


def to_public(session: Session, rows: Sequence[Observation]) -> list[dict[str, Any]]:
    """Observations as :class:`~service.api.schemas.observations.ObservationPublic` dicts (batched look-ups)."""
    taxon_ids = {
        i
        for o in rows
        for i in (o.taxon_id, o.community_taxon_id, o.flower_taxon_id, o.predicted_taxon_id)
        if i is not None
    }
    taxa = taxa_by_id(session, taxon_ids)
    names = user_names(session, {o.observer_id for o in rows})
    out = []
    for o in rows:
        prediction = None
        if o.model_name:
            prediction = {
                "model_name": o.model_name,
                "model_version": o.model_version,
                "top1_score": o.top1_score,
                "top_margin": o.top_margin,
                "taxon": taxon_dict(taxa.get(o.predicted_taxon_id or -1)),
                "result": o.prediction,
            }
        out.append(
            {
                "id": o.id,
                "observer_id": o.observer_id,
                "observer_name": names.get(o.observer_id),
                "session_id": o.session_id,
                "observed_at": as_utc(o.observed_at),
                "observed_at_source": o.observed_at_source,
                "latitude": o.latitude,
                "longitude": o.longitude,
                "coordinate_precision_m": o.coordinate_precision_m,
                "location_source": o.location_source,
                "flower_text": o.flower_text,
                "flower_taxon": taxon_dict(taxa.get(o.flower_taxon_id or -1)),
                "licence": o.licence,
                "notes": o.notes,
                "status": o.status,
                "taxon": taxon_dict(taxa.get(o.taxon_id or -1)),
                "community_taxon": taxon_dict(taxa.get(o.community_taxon_id or -1)),
                "consensus_score": o.consensus_score,
                "identification_count": o.identification_count,
                "photos": [
                    {
                        "position": p.position,
                        "sha256": p.sha256,
                        "url": f"/api/v1/media/{p.sha256}",
                        "mime_type": p.mime_type,
                        "width": p.width,
                        "height": p.height,
                        "size_bytes": p.size_bytes,
                    }
                    for p in o.photos
                ],
                "prediction": prediction,
                "created_at": as_utc(o.created_at),
                "updated_at": as_utc(o.updated_at),
            }
        )
    return out
