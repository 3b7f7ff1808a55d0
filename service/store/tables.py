"""SQLAlchemy ORM tables. (Request and response classes live in :mod:`service.api.schemas`.)

The schema is owned by the Alembic migrations in :mod:`service.store.migrations`; a test checks that the
migrations and these classes describe the same schema on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from service.core.vocabulary import JobState, ObservationStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always gives back aware UTC datetimes.

    SQLite keeps no offset: without this, values read back are naive, and answers would carry
    timestamps without a zone (not RFC 3339) and aware/naive comparisons would fail. Values are stored
    in UTC (naive ones are taken as UTC).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UtcDateTime()}  # noqa: RUF012


class ModelVersion(Base):
    """A registered model version. Exactly one row is active at a time (or none)."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))
    active: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(default=None)
    card: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # service.inference.versions: candidate, gate_passed, gate_failed, released, retired (None: not yet read from disk).
    state: Mapped[str | None] = mapped_column(String(16), default=None)
    # release (the read-only models folder) or trained (the data folder's trained models folder).
    origin: Mapped[str | None] = mapped_column(String(16), default=None)
    state_reason: Mapped[str | None] = mapped_column(Text, default=None)
    state_changed_at: Mapped[datetime | None] = mapped_column(default=None)


class ModelActivation(Base):
    """One activation of a model version: who, why, and whether a gate had to be overridden (``forced``)."""

    __tablename__ = "model_activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    state: Mapped[str | None] = mapped_column(String(16), default=None)  # the version's state when activated
    previous: Mapped[str | None] = mapped_column(String(130), default=None)  # "name/version" active before
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


# -- users ---------------------------------------------------------------------------------------------


class User(Base):
    """A person using the service: ``volunteer``, ``expert`` (specialist) or ``admin``."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    keys: Mapped[list[ApiKey]] = relationship(back_populates="user", lazy="selectin")


class ApiKey(Base):
    """An API key, stored as HMAC-SHA256(server secret, key); the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    user: Mapped[User] = relationship(back_populates="keys")


# -- taxa ----------------------------------------------------------------------------------------------


class Taxon(Base):
    """A node of the taxonomic tree. ``path`` holds the ids from the root (``/1/5/9/``) for subtrees."""

    __tablename__ = "taxa"
    __table_args__ = (UniqueConstraint("rank", "scientific_name", name="uq_taxa_rank_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scientific_name: Mapped[str] = mapped_column(String(255), index=True)
    common_name: Mapped[str | None] = mapped_column(String(255), default=None, index=True)
    rank: Mapped[str] = mapped_column(String(32))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("taxa.id"), default=None, index=True)
    path: Mapped[str] = mapped_column(String(512), default="", index=True)
    group: Mapped[str | None] = mapped_column(String(64), default=None)


class TaxonName(Base):
    """A taxon's common name in one language (``fr``, ``de``, …). English stays in ``Taxon.common_name``;
    a language with no row for a taxon has no known name there (never a machine translation)."""

    __tablename__ = "taxon_names"

    taxon_id: Mapped[int] = mapped_column(ForeignKey("taxa.id", ondelete="CASCADE"), primary_key=True)
    language: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)


class TaxonLabel(Base):
    """A model label (an output class of some model) and the taxon it names."""

    __tablename__ = "taxon_labels"

    label: Mapped[str] = mapped_column(String(255), primary_key=True)
    taxon_id: Mapped[int] = mapped_column(ForeignKey("taxa.id", ondelete="CASCADE"), index=True)


# -- observations --------------------------------------------------------------------------------------


class Observation(Base):
    """One insect seen by a volunteer: 1–5 photos, where and when, and what the model and people said."""

    __tablename__ = "observations"
    __table_args__ = (
        UniqueConstraint("observer_id", "idempotency_key", name="uq_observations_observer_idempotency"),
        Index("ix_observations_queue", "status", "top1_score", "top_margin", "created_at"),
        # Where and when as evidence (service.nearby): validated observations in a bounding box.
        Index("ix_observations_place", "status", "latitude", "longitude"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    observer_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    session_id: Mapped[str | None] = mapped_column(String(128), default=None, index=True)
    observed_at: Mapped[datetime] = mapped_column(index=True)
    latitude: Mapped[float | None] = mapped_column(Float, default=None)
    longitude: Mapped[float | None] = mapped_column(Float, default=None)
    coordinate_precision_m: Mapped[float | None] = mapped_column(Float, default=None)
    location_source: Mapped[str | None] = mapped_column(String(16), default=None)
    observed_at_source: Mapped[str] = mapped_column(String(16), default="user")
    flower_text: Mapped[str | None] = mapped_column(String(255), default=None)
    flower_taxon_id: Mapped[int | None] = mapped_column(ForeignKey("taxa.id"), default=None)
    licence: Mapped[str] = mapped_column(String(16))
    notes: Mapped[str | None] = mapped_column(Text, default=None)
    status: Mapped[str] = mapped_column(String(16), default=ObservationStatus.needs_id.value, index=True)
    # The best current taxon: the community taxon once there is one, else the model's suggestion.
    taxon_id: Mapped[int | None] = mapped_column(ForeignKey("taxa.id"), default=None, index=True)
    community_taxon_id: Mapped[int | None] = mapped_column(ForeignKey("taxa.id"), default=None)
    consensus_score: Mapped[float | None] = mapped_column(Float, default=None)
    agreement_weight: Mapped[float] = mapped_column(Float, default=0.0)
    identification_count: Mapped[int] = mapped_column(Integer, default=0)
    validated_at: Mapped[datetime | None] = mapped_column(default=None)
    # The model's prediction when the observation was created.
    model_name: Mapped[str | None] = mapped_column(String(64), default=None)
    model_version: Mapped[str | None] = mapped_column(String(64), default=None)
    predicted_taxon_id: Mapped[int | None] = mapped_column(ForeignKey("taxa.id"), default=None)
    top1_score: Mapped[float | None] = mapped_column(Float, default=None)
    top_margin: Mapped[float | None] = mapped_column(Float, default=None)
    prediction: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Validation-queue lease: one expert at a time works on an observation.
    lease_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), default=None)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    photos: Mapped[list[Photo]] = relationship(
        back_populates="observation", lazy="selectin", order_by="Photo.position", cascade="all, delete-orphan"
    )


class Photo(Base):
    """A photo of an observation; the file is ``media/<sha[:2]>/<sha>``, shared by identical uploads."""

    __tablename__ = "photos"
    __table_args__ = (UniqueConstraint("observation_id", "position", name="uq_photos_observation_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    observation_id: Mapped[int] = mapped_column(ForeignKey("observations.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    mime_type: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)

    observation: Mapped[Observation] = relationship(back_populates="photos")


class Identification(Base):
    """One person's identification of an observation; withdrawn, never deleted (the audit trail)."""

    __tablename__ = "identifications"
    __table_args__ = (Index("ix_identifications_observation_current", "observation_id", "current"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    observation_id: Mapped[int] = mapped_column(ForeignKey("observations.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    user_role: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    taxon_id: Mapped[int | None] = mapped_column(ForeignKey("taxa.id"), default=None)
    disagreement: Mapped[bool] = mapped_column(Boolean, default=False)
    comment: Mapped[str | None] = mapped_column(Text, default=None)
    # What the person saw: the model's suggestion and the community taxon at the time.
    model_suggestion: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # False once withdrawn or superseded by the same person's newer identification.
    current: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    withdrawn_at: Mapped[datetime | None] = mapped_column(default=None)


# -- jobs ----------------------------------------------------------------------------------------------


class Job(Base):
    """A background job (retrain, export): queued → running → succeeded | failed | cancelled.

    A worker claims a queued row atomically, heartbeats while it runs, and streams progress, the current
    epoch, metrics and a log tail into the row. A running job whose heartbeat is stale (its worker died)
    is re-queued until ``max_attempts``, then failed with the reason.
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_id", "state", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default=JobState.queued.value)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(32), default=None)
    epoch: Mapped[int | None] = mapped_column(Integer, default=None)
    epochs: Mapped[int | None] = mapped_column(Integer, default=None)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    log_tail: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# -- occurrences (where and when as evidence, service.nearby) -----------------------------------------


class OccurrenceImport(Base):
    """One imported occurrence download (a GBIF Darwin Core Archive): its file, what was read and kept."""

    __tablename__ = "occurrence_imports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_name: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    rows_read: Mapped[int] = mapped_column(Integer, default=0)
    rows_imported: Mapped[int] = mapped_column(Integer, default=0)
    # Rows whose taxon the installation does not know (no species, genus, family or order of its taxa).
    rows_unknown_taxon: Mapped[int] = mapped_column(Integer, default=0)
    # Rows without coordinates or without a month (they say nothing about where or when).
    rows_incomplete: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OccurrenceRecord(Base):
    """One occurrence of an imported download: taxon, place and season (month, day of the year)."""

    __tablename__ = "occurrence_records"
    __table_args__ = (Index("ix_occurrence_records_place", "latitude", "longitude", "day_of_year"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    import_id: Mapped[int] = mapped_column(ForeignKey("occurrence_imports.id", ondelete="CASCADE"), index=True)
    taxon_id: Mapped[int] = mapped_column(ForeignKey("taxa.id", ondelete="CASCADE"), index=True)
    latitude: Mapped[float] = mapped_column(Float)
    longitude: Mapped[float] = mapped_column(Float)
    month: Mapped[int] = mapped_column(Integer)
    # 1..366; for a record dated to the month only, the middle of that month.
    day_of_year: Mapped[int] = mapped_column(Integer)
