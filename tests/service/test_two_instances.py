"""Two instances, one truth: two ``pollinid serve`` replicas and a ``pollinid worker``, each with a data folder of
its own (no shared local disk), on one PostgreSQL database, one S3 bucket (moto's server on loopback) and one
Redis (a key prefix of this test's own).

* an observation uploaded to replica A is served, photo included, by replica B (and the other way round);
* a version trained by the worker (a last-layer retrain on validated observations and the release's replay kit)
  and activated through A is served by B within seconds, fetched from the bucket into B's own cache;
* a client over its quota on A is refused by B (the counters live in Redis).

Every part is a real process started the way docs/deploy.md starts it on real hosts. The test needs PostgreSQL,
Redis (CI requires both: POLLINID_TEST_REQUIRE_POSTGRES/REDIS) and PyTorch (the worker's training child); it
is skipped elsewhere, saying which is missing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.store.model_objects import fetch_version, update_file, upload_version
from service.store.objects import LocalStore
from tests.conftest import S3_CREDENTIALS
from tests.helpers import write_tiny_model
from tests.service.api.redis_support import redis_prefix, redis_url  # noqa: F401 (fixtures)
from tests.service.cluster_support import Process, Replica, cli, client
from tests.service.jobs_support import NEW_TAXA, PURPLE, YELLOW, base_dataset, jpeg, wait_for
from tests.service.observation_support import BLUE, GREEN, RED

PER_IP = 200  # requests per client address per minute, shared by both replicas through Redis
PER_KEY = 400
FORM = {"observed_at": "2024-06-01T10:00:00Z", "latitude": "45.0", "longitude": "5.0", "licence": "CC-BY"}


@dataclass
class Cluster:
    a: Replica
    b: Replica
    worker: Process
    keys: dict[str, str]
    root: Path

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log(2500)}" for p in (self.a, self.b, self.worker))


def _release_with_replay_kit(releases: Path, scratch: Path) -> None:
    """The release tiny/1 and its replay kit (features of its training photos) in the releases folder, which
    every host installs alike; the photos themselves are gone afterwards."""
    pytest.importorskip("torch", reason="the worker's retrain child needs PyTorch (pip install -e '.[train]')")
    from training.data import read_imagefolder
    from training.replay import build_kit

    folder = write_tiny_model(releases, "tiny", "1")
    original = base_dataset(scratch / "original", n_train=8, n_valid=6)
    splits, _, _ = read_imagefolder(original)
    build_kit(folder, splits, folder, per_class=6)
    shutil.rmtree(original)


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, s3_endpoint: str, object_store_url: str,
            redis_url: str, redis_prefix: str) -> Iterator[Cluster]:  # noqa: F811
    releases = tmp_path / "releases"
    _release_with_replay_kit(releases, tmp_path)
    shared = {
        "POLLINID_DATABASE_URL": postgres_url,
        "POLLINID_SECRET_KEY": "two-instances-test-secret",  # the same on every host: API keys work on all
        "POLLINID_MODELS_DIR": str(releases),
        "POLLINID_DEFAULT_MODEL": "tiny",
        "POLLINID_OBJECT_STORE_URL": object_store_url,
        "POLLINID_S3_ENDPOINT_URL": s3_endpoint,
        **{f"POLLINID_{k.upper()}": v for k, v in S3_CREDENTIALS.items()},
        "POLLINID_REDIS_URL": redis_url,
        "POLLINID_REDIS_KEY_PREFIX": redis_prefix,
        # Every decision waits for Redis (0.2 s by default, past it a process counts on its own): a loaded CI
        # machine may be slower than that, and this test checks the shared counts exactly.
        "POLLINID_REDIS_TIMEOUT_SECONDS": "2",
        "POLLINID_RATE_LIMIT_PER_IP": str(PER_IP),
        "POLLINID_RATE_LIMIT_PER_KEY": str(PER_KEY),
        "POLLINID_MODEL_POLL_SECONDS": "0.25",
        "POLLINID_WORKER_POLL_SECONDS": "0.2",
        "POLLINID_WORKER_HEARTBEAT_SECONDS": "0.5",
        "POLLINID_MAX_WAIT_MS": "2",
        "POLLINID_INTRA_OP_THREADS": "1",
        "POLLINID_DECODE_THREADS": "1",
        "POLLINID_LOG_LEVEL": "WARNING",
    }

    def host(name: str) -> dict[str, str]:
        return {**shared, "POLLINID_DATA_DIR": str(tmp_path / name)}

    # Users, their keys (printed last) and the taxa of the species volunteers will report: the pollinid
    # command on any host, against the shared database (it brings the schema up to date first).
    keys = {}
    for name, role in (("vol", "volunteer"), ("exp", "expert"), ("exp2", "expert"), ("admin", "admin")):
        keys[name] = cli(host("admin-host"), "users", "create", "--name", name, "--role", role).strip().splitlines()[-1]
    taxonomy = tmp_path / "new-taxa.csv"
    taxonomy.write_text("label,scientific_name,common_name,genus,family,order\n" + "".join(
        f"{label},{t.scientific_name},{t.common_name},{t.genus},{t.family},{t.order}\n"
        for label, t in NEW_TAXA.items()), encoding="utf-8")
    cli(host("admin-host"), "import", "taxonomy", str(taxonomy))

    a = Replica.serve("replica-a", host("host-a"), tmp_path / "logs" / "a.log")
    b = Replica.serve("replica-b", host("host-b"), tmp_path / "logs" / "b.log")
    worker = Process("worker", ["worker", "--id", "worker-host"], host("host-w"), tmp_path / "logs" / "worker.log")
    started = [a, b, worker]
    try:
        for p in started:
            p.start()
        a.wait_ready()
        b.wait_ready()
        assert worker.alive(), worker.log()
        yield Cluster(a=a, b=b, worker=worker, keys=keys, root=tmp_path)
    finally:
        for p in started:
            p.stop()


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def _post_observation(http: httpx.Client, base: str, key: str, photo: bytes) -> dict[str, Any]:
    r = http.post(f"{base}/api/v1/observations", headers={"Authorization": f"Bearer {key}"}, data=FORM,
                  files=[("photos", ("p.jpg", photo, "image/jpeg"))])
    assert r.status_code == 201, r.text
    return dict(r.json())


@pytest.mark.slow
@pytest.mark.postgres
def test_two_replicas_and_a_worker_share_one_truth(cluster: Cluster) -> None:
    a, b, root = cluster.a, cluster.b, cluster.root

    # --- 1. an observation uploaded to A is served, with its photo, by B (and one uploaded to B by A) -------
    with client("127.0.0.1") as http:
        photo = jpeg(PURPLE, 4242)
        created = _post_observation(http, a.url, cluster.keys["vol"], photo)
        seen = http.get(f"{b.url}/api/v1/observations/{created['id']}", headers=cluster.h("vol"))
        assert seen.status_code == 200, seen.text
        assert seen.json()["photos"] == created["photos"] and seen.json()["prediction"] == created["prediction"]
        media = http.get(f"{b.url}{created['photos'][0]['url']}", headers=cluster.h("exp"))
        assert media.status_code == 200, media.text
        assert media.content == photo and media.headers["etag"] == f'"{hashlib.sha256(photo).hexdigest()}"'
        other = _post_observation(http, b.url, cluster.keys["vol"], jpeg(RED, 4243))
        media = http.get(f"{a.url}{other['photos'][0]['url']}", headers=cluster.h("vol"))
        assert media.status_code == 200 and media.content == jpeg(RED, 4243)
    for host in ("host-a", "host-b"):  # the photos are in the bucket, on no replica's disk
        assert _files(root / host / "media") == [], _files(root / host / "media")

    # --- 2. a version trained by the worker and activated through A is served by both within seconds -------
    # Volunteers report on both replicas, two experts identify (one through each): the validated photos teach
    # the model a new species (brimstone, yellow) beside the release's three.
    with client("127.0.0.3") as http:
        seed = 5000
        for _ in range(5):
            for color, taxon in ((RED, "Vanessa atalanta"), (GREEN, "Callophrys rubi"),
                                 (BLUE, "Polyommatus icarus"), (YELLOW, "Gonepteryx rhamni"),
                                 (YELLOW, "Gonepteryx rhamni")):
                seed += 1
                obs = _post_observation(http, (a, b)[seed % 2].url, cluster.keys["vol"], jpeg(color, seed * 10))
                for expert, replica in (("exp", a), ("exp2", b)):
                    r = http.post(f"{replica.url}/api/v1/observations/{obs['id']}/identifications",
                                  headers=cluster.h(expert), json={"kind": "propose", "taxon": taxon})
                    assert r.status_code in (200, 201), r.text
                assert http.get(f"{a.url}/api/v1/observations/{obs['id']}",
                                headers=cluster.h("vol")).json()["status"] == "validated"

    with client("127.0.0.4") as http:
        admin = cluster.h("admin")
        r = http.post(f"{a.url}/api/v1/admin/retrain", headers=admin,
                      json={"auto_activate": False, "min_new_class_photos": 6, "gate_holdout": 0.25, "threads": 1})
        assert r.status_code == 201, r.text
        assert r.json()["params"]["plan"]["strategy"] == "head"
        job_id = r.json()["id"]

        def finished() -> dict[str, Any] | None:
            job = http.get(f"{b.url}/api/v1/admin/jobs/{job_id}", headers=admin).json()
            return job if job["state"] in ("succeeded", "failed", "cancelled") else None

        job = wait_for(finished, 240, 0.5, what="the retrain job", logs=cluster.logs)
        assert job["state"] == "succeeded", (job["error"], job["log_tail"][-15:])
        assert job["worker_id"] == "worker-host"
        result = job["result"]
        assert result["gate"]["passed"], result["gate"]["reasons"]
        assert (result["model"]["name"], result["model"]["version"]) == ("tiny", "2") and not result["activated"]
        # Trained on the worker's disk, which no replica can read on real hosts: here all share one machine,
        # so the worker's data folder goes away (the worker has done its part) and the replicas can only get
        # the version from the bucket.
        network = (root / "host-w" / "models" / "tiny" / "2" / "model.onnx").read_bytes()
        cluster.worker.stop()
        (root / "host-w").rename(root / "worker-host-gone")
        for host in ("host-a", "host-b"):
            assert not (root / host / "models" / "tiny" / "2").exists()

        yellow = [("photos", ("y.jpg", jpeg(YELLOW, 7), "image/jpeg"))]

        def identify(replica: Replica) -> dict[str, Any]:
            r = http.post(f"{replica.url}/api/v1/identify", files=yellow)
            assert r.status_code == 200, r.text
            return dict(r.json())

        assert identify(b)["model"]["version"] == "1"
        r = http.post(f"{a.url}/api/v1/admin/models/2/activate", headers=admin)
        assert r.status_code == 200, r.text
        assert r.json()["active"] and r.json()["loaded"] and r.json()["version"] == "2"
        activated = time.monotonic()
        assert identify(a)["model"]["version"] == "2"  # A swapped at once

        def b_serves_tiny_2() -> dict[str, Any] | None:
            answer = identify(b)
            return answer if answer["model"]["version"] == "2" else None

        answer = wait_for(b_serves_tiny_2, 30, 0.25, what="replica B to serve tiny/2", logs=cluster.logs)
        lag = time.monotonic() - activated
        assert lag < 30
        assert answer["results"][0]["taxon"]["label"] == "brimstone"  # the new network, not only its name
        assert identify(a)["results"][0]["taxon"]["label"] == "brimstone"
        ready = http.get(f"{b.url}/api/v1/ready").json()
        assert ready["model"] == {"name": "tiny", "version": "2"}
        # Each replica fetched the version from the bucket into its own cache.
        for host in ("host-a", "host-b"):
            assert (root / host / "model-cache" / "tiny" / "2" / "model.onnx").read_bytes() == network
        print(f"replica B served tiny/2 {lag:.2f} s after A activated it")

    # --- 3. a client over its quota on A is refused by B ------------------------------------------------------
    with client("127.0.0.2") as http:
        first = http.get(f"{a.url}/api/v1/vocabulary")
        assert first.status_code == 200
        assert first.headers["ratelimit-policy"].startswith(f'"ip";q={PER_IP};w=60')
        assert first.headers["ratelimit"].startswith(f'"ip";r={PER_IP - 1};')
        second = http.get(f"{b.url}/api/v1/vocabulary")  # B counts on from A's count
        assert second.headers["ratelimit"].startswith(f'"ip";r={PER_IP - 2};'), second.headers
        for i in range(PER_IP - 2):
            r = http.get(f"{a.url}/api/v1/vocabulary")
            assert r.status_code == 200, (i, r.text)
        assert http.get(f"{a.url}/api/v1/vocabulary").status_code == 429
        refused = http.get(f"{b.url}/api/v1/vocabulary")
        assert refused.status_code == 429, refused.headers
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 0 < int(refused.headers["retry-after"]) <= 60
        assert refused.headers["ratelimit"].startswith('"ip";r=0;')
    with client("127.0.0.1") as http:  # another client is not held by that one's quota
        assert http.get(f"{b.url}/api/v1/vocabulary").status_code == 200
    # An API key's quota is shared too: its count goes on from one replica to the other.
    with client("127.0.0.5") as http:
        counts = []
        for replica in (a, b, a, b):
            r = http.get(f"{replica.url}/api/v1/observations", headers=cluster.h("exp"))
            assert r.status_code == 200, r.text
            counts.append(int(r.headers["ratelimit"].split('"key";r=')[1].split(";")[0]))
        assert counts == list(range(counts[0], counts[0] - 4, -1)), counts
    for p in (a, b):
        assert p.alive(), p.log()


class _RewrittenWhileFetched(LocalStore):
    """A store in which another replica rewrites the card (activation: the file, then the manifest) right
    after this replica has read the manifest and before it downloads the card."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.rewrites = 0

    def download(self, key: str, path: Path) -> None:
        if key.endswith("/model.json") and self.rewrites == 0:
            self.rewrites += 1
            update_file(self, "tiny", "2", "model.json",
                        lambda data: json.dumps({**json.loads(data), "status": "released"}).encode())
        super().download(key, path)


def test_a_card_rewritten_by_another_replica_during_a_fetch_is_not_taken_as_corrupt(tmp_path: Path) -> None:
    # Found by the test above: replica B read the manifest, replica A's activation rewrote the card, B got the
    # new card against the old manifest and marked tiny/2 as unservable for good.
    store = _RewrittenWhileFetched(tmp_path / "store")
    upload_version(store, write_tiny_model(tmp_path / "trained", "tiny", "2"), "tiny", "2")
    assert json.loads(store.get("tiny/2/model.json")).get("status") != "released"
    cached = fetch_version(store, "tiny", "2", tmp_path / "cache")
    assert store.rewrites == 1 and cached is not None
    assert json.loads((cached / "model.json").read_bytes())["status"] == "released"
    assert (cached / "model.json").read_bytes() == store.get("tiny/2/model.json")
