"""The object-store contract, on both backends: a local folder and a real S3 server (moto) on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.settings import Settings
from service.store.objects import (
    LocalStore,
    ObjectMissing,
    ObjectStore,
    S3Store,
    StorageUnavailable,
    check_key,
    media_store,
    model_store,
    object_root,
    parse_s3_url,
)
from tests.conftest import S3_CREDENTIALS


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "objects")
    url = request.getfixturevalue("object_store_url")
    settings = Settings(data_dir=tmp_path / "data", object_store_url=url,
                        s3_endpoint_url=request.getfixturevalue("s3_endpoint"), **S3_CREDENTIALS)
    root = object_root(settings)
    assert root is not None
    return root.child("contract")


def test_put_get_exists_delete(store: ObjectStore) -> None:
    assert not store.exists("ab/abc")
    with pytest.raises(ObjectMissing):
        store.get("ab/abc")
    store.put("ab/abc", b"hello")
    assert store.exists("ab/abc") and store.get("ab/abc") == b"hello"
    store.put("ab/abc", b"replaced")  # a put replaces, whole
    assert store.get("ab/abc") == b"replaced"
    store.delete("ab/abc")
    assert not store.exists("ab/abc")
    store.delete("ab/abc")  # deleting what is absent is no error


def test_open_streams_in_chunks_with_the_size(store: ObjectStore) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: several chunks
    store.put("big/blob", data)
    reader = store.open("big/blob")
    assert reader.size == len(data)
    chunks = list(reader.chunks)
    reader.close()
    assert len(chunks) > 1 and b"".join(chunks) == data
    with pytest.raises(ObjectMissing):
        store.open("big/none")


def test_put_file_and_download(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 300_000)
    store.put_file("m/1/model.onnx", src)
    out = tmp_path / "out.bin"
    store.download("m/1/model.onnx", out)
    assert out.read_bytes() == src.read_bytes()


def test_list_by_prefix(store: ObjectStore) -> None:
    for key in ("a/1", "a/2", "a/b/3", "ab/4", "c/5"):
        store.put(key, key.encode())
    assert sorted(store.list("a")) == ["a/1", "a/2", "a/b/3"]  # not ab/4: a prefix is a folder
    assert sorted(store.list()) == ["a/1", "a/2", "a/b/3", "ab/4", "c/5"]
    assert list(store.list("none")) == []


def test_many_keys_are_listed_past_one_page(store: ObjectStore) -> None:
    for i in range(1005):
        store.put(f"p/{i:05d}", b"")
    assert len(list(store.list("p"))) == 1005


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", "../x", "a//b", ".hidden", "a/.tmp-x", "a b", "a/\x00"])
def test_keys_cannot_escape(store: ObjectStore, bad: str) -> None:
    with pytest.raises(ValueError):
        store.put(bad, b"x")
    with pytest.raises(ValueError):
        check_key(bad)


def test_local_writes_leave_no_temporary_file_and_list_hides_them(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("ab/cd", b"1")
    (tmp_path / "ab" / ".tmp-killed").write_bytes(b"half")
    assert list(store.list()) == ["ab/cd"]
    assert store.local_path("ab/cd") == tmp_path / "ab" / "cd"


def test_settings_choose_the_backend(tmp_path: Path, s3_endpoint: str, object_store_url: str) -> None:
    local = Settings(data_dir=tmp_path / "d")
    assert isinstance(media_store(local), LocalStore) and model_store(local) is None
    remote = Settings(data_dir=tmp_path / "d", object_store_url=object_store_url, s3_endpoint_url=s3_endpoint,
                      **S3_CREDENTIALS)
    media, models = media_store(remote), model_store(remote)
    assert isinstance(media, S3Store) and media.url == f"{object_store_url}/media"
    assert models is not None and models.url == f"{object_store_url}/models"
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError):
        Settings(data_dir=tmp_path / "d", object_store_url="https://bucket/x")


# -- a store that is down or slow: StorageUnavailable, quickly --------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once the socket is closed


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server on loopback that accepts connections and never answers (a hung object store)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


def _unreachable(tmp_path: Path, endpoint: str) -> ObjectStore:
    settings = Settings(data_dir=tmp_path / "d", object_store_url="s3://down/p", s3_endpoint_url=endpoint,
                        object_store_connect_timeout=0.5, object_store_read_timeout=0.5,
                        object_store_max_attempts=1, object_store_retry_after=7, **S3_CREDENTIALS)
    return media_store(settings)


@pytest.mark.parametrize("kind", ["closed port", "silent server"])
def test_a_store_that_is_down_or_slow_is_unavailable_quickly(tmp_path: Path, kind: str,
                                                              request: pytest.FixtureRequest) -> None:
    endpoint = (f"http://127.0.0.1:{_closed_port()}" if kind == "closed port"
                else request.getfixturevalue("silent_server"))
    store = _unreachable(tmp_path, endpoint)
    for call in (lambda: store.put("ab/cd", b"x"), lambda: store.exists("ab/cd"), lambda: store.open("ab/cd"),
                 lambda: list(store.list())):
        t0 = time.monotonic()
        with pytest.raises(StorageUnavailable) as err:
            call()
        assert time.monotonic() - t0 < 5
        assert err.value.status_code == 503 and err.value.retry_after == 7
