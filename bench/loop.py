"""The virtuous circle, measured: volunteers upload, specialists validate, the admin retrains, the gate decides.

Drives a real ``pollinid serve`` and ``pollinid worker`` (subprocesses, fresh data folder, SQLite) over HTTP for
several rounds, twice: once with the specialists taking the validation queue's order (most uncertain first) and once
first-come (oldest first), at the same validation budget. The release is lepidoptera100/4 (a copy, so a newer
bundled model does not change the bench); it has no training photo of the insects-extra classes, which arrive as
volunteers' photos. No base dataset is given to the retrain: the release's replay kit (built first, from its own
training and evaluation photos) keeps the old classes (``training/replay.py``).

Per round it reports, on fixed test slices the model never trained on and that are never uploaded (2 lepidoptera100
``valid`` photos per species; 20 insects-extra ``valid`` photos per new class):

* top-1 accuracy on old and on new classes, and the committed answer's precision and coverage;
* the validation effort: identifications per validated observation;
* the wall time of each stage: upload, validation, retrain job, activation, evaluation.

Specialists are simulated: each identification names the true taxon (85 %), says "cannot tell" (8 %) or names
another taxon (7 %); a third specialist steps in when the first two do not settle an observation.

    python bench/loop.py --rounds 3 --uploads 120 --budget 60 --json loop.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
NEW = ("bombus", "vespidae", "coccinellidae", "odonata", "no_insect")
RANK_KEYS = ("species", "genus", "family", "order")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_taxonomy(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["label"]: row for row in csv.DictReader(fh)}


def lineage(row: dict[str, str]) -> dict[str, str]:
    """Scientific names by rank, the taxon's own rank included (``class``: Insecta)."""
    rank = (row.get("rank") or "species").strip() or "species"
    out = {k: row.get(k) or "" for k in ("genus", "family", "order")}
    if rank in RANK_KEYS:
        out[rank] = row["scientific_name"]
    out["class"] = "Insecta"
    return {k: v for k, v in out.items() if v}


class Service:
    """``pollinid serve`` + ``pollinid worker`` on a fresh data folder."""

    def __init__(self, folder: Path, releases: Path, threads: int) -> None:
        self.folder = folder
        self.port = free_port()
        self.env = {**os.environ, "POLLINID_DATA_DIR": str(folder / "data"), "POLLINID_MODELS_DIR": str(releases),
                    "POLLINID_DEFAULT_MODEL": "lepidoptera100", "POLLINID_RATE_LIMIT_ENABLED": "false",
                    "POLLINID_PROVIDERS": "cpu", "POLLINID_INTRA_OP_THREADS": str(threads),
                    "POLLINID_MODEL_POLL_SECONDS": "0.5", "POLLINID_WORKER_POLL_SECONDS": "0.5",
                    "POLLINID_CONSENSUS_MIN_AGREEMENTS": "2", "POLLINID_QUEUE_MAX_LEASES_PER_EXPERT": "100",
                    "PYTHONPATH": str(ROOT)}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.keys: dict[str, str] = {}
        self.base = f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "service.cli", *args], env=self.env, check=True,
                             capture_output=True, text=True)
        return out.stdout

    def start(self, people: dict[str, str]) -> None:
        for name, role in people.items():
            self.keys[name] = self.cli("users", "create", "--name", name, "--role", role).strip().splitlines()[-1]
        log = (self.folder / "serve.log").open("wb")
        self.procs.append(subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
                                           env=self.env, stdout=log, stderr=subprocess.STDOUT))
        wlog = (self.folder / "worker.log").open("wb")
        self.procs.append(subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=self.env,
                                           stdout=wlog, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/api/v1/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the service did not become ready; see " + str(self.folder / "serve.log"))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}


def identify(client: httpx.Client, path: Path) -> dict[str, Any]:
    r = client.post("/api/v1/identify", files={"photos": (path.name, path.read_bytes(), "image/jpeg")})
    r.raise_for_status()
    return r.json()


def post_identification(client: httpx.Client, obs_id: int, body: dict[str, Any], headers: dict[str, str],
                        taxonomy: dict[str, dict[str, str]]) -> httpx.Response:
    """Name the taxon by its label, else by its scientific name (a label the service does not know yet)."""
    url = f"/api/v1/observations/{obs_id}/identifications"
    resp = client.post(url, json=body, headers=headers)
    if resp.status_code == 422 and body.get("taxon") in taxonomy:
        resp = client.post(url, json={**body, "taxon": taxonomy[body["taxon"]]["scientific_name"]}, headers=headers)
    if resp.status_code >= 400:
        raise RuntimeError(f"identification {body} of observation {obs_id}: {resp.status_code} {resp.text[:300]}")
    return resp


def evaluate(client: httpx.Client, slices: dict[str, list[tuple[Path, str]]], taxonomy: dict[str, dict[str, str]],
             workers: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    committed = right = total = 0
    version = None
    for name, items in slices.items():
        with ThreadPoolExecutor(workers) as pool:
            answers = list(pool.map(lambda item: identify(client, item[0]), items))
        hits = 0
        for (_, label), answer in zip(items, answers, strict=True):
            version = answer["model"]["version"]
            hits += answer["results"][0]["taxon"]["label"] == label
            roll = answer.get("rollup")
            total += 1
            if roll is None:
                continue
            committed += 1
            if label == "no_insect":
                right += roll["kind"] == "no_insect"
            elif roll["kind"] == "insect":
                right += 1
            elif roll["kind"] == "taxon":
                right += lineage(taxonomy[label]).get(roll["rank"]) == roll["taxon"]["scientific_name"]
        out[f"{name}_top1"] = hits / len(items)
    out.update(committed_precision=right / committed if committed else None, committed_coverage=committed / total,
               model_version=version)
    return out


def run_arm(order: str, args: argparse.Namespace, pools: dict[str, Any], kit: Path, work: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)  # the same uploads and the same specialists' errors in both arms
    folder = work / order
    folder.mkdir(parents=True)
    releases = folder / "releases" / "lepidoptera100"
    releases.mkdir(parents=True)
    shutil.copytree(args.release, releases / args.release.name)
    replay = folder / "data" / "replay" / "lepidoptera100" / args.release.name
    replay.mkdir(parents=True)
    for f in (kit, kit.with_name("replay.json")):
        shutil.copy(f, replay / f.name)
    people = {**{f"vol{i}": "volunteer" for i in range(args.volunteers)},
              **{f"exp{i}": "expert" for i in range(3)}, "admin": "admin"}
    service = Service(folder, folder / "releases", args.threads)
    taxonomy = pools["taxonomy"]
    service.cli.main("import", "taxonomy", str(DATA / "insects-extra" / "taxonomy.csv"))
    service.start(people)
    rounds: list[dict[str, Any]] = []
    try:
        client = httpx.Client(base_url=service.base, timeout=600)
        t0 = time.perf_counter()
        base_eval = evaluate(client, pools["slices"], taxonomy, args.eval_workers)
        rounds.append({"round": 0, **base_eval, "eval_s": time.perf_counter() - t0})
        print(order, json.dumps(rounds[-1]), flush=True)
        uploads = list(pools["uploads"])
        truth: dict[int, str] = {}
        validated_ids: set[int] = set()
        looked: set[int] = set()  # observations the specialists have looked at (the budget counts new ones)
        for r in range(1, args.rounds + 1):
            row: dict[str, Any] = {"round": r}
            batch, uploads = uploads[:args.uploads], uploads[args.uploads:]
            t = time.perf_counter()
            for i, (path, label) in enumerate(batch):
                resp = client.post("/api/v1/observations", headers=service.h(f"vol{i % args.volunteers}"),
                                   data={"observed_at": "2026-06-01T10:00:00Z", "licence": "CC-BY"},
                                   files=[("photos", (path.name, path.read_bytes(), "image/jpeg"))])
                resp.raise_for_status()
                truth[int(resp.json()["id"])] = label
            row["upload_s"] = time.perf_counter() - t
            # Which observations the specialists look at this round: the queue's order or first-come.
            t = time.perf_counter()
            pending = sorted(i for i in truth if i not in looked)
            if order == "queue":  # the queue's order: lowest top-1 score first
                q = client.get("/api/v1/validation/queue", params={"limit": 100},
                               headers=service.h("exp0")).json()["data"]
                leased = [int(item["observation"]["id"]) for item in q]
                for obs_id in leased:
                    client.delete(f"/api/v1/validation/queue/{obs_id}/lease", headers=service.h("exp0"))
                chosen = [i for i in leased if i not in looked][:args.budget]
            else:
                chosen = pending[:args.budget]
            looked.update(chosen)
            ids = 0
            for obs_id in chosen:
                label = truth[obs_id]
                for expert in ("exp0", "exp1", "exp2"):
                    draw = rng.random()
                    if draw < 0.85:
                        body: dict[str, Any] = ({"kind": "not_an_insect"} if label == "no_insect" else
                                                {"kind": "propose", "taxon": label})
                    elif draw < 0.93:
                        body = {"kind": "cannot_tell"}
                    else:
                        other = rng.choice([x for x in pools["labels"] if x != label])
                        body = ({"kind": "not_an_insect"} if other == "no_insect" else
                                {"kind": "propose", "taxon": other})
                    resp = post_identification(client, obs_id, body, service.h(expert), taxonomy)
                    ids += 1
                    if resp.json()["consensus"]["status"] in ("validated", "not_an_insect"):
                        validated_ids.add(obs_id)
                        break
            row.update(validation_s=time.perf_counter() - t, looked_at=len(chosen), identifications=ids,
                       validated_total=len(validated_ids),
                       identifications_per_validated=ids / max(1, sum(1 for o in chosen if o in validated_ids)),
                       validated_new_class_photos=sum(1 for o in validated_ids if truth[o] in NEW))
            # Retrain without the base photos; the gate decides; auto-activation.
            t = time.perf_counter()
            body = {"auto_activate": True, "min_new_class_photos": args.min_photos, "gate_holdout": 0.25,
                    "threads": args.threads}
            resp = client.post("/api/v1/admin/retrain", json=body, headers=service.h("admin"))
            if resp.status_code != 201:
                row.update(retrain=f"refused {resp.status_code}: {resp.json()['error']['message'][:200]}")
            else:
                job_id = resp.json()["id"]
                row["plan_new_classes"] = resp.json()["params"]["plan"]["new_classes"]
                row["plan_below_minimum"] = resp.json()["params"]["plan"]["below_minimum"]
                while True:
                    job = client.get(f"/api/v1/admin/jobs/{job_id}", headers=service.h("admin")).json()
                    if job["state"] in ("succeeded", "failed", "cancelled"):
                        break
                    time.sleep(0.5)
                row["retrain_s"] = time.perf_counter() - t
                if job["state"] != "succeeded":
                    row["retrain"] = f"{job['state']}: {job['error']}"
                else:
                    gate = job["result"]["gate"]
                    row.update(retrain="ok", gate_passed=gate["passed"], gate_reasons=gate["reasons"][:3],
                               candidate=job["result"]["model"]["version"], activated=job["result"]["activated"],
                               gate_old_top1=gate["overall"]["top1"])
                    if job["result"]["activated"]:
                        t = time.perf_counter()
                        while identify(client, pools["slices"]["old"][0][0])["model"]["version"] != row["candidate"]:
                            time.sleep(0.2)
                        row["activation_s"] = time.perf_counter() - t
            t = time.perf_counter()
            row.update(evaluate(client, pools["slices"], taxonomy, args.eval_workers))
            row["eval_s"] = time.perf_counter() - t
            rounds.append(row)
            print(order, json.dumps(row), flush=True)
        client.close()
    finally:
        service.stop()
    return {"order": order, "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, default=ROOT / "models" / "lepidoptera100" / "4",
                        help="the release to start from (lepidoptera100/4 left the bundle: extract it with "
                        "`git archive fa7f85e models/lepidoptera100/4 | tar -x -C DIR`, "
                        "and pass DIR/models/lepidoptera100/4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uploads", type=int, default=120, help="observations uploaded per round")
    parser.add_argument("--budget", type=int, default=60, help="observations the specialists look at per round")
    parser.add_argument("--new-share", type=float, default=0.5, help="share of uploads from the new classes")
    parser.add_argument("--min-photos", type=int, default=8, help="min_new_class_photos")
    parser.add_argument("--volunteers", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-workers", type=int, default=4)
    parser.add_argument("--kit-per-class", type=int, default=8)
    parser.add_argument("--orders", default="queue,first-come")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="work in this (new) folder and keep it")
    args = parser.parse_args(argv)
    if not (args.release / "model.onnx").is_file():
        parser.error(f"no model.onnx in {args.release}: lepidoptera100/4 is no longer bundled; extract it with "
                     "`git archive fa7f85e models/lepidoptera100/4 | tar -x -C DIR` and pass "
                     "DIR/models/lepidoptera100/4")

    rng = random.Random(args.seed)
    taxonomy = {**read_taxonomy(DATA / "lepidoptera100" / "taxonomy.csv"),
                **read_taxonomy(DATA / "insects-extra" / "taxonomy.csv")}
    old_labels = sorted(p.name for p in (DATA / "lepidoptera100" / "valid").iterdir())
    # Old classes: 2 valid photos per species for the test slice, the other 3 may be uploaded.
    old_test, old_pool = [], []
    for label in old_labels:
        photos = sorted((DATA / "lepidoptera100" / "valid" / label).iterdir())
        rng.shuffle(photos)
        old_test += [(p, label) for p in photos[:2]]
        old_pool += [(p, label) for p in photos[2:]]
    new_test, new_pool = [], []
    for label in NEW:
        new_test += [(p, label) for p in sorted((DATA / "insects-extra" / "valid" / label).iterdir())[:20]]
        new_pool += [(p, label) for p in sorted((DATA / "insects-extra" / "train" / label).iterdir())]
    rng.shuffle(old_pool)
    rng.shuffle(new_pool)
    total = args.uploads * args.rounds
    n_new = int(total * args.new_share)
    uploads = new_pool[:n_new] + old_pool[:total - n_new]
    rng.shuffle(uploads)
    pools = {"taxonomy": taxonomy, "slices": {"old": old_test, "new": new_test}, "uploads": uploads,
             "labels": old_labels + list(NEW)}

    with tempfile.TemporaryDirectory(prefix="pollinid-loop-") as tmp:
        work = Path(tmp) if args.keep is None else args.keep
        work.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        from training.data import read_imagefolder
        from training.replay import build_kit

        splits, _, _ = read_imagefolder(DATA / "lepidoptera100")
        kit = build_kit(args.release, splits, work / "kit", per_class=args.kit_per_class, threads=args.threads)
        kit_s = time.perf_counter() - t
        kit_bytes = kit.stat().st_size
        print(f"replay kit: {kit_bytes / 1e6:.2f} MB in {kit_s:.0f} s", flush=True)
        arms = [run_arm(order, args, pools, kit, work) for order in args.orders.split(",")]
    out = {"config": {k: str(v) for k, v in vars(args).items()}, "kit_bytes": kit_bytes, "kit_seconds": kit_s,
           "arms": arms}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
