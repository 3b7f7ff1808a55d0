"""Benchmark: concurrent volunteers posting observations to a real service on loopback.

Starts ``uvicorn service.api.asgi:app`` in a subprocess (fresh data folder, the tiny test model, a fresh SQLite
file or PostgreSQL database), creates one volunteer per client, and lets every client post observations
(each with its own photo) as fast as answers come back. Reports throughput and latency percentiles, then
checks that no write was lost: rows in the database == number of 201 answers, and every photo file exists.

    python bench/observations.py --db sqlite --db postgresql --clients 50 --per-client 4
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.databases import make_database  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    arr = np.clip(base + rng.integers(-20, 21, size=(48, 64, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def setup_users(url: str, data_dir: Path, n: int) -> list[str]:
    from service import accounts as auth
    from service.settings import Settings
    from service.store.db import create_db_engine, init_db, make_session_factory

    settings = Settings(data_dir=data_dir, database_url=url)
    engine = create_db_engine(url)
    init_db(engine)
    keys = []
    with make_session_factory(engine)() as session:
        for i in range(n):
            _, key = auth.create_user(
                session=session, settings=settings, name=f"volunteer-{i}", role="volunteer"
            )
            keys.append(key)
        session.commit()
    engine.dispose()
    return keys


def count_rows(url: str) -> tuple[int, int, list[str]]:
    from sqlalchemy import func, select

    from service.store.db import create_db_engine
    from service.store.tables import Observation, Photo

    engine = create_db_engine(url)
    with engine.connect() as conn:
        obs = conn.scalar(select(func.count()).select_from(Observation))
        photos = conn.scalar(select(func.count()).select_from(Photo))
        shas = list(conn.scalars(select(Photo.sha256)))
    engine.dispose()
    return int(obs or 0), int(photos or 0), shas


async def run_clients(
    base: str, keys: list[str], per_client: int
) -> tuple[list[float], dict[int, int], float, list[int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    created: list[int] = []
    limits = httpx.Limits(max_connections=len(keys) + 5, max_keepalive_connections=len(keys) + 5)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:

        async def volunteer(i: int, key: str) -> None:
            for j in range(per_client):
                data = photo(i * 10_000 + j)
                t0 = time.perf_counter()
                r = await client.post(
                    "/api/v1/observations",
                    headers={
                        "Authorization": f"Bearer {key}",
                        "Idempotency-Key": f"bench-{i}-{j}-{uuid.uuid4().hex}",
                    },
                    data={
                        "observed_at": "2024-06-01T10:00:00Z",
                        "latitude": "45.1",
                        "longitude": "5.7",
                        "session_id": f"s{i}",
                        "licence": "CC-BY",
                    },
                    files=[("photos", (f"{i}-{j}.jpg", data, "image/jpeg"))],
                )
                latencies.append((time.perf_counter() - t0) * 1000.0)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 201:
                    created.append(r.json()["id"])

        t0 = time.perf_counter()
        await asyncio.gather(*(volunteer(i, k) for i, k in enumerate(keys)))
        wall = time.perf_counter() - t0
    return latencies, statuses, wall, created


def bench(kind: str, clients: int, per_client: int, workers: int) -> bool:
    with tempfile.TemporaryDirectory(prefix="pollinid-bench-") as tmp:
        workdir = Path(tmp)
        url, drop = make_database(kind, workdir)
        try:
            models = workdir / "models"
            from tests.helpers import write_tiny_model

            write_tiny_model(models, "tiny", "1")
            data_dir = workdir / "data"
            keys = setup_users(url, data_dir, clients)
            port = free_port()
            env = {
                **os.environ,
                "POLLINID_DATA_DIR": str(data_dir),
                "POLLINID_DATABASE_URL": url,
                "POLLINID_MODELS_DIR": str(models),
                "POLLINID_LOG_LEVEL": "WARNING",
            }
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "service.api.asgi:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--workers",
                    str(workers),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            base = f"http://127.0.0.1:{port}"
            try:
                deadline = time.time() + 60
                while True:
                    try:
                        if httpx.get(f"{base}/api/v1/health", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.time() > deadline or server.poll() is not None:
                        raise RuntimeError(
                            "the service did not start: "
                            + (server.stderr.read().decode()[-2000:] if server.stderr else "")
                        )
                    time.sleep(0.2)
                latencies, statuses, wall, created = asyncio.run(run_clients(base, keys, per_client))
            finally:
                server.terminate()
                server.wait(timeout=30)
            rows, photo_rows, shas = count_rows(url)
            missing = [s for s in shas if not (data_dir / "media" / s[:2] / s).is_file()]
            n201 = statuses.get(201, 0)
            ok = rows == n201 == len(set(created)) and photo_rows == n201 and not missing
            total = sum(statuses.values())
            print(f"[{kind}] {clients} volunteers x {per_client} observations, uvicorn workers={workers}")
            print(f"  requests {total}, statuses {dict(sorted(statuses.items()))}, wall {wall:.2f} s")
            print(f"  throughput {n201 / wall:.1f} observations/s")
            print(
                f"  latency ms: p50 {percentile(latencies, 50):.1f}  p95 {percentile(latencies, 95):.1f}  "
                f"p99 {percentile(latencies, 99):.1f}  max {max(latencies):.1f}  "
                f"mean {statistics.fmean(latencies):.1f}"
            )
            print(
                f"  rows {rows} == 201s {n201}: {'OK' if rows == n201 else 'LOST WRITES'}; photo rows "
                f"{photo_rows}, missing files {len(missing)} -> {'no write lost' if ok else 'FAILED'}"
            )
            return ok
        finally:
            if drop is not None:
                drop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db",
        action="append",
        choices=["sqlite", "postgresql"],
        help="database(s) to run on (default: both)",
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = parser.parse_args()
    ok = True
    for kind in args.db or ["sqlite", "postgresql"]:
        ok = bench(kind, args.clients, args.per_client, args.workers) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
