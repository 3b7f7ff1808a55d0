"""Load test: many concurrent clients mix identifications and observation uploads against a real service.

Starts ``uvicorn service.api.asgi:app`` on loopback (fresh data folder, the tiny test model, a fresh SQLite
file or PostgreSQL database, rate limits off), then ``--clients`` asyncio clients (one volunteer key each)
loop for ``--seconds``: each request is an identification with probability ``--identify-share``, else an
observation upload (1–3 distinct photos, an Idempotency-Key). Bounded in time and count
(``--max-requests``); stops by itself, then stops the service.

Afterwards it checks that nothing was lost: no 5xx, and every observation answered 201 is in the database
with all its photo rows, and every photo file exists with the right sha256.

    python bench/load.py --db sqlite --clients 200 --seconds 120
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.databases import make_database  # noqa: E402
from tests.hardening.support import LiveService, create_users, distinct_photo  # noqa: E402
from tests.helpers import write_tiny_model  # noqa: E402


class Stats:
    def __init__(self) -> None:
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.latency: dict[str, list[float]] = {"identify": [], "observe": []}
        self.errors: Counter[str] = Counter()
        self.acked: list[tuple[int, list[str]]] = []
        self.server_errors: list[str] = []


async def client_loop(i: int, service: LiveService, key: str, args: argparse.Namespace, stats: Stats,
                      deadline: float, budget: list[int]) -> None:
    rng = random.Random(i)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=service.url, timeout=args.timeout, limits=limits) as client:
        n = 0
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            n += 1
            seed = i * 1_000_000 + n
            t0 = time.perf_counter()
            try:
                if rng.random() < args.identify_share:
                    kind = "identify"
                    r = await client.post("/api/v1/identify",
                                          files=[("photos", ("a.jpg", distinct_photo(seed), "image/jpeg"))])
                else:
                    kind = "observe"
                    photos = [distinct_photo(seed * 4 + k) for k in range(rng.randint(1, 3))]
                    r = await client.post(
                        "/api/v1/observations",
                        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": f"load-{uuid.uuid4()}"},
                        data={"observed_at": "2024-06-01T10:00:00Z", "latitude": "45.1", "longitude": "5.7"},
                        files=[("photos", (f"{k}.jpg", p, "image/jpeg")) for k, p in enumerate(photos)],
                    )
                    if r.status_code == 201:
                        stats.acked.append((r.json()["id"], [hashlib.sha256(p).hexdigest() for p in photos]))
            except httpx.HTTPError as exc:
                stats.errors[type(exc).__name__] += 1
                continue
            stats.latency[kind].append((time.perf_counter() - t0) * 1000.0)
            stats.statuses[(kind, r.status_code)] += 1
            if r.status_code >= 500:
                stats.server_errors.append(f"{kind} {r.status_code} {r.text[:200]}")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def verify(database_url: str, media: Path, acked: list[tuple[int, list[str]]]) -> tuple[int, int, int, int]:
    """(observation rows, photo rows, acknowledged missing, photo files missing or wrong)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as conn:
        obs = {r[0] for r in conn.execute(text("SELECT id FROM observations"))}
        photos = {(r[0], r[1]) for r in conn.execute(text("SELECT observation_id, sha256 FROM photos"))}
    engine.dispose()
    missing_rows = sum(1 for oid, shas in acked
                       if oid not in obs or any((oid, s) not in photos for s in shas))
    bad_files = 0
    for _, sha in photos:
        path = media / sha[:2] / sha
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != sha:
            bad_files += 1
    return len(obs), len(photos), missing_rows, bad_files


def run(kind: str, args: argparse.Namespace) -> bool:
    with tempfile.TemporaryDirectory(prefix="pollinid-load-") as tmp:
        work = Path(tmp)
        write_tiny_model(work / "models", "tiny", "1")
        url, drop = make_database(kind, work, prefix="load")
        try:
            people = {f"v{i}": "volunteer" for i in range(args.clients)}
            keys, _ = create_users(url, LiveService.secret, people)
            env = {"POLLINID_RATE_LIMIT_ENABLED": "false", "POLLINID_LOG_LEVEL": "WARNING"}
            service = LiveService(work / "data", url, work / "models", env=env, workers=args.workers)
            with service:
                stats = Stats()
                budget = [args.max_requests]
                t0 = time.monotonic()
                deadline = t0 + args.seconds

                async def main() -> None:
                    await asyncio.gather(*(
                        client_loop(i, service, keys[f"v{i}"], args, stats, deadline, budget)
                        for i in range(args.clients)))

                asyncio.run(main())
                wall = time.monotonic() - t0
                rss = service.memory() if args.workers == 1 else {}
            rows, photo_rows, missing, bad_files = verify(url, work / "data" / "media", stats.acked)
        finally:
            if drop is not None:
                drop()
    total = sum(stats.statuses.values())
    print(f"[{kind}] {args.clients} clients, {args.seconds:.0f} s, identify share {args.identify_share:.2f}, "
          f"uvicorn workers={args.workers}")
    print(f"  requests {total} in {wall:.1f} s ({total / wall:.1f}/s); statuses "
          + ", ".join(f"{k} {s}: {n}" for (k, s), n in sorted(stats.statuses.items())))
    if stats.errors:
        print(f"  client-side errors (no answer): {dict(stats.errors)}")
    for k, lat in stats.latency.items():
        if lat:
            print(f"  {k:8s} latency ms: p50 {pct(lat, 50):.0f}  p95 {pct(lat, 95):.0f}  "
                  f"p99 {pct(lat, 99):.0f}  max {max(lat):.0f}  mean {statistics.fmean(lat):.0f}")
    if rss:
        print(f"  service memory: VmRSS {rss['VmRSS'] / 1024:.0f} MiB, "
              f"peak VmHWM {rss['VmHWM'] / 1024:.0f} MiB")
    server_errors = len(stats.server_errors)
    ok = server_errors == 0 and missing == 0 and bad_files == 0 and not stats.errors
    print(f"  5xx: {server_errors}; observations acknowledged (201): {len(stats.acked)}; rows {rows}, "
          f"photo rows {photo_rows}; acknowledged missing: {missing}; "
          f"photo files missing or wrong: {bad_files} -> {'OK' if ok else 'FAILED'}")
    for line in stats.server_errors[:5]:
        print("   ", line)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", action="append", choices=["sqlite", "postgresql"],
                        help="database(s) to run on (default: sqlite)")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=120.0, help="duration of each run (max 600)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="stop after this many requests")
    parser.add_argument("--identify-share", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request client timeout, s")
    args = parser.parse_args()
    args.seconds = min(args.seconds, 600.0)
    results = [run(kind, args) for kind in (args.db or ["sqlite"])]
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
