"""The validation queue: most uncertain first, never your own or already identified, leased."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from service.settings import Settings
from tests.helpers import photo_bytes
from tests.service.observation_support import BLUE, GREEN, RED, Env, env, make_env  # noqa: F401


def mixed(a: tuple[int, int, int], b: tuple[int, int, int], share: float) -> bytes:
    """A photo whose left ``share`` is colour a and the rest colour b: a less certain prediction."""
    arr = np.empty((48, 64, 3), dtype=np.uint8)
    cut = int(64 * share)
    arr[:, :cut] = a
    arr[:, cut:] = b
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def queue(env: Env, who: str = "exp", **params) -> list[int]:  # noqa: F811
    r = env.client.get("/api/v1/validation/queue", headers=env.h(who), params=params)
    assert r.status_code == 200, r.text
    return [item["observation"]["id"] for item in r.json()["data"]]


def test_most_uncertain_first_and_exclusions(env: Env) -> None:  # noqa: F811
    sure = env.post_obs(photos=[photo_bytes(RED)]).json()
    unsure = env.post_obs(photos=[mixed(RED, GREEN, 0.5)]).json()
    middle = env.post_obs(photos=[mixed(RED, GREEN, 0.7)]).json()
    own = env.post_obs("vol2", photos=[mixed(BLUE, GREEN, 0.5)]).json()
    scores = {o["id"]: o["prediction"]["top1_score"] for o in (sure, unsure, middle)}
    assert scores[unsure["id"]] < scores[middle["id"]] < scores[sure["id"]]
    # An expert who is also the observer of `own` (make exp the observer by uploading as exp).
    mine = env.post_obs("exp", photos=[mixed(GREEN, BLUE, 0.5)]).json()
    got = queue(env, "exp", limit=10)
    assert mine["id"] not in got
    order = [i for i in got if i in scores]
    assert order == [unsure["id"], middle["id"], sure["id"]]
    assert own["id"] in got
    # Once identified it leaves that expert's queue; validated ones leave everyone's.
    env.identify("exp", unsure["id"], "agree")
    assert unsure["id"] not in queue(env, "exp")
    env.identify("exp2", sure["id"], "agree")
    env.identify("exp3", sure["id"], "agree")
    assert sure["id"] not in queue(env, "admin", limit=50)


def test_leases_keep_two_experts_apart_and_expire(tmp_path, sqlite_url, models_dir) -> None:
    settings = Settings(
        data_dir=tmp_path / "d", database_url=sqlite_url, models_dir=models_dir, queue_lease_seconds=1.0
    )
    for e in make_env(settings, {"vol": "volunteer", "exp": "expert", "exp2": "expert"}):
        ids = [e.post_obs(photos=[photo_bytes(c)]).json()["id"] for c in (RED, GREEN, BLUE)]
        first = queue(e, "exp", limit=2)
        assert len(first) == 2
        second = queue(e, "exp2", limit=10)
        assert set(first).isdisjoint(second) and set(first) | set(second) == set(ids)
        assert queue(e, "exp", limit=2) == first  # your own lease comes back to you
        # Releasing gives an item back at once.
        r = e.client.delete(f"/api/v1/validation/queue/{first[0]}/lease", headers=e.h("exp"))
        assert r.status_code == 204
        # Giving it back again (a page whose filter change crossed a prefetch) is no error: nobody holds it.
        r = e.client.delete(f"/api/v1/validation/queue/{first[0]}/lease", headers=e.h("exp"))
        assert r.status_code == 204
        assert first[0] in queue(e, "exp2", limit=10)
        # After the timeout a lease no longer holds the item.
        time.sleep(1.2)
        assert first[1] in queue(e, "exp2", limit=10)
        assert (
            e.client.delete(f"/api/v1/validation/queue/{ids[2]}/lease", headers=e.h("exp")).status_code == 409
        )


def test_queue_by_taxon_group(env: Env) -> None:  # noqa: F811
    red = env.post_obs(photos=[photo_bytes(RED)]).json()["id"]
    green = env.post_obs(photos=[photo_bytes(GREEN)]).json()["id"]
    blue = env.post_obs(photos=[photo_bytes(BLUE)]).json()["id"]
    assert sorted(queue(env, taxon="Lycaenidae")) == sorted([green, blue])
    assert queue(env, "exp2", taxon="Nymphalidae") == [red]
    r = env.client.get("/api/v1/validation/queue", headers=env.h("exp"), params={"taxon": "Nowhere"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_taxon"
    assert env.client.get("/api/v1/validation/queue", headers=env.h("vol")).status_code == 403


def test_concurrent_experts_get_disjoint_items(postgres_url: str, tmp_path, models_dir) -> None:
    import threading

    people = {"vol": "volunteer", **{f"e{i}": "expert" for i in range(4)}}
    settings = Settings(data_dir=tmp_path / "d", database_url=postgres_url, models_dir=models_dir)
    for e in make_env(settings, people):
        for i in range(8):
            e.post_obs(photos=[photo_bytes(RED, size=(40 + i, 40))])
        barrier = threading.Barrier(4)
        got: dict[str, list[int]] = {}

        def take(who: str) -> None:
            barrier.wait()  # noqa: B023 - the loop body runs once
            got[who] = queue(e, who, limit=2)  # noqa: B023

        threads = [threading.Thread(target=take, args=(f"e{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        all_ids = [i for ids in got.values() for i in ids]
        assert len(all_ids) == 8 and len(set(all_ids)) == 8
