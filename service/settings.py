"""Service settings, read from ``POLLINID_*`` environment variables."""

from __future__ import annotations

import os
import re
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.core.bundle import bundled_frontend_dir, bundled_models_dir


def _load_or_create_secret(path: Path) -> str:
    """Read the server secret, creating it atomically (first process wins) when missing."""
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_urlsafe(48))
        fh.flush()
        os.fsync(fh.fileno())
    return path.read_text(encoding="ascii").strip()


class Settings(BaseSettings):
    """All configuration of a pollinid process. Every field maps to ``POLLINID_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="POLLINID_", env_file=None, extra="ignore")

    data_dir: Path = Field(default=Path("./pollinid-data"), description="SQLite file and media live here")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in data_dir")
    models_dir: Path = Field(default_factory=bundled_models_dir)
    media_dir: Path | None = None
    frontend_dir: Path = Field(default_factory=bundled_frontend_dir)

    # Model selection: when nothing is activated in the database, the newest version of this name is used.
    default_model: str | None = None
    # Where retrain jobs write the versions they train (candidates until their gate passes); default
    # data_dir/models. Never the releases folder above (the installed package may be read only and shared).
    trained_models_dir: Path | None = None
    # The reference photos shown on suggestion cards after those of validated observations (``pollinid
    # references build``); default: models_dir/references when it exists, else the bundled one.
    references_dir: Path | None = None

    # Upload and decoding limits.
    max_upload_bytes: int = 20 * 1024 * 1024
    max_request_bytes: int = 60 * 1024 * 1024
    max_images: int = 5
    max_image_pixels: int = 50_000_000
    max_image_side: int = 20_000

    # Identification.
    default_top_k: int = 5
    max_top_k: int = 50
    rollup_threshold: float = 0.8

    # Inference runtime.
    providers: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when a CUDA session really works
    intra_op_threads: int = 0  # 0: number of cores
    inter_op_threads: int = 1
    # Network file on the CPU provider: the card's CPU default variant (auto), model.onnx (fp32) or its int8
    # variant (int8). CUDA always runs model.onnx.
    cpu_variant: Literal["auto", "fp32", "int8"] = "auto"
    max_batch: int = 16
    max_wait_ms: float = 5.0
    # Run a batch at once when no other photo is being decoded (a lone request never waits max_wait_ms);
    # False always waits up to max_wait_ms for companions.
    batch_eager: bool = True
    decode_threads: int = 0  # 0: number of cores

    # Access.
    identify_requires_key: bool = False
    # HMAC key for API-key digests. Empty: a random secret is created once in data_dir/secret_key (mode 0600)
    # and shared by every process using that data folder.
    secret_key: str = Field(default="", repr=False)

    # Observations, consensus and the validation queue.
    # N: the weighted agreeing identifications a community taxon needs (SPIPOLL asks for 3).
    consensus_min_agreements: float = Field(default=2.0, gt=0)
    # The share of agreements a taxon must exceed.
    consensus_threshold: float = Field(default=2 / 3, gt=0, lt=1)
    # The weight of an expert's identification (a volunteer's weighs 1).
    consensus_specialist_weight: float = Field(default=1.0, gt=0)
    # How long a validation-queue item stays leased to one expert.
    queue_lease_seconds: float = Field(default=600.0, gt=0)
    # The most validation-queue items one expert may hold leased at once (one call asked for 46 of 47).
    queue_max_leases_per_expert: int = Field(default=20, ge=1, le=1000)
    # Base URL written into exports (occurrence and media links).
    public_base_url: str = "http://127.0.0.1:8000"
    export_title: str = "pollinid observations of pollinating insects"
    export_publisher: str = "pollinid"

    # Where and when as evidence (service.nearby): records of each candidate taxon (validated observations and
    # imported occurrences) within nearby_radius_km of the photo's place and nearby_season_days of its day of
    # the year (circular) re-rank the suggestions, by at most the clip range; the committed answer never
    # changes. The weights were chosen on the fit half of bench/expected_nearby.py (docs/benchmarks.md).
    nearby_radius_km: float = Field(default=100.0, gt=0, le=2000)
    nearby_season_days: int = Field(default=30, ge=1, le=183)
    nearby_alpha: float = Field(default=1.0, gt=0)
    nearby_weight: float = Field(default=1.5, ge=0, le=4)
    nearby_clip_low: float = Field(default=0.33, gt=0, le=1)
    nearby_clip_high: float = Field(default=3.0, ge=1)
    # Occurrence downloads (pollinid occurrences import, POST /api/v1/admin/occurrences): the archive's size
    # (over the REST API it is also bounded by max_request_bytes), what it may unpack to, its compression
    # ratio (zip bombs) and its number of rows.
    occurrence_max_upload_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    occurrence_max_uncompressed_bytes: int = Field(default=2 * 1024 * 1024 * 1024, ge=1)
    occurrence_max_compression_ratio: float = Field(default=100.0, ge=1)
    occurrence_max_rows: int = Field(default=5_000_000, ge=1)

    # Activation polling (several processes share one database).
    model_poll_seconds: float = 2.0

    # Background jobs (retrain, exports) and the worker that runs them.
    jobs_dir: Path | None = Field(default=None, description="job folders and outputs; default data_dir/jobs")
    job_max_attempts: int = Field(default=3, ge=1, le=20, description="runs of a job whose worker died")
    worker_heartbeat_seconds: float = Field(default=2.0, gt=0)
    # A running job whose heartbeat is older than this is taken as dead (its worker was killed).
    worker_stale_seconds: float = Field(default=30.0, gt=0)
    worker_poll_seconds: float = Field(default=1.0, gt=0)
    job_log_lines: int = Field(default=200, ge=10, le=10_000)
    # A species not in the base dataset joins the model once it has this many validated photos.
    retrain_min_new_class_photos: int = Field(default=10, ge=1)
    # Folders a retrain request may read its base dataset and backbone weights from (comma-separated); a
    # path that resolves (symbolic links and ``..`` followed) outside them is refused. Empty: data_dir/datasets.
    retrain_data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)

    # Hardening (see service/api/ratelimit.py, service/api/security.py and docs/hardening.md).
    # Rate limits: requests per window per client address and per API key. 0 turns one limit off;
    # rate_limit_enabled=False turns both off (benches). The counters live in rate_limit_storage, a URI of
    # the ``limits`` library: memory:// (the default) is per process (each uvicorn worker counts on its own),
    # redis://host:6379 is shared by every process.
    rate_limit_enabled: bool = True
    rate_limit_per_ip: int = Field(default=1200, ge=0)
    rate_limit_per_key: int = Field(default=600, ge=0)
    rate_limit_window_seconds: int = Field(default=60, ge=1, le=86_400)
    rate_limit_storage: str = "memory://"
    # Shared rate limits: with a Redis URL (redis://host:6379/0, rediss:// for TLS, redis+unix://) the counters
    # of every process and replica live in that Redis (it takes precedence over rate_limit_storage), their keys
    # under redis_key_prefix so that several deployments can share one Redis. A decision waits at most
    # redis_timeout_seconds for Redis; past it, or with Redis down, each process counts on its own until
    # Redis answers again (docs/hardening.md).
    redis_url: str | None = None
    redis_key_prefix: str = Field(default="pollinid", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    redis_timeout_seconds: float = Field(default=0.2, gt=0, le=10)
    # Addresses (IPs or CIDR networks, comma-separated) of the reverse proxies whose X-Forwarded-For and
    # X-Forwarded-Proto are believed. Empty (the default): forwarded headers are ignored, the client address
    # is the TCP peer's, so a client cannot give itself a fresh per-IP quota with a forged header.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Origins allowed to call the API from a browser (CORS), comma-separated; default none (same origin).
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Strict-Transport-Security max-age; set it (e.g. 31536000) only when the service is reached over HTTPS.
    hsts_seconds: int = Field(default=0, ge=0)
    # Photo uploads (POST /identify and /observations) handled at once per process; past it a request waits
    # up to upload_queue_seconds for a slot (reading nothing of its body), then gets 503 with Retry-After.
    # Bounds the upload bytes held in memory. 0: no limit. ``pollinid serve --max-concurrent-uploads``.
    max_concurrent_uploads: int = Field(default=16, ge=0, le=10_000)
    upload_queue_seconds: float = Field(default=30.0, ge=0, le=600)
    # And at most this many announced bytes (Content-Length) of those uploads at once (0: no byte limit): an
    # upload may be held in memory whole while it is parsed, so this bounds the memory uploads take.
    max_upload_bytes_in_flight: int = Field(default=256 * 1024 * 1024, ge=0)
    # uvicorn's --limit-concurrency for `pollinid serve` (connections and tasks; 503 past it); 0: none.
    limit_concurrency: int = Field(default=0, ge=0)
    # A request body must arrive within this many seconds (slow uploads get 408).
    body_timeout_seconds: float = Field(default=60.0, gt=0)
    # Orphan temporary media files younger than this are left alone at start (another process may be
    # writing them).
    orphan_grace_seconds: float = Field(default=3600.0, ge=0)
    # Every this many seconds a serving process also removes those old temporary files (a long-running
    # server must not keep what a killed upload left) and trims its heap; 0: only at start.
    housekeeping_seconds: float = Field(default=300.0, ge=0)
    # glibc malloc: allocations from this size up get their own mapping, returned to the system when freed,
    # so bursts of large uploads do not leave the process bloated. 0: glibc's default (dynamic threshold).
    malloc_mmap_threshold: int = Field(default=256 * 1024, ge=0, le=32 * 1024 * 1024)

    # GET /metrics (Prometheus): served when enabled; with a token set, only to `Authorization: Bearer
    # <token>` (Prometheus: `authorization: {credentials: ...}`). Default: served to anyone who reaches the
    # port, as exporters are: keep it off the public side of the proxy, or set a token.
    metrics_enabled: bool = True
    metrics_token: str = Field(default="", repr=False)

    # Object store (docs/storage.md): photos and trained model versions in an S3-compatible bucket, shared by
    # every replica, instead of media_dir and trained_models_dir. s3://bucket or s3://bucket/prefix; empty
    # (the default): the local folders. Credentials: s3_access_key_id/s3_secret_access_key, else boto3's
    # usual AWS_* variables and files. s3_endpoint_url: MinIO, Ceph, ... (empty: AWS).
    object_store_url: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = ""
    s3_access_key_id: str = Field(default="", repr=False)
    s3_secret_access_key: str = Field(default="", repr=False)
    # Short timeouts and few attempts: a store that is down gives a 503 (Retry-After below) within seconds.
    object_store_connect_timeout: float = Field(default=2.0, gt=0, le=120)
    object_store_read_timeout: float = Field(default=5.0, gt=0, le=600)
    object_store_max_attempts: int = Field(default=2, ge=1, le=10)
    object_store_retry_after: int = Field(default=5, ge=1, le=3600)
    # Where a replica keeps the trained model versions it downloaded from the object store; default
    # data_dir/model-cache.
    model_cache_dir: Path | None = None

    log_level: str = "INFO"

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("retrain_data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("object_store_url")
    @classmethod
    def _check_object_store_url(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[A-Za-z0-9_.+\-/]*)?", value):
            raise ValueError(f"object_store_url {value!r}: expected s3://bucket or s3://bucket/prefix")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        value = (value or "").strip()
        if value and not re.match(r"(async\+)?(redis|rediss|redis\+unix)://", value):
            raise ValueError("redis_url: expected redis://host:port/db, rediss://... or redis+unix:///path")
        return value or None

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        if self.media_dir is None:
            self.media_dir = self.data_dir / "media"
        if not self.secret_key:
            self.secret_key = _load_or_create_secret(self.data_dir / "secret_key")
        if self.jobs_dir is None:
            self.jobs_dir = self.data_dir / "jobs"
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'pollinid.sqlite3').resolve()}"

    @property
    def media_path(self) -> Path:
        assert self.media_dir is not None
        return self.media_dir

    @property
    def trained_models_path(self) -> Path:
        """The folder of trained model versions (``trained_models_dir``, else data_dir/models)."""
        return self.trained_models_dir if self.trained_models_dir is not None else self.data_dir / "models"

    @property
    def references_path(self) -> Path:
        """The folder of the bundled reference photos (``references_dir``, else ``models_dir/references`` when it
        exists, else the one shipped with pollinid)."""
        if self.references_dir is not None:
            return self.references_dir
        beside = self.models_dir / "references"
        return beside if beside.is_dir() else bundled_models_dir() / "references"

    @property
    def reference_thumbs_path(self) -> Path:
        """Small copies of validated observations' photos, made on demand (per replica; safe to delete)."""
        return self.data_dir / "reference-thumbs"

    @property
    def model_cache_path(self) -> Path:
        """Trained model versions downloaded from the object store (``model_cache_dir``, else data_dir/model-cache)."""
        return self.model_cache_dir if self.model_cache_dir is not None else self.data_dir / "model-cache"

    @property
    def jobs_path(self) -> Path:
        assert self.jobs_dir is not None
        return self.jobs_dir


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, built once per process."""
    return Settings()
