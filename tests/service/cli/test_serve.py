"""``pollinid serve --workers N|auto``: several uvicorn processes that share the cores instead of each using all."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.cli import serve
from tests.hardening.support import ROOT, free_port
from tests.helpers import photo_bytes, write_tiny_model


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    return parser


def test_workers_take_a_number_or_auto() -> None:
    assert _parser().parse_args(["serve"]).workers == 1
    assert _parser().parse_args(["serve", "--workers", "3"]).workers == 3
    assert _parser().parse_args(["serve", "--workers", "auto"]).workers == (os.cpu_count() or 1)
    for bad in ("0", "-2", "many"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["serve", "--workers", bad])


def test_one_worker_keeps_the_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POLLINID_INTRA_OP_THREADS", raising=False)
    monkeypatch.delenv("POLLINID_DECODE_THREADS", raising=False)
    assert serve.threads_per_worker(1, cores=8) == {}


def test_several_workers_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POLLINID_INTRA_OP_THREADS", raising=False)
    monkeypatch.delenv("POLLINID_DECODE_THREADS", raising=False)
    assert serve.threads_per_worker(2, cores=2) == {"POLLINID_INTRA_OP_THREADS": "1", "POLLINID_DECODE_THREADS": "1"}
    assert serve.threads_per_worker(4, cores=16) == {"POLLINID_INTRA_OP_THREADS": "4",
                                                     "POLLINID_DECODE_THREADS": "4"}
    # More processes than cores: still one thread each, never 0 (which would mean every core).
    assert serve.threads_per_worker(3, cores=2) == {"POLLINID_INTRA_OP_THREADS": "1", "POLLINID_DECODE_THREADS": "1"}


def test_a_setting_given_in_the_environment_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLLINID_INTRA_OP_THREADS", "3")
    monkeypatch.delenv("POLLINID_DECODE_THREADS", raising=False)
    assert serve.threads_per_worker(2, cores=8) == {"POLLINID_DECODE_THREADS": "4"}


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if item)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_serve_with_two_workers_identifies_with_one_thread_each(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_tiny_model(models, "tiny", "1")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POLLINID_DATA_DIR": str(tmp_path / "data"),
           "POLLINID_MODELS_DIR": str(models), "POLLINID_SECRET_KEY": "serve-test"}
    for key in ("POLLINID_DATABASE_URL", "POLLINID_INTRA_OP_THREADS", "POLLINID_DECODE_THREADS",
                "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(key, None)
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", "2"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/v1/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        else:
            pytest.fail((tmp_path / "serve.log").read_text()[-3000:])
        for _ in range(4):
            r = httpx.post(f"{url}/api/v1/identify", files={"photos": ("a.jpg", photo_bytes(), "image/jpeg")},
                           timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["model"] == {"name": "tiny", "version": "1"}
        workers = [pid for pid in _children(proc.pid) if b"spawn_main" in
                   Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2, _children(proc.pid)
        for pid in workers:
            seen = _environ(pid)
            assert seen["POLLINID_INTRA_OP_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
            assert seen["POLLINID_DECODE_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
            assert seen["PROMETHEUS_MULTIPROC_DIR"]  # metrics of both workers aggregated
    finally:
        for pid in [*_children(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()
