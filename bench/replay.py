"""Retrain without the original photos, measured on real photos (issue 12, item 4).

A released model learns new classes from a few validated photos each, with no access to the photos it was trained
on, by a new last layer (:mod:`training.replay`). This bench measures, on photos neither layer was fitted on:

* old-class top-1 on the release's own evaluation photos (lepidoptera100 ``valid``, 500 photos), before and after;
* the share of those old-class photos a new class now claims;
* new-class top-1 on their own held-out photos (insects-extra ``valid``, 40 per class), among all classes;

for several numbers of photos per new class and several replay kits: none (new rows imprinted from their mean
feature, not trained), and 2 or 8 training photos per old class. The features of every photo are computed once
through ONNX Runtime; one candidate is then exported and evaluated through ONNX Runtime end to end to check that
the exported network gives the numbers the features gave.

    python bench/replay.py --model models/lepidoptera100/4 --old ../shared/data/lepidoptera100 \
        --new ../shared/data/insects-extra --new-classes bombus,vespidae,coccinellidae,odonata,no_insect \
        --photos 10,30 --kits 0,2,8 --threads 2 --json bench-replay.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "lepidoptera100" / "4",
                        help="the release (lepidoptera100/4 left the bundle: extract it with "
                        "`git archive fa7f85e models/lepidoptera100/4 | tar -x -C DIR`, "
                        "and pass DIR/models/lepidoptera100/4)")
    parser.add_argument("--old", type=Path, default=ROOT.parent / "shared" / "data" / "lepidoptera100")
    parser.add_argument("--new", type=Path, default=ROOT.parent / "shared" / "data" / "insects-extra")
    parser.add_argument("--new-classes", default="bombus,vespidae,coccinellidae,odonata,no_insect")
    parser.add_argument("--photos", default="10,30", help="training photos per new class")
    parser.add_argument("--kits", default="0,2,8", help="replay kit sizes (training photos per old class)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not (args.model / "model.onnx").is_file():
        parser.error(f"no model.onnx in {args.model}: lepidoptera100/4 is no longer bundled; extract it with "
                     "`git archive fa7f85e models/lepidoptera100/4 | tar -x -C DIR` and pass "
                     "DIR/models/lepidoptera100/4")

    from service.core.modelcard import ModelCard
    from training.data import read_imagefolder
    from training.evaluation import evaluate_model_dir
    from training.replay import FeatureExtractor, fit_head, logits_of, write_head_model

    rng = np.random.default_rng(args.seed)
    card = ModelCard.load(args.model)
    extractor = FeatureExtractor(args.model, threads=args.threads)
    w0, b0 = extractor.head.weight, extractor.head.bias
    photos = [int(x) for x in args.photos.split(",")]
    kits = [int(x) for x in args.kits.split(",")]
    new_classes = args.new_classes.split(",")
    labels = list(card.labels) + new_classes
    timings: dict[str, float] = {}

    old_splits, _, _ = read_imagefolder(args.old)
    by_class: dict[str, list[Any]] = {}
    for s in old_splits["train"]:
        by_class.setdefault(s.label, []).append(s)
    kit_train = []
    for label in card.labels:
        group = by_class.get(label, [])
        kit_train += [group[i] for i in rng.permutation(len(group))[:max(kits)]]
    old_valid = [s for s in old_splits["valid"] if s.label in card.labels]
    t0 = time.perf_counter()
    kf, kk = extractor.features([s.path for s in kit_train])
    ky = np.array([card.labels.index(kit_train[i].label) for i in kk])
    kit_rank = np.zeros(len(ky), int)  # the photo's rank within its class (kit of size k: rank < k)
    seen: dict[int, int] = {}
    for j, c in enumerate(ky):
        kit_rank[j] = seen.get(int(c), 0)
        seen[int(c)] = kit_rank[j] + 1
    vf, vk = extractor.features([s.path for s in old_valid])
    vy = np.array([card.labels.index(old_valid[i].label) for i in vk])
    timings["old_features_s"] = time.perf_counter() - t0
    timings["old_photos"] = len(kk) + len(vk)

    new_splits, _, _ = read_imagefolder(args.new)
    new_train: dict[str, list[Any]] = {c: [] for c in new_classes}
    for s in new_splits["train"]:
        if s.label in new_train:
            new_train[s.label].append(s)
    chosen = []
    for c in new_classes:
        group = new_train[c]
        chosen += [group[i] for i in rng.permutation(len(group))[:max(photos)]]
    new_valid = [s for s in new_splits["valid"] if s.label in new_classes]
    t0 = time.perf_counter()
    nf, nk = extractor.features([s.path for s in chosen], flip=True)
    ny = np.array([labels.index(chosen[i].label) for i in nk])
    n_rank = np.zeros(len(ny), int)  # rank of the photo within its class (both views share it)
    counter: dict[int, int] = {}
    last: int | None = None
    for j, i in enumerate(nk):
        c = int(ny[j])
        if i != last:
            counter[c] = counter.get(c, 0) + 1
            last = i
        n_rank[j] = counter[c] - 1
    tf, tk = extractor.features([s.path for s in new_valid])
    ty = np.array([labels.index(new_valid[i].label) for i in tk])
    timings["new_features_s"] = time.perf_counter() - t0
    timings["new_photos"] = len(set(nk)) + len(tk)

    before = logits_of(vf, w0, b0).argmax(1)
    old_before = float((before == vy).mean())
    rows = []
    best: tuple[np.ndarray, np.ndarray] | None = None
    for n in photos:
        x_new, y_new = nf[n_rank < n], ny[n_rank < n]
        for k in kits:
            x = np.concatenate([kf[kit_rank < k], x_new]) if k else x_new
            y = np.concatenate([ky[kit_rank < k], y_new]) if k else y_new
            t0 = time.perf_counter()
            w, b, _ = fit_head(w0, b0, x, y, len(new_classes), epochs=0 if k == 0 else 300, seed=args.seed)
            fit_s = time.perf_counter() - t0
            after = logits_of(vf, w, b).argmax(1)
            new_pred = logits_of(tf, w, b).argmax(1)
            rows.append({
                "photos_per_new_class": n, "kit_per_old_class": k,
                "method": "imprint (no replay, no training)" if k == 0 else f"fit with kit of {k}/class",
                "old_top1_before": old_before, "old_top1_after": float((after == vy).mean()),
                "old_drop_points": 100 * (old_before - float((after == vy).mean())),
                "old_claimed_by_new": float((after >= len(card.labels)).mean()),
                "new_top1": float((new_pred == ty).mean()),
                "new_per_class": {c: float((new_pred[ty == labels.index(c)] == labels.index(c)).mean())
                                  for c in new_classes},
                "fit_seconds": fit_s,
            })
            print(json.dumps(rows[-1]), flush=True)
            if n == max(photos) and k == max(kits):
                best = (w, b)

    # The exported network gives the numbers the features gave.
    assert best is not None
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / card.name / "bench"
        cand = card.model_copy(update={"version": "bench", "labels": labels})
        write_head_model(args.model, dst, best[0], best[1], cand)
        t0 = time.perf_counter()
        onnx_eval = evaluate_model_dir(dst, old_valid)
        timings["onnx_eval_s"] = time.perf_counter() - t0
        onnx_top1 = float((onnx_eval["logits"].argmax(1) == onnx_eval["targets"]).mean())
        kit_path = Path(tmp) / "replay.npz"
        sel = kit_rank < max(kits)
        np.savez_compressed(kit_path, train_features=kf[sel].astype(np.float16), train_labels=ky[sel].astype(np.int32),
                            eval_features=vf.astype(np.float16), eval_labels=vy.astype(np.int32),
                            labels=np.array(card.labels))
        kit_bytes = kit_path.stat().st_size
    out = {"model": f"{card.name}/{card.version}", "new_classes": new_classes, "rows": rows,
           "onnx_check": {"old_top1_features": rows[-1]["old_top1_after"], "old_top1_onnx": onnx_top1},
           "kit_bytes": kit_bytes, "kit_per_old_class": max(kits), "timings": timings}
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
