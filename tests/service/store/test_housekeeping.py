"""Issue 16, item 8: a long-running server removes old temporary media files periodically, not only at
start; and the allocator setting that gives large upload buffers back to the system."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings
from service.store.housekeeping import housekeep, tune_allocator
from service.store.storage import TMP_PREFIX


def _tmp_file(media: Path, name: str, age_seconds: float) -> Path:
    folder = media / "ab"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{TMP_PREFIX}{name}"
    path.write_bytes(b"half a photo")
    past = time.time() - age_seconds
    os.utime(path, (past, past))
    return path


def test_running_server_removes_old_temporary_files(sqlite_settings: Settings) -> None:
    settings = sqlite_settings.model_copy(update={"housekeeping_seconds": 0.2, "orphan_grace_seconds": 60})
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/v1/health").status_code == 200
        media = settings.media_path
        # Left after the start-up clean-up, as a killed upload of a sibling process would.
        old = _tmp_file(media, "killed", age_seconds=3600)
        young = _tmp_file(media, "writing-now", age_seconds=1)
        deadline = time.monotonic() + 10
        while old.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not old.exists(), "the running server kept an old temporary file"
        assert young.exists(), "a file younger than the grace period may be being written: keep it"
        assert client.get("/api/v1/health").status_code == 200


def test_housekeeping_can_be_turned_off_and_run_by_hand(sqlite_settings: Settings) -> None:
    settings = sqlite_settings.model_copy(update={"housekeeping_seconds": 0, "orphan_grace_seconds": 60})
    with TestClient(create_app(settings)) as client:
        old = _tmp_file(settings.media_path, "killed", age_seconds=3600)
        time.sleep(0.5)
        assert old.exists()
        assert client.app.state.housekeeping is None  # type: ignore[attr-defined]
    assert housekeep(settings) == 1 and not old.exists()


def test_allocator_threshold(sqlite_settings: Settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert tune_allocator(sqlite_settings.model_copy(update={"malloc_mmap_threshold": 0})) is False
    assert tune_allocator(sqlite_settings) is True  # glibc (Linux)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert tune_allocator(sqlite_settings) is False  # the environment wins
