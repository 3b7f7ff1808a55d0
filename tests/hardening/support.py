"""A real ``uvicorn service.api.asgi:app`` subprocess on loopback, for the hardening tests and the load bench.

The service gets its own data folder, database and models folder; users are created in the database
before it starts. :class:`LiveService` can read the process's memory (``/proc/<pid>/status``), be killed
with any signal and be started again on the same data.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def distinct_photo(seed: int) -> bytes:
    """A distinct small JPEG per seed (random colour and noise), so every upload writes new media files."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.clip(rng.integers(0, 256, size=3) + rng.integers(-25, 26, size=(48, 64, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), "RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in KiB, from ``/proc/<pid>/status``."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def create_users(database_url: str, secret: str,
                 people: dict[str, str]) -> tuple[dict[str, str], dict[str, int]]:
    """Bring the schema up to date and create ``people`` (name -> role). Returns their keys and ids."""
    from service import accounts as auth
    from service.settings import Settings
    from service.store.db import create_db_engine, init_db, make_session_factory

    engine = create_db_engine(database_url)
    try:
        init_db(engine)
        settings = Settings(secret_key=secret, database_url=database_url)
        keys, ids = {}, {}
        with make_session_factory(engine)() as session:
            for name, role in people.items():
                user, key = auth.create_user(session=session, settings=settings, name=name, role=role)
                keys[name], ids[name] = key, user.id
            session.commit()
        return keys, ids
    finally:
        engine.dispose()


@dataclass
class LiveService:
    """One uvicorn process serving pollinid; :meth:`start` again after :meth:`kill` to restart it."""

    data_dir: Path
    database_url: str
    models_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    secret: str = "hardening-test-secret"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "POLLINID_DATA_DIR": str(self.data_dir),
            "POLLINID_DATABASE_URL": self.database_url,
            "POLLINID_MODELS_DIR": str(self.models_dir),
            "POLLINID_SECRET_KEY": self.secret,
            "POLLINID_LOG_LEVEL": "WARNING",
            "POLLINID_MAX_WAIT_MS": "2",
            **self.env,
        }

    def start(self, timeout: float = 90.0) -> LiveService:
        """Start uvicorn and wait until ``/api/v1/ready`` answers 200."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"uvicorn-{self.port}-{int(time.time() * 1000)}.log"
        cmd = [sys.executable, "-m", "uvicorn", "service.api.asgi:app", "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", str(self.workers), "--timeout-keep-alive", "5",
               "--log-level", "warning", "--no-proxy-headers"]  # as `pollinid serve`: see trusted_proxies
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.environment(), stdout=self.log_path.open("wb"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(f"{self.url}/api/v1/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"uvicorn not ready within {timeout} s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM in KiB of the serving process (one worker)."""
        return proc_status(self.pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the service (and its workers) and wait for it to exit."""
        if self.proc is None:
            return
        if self.workers > 1:
            try:
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            except OSError:
                children = []
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(child), sig)
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> LiveService:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
