"""``pollinid serve``: run the HTTP service with uvicorn."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run the HTTP service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--with-worker", action="store_true",
                   help="also start a local job worker (retrain, exports): one command runs everything")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    worker = _start_worker() if getattr(args, "with_worker", False) else None
    try:
        uvicorn.run("service.asgi:app", host=args.host, port=args.port, workers=args.workers,
                    log_level="info", proxy_headers=True)
    finally:
        if worker is not None:
            _stop_worker(worker)
    return 0


def _start_worker() -> subprocess.Popen[bytes]:
    """Start ``pollinid worker`` as a child process sharing this process's settings (environment)."""
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"])
    logger.info("started a local job worker (pid %d)", proc.pid)
    return proc


def _stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # the worker re-queues its job and stops its child
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
