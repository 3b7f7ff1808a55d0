"""``pollinid serve``: run the HTTP service with uvicorn."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run the HTTP service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("service.asgi:app", host=args.host, port=args.port, workers=args.workers,
                log_level="info", proxy_headers=True)
    return 0
