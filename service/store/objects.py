"""Object storage behind one small interface: a local folder (the default) or an S3-compatible bucket.

Photos (:mod:`service.store.storage`) and trained model versions (:mod:`service.store.model_objects`) are
kept as objects under keys such as ``ab/ab12…`` (a photo's sha256) or ``pollinators/7/model.onnx``.
Both backends make an object visible only once it is complete:

* :class:`LocalStore` writes a temporary file (``.tmp-*``), fsyncs it and renames it into place;
* :class:`S3Store` uses ``PutObject``, which an S3 server applies atomically (a reader sees the old object,
  none, or the whole new one, never a part).

Settings (see :class:`service.settings.Settings` and docs/storage.md): ``POLLINID_OBJECT_STORE_URL``
(``s3://bucket/prefix``; empty: the local folders), ``POLLINID_S3_ENDPOINT_URL`` (MinIO, Ceph, …), the
region and credentials (else boto3's usual ``AWS_*`` variables and files), and short timeouts and retries.
A store that is down or slow raises :class:`StorageUnavailable`: a 503 with ``Retry-After``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.core.errors import PollinidError

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
CHUNK = 256 * 1024
KEY_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
MEDIA_PREFIX = "media"
MODELS_PREFIX = "models"


class StorageUnavailable(PollinidError):
    """The object store cannot be reached, is too slow or refuses us: try again later (503, Retry-After)."""

    status_code = 503
    code = "storage_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, detail: Any = None) -> None:
        super().__init__(message, detail=detail)
        self.retry_after = retry_after


class ObjectMissing(LookupError):
    """No object under this key."""


def check_key(key: str) -> str:
    """``key`` if it is a relative ``a/b/c`` path of plain names (no ``..``, no hidden or empty parts)."""
    parts = key.split("/")
    if not key or len(key) > 900 or not all(KEY_PART_RE.fullmatch(p) and p not in (".", "..") for p in parts):
        raise ValueError(f"invalid object key {key!r}")
    return key


@dataclass
class ObjectReader:
    """An object opened for reading: its size, its bytes in chunks, and (local store) its file."""

    size: int
    chunks: Iterator[bytes]
    close: Callable[[], None]
    path: Path | None = None

    def read(self) -> bytes:
        try:
            return b"".join(self.chunks)
        finally:
            self.close()


class ObjectStore(ABC):
    """Objects by key: put (atomic), get, open for streaming, exists, delete, list."""

    url: str

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (replacing any object there); visible only once complete."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key`` (large files are streamed, not read whole)."""

    @abstractmethod
    def open(self, key: str) -> ObjectReader:
        """Open ``key`` for reading. Raises :class:`ObjectMissing`."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` (nothing happens when it is absent)."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """The keys under ``prefix`` (``a/b`` lists ``a/b/...``; empty: everything), temporary files excluded."""

    def get(self, key: str) -> bytes:
        """The object's bytes. Raises :class:`ObjectMissing`."""
        return self.open(key).read()

    def download(self, key: str, path: Path) -> None:
        """Write the object to ``path`` (the caller renames it into place). Raises :class:`ObjectMissing`."""
        reader = self.open(key)
        try:
            with Path(path).open("wb") as fh:
                for chunk in reader.chunks:
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            reader.close()

    def local_path(self, key: str) -> Path | None:
        """The file holding ``key`` when this store is a local folder (else None)."""
        return None

    @property
    def is_local(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url})"


# -- the local folder ---------------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class LocalStore(ObjectStore):
    """Objects as files under ``root``: ``root/<key>``, written to a temporary name, fsynced and renamed."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    @property
    def is_local(self) -> bool:
        return True

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def _write(self, key: str, write: Callable[[Any], None]) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        fsync_dir(target.parent)

    def put(self, key: str, data: bytes) -> None:
        self._write(key, lambda fh: fh.write(data))

    def put_file(self, key: str, path: Path) -> None:
        def copy(fh: Any) -> None:
            with Path(path).open("rb") as src:
                for block in iter(lambda: src.read(CHUNK), b""):
                    fh.write(block)

        self._write(key, copy)

    def open(self, key: str) -> ObjectReader:
        path = self._path(key)
        try:
            fh = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectMissing(key) from None
        size = os.fstat(fh.fileno()).st_size
        return ObjectReader(size, iter(lambda: fh.read(CHUNK), b""), fh.close, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(self.root)
            for name in sorted(filenames):
                if not name.startswith("."):
                    yield (rel / name).as_posix()


# -- S3 ----------------------------------------------------------------------------------------------------


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix")``.

    Raises:
        ValueError: not an ``s3://bucket[/prefix]`` URL.
    """
    m = re.fullmatch(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?", url.strip())
    if not m:
        raise ValueError(f"object store URL {url!r}: expected s3://bucket or s3://bucket/prefix")
    prefix = (m.group(2) or "").strip("/")
    if prefix:
        check_key(prefix)
    return m.group(1), prefix


_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class S3Store(ObjectStore):
    """Objects in an S3 bucket under ``prefix/``, through a boto3 client (short timeouts, few retries)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, retry_after: int = 5) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.retry_after = retry_after
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def child(self, name: str) -> S3Store:
        return S3Store(self.client, self.bucket, f"{self.prefix}/{check_key(name)}".strip("/"),
                       retry_after=self.retry_after)

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _errors(self, op: str, key: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND:
                raise ObjectMissing(key) from None
            logger.warning("object store %s %s/%s failed: %s", op, self.url, key, exc)
            raise StorageUnavailable(f"the object store refused {op} ({code or 'error'}); try again later",
                                     retry_after=self.retry_after) from exc
        except BotoCoreError as exc:  # connection refused, timeouts, closed connections
            logger.warning("object store %s %s/%s failed: %s", op, self.url, key, exc)
            raise StorageUnavailable("the object store cannot be reached; try again later",
                                     retry_after=self.retry_after) from exc

    def put(self, key: str, data: bytes) -> None:
        with self._errors("put", key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, path: Path) -> None:
        # One PutObject (atomic) even for a model file: upload_file would switch to a multipart upload,
        # which is atomic too, but a failed one leaves parts behind until the bucket's lifecycle removes them.
        with self._errors("put", key), Path(path).open("rb") as fh:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=fh)

    def open(self, key: str) -> ObjectReader:
        with self._errors("get", key):
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        body = answer["Body"]

        def chunks() -> Iterator[bytes]:
            with self._errors("read", key):
                yield from body.iter_chunks(CHUNK)

        return ObjectReader(int(answer.get("ContentLength", 0)), chunks(), body.close)

    def exists(self, key: str) -> bool:
        try:
            with self._errors("head", key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ObjectMissing:
            return False
        return True

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        full = self._key(prefix) + "/" if prefix else (f"{self.prefix}/" if self.prefix else "")
        cut = len(self.prefix) + 1 if self.prefix else 0
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full, "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            with self._errors("list", prefix or "/"):
                page = self.client.list_objects_v2(**kwargs)
            for item in page.get("Contents", []):
                yield str(item["Key"])[cut:]
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")


# -- from the settings --------------------------------------------------------------------------------------

_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client for these settings (one per distinct configuration; boto3 clients are thread safe)."""
    key = (settings.s3_endpoint_url, settings.s3_region, settings.s3_access_key_id, settings.s3_secret_access_key,
           settings.object_store_connect_timeout, settings.object_store_read_timeout,
           settings.object_store_max_attempts)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=settings.object_store_connect_timeout,
                read_timeout=settings.object_store_read_timeout,
                retries={"total_max_attempts": settings.object_store_max_attempts, "mode": "standard"},
                s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
                max_pool_connections=32,
            )
            session = boto3.session.Session(
                aws_access_key_id=settings.s3_access_key_id or None,
                aws_secret_access_key=settings.s3_secret_access_key or None,
                region_name=settings.s3_region or None,
            )
            client = session.client("s3", endpoint_url=settings.s3_endpoint_url or None, config=config)
            _clients[key] = client
        return client


def object_root(settings: Settings) -> S3Store | None:
    """The configured bucket and prefix (``POLLINID_OBJECT_STORE_URL``), or None when objects stay local."""
    if not settings.object_store_url:
        return None
    bucket, prefix = parse_s3_url(settings.object_store_url)
    return S3Store(s3_client(settings), bucket, prefix, retry_after=settings.object_store_retry_after)


def media_store(settings: Settings) -> ObjectStore:
    """Where photos live: ``<object store>/media/`` when configured, else the local media folder."""
    root = object_root(settings)
    return root.child(MEDIA_PREFIX) if root is not None else LocalStore(settings.media_path)


def model_store(settings: Settings) -> S3Store | None:
    """Where trained model versions are shared: ``<object store>/models/``, or None (local folders only)."""
    root = object_root(settings)
    return root.child(MODELS_PREFIX) if root is not None else None
