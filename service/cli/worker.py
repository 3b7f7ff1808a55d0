"""``pollinid worker``: run background jobs (retrain, exports) from the database queue."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from types import FrameType

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run queued jobs (retrain, exports); several workers may run")
    p.add_argument("--once", action="store_true", help="run at most one job, then exit")
    p.add_argument("--id", default=None, help="worker name shown on its jobs (default: host:pid:random)")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="stop (re-queuing the job) when this process is gone: set by `pollinid serve --with-worker`")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from service.jobs.worker import Worker
    from service.settings import get_settings

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    worker = Worker(settings, worker_id=args.id)

    def stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("worker %s: signal %d, stopping after re-queuing its job", worker.worker_id, signum)
        worker.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.parent_pid is not None:
        watch_parent(args.parent_pid, worker.stop_event)
    try:
        if args.once:
            worker.run_once()
        else:
            worker.run_forever()
    finally:
        worker.close()
    return 0


def watch_parent(parent_pid: int, stop_event: threading.Event, interval: float = 0.5) -> threading.Thread:
    """Set ``stop_event`` as soon as ``parent_pid`` is no longer this process's parent (it died, even by
    SIGKILL, and this process was re-parented). Complements the parent-death signal set at start
    (:func:`service.cli.serve.start_worker`), which only Linux has."""

    def watch() -> None:
        while not stop_event.is_set():
            if os.getppid() != parent_pid:
                logger.warning("worker: parent process %d is gone; stopping", parent_pid)
                stop_event.set()
                return
            stop_event.wait(interval)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread
