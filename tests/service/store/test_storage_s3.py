"""Photos in an S3 bucket (a real S3 server on loopback): upload, serve, share between replicas, and faults.

The faults go through a TCP proxy on loopback in front of the S3 server that can be cut, at once or after
a number of uploads: the store goes down for real, mid-upload included.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.api.app import create_app
from service.settings import Settings
from service.store.objects import media_store
from service.store.storage import clean_orphans, media_key
from service.store.tables import Observation, Photo
from tests.helpers import photo_bytes
from tests.service.observation_support import BLUE, GREEN, RED, Env, make_env


class CuttableProxy:
    """Forwards loopback TCP connections to ``target``; :meth:`cut` drops them all and refuses new ones.

    ``cut_after_puts = n`` cuts the store when the (n+1)-th ``PUT`` request starts.
    """

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.url = f"http://127.0.0.1:{self.srv.getsockname()[1]}"
        self.down = False
        self.cut_after_puts: int | None = None
        self.puts = 0
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.srv.settimeout(0.2)
        while not self._stop:
            try:
                client, _ = self.srv.accept()
            except OSError:
                continue
            if self.down:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._socks += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upload: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or self.down:
                    break
                if upload and data.startswith(b"PUT "):
                    with self._lock:
                        self.puts += 1
                        if self.cut_after_puts is not None and self.puts > self.cut_after_puts:
                            self.down = True
                    if self.down:
                        self.cut()
                        break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.down = True
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.down, self.cut_after_puts, self.puts = False, None, 0

    def close(self) -> None:
        self._stop = True
        self.cut()
        self.srv.close()


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[CuttableProxy]:
    p = CuttableProxy(s3_endpoint)
    yield p
    p.close()


@pytest.fixture
def s3_env(s3_settings: Settings, proxy: CuttableProxy) -> Iterator[Env]:
    """The app (SQLite and PostgreSQL) with its photos in a fresh bucket, reached through the proxy."""
    settings = s3_settings.model_copy(update={"s3_endpoint_url": proxy.url, "object_store_max_attempts": 1,
                                              "object_store_connect_timeout": 1.0,
                                              "object_store_read_timeout": 2.0, "object_store_retry_after": 3})
    yield from make_env(settings)


def _bucket_shas(settings: Settings) -> list[str]:
    return sorted(k.split("/")[1] for k in media_store(settings).list())


def _local_files(settings: Settings) -> list[Path]:
    return [p for p in settings.media_path.rglob("*") if p.is_file()]


def _rows(env: Env) -> tuple[int, int]:
    with env.session() as s:
        return (s.scalar(select(func.count()).select_from(Observation)) or 0,
                s.scalar(select(func.count()).select_from(Photo)) or 0)


def test_photos_go_to_the_bucket_and_are_served_from_it(s3_env: Env) -> None:
    png = photo_bytes(GREEN, fmt="PNG")
    r = s3_env.post_obs(photos=[png, photo_bytes(RED)])
    assert r.status_code == 201, r.text
    body = r.json()
    sha = body["photos"][0]["sha256"]
    assert sha == hashlib.sha256(png).hexdigest()
    assert _bucket_shas(s3_env.settings) == sorted(p["sha256"] for p in body["photos"])
    assert _local_files(s3_env.settings) == []  # nothing on this replica's disk
    got = s3_env.client.get(body["photos"][0]["url"], headers=s3_env.h("vol"))
    assert got.status_code == 200 and got.content == png
    assert got.headers["content-type"] == "image/png" and got.headers["content-length"] == str(len(png))
    assert got.headers["etag"] == f'"{sha}"' and "immutable" in got.headers["cache-control"]
    assert got.headers["x-content-type-options"] == "nosniff"
    again = s3_env.client.get(body["photos"][0]["url"], headers=s3_env.h("vol", **{"If-None-Match": f'"{sha}"'}))
    assert again.status_code == 304 and again.content == b""
    assert s3_env.client.get(body["photos"][0]["url"], headers=s3_env.h("vol2")).status_code == 404
    assert s3_env.client.get("/api/v1/media/" + "a" * 64, headers=s3_env.h("exp")).status_code == 404


def test_another_replica_with_its_own_data_folder_serves_the_photo(s3_env: Env, tmp_path: Path) -> None:
    png = photo_bytes(BLUE, fmt="PNG")
    url = s3_env.post_obs(photos=[png]).json()["photos"][0]["url"]
    other = s3_env.settings.model_copy(update={"data_dir": tmp_path / "replica-b",
                                               "media_dir": tmp_path / "replica-b" / "media",
                                               "jobs_dir": tmp_path / "replica-b" / "jobs"})
    with TestClient(create_app(other)) as b:
        r = b.get(url, headers=s3_env.h("exp"))
        assert r.status_code == 200 and r.content == png
    assert _local_files(other) == []


def test_a_store_that_is_down_gives_503_with_retry_after_and_keeps_nothing(s3_env: Env,
                                                                           proxy: CuttableProxy) -> None:
    kept = s3_env.post_obs(photos=[photo_bytes(BLUE)]).json()
    proxy.cut()
    r = s3_env.post_obs(photos=[photo_bytes(GREEN)])
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "storage_unavailable" and r.headers["retry-after"] == "3"
    media = s3_env.client.get(kept["photos"][0]["url"], headers=s3_env.h("vol"))
    assert media.status_code == 503 and media.headers["retry-after"] == "3"
    assert media.json()["error"]["code"] == "storage_unavailable"
    # /identify does not touch the store.
    ident = s3_env.client.post("/api/v1/identify", files=[("photos", ("a.jpg", photo_bytes(RED), "image/jpeg"))])
    assert ident.status_code == 200, ident.text
    assert _rows(s3_env) == (1, 1)
    proxy.restore()
    assert s3_env.client.get(kept["photos"][0]["url"], headers=s3_env.h("vol")).status_code == 200
    assert _bucket_shas(s3_env.settings) == [kept["photos"][0]["sha256"]]


def test_a_store_that_fails_mid_upload_loses_nothing_acknowledged(s3_env: Env, proxy: CuttableProxy) -> None:
    kept = s3_env.post_obs(photos=[photo_bytes(BLUE)]).json()
    proxy.cut_after_puts = proxy.puts + 1  # the first photo of the next upload is stored, then the store dies
    r = s3_env.post_obs(photos=[photo_bytes(GREEN), photo_bytes(RED)])
    assert r.status_code == 503 and r.headers["retry-after"] == "3", r.text
    assert _rows(s3_env) == (1, 1)  # not acknowledged, not committed
    proxy.restore()
    # The half-stored upload left an object the failed request could not delete (the store was down); the
    # start-up cleaner of any replica removes it, and never a photo a committed row refers to.
    kept_sha = kept["photos"][0]["sha256"]
    left = _bucket_shas(s3_env.settings)
    assert kept_sha in left and len(left) == 2  # the green photo was stored before the store died
    clean_orphans(s3_env.app.state.sessionmaker, media_store(s3_env.settings))
    assert _bucket_shas(s3_env.settings) == [kept_sha]
    assert s3_env.client.get(kept["photos"][0]["url"], headers=s3_env.h("vol")).status_code == 200
    # And the same upload, retried, is stored whole.
    again = s3_env.post_obs(photos=[photo_bytes(GREEN), photo_bytes(RED)])
    assert again.status_code == 201 and _rows(s3_env) == (2, 3)


def test_orphans_in_the_bucket_are_removed_at_start(s3_env: Env) -> None:
    kept = s3_env.post_obs().json()["photos"][0]["sha256"]
    store = media_store(s3_env.settings)
    orphan = hashlib.sha256(b"orphan").hexdigest()
    store.put(media_key(orphan), b"orphan")
    with TestClient(create_app(s3_env.settings)):
        pass
    assert _bucket_shas(s3_env.settings) == [kept]


def test_the_service_starts_while_the_store_is_down(s3_env: Env, proxy: CuttableProxy) -> None:
    proxy.cut()
    with TestClient(create_app(s3_env.settings)) as c:
        r = c.post("/api/v1/identify", files=[("photos", ("a.jpg", photo_bytes(RED), "image/jpeg"))])
        assert r.status_code == 200, r.text
