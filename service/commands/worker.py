"""``pollinid worker``: run background jobs (retrain, exports) from the database queue."""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run queued jobs (retrain, exports); several workers may run")
    p.add_argument("--once", action="store_true", help="run at most one job, then exit")
    p.add_argument("--id", default=None, help="worker name shown on its jobs (default: host:pid:random)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from service.settings import get_settings
    from service.worker import Worker

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    worker = Worker(settings, worker_id=args.id)

    def stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("worker %s: signal %d, stopping after re-queuing its job", worker.worker_id, signum)
        worker.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if args.once:
            worker.run_once()
        else:
            worker.run_forever()
    finally:
        worker.close()
    return 0
