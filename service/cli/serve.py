"""``pollinid serve``: run the HTTP service with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the HTTP service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=_workers, default=1, metavar="N|auto",
                   help="uvicorn worker processes (default 1; auto: one per core). With several, each one's ONNX "
                        "Runtime and decode threads default to cores / N (POLLINID_INTRA_OP_THREADS, "
                        "POLLINID_DECODE_THREADS), and rate limits are per process unless POLLINID_REDIS_URL is "
                        "set")
    p.add_argument("--with-worker", action="store_true",
                   help="also start a local job worker (retrain, exports): one command runs everything")
    p.add_argument("--limit-concurrency", type=int, default=None, metavar="N",
                   help="uvicorn: answer 503 past N connections and tasks per process (default "
                        "POLLINID_LIMIT_CONCURRENCY; 0: no limit)")
    p.add_argument("--max-concurrent-uploads", type=int, default=None, metavar="N",
                   help="photo uploads (identify, observations) read and handled at once per process; the "
                        "others wait POLLINID_UPLOAD_QUEUE_SECONDS, then get 503 with Retry-After (default "
                        "POLLINID_MAX_CONCURRENT_UPLOADS, 16; 0: no limit)")
    p.set_defaults(func=run)


def _workers(value: str) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of processes or 'auto', got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"at least 1 worker process, got {n}")
    return n


def threads_per_worker(workers: int, cores: int | None = None) -> dict[str, str]:
    """``POLLINID_*`` thread settings for ``workers`` processes sharing ``cores`` (default: this machine's).

    One process (the default) keeps the settings' own defaults (0: every core, for ONNX Runtime and for
    decoding). Several processes each get ``cores // workers`` (at least 1) ONNX Runtime intra-op threads and
    decode threads, so that together they use the cores once instead of each using all of them. A setting
    given in the environment is kept. Returns the variables to add to the environment.
    """
    if workers <= 1:
        return {}
    share = str(max(1, (cores or os.cpu_count() or 1) // workers))
    return {key: share for key in ("POLLINID_INTRA_OP_THREADS", "POLLINID_DECODE_THREADS")
            if not os.environ.get(key)}


def run(args: argparse.Namespace) -> int:
    import uvicorn

    sized = threads_per_worker(args.workers)
    if sized:
        # The app reads its settings from the environment, in every uvicorn worker.
        os.environ.update(sized)
        from service.settings import get_settings

        get_settings.cache_clear()
        logger.info("%d worker processes: %s each", args.workers,
                    ", ".join(f"{k}={v}" for k, v in sized.items()))
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several worker processes: metrics are aggregated through a shared folder, emptied at start.
        from service.settings import get_settings

        metrics_dir = get_settings().data_dir / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
        logger.info("metrics of %d workers aggregated in %s", args.workers, metrics_dir)
    from service.settings import get_settings

    if getattr(args, "max_concurrent_uploads", None) is not None:
        # The app reads its settings from the environment, in this process and in every uvicorn worker.
        os.environ["POLLINID_MAX_CONCURRENT_UPLOADS"] = str(args.max_concurrent_uploads)
        get_settings.cache_clear()
    settings = get_settings()
    limit = getattr(args, "limit_concurrency", None)
    limit = settings.limit_concurrency if limit is None else limit
    logger.info("limits per process: %s concurrent connections, %s concurrent photo uploads (then %g s "
                "wait, then 503), forwarded headers trusted from %s", limit or "no limit on",
                settings.max_concurrent_uploads or "no limit on", settings.upload_queue_seconds,
                ", ".join(settings.trusted_proxies) or "nobody")
    worker = start_worker() if getattr(args, "with_worker", False) else None
    previous = _exit_on_signals() if worker is not None else {}
    try:
        # Forwarded headers are handled by the app, from settings.trusted_proxies only (uvicorn's own
        # handling would believe any loopback client).
        uvicorn.run("service.api.asgi:app", host=args.host, port=args.port, workers=args.workers,
                    log_level="info", proxy_headers=False, limit_concurrency=limit or None)
    finally:
        if worker is not None:
            stop_worker(worker)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _exit_on_signals() -> dict[int, Any]:
    """Make SIGTERM and SIGINT end this process through ``finally`` blocks (the worker is stopped).

    uvicorn restores the handlers it found once it has shut down, then raises the signal it received
    again: with the default SIGTERM handler the process would die there, leaving the worker running.
    """

    def leave(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    return {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGINT)}


def _parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to send SIGTERM to the child when its parent dies (even by SIGKILL).

    libc is loaded here, in the parent: between fork and exec the child only makes one prctl call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover
        return None

    def hook() -> None:  # pragma: no cover - runs in the child
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG

    return hook


def start_worker() -> subprocess.Popen[bytes]:
    """Start ``pollinid worker`` as a child sharing this process's settings (environment).

    The worker stops with this process: on SIGTERM/SIGINT :func:`run` stops it; if this process is killed
    outright, the worker gets SIGTERM from the kernel (Linux parent-death signal) and also notices that
    its parent changed (``--parent-pid``), and stops after re-queuing its job.
    """
    cmd = [sys.executable, "-m", "service.cli", "worker", "--parent-pid", str(os.getpid())]
    proc = subprocess.Popen(cmd, preexec_fn=_parent_death_signal())
    logger.info("started a local job worker (pid %d)", proc.pid)
    return proc


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """Stop the worker: SIGTERM (it re-queues its job and stops its child), SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
