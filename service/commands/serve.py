"""``pollinid serve``: run the HTTP service with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the HTTP service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--with-worker", action="store_true",
                   help="also start a local job worker (retrain, exports): one command runs everything")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several worker processes: metrics are aggregated through a shared folder, emptied at start.
        from service.settings import get_settings

        metrics_dir = get_settings().data_dir / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
        logger.info("metrics of %d workers aggregated in %s", args.workers, metrics_dir)
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
