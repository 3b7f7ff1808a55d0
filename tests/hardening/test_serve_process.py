"""Issue 16, items 6, 7 and 2: ``pollinid serve`` as a real process.

* 6: the ``--with-worker`` job worker stops with the server on SIGTERM and SIGINT, and does not outlive a
  server killed with SIGKILL.
* 7: ``X-Forwarded-For`` is believed only from ``POLLINID_TRUSTED_PROXIES`` (empty by default), so a forged
  header does not give a client a fresh per-IP quota.
* 2: ``--max-concurrent-uploads``: uploads past the limit wait, then get 503 with Retry-After.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.hardening.support import ROOT, free_port
from tests.helpers import photo_bytes, write_tiny_model


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _wait(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@contextlib.contextmanager
def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """``python -m service.cli.main serve`` on a free port, on SQLite, until ``/ready`` answers."""
    models = tmp_path / "models"
    if not models.exists():
        write_tiny_model(models, "tiny", "1")
    port = free_port()
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "POLLINID_DATA_DIR": str(tmp_path / "data"),
                "POLLINID_MODELS_DIR": str(models), "POLLINID_SECRET_KEY": "serve-test",
                "POLLINID_WORKER_POLL_SECONDS": "0.2", **(env or {})}
    full_env.pop("POLLINID_DATABASE_URL", None)
    log = (tmp_path / f"serve-{port}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), *args],
                            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        ok = _wait(lambda: proc.poll() is None and _ready(url), 90)
        assert ok, (tmp_path / f"serve-{port}.log").read_text()[-3000:]
        yield proc, url
    finally:
        for pid in [*_children(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/v1/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _worker_of(proc: subprocess.Popen) -> int:
    assert _wait(lambda: any(_is_worker(c) for c in _children(proc.pid)), 30), _children(proc.pid)
    return next(c for c in _children(proc.pid) if _is_worker(c))


def _is_worker(pid: int) -> bool:
    try:
        return b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


# -- item 6: the worker's lifetime -------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_worker_stops_with_the_server(tmp_path: Path, sig: signal.Signals) -> None:
    with serve(tmp_path, "--with-worker") as (proc, _):
        worker = _worker_of(proc)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        assert _wait(lambda: not _alive(worker), 40), f"worker {worker} outlived the server ({sig.name})"


def test_worker_does_not_outlive_a_killed_server(tmp_path: Path) -> None:
    with serve(tmp_path, "--with-worker") as (proc, _):
        worker = _worker_of(proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert _wait(lambda: not _alive(worker), 20), f"worker {worker} outlived a SIGKILLed server"


# -- item 7: forwarded headers -----------------------------------------------------------------------------


def _codes_with_forged_addresses(url: str, n: int) -> list[int]:
    return [httpx.get(f"{url}/api/v1/taxa", headers={"X-Forwarded-For": f"203.0.113.{i}"}, timeout=10).status_code
            for i in range(n)]


def test_forged_forwarded_for_gets_no_fresh_quota(tmp_path: Path) -> None:
    env = {"POLLINID_RATE_LIMIT_PER_IP": "3", "POLLINID_RATE_LIMIT_PER_KEY": "0"}
    with serve(tmp_path, env=env) as (_, url):
        codes = _codes_with_forged_addresses(url, 5)
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429], codes


def test_forwarded_for_is_believed_from_a_configured_proxy(tmp_path: Path) -> None:
    env = {"POLLINID_RATE_LIMIT_PER_IP": "3", "POLLINID_RATE_LIMIT_PER_KEY": "0",
           "POLLINID_TRUSTED_PROXIES": "127.0.0.1"}
    with serve(tmp_path, env=env) as (_, url):
        assert _codes_with_forged_addresses(url, 5) == [200] * 5  # one quota per real client behind the proxy
        codes = [httpx.get(f"{url}/api/v1/taxa", headers={"X-Forwarded-For": "198.51.100.7"}, timeout=10)
                 .status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429], codes


# -- item 2: the upload limit of `pollinid serve` ----------------------------------------------------------


def _slow_upload(url: str) -> socket.socket:
    """Start an /identify upload that announces 1 MiB and sends a few bytes: it holds an upload slot."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    boundary = "slowslowslow"
    s.sendall((f"POST /api/v1/identify HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1048576\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n--{boundary}\r\n").encode())
    return s


def test_uploads_past_the_limit_get_503_with_retry_after(tmp_path: Path) -> None:
    env = {"POLLINID_UPLOAD_QUEUE_SECONDS": "1", "POLLINID_RATE_LIMIT_ENABLED": "false"}
    with serve(tmp_path, "--max-concurrent-uploads", "1", env=env) as (_, url):
        slow = _slow_upload(url)
        try:
            time.sleep(0.5)
            t0 = time.monotonic()
            r = httpx.post(f"{url}/api/v1/identify", files=[("images", ("a.jpg", photo_bytes(), "image/jpeg"))],
                           timeout=30)
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "busy"
            assert r.json()["error"]["detail"]["max_concurrent_uploads"] == 1
            assert 0.9 < time.monotonic() - t0 < 10
            # Other routes are not limited.
            assert httpx.get(f"{url}/api/v1/taxa", timeout=10).status_code == 200
        finally:
            slow.close()
        # The slot is free again once the slow upload is gone.
        assert _wait(lambda: httpx.post(f"{url}/api/v1/identify", timeout=30, files=[
            ("images", ("a.jpg", photo_bytes(), "image/jpeg"))]).status_code == 200, 15)
