"""Real pollinid processes for the multi-instance tests: ``pollinid serve`` replicas and ``pollinid worker``.

Each process runs ``python -m service.cli ...`` with an environment built from the given ``POLLINID_*``
settings only (whatever ``POLLINID_*`` the test session itself has is left out, the test's own switches
``POLLINID_TEST_*`` aside), writes its output to a log file beside its data folder and is stopped with
SIGTERM (SIGKILL if it lingers).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.hardening.support import free_port

ROOT = Path(__file__).resolve().parents[2]


def process_env(settings: dict[str, str]) -> dict[str, str]:
    """The environment of a pollinid process: this one's, less its ``POLLINID_*`` settings, plus ``settings``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("POLLINID_") or k.startswith("POLLINID_TEST_")}
    return {**base, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **settings}


def cli(settings: dict[str, str], *args: str, timeout: float = 120) -> str:
    """Run ``pollinid <args>`` (``python -m service.cli``) and return its standard output; fail on an error."""
    done = subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=process_env(settings),
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"pollinid {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


@dataclass
class Process:
    """One ``python -m service.cli <args>`` process with its own settings and log file."""

    name: str
    args: list[str]
    settings: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", *self.args], cwd=ROOT,
                                         env=process_env(self.settings), stdout=log, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (a worker re-queues its job, uvicorn finishes its requests), then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class Replica(Process):
    """``pollinid serve`` on a free loopback port."""

    port: int = field(default_factory=free_port)

    @classmethod
    def serve(cls, name: str, settings: dict[str, str], log_path: Path) -> Replica:
        replica = cls(name=name, args=[], settings=settings, log_path=log_path)
        replica.args = ["serve", "--host", "127.0.0.1", "--port", str(replica.port)]
        return replica

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait until ``/api/v1/ready`` answers 200 (a model loaded, the database reachable)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"replica {self.name} exited: {self.log()}")
            try:
                r = httpx.get(f"{self.url}/api/v1/ready", timeout=2)
                if r.status_code == 200:
                    return
                last = r.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise AssertionError(f"replica {self.name} not ready within {timeout} s ({last}): {self.log()}")


def client(source: str = "127.0.0.1", timeout: float = 30) -> httpx.Client:
    """An HTTP client whose connections come from the loopback address ``source`` (the servers see that
    address as the client's: each test client can have a rate-limit identity of its own)."""
    return httpx.Client(timeout=timeout, transport=httpx.HTTPTransport(local_address=source))
