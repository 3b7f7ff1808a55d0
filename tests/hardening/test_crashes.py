"""Crashes with real processes: SIGKILL during uploads, and during a model activation.

(The worker-killed-during-training case lives with the retrain tests.)
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select, text

from service.store.storage import TMP_PREFIX
from service.store.tables import ModelVersion
from tests.hardening.support import ROOT, LiveService, create_users, distinct_photo
from tests.helpers import write_tiny_model


def _upload_until_dead(service: LiveService, key: str, start: int, acked: list[dict[str, Any]],
                       stop: threading.Event) -> None:
    i = start
    with httpx.Client(base_url=service.url, timeout=30) as client:
        while not stop.is_set():
            photos = [distinct_photo(i * 10 + k) for k in range(1 + i % 3)]
            try:
                r = client.post("/api/v1/observations", headers={"Authorization": f"Bearer {key}",
                                                                 "Idempotency-Key": f"crash-{uuid.uuid4()}"},
                                data={"observed_at": "2024-06-01T10:00:00Z"},
                                files=[("photos", (f"{k}.jpg", p, "image/jpeg"))
                                       for k, p in enumerate(photos)])
            except httpx.HTTPError:
                return  # the service died under us
            if r.status_code == 201:
                body = r.json()
                acked.append({"id": body["id"], "shas": [hashlib.sha256(p).hexdigest() for p in photos]})
            else:
                assert r.status_code < 500, r.text
            i += 1000


def test_sigkill_during_uploads_loses_no_acknowledged_observation(tmp_path: Path, database_url: str) -> None:
    write_tiny_model(tmp_path / "models", "tiny", "1")
    keys, _ = create_users(database_url, LiveService.secret, {f"v{i}": "volunteer" for i in range(6)})
    # A grace of 0 s: the restart removes the temporary files the killed process left (in production the
    # grace protects files that another process is still writing).
    service = LiveService(tmp_path / "data", database_url, tmp_path / "models",
                          env={"POLLINID_ORPHAN_GRACE_SECONDS": "0", "POLLINID_RATE_LIMIT_ENABLED": "false"})
    service.start()
    acked: list[dict[str, Any]] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_upload_until_dead, args=(service, keys[f"v{i}"], i, acked, stop))
               for i in range(6)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(acked) < 12 and time.monotonic() < deadline:  # let uploads be in full flow
            time.sleep(0.05)
        service.kill(signal.SIGKILL)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert len(acked) >= 12, "too few uploads before the kill"
    media = tmp_path / "data" / "media"

    service.start()  # the restart cleans what the crash left
    try:
        engine = create_engine(database_url)
        with engine.connect() as conn:
            photos = {(r.observation_id, r.sha256) for r in conn.execute(
                text("SELECT observation_id, sha256 FROM photos"))}
            obs_ids = {r[0] for r in conn.execute(text("SELECT id FROM observations"))}
            photoless = conn.execute(text(
                "SELECT count(*) FROM observations o WHERE NOT EXISTS "
                "(SELECT 1 FROM photos p WHERE p.observation_id = o.id)")).scalar()
        engine.dispose()
        # Every acknowledged observation is there with all its photos, and every photo file is whole.
        for a in acked:
            assert a["id"] in obs_ids, a
            for sha in a["shas"]:
                assert (a["id"], sha) in photos, (a, sha)
                path = media / sha[:2] / sha
                assert path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha
        # No partial rows, no orphan or temporary files.
        assert photoless == 0
        files = [p for p in media.rglob("*") if p.is_file()]
        assert not [p for p in files if p.name.startswith(TMP_PREFIX)]
        assert {p.name for p in files} == {sha for _, sha in photos}
        # The service serves again.
        r = httpx.post(f"{service.url}/api/v1/observations",
                       headers={"Authorization": f"Bearer {keys['v0']}"},
                       data={"observed_at": "2024-06-01T10:00:00Z"},
                       files=[("photos", ("a.jpg", distinct_photo(424242), "image/jpeg"))], timeout=30)
        assert r.status_code == 201, r.text
        print(f"acknowledged before the kill: {len(acked)}; rows after restart: {len(obs_ids)}")
    finally:
        service.stop()


def test_young_temporary_files_survive_the_start_up_cleaner(tmp_path: Path, sqlite_url: str) -> None:
    """Another process may be writing a temporary file right now: the cleaner leaves young ones alone."""
    import os

    from service.store.db import create_db_engine, init_db, make_session_factory
    from service.store.storage import clean_orphans

    engine = create_db_engine(sqlite_url)
    init_db(engine)
    root = tmp_path / "media"
    (root / "ab").mkdir(parents=True)
    young, old = root / "ab" / f"{TMP_PREFIX}young", root / "ab" / f"{TMP_PREFIX}old"
    young.write_bytes(b"being written")
    old.write_bytes(b"left by a crash")
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert clean_orphans(make_session_factory(engine), root, grace_seconds=3600) == 1
    assert young.exists() and not old.exists()
    engine.dispose()


# -- SIGKILL in the middle of an activation -------------------------------------------------------------

ACTIVATOR = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sqlalchemy import event
    from service.inference.classifier import RuntimeOptions
    from service.store.db import create_db_engine, make_session_factory
    from service.inference.registry import ModelRegistry

    url, models, point = sys.argv[1], sys.argv[2], sys.argv[3]
    engine = create_db_engine(url)
    factory = make_session_factory(engine)
    updates = 0

    def pause(where):
        print(where, flush=True)
        time.sleep(600)  # the test kills us here

    @event.listens_for(engine, "after_cursor_execute")
    def after(conn, cursor, statement, *args):
        global updates
        if statement.lstrip().upper().startswith("UPDATE MODEL_VERSIONS"):
            updates += 1
            if point == f"update{updates}":
                pause(f"PAUSED {point}")

    @event.listens_for(factory, "after_commit")
    def committed(session):
        if point == "committed" and updates >= 2:
            pause("PAUSED committed")

    registry = ModelRegistry(Path(models), factory, RuntimeOptions(providers="cpu"))
    registry.activate("tiny", "2")
    print("DONE", flush=True)
""")


@pytest.mark.parametrize(("point", "expected"), [("update1", "1"), ("update2", "1"), ("committed", "2")])
def test_sigkill_during_activation_leaves_exactly_one_consistent_active_version(
    tmp_path: Path, database_url: str, point: str, expected: str
) -> None:
    from service.inference.classifier import RuntimeOptions
    from service.inference.registry import ModelRegistry
    from service.store.db import create_db_engine, init_db, make_session_factory

    models = tmp_path / "models"
    write_tiny_model(models, "tiny", "1")
    write_tiny_model(models, "tiny", "2")
    engine = create_db_engine(database_url)
    init_db(engine)
    registry = ModelRegistry(models, make_session_factory(engine), RuntimeOptions(providers="cpu"))
    registry.scan()
    registry.activate("tiny", "1")
    engine.dispose()

    script = tmp_path / "activate.py"
    script.write_text(ACTIVATOR)
    proc = subprocess.Popen([sys.executable, str(script), database_url, str(models), point], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith(("PAUSED", "DONE")) or not line:
                break
        assert line.startswith("PAUSED"), f"the activation did not pause: {line!r} {proc.stdout.read()}"
        proc.send_signal(signal.SIGKILL)  # mid-transaction (update1/update2) or just after the commit
    finally:
        proc.kill()
        proc.wait(timeout=30)

    # Restart a real service on the same database: exactly one active version, the one committed last.
    engine = create_engine(database_url)
    service = LiveService(tmp_path / "data", database_url, models)
    with service:
        with engine.connect() as conn:
            active = conn.execute(select(ModelVersion.name, ModelVersion.version)
                                  .where(ModelVersion.active.is_(True))).all()
        assert active == [("tiny", expected)], active
        ready = httpx.get(f"{service.url}/api/v1/ready", timeout=10).json()
        assert ready["model"] == {"name": "tiny", "version": expected}
        r = httpx.post(f"{service.url}/api/v1/identify", timeout=30,
                       files=[("images", ("a.jpg", distinct_photo(1), "image/jpeg"))])
        assert r.status_code == 200 and r.json()["model"]["version"] == expected
    engine.dispose()
