"""Hostile photos against a real uvicorn process: a clear 4xx or a correct answer, bounded memory,
nothing half-written, and the service still serving afterwards.

The whole corpus (:mod:`tests.hardening.corpus`) goes to ``/api/v1/identify`` and to
``POST /api/v1/observations``; the process's VmRSS/VmHWM are read from ``/proc`` around it.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from service.store.tables import Observation, Photo
from tests.hardening.corpus import Hostile, build_corpus, png_bomb
from tests.hardening.support import LiveService, create_users
from tests.helpers import photo_bytes, write_tiny_model

MIB = 1024
# Peak memory the corpus may add to the serving process: the largest photo the limits admit is decoded
# at most a few times at once (50 Mpx x 3 bytes x copies, decode pool of 2 threads).
MAX_PEAK_GROWTH_KIB = 1200 * MIB
# Eight bombs at once must not need eight times the memory of one (decoding is bounded by the pool).
MAX_FLOOD_GROWTH_KIB = 800 * MIB
# The allocator keeps some freed memory for reuse; a second pass of the corpus must not add to it.
MAX_SECOND_PASS_GROWTH_KIB = 150 * MIB


class Served:
    def __init__(self, service: LiveService, keys: dict[str, str], engine: Engine) -> None:
        self.service, self.keys, self.engine = service, keys, engine
        self.client = httpx.Client(base_url=service.url, timeout=120)

    def auth(self, who: str = "vol") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def identify(self, case: Hostile) -> httpx.Response:
        return self.client.post("/api/v1/identify",
                                files=[("images", (f"{case.name}.bin", case.data, case.mime))])

    def observe(self, case: Hostile, **form: str) -> httpx.Response:
        data = {"observed_at": "2024-06-01T10:00:00Z", **form}
        data = {k: v for k, v in data.items() if v}
        return self.client.post("/api/v1/observations", headers=self.auth(), data=data,
                                files=[("photos", (f"{case.name}.bin", case.data, case.mime))])

    def counts(self) -> tuple[int, int, list[str]]:
        with self.engine.connect() as conn:
            obs = conn.scalar(select(func.count()).select_from(Observation))
            photos = conn.scalar(select(func.count()).select_from(Photo))
        files = sorted(p.name for p in (self.service.data_dir / "media").rglob("*") if p.is_file())
        return int(obs or 0), int(photos or 0), files


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root: Path = tmp_path_factory.mktemp("hostile")
    write_tiny_model(root / "models", "tiny", "1")
    url = f"sqlite:///{root / 'hostile.sqlite3'}"
    keys, _ = create_users(url, LiveService.secret, {"vol": "volunteer"})
    service = LiveService(root / "data", url, root / "models",
                          env={"POLLINID_DECODE_THREADS": "2", "POLLINID_RATE_LIMIT_ENABLED": "false"})
    engine = create_engine(url)
    with service:
        s = Served(service, keys, engine)
        yield s
        s.client.close()
    engine.dispose()


def _check_error(r: httpx.Response, statuses: tuple[int, ...], case: str) -> None:
    assert r.status_code in statuses, (case, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), case
    error = r.json()["error"]
    assert error["code"] and error["message"], case


def _top_label(body: dict[str, Any]) -> str:
    return str(body["results"][0]["taxon"]["label"])


def _run_corpus(served: Served, corpus: list[Hostile]) -> dict[str, tuple[int, int]]:
    outcomes: dict[str, tuple[int, int]] = {}
    for case in corpus:
        # /identify
        r = served.identify(case)
        if case.refuse or (case.either and r.status_code != 200):
            _check_error(r, case.statuses, case.name)
        else:
            assert r.status_code == 200, (case.name, r.text[:300])
            body = r.json()
            assert body["results"], case.name
            if case.label:
                assert _top_label(body) == case.label, (case.name, body["results"][0])
        identify_status = r.status_code

        # POST /observations: the same answer, and nothing half-written when refused.
        rows_before = served.counts()
        r = served.observe(case)
        if case.refuse or (case.either and identify_status != 200):
            _check_error(r, case.statuses, case.name)
            assert served.counts() == rows_before, f"{case.name}: a refused upload left rows or files"
        else:
            assert r.status_code == 201, (case.name, r.text[:300])
            obs = r.json()
            photo = obs["photos"][0]
            media = served.client.get(photo["url"], headers=served.auth())
            assert media.status_code == 200 and media.content == case.data, case.name
            assert media.headers["x-content-type-options"] == "nosniff"
            assert media.headers["content-type"].split(";")[0] in ("image/jpeg", "image/png", "image/gif",
                                                                   "image/tiff", "image/heic", "image/webp")
            if case.label:
                assert obs["prediction"]["taxon"]["scientific_name"] == "Vanessa atalanta", case.name
            if "gps" in case.tags:  # absurd EXIF GPS is ignored, not stored
                assert obs["latitude"] is None and obs["longitude"] is None
        outcomes[case.name] = (identify_status, r.status_code)

        # Malformed EXIF date and no observed_at: a clear 422 naming the field, nothing written.
        if "date" in case.tags:
            rows_before = served.counts()
            r = served.observe(case, observed_at="")
            _check_error(r, (422,), case.name)
            assert "observed_at" in r.json()["error"]["message"]
            assert served.counts() == rows_before

    return outcomes


def test_hostile_corpus(served: Served) -> None:
    corpus = build_corpus()
    ok = served.identify(Hostile("warm-up", photo_bytes()))
    assert ok.status_code == 200
    before = served.service.memory()
    outcomes = _run_corpus(served, corpus)
    first = served.service.memory()
    _run_corpus(served, corpus)
    second = served.service.memory()
    print("outcomes (identify, observation):", outcomes)
    print(f"memory KiB: before {before}, after one pass {first}, after two {second}")
    assert second["VmHWM"] - before["VmRSS"] < MAX_PEAK_GROWTH_KIB, (before, second)
    assert second["VmRSS"] - first["VmRSS"] < MAX_SECOND_PASS_GROWTH_KIB, (first, second)
    # Still serving, correctly.
    r = served.identify(Hostile("after", photo_bytes()))
    assert r.status_code == 200 and _top_label(r.json()) == "red_admiral"
    assert served.service.proc is not None and served.service.proc.poll() is None


def test_a_flood_of_bombs_stays_in_bounded_memory(served: Served) -> None:
    """Eight bombs at once (49 Mpx each, within the limits): decoding is bounded by the decode pool."""
    bomb = Hostile("bomb", png_bomb(7_000, 7_000), mime="image/png")
    served.identify(Hostile("warm-up", photo_bytes()))
    before = served.service.memory()

    def send(i: int) -> int:
        with httpx.Client(base_url=served.service.url, timeout=300) as c:
            if i % 2:
                return c.post("/api/v1/identify",
                              files=[("images", ("b.png", bomb.data, bomb.mime))]).status_code
            return c.post("/api/v1/observations", headers=served.auth(),
                          data={"observed_at": "2024-06-01T10:00:00Z"},
                          files=[("photos", ("b.png", bomb.data, bomb.mime))]).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(8)))
    after = served.service.memory()
    print(f"flood statuses {statuses}; memory KiB before {before}, after {after}")
    assert all(s in (200, 201) for s in statuses), statuses
    assert after["VmHWM"] - before["VmRSS"] < MAX_FLOOD_GROWTH_KIB, (before, after)
    r = served.identify(Hostile("after", photo_bytes()))
    assert r.status_code == 200
