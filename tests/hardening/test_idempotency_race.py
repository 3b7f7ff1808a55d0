"""Issue 16, item 1: parallel uploads with one Idempotency-Key, on a real service, SQLite and PostgreSQL.

The probe sent the same new photo with the same key many times at once: on SQLite the loser's clean-up
waited for its own transaction's write lock for the whole busy timeout (30 s) while every other request
waited behind it, then answered 500. Expected: one observation, every answer 201 (the winner, and the
others replayed) or 409 while the first is in flight, never a 500, and no stall for other users.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from tests.hardening.support import LiveService, create_users, distinct_photo
from tests.helpers import write_tiny_model

COPIES = 24


def _post(service: LiveService, key: str, idem: str, photo: bytes, barrier: threading.Barrier,
          out: list[dict[str, Any]]) -> None:
    barrier.wait()
    t0 = time.monotonic()
    try:
        r = httpx.post(f"{service.url}/api/v1/observations", timeout=60,
                       headers={"Authorization": f"Bearer {key}", "Idempotency-Key": idem},
                       data={"observed_at": "2024-06-01T10:00:00Z"},
                       files=[("photos", ("a.jpg", photo, "image/jpeg"))])
        out.append({"status": r.status_code, "body": r.json(), "seconds": time.monotonic() - t0,
                    "replayed": r.headers.get("idempotent-replayed")})
    except httpx.HTTPError as exc:  # pragma: no cover - reported by the assertion below
        out.append({"status": None, "body": repr(exc), "seconds": time.monotonic() - t0})


def test_parallel_uploads_with_one_key_store_one_observation_without_stalling(
    tmp_path: Path, database_url: str
) -> None:
    write_tiny_model(tmp_path / "models", "tiny", "1")
    keys, ids = create_users(database_url, LiveService.secret, {"vol": "volunteer", "other": "volunteer"})
    service = LiveService(tmp_path / "data", database_url, tmp_path / "models",
                          env={"POLLINID_RATE_LIMIT_ENABLED": "false"})
    with service:
        for attempt in range(3):  # the race is a race: try a few fresh keys and photos
            photo = distinct_photo(9000 + attempt)
            idem = f"race-{attempt}-0123456789"
            results: list[dict[str, Any]] = []
            barrier = threading.Barrier(COPIES + 1)
            threads = [threading.Thread(target=_post, args=(service, keys["vol"], idem, photo, barrier, results))
                       for _ in range(COPIES)]
            for t in threads:
                t.start()
            barrier.wait()
            # Meanwhile another volunteer and the readiness probe are served promptly.
            others = []
            for _ in range(5):
                t0 = time.monotonic()
                r = httpx.get(f"{service.url}/api/v1/observations", timeout=60,
                              headers={"Authorization": f"Bearer {keys['other']}"})
                ready = httpx.get(f"{service.url}/api/v1/ready", timeout=60)
                others.append((r.status_code, ready.status_code, time.monotonic() - t0))
                time.sleep(0.05)
            for t in threads:
                t.join(timeout=90)

            statuses = sorted(str(r["status"]) for r in results)
            assert len(results) == COPIES
            assert all(r["status"] in (201, 409) for r in results), statuses
            created = [r for r in results if r["status"] == 201]
            assert created, statuses
            assert len({r["body"]["id"] for r in created}) == 1, "every 201 names the same observation"
            assert sum(1 for r in created if r["replayed"] != "true") == 1, "exactly one fresh creation"
            for r in results:
                if r["status"] == 409:
                    assert r["body"]["error"]["code"] in ("idempotency_in_progress", "conflict"), r
            slowest = max(r["seconds"] for r in results)
            assert slowest < 15, f"uploads stalled: slowest {slowest:.1f} s"
            assert all(s == 200 and ready == 200 and sec < 5 for s, ready, sec in others), others

            engine = create_engine(database_url)
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT id FROM observations WHERE observer_id = :o AND "
                                         "idempotency_key = :k"), {"o": ids["vol"], "k": idem}).all()
            engine.dispose()
            assert [r[0] for r in rows] == [created[0]["body"]["id"]]
        # Every file on disk belongs to a stored photo (the losers removed nothing the winner needs).
        media = tmp_path / "data" / "media"
        on_disk = {p.name for p in media.rglob("*") if p.is_file()}
        engine = create_engine(database_url)
        with engine.connect() as conn:
            stored = {r[0] for r in conn.execute(text("SELECT sha256 FROM photos"))}
        engine.dispose()
        assert on_disk == stored
        assert "database is locked" not in service.log()
