"""Retrain without the original photos: the replay kit, and a last-layer retrain on top of a released network.

A fresh install has the released model but not the photos it was trained on. The released network ends in one
linear layer (ONNX ``Gemm`` or ``MatMul`` + ``Add``) over pooled features. This module

* finds that layer in the ONNX graph (:func:`find_head`) and runs the network up to it through ONNX Runtime
  with the service's preprocessing (:class:`FeatureExtractor`);
* builds a **replay kit** for a version (:func:`build_kit`, ``pollinid replay build``): the features of a few
  training photos per class (the old classes' examples for the new layer to be trained against) and of the
  evaluation photos (for the gate), in float16 — about 3 MB for 100 classes of 1,280 features, next to a 20 MB
  network;
* fits a new last layer (:func:`fit_head`): the old classes' rows are **kept as they are** (so an old photo's
  old-class scores do not move at all), the new classes' rows are initialised from their mean features
  (imprinting) and trained with cross-entropy over all classes on the new photos, the validated photos of old
  classes and the kit's old-class examples;
* writes the candidate (:func:`write_head_model`): the same graph with the larger layer, and its card.

The trade-off, measured in ``docs/retrain.md``: the backbone does not learn (new classes are only as separable as
the released features make them, and corrections of old classes cannot change the old rows), but old classes
can only lose photos that a new class now claims, and a retrain takes seconds instead of a full training run.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.core.hashing import file_sha256
from service.core.modelcard import ONNX_FILENAME, ModelCard
from service.inference.versions import REPLAY_FILENAME, REPLAY_META_FILENAME

logger = logging.getLogger(__name__)

@dataclass
class Head:
    """The network's last linear layer: ``logits = features @ weight.T + bias``."""

    feature_name: str  # the tensor the layer reads (batch, D)
    output_name: str
    weight_name: str
    bias_name: str | None
    transposed: bool  # True: the initializer is stored (C, D) (Gemm transB=1); False: (D, C)
    weight: np.ndarray  # always (C, D)
    bias: np.ndarray  # (C,)


def find_head(model: Any, output_name: str | None = None) -> Head:
    """The linear layer producing the graph's output (``Gemm``, or ``MatMul`` then ``Add``).

    Raises:
        ValueError: the output is not produced by a linear layer over initializer weights.
    """
    from onnx import numpy_helper

    graph = model.graph
    output = output_name or graph.output[0].name
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get(output)
    if node is None:
        raise ValueError(f"no node produces the output {output!r}")
    if node.op_type == "Gemm":
        attrs = {a.name: a for a in node.attribute}
        trans_a = attrs["transA"].i if "transA" in attrs else 0
        alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
        beta = attrs["beta"].f if "beta" in attrs else 1.0
        if trans_a or alpha != 1.0 or beta != 1.0 or node.input[1] not in inits:
            raise ValueError("the last Gemm is not a plain linear layer over stored weights")
        trans_b = bool(attrs["transB"].i) if "transB" in attrs else False
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        weight = w if trans_b else w.T
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        bias = (numpy_helper.to_array(inits[bias_name]).astype(np.float32).reshape(-1) if bias_name
                else np.zeros(weight.shape[0], np.float32))
        return Head(node.input[0], output, node.input[1], bias_name, trans_b, weight, bias)
    if node.op_type == "Add":
        bias_name = next((i for i in node.input if i in inits), None)
        other = next((i for i in node.input if i != bias_name), None)
        matmul = producer.get(other or "")
        if bias_name is None or matmul is None or matmul.op_type != "MatMul" or matmul.input[1] not in inits:
            raise ValueError("the last Add does not follow a MatMul over stored weights")
        w = numpy_helper.to_array(inits[matmul.input[1]]).astype(np.float32)  # (D, C)
        bias = numpy_helper.to_array(inits[bias_name]).astype(np.float32).reshape(-1)
        return Head(matmul.input[0], output, matmul.input[1], bias_name, False, w.T, bias)
    if node.op_type == "MatMul" and node.input[1] in inits:
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        return Head(node.input[0], output, node.input[1], None, False, w.T, np.zeros(w.shape[1], np.float32))
    raise ValueError(f"the output {output!r} comes from a {node.op_type} node, not a linear layer: a last-layer "
                     "retrain needs a network that ends in one")


class FeatureExtractor:
    """A model version's network up to its last layer, through ONNX Runtime and the service's preprocessing."""

    def __init__(self, folder: Path, threads: int = 0) -> None:
        import onnx
        import onnxruntime as ort

        self.folder = Path(folder)
        self.card = ModelCard.load(self.folder)
        model = onnx.load(str(self.folder / ONNX_FILENAME))
        self.head = find_head(model, self.card.input.output_name)
        dim = self.head.weight.shape[1]
        model.graph.output.append(onnx.helper.make_tensor_value_info(
            self.head.feature_name, onnx.TensorProto.FLOAT, ["batch", dim]))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def features(self, paths: Sequence[Path], *, flip: bool = False, batch_size: int = 32,
                 progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, list[int]]:
        """Features (N, D) of the photos that decode, and the indices of those photos in ``paths``.

        With ``flip``, the mirrored view of every photo follows (2N rows; the indices repeat).
        """
        from PIL import Image

        from service.core.imaging import decode_image
        from service.core.preprocess import decode_min_side, preprocess

        spec = self.card.input
        rows: list[np.ndarray] = []
        kept: list[int] = []
        pending: list[np.ndarray] = []
        pending_idx: list[int] = []

        def flush() -> None:
            if pending:
                out = self.session.run([self.head.feature_name], {spec.input_name: np.stack(pending)})[0]
                rows.append(np.asarray(out, dtype=np.float32).reshape(len(pending), -1))
                kept.extend(pending_idx)
                pending.clear()
                pending_idx.clear()

        for i, path in enumerate(paths):
            try:
                img = decode_image(Path(path).read_bytes(), min_side=decode_min_side(spec)).image
            except Exception as exc:
                logger.warning("skipping unreadable photo %s: %s", path, exc)
                continue
            views = [img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)] if flip else [img]
            for view in views:
                pending.append(preprocess(view, spec))
                pending_idx.append(i)
            if len(pending) >= batch_size:
                flush()
                if progress:
                    progress(i + 1, len(paths))
        flush()
        dim = self.head.weight.shape[1]
        return (np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)), kept


def logits_of(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return (features.astype(np.float32) @ weight.T + bias).astype(np.float32)


# -- the replay kit ------------------------------------------------------------------------------------


def build_kit(model_dir: Path, samples: dict[str, list[Any]], out_dir: Path, *, per_class: int = 8,
              max_eval_per_class: int | None = None, seed: int = 0, threads: int = 0) -> Path:
    """Write ``replay.npz`` + ``replay.json`` for a model version into ``out_dir``.

    Args:
        model_dir: the version folder (``model.onnx`` + ``model.json``).
        samples: ``{"train": [...], "valid": [...]}`` labelled photos (:class:`training.data.Sample`), the
            version's own training and evaluation photos.
        out_dir: where to write (the version folder, or ``<data_dir>/replay/<name>/<version>``).
        per_class: training photos kept per class (their features), drawn at random.
        max_eval_per_class: evaluation photos kept per class (None: all).
    """
    extractor = FeatureExtractor(model_dir, threads=threads)
    card = extractor.card
    index = {label: i for i, label in enumerate(card.labels)}
    rng = np.random.default_rng(seed)

    def pick(items: list[Any], limit: int | None) -> list[Any]:
        by_label: dict[str, list[Any]] = defaultdict(list)
        for s in items:
            if s.label in index:
                by_label[s.label].append(s)
        chosen = []
        for label in sorted(by_label):
            group = by_label[label]
            order = rng.permutation(len(group))
            chosen += [group[i] for i in (order[:limit] if limit else order)]
        return chosen

    train = pick(list(samples.get("train", [])), per_class)
    valid = pick(list(samples.get("valid", [])) or list(samples.get("test", [])), max_eval_per_class)
    if not train or not valid:
        raise ValueError("a replay kit needs training and evaluation photos with the model's labels")
    tf, tk = extractor.features([s.path for s in train])
    vf, vk = extractor.features([s.path for s in valid])
    out_dir.mkdir(parents=True, exist_ok=True)
    npz = out_dir / REPLAY_FILENAME
    tmp = out_dir / ".replay.tmp.npz"
    np.savez_compressed(tmp, train_features=tf.astype(np.float16),
                        train_labels=np.array([index[train[i].label] for i in tk], np.int32),
                        eval_features=vf.astype(np.float16),
                        eval_labels=np.array([index[valid[i].label] for i in vk], np.int32),
                        labels=np.array(card.labels))
    tmp.replace(npz)
    meta = {
        "model": f"{card.name}/{card.version}", "model_sha256": file_sha256(model_dir / ONNX_FILENAME),
        "feature_tensor": extractor.head.feature_name, "feature_dim": int(tf.shape[1]),
        "train_photos": len(tk), "eval_photos": len(vk), "per_class": per_class,
        "created": datetime.now(UTC).isoformat(), "bytes": npz.stat().st_size,
    }
    (out_dir / REPLAY_META_FILENAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return npz


@dataclass
class Kit:
    labels: list[str]
    train_features: np.ndarray
    train_labels: np.ndarray
    eval_features: np.ndarray
    eval_labels: np.ndarray
    meta: dict[str, Any]


def load_kit(path: Path) -> Kit:
    with np.load(path, allow_pickle=False) as data:
        kit = Kit(labels=[str(x) for x in data["labels"]],
                  train_features=data["train_features"].astype(np.float32),
                  train_labels=data["train_labels"].astype(np.int64),
                  eval_features=data["eval_features"].astype(np.float32),
                  eval_labels=data["eval_labels"].astype(np.int64),
                  meta=json.loads(Path(path).with_name(REPLAY_META_FILENAME).read_text(encoding="utf-8")))
    return kit


# -- the new last layer --------------------------------------------------------------------------------


def fit_head(weight: np.ndarray, bias: np.ndarray, features: np.ndarray, targets: np.ndarray, num_new: int, *,
             epochs: int = 300, lr: float = 0.01, weight_decay: float = 1e-4, seed: int = 0) -> tuple[
                 np.ndarray, np.ndarray, dict[str, Any]]:
    """A larger last layer: the ``C`` old rows kept, ``num_new`` rows learnt.

    Args:
        weight, bias: the old layer, (C, D) and (C,).
        features, targets: training features (N, D) and class indices in ``[0, C + num_new)`` (old classes'
            examples from the replay kit and validated photos; new classes' validated photos).
        num_new: new classes, appended after the old ones.

    Returns:
        ``(weight (C+K, D), bias (C+K,), report)``.
    """
    import torch

    torch.manual_seed(seed)
    c, d = weight.shape
    x = torch.from_numpy(features.astype(np.float32))
    y = torch.from_numpy(targets.astype(np.int64))
    w_old = torch.from_numpy(weight.astype(np.float32))
    b_old = torch.from_numpy(bias.astype(np.float32))
    # Imprinting: each new row starts as its class's mean feature, scaled like the old rows.
    norm = float(w_old.norm(dim=1).mean())
    rows, biases = [], []
    for k in range(num_new):
        mask = y == c + k
        if not bool(mask.any()):
            raise ValueError(f"new class {k} has no training features")
        mean = x[mask].mean(dim=0)
        rows.append(mean / mean.norm().clamp_min(1e-6) * norm)
        # Its logit on the mean feature starts one above the old layer's best score on those photos.
        best_old = float((x[mask] @ w_old.T + b_old).max(dim=1).values.mean())
        biases.append(best_old + 1.0 - float((rows[-1] * mean).sum()))
    w_new = torch.nn.Parameter(torch.stack(rows) if rows else torch.zeros(0, d))
    b_new = torch.nn.Parameter(torch.tensor(biases, dtype=torch.float32))
    counts = torch.bincount(y, minlength=c + num_new).float()
    class_weight = torch.where(counts > 0, counts.sum() / (counts.clamp_min(1) * (counts > 0).sum()),
                               torch.zeros_like(counts))
    old_logits = x @ w_old.T + b_old  # fixed: the old rows do not move
    optimizer = torch.optim.Adam([w_new, b_new], lr=lr, weight_decay=0.0)
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weight)
    losses = []
    for _ in range(epochs):
        optimizer.zero_grad()
        logits = torch.cat([old_logits, x @ w_new.T + b_new], dim=1)
        loss = loss_fn(logits, y) + weight_decay * (w_new ** 2).sum()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    w = torch.cat([w_old, w_new.detach()]).numpy()
    b = torch.cat([b_old, b_new.detach()]).numpy()
    with torch.no_grad():
        acc = float((torch.cat([old_logits, x @ w_new.T + b_new], dim=1).argmax(1) == y).float().mean())
    return w, b, {"epochs": epochs, "lr": lr, "weight_decay": weight_decay, "final_loss": losses[-1] if losses
                  else None, "train_accuracy": acc, "train_features": len(y), "old_rows_frozen": True}


def write_head_model(src_folder: Path, dst_folder: Path, weight: np.ndarray, bias: np.ndarray,
                     card: ModelCard) -> Path:
    """The source network with ``weight``/``bias`` as its last layer, saved with ``card`` in ``dst_folder``."""
    import onnx
    from onnx import numpy_helper

    from training.export import write_card

    model = onnx.load(str(Path(src_folder) / ONNX_FILENAME))
    head = find_head(model, card.input.output_name)
    stored = weight if head.transposed else weight.T
    replace = {head.weight_name: np.ascontiguousarray(stored.astype(np.float32))}
    if head.bias_name is not None:
        old = next(i for i in model.graph.initializer if i.name == head.bias_name)
        replace[head.bias_name] = bias.astype(np.float32).reshape(
            [-1] if len(old.dims) <= 1 else [1, -1])
    elif np.any(bias != 0):
        raise ValueError("the source layer has no bias to write the new one into")
    for i, init in enumerate(model.graph.initializer):
        if init.name in replace:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(replace[init.name], init.name))
    for out in model.graph.output:
        if out.name == head.output_name:
            dims = out.type.tensor_type.shape.dim
            if len(dims) == 2:
                dims[1].ClearField("dim_param")
                dims[1].dim_value = weight.shape[0]
    keep = {o.name for o in model.graph.output}
    value_info = [v for v in model.graph.value_info if v.name not in keep]
    del model.graph.value_info[:]
    model.graph.value_info.extend(value_info)
    onnx.checker.check_model(model)
    dst_folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst_folder / ONNX_FILENAME))
    write_card(dst_folder, card)
    return dst_folder / ONNX_FILENAME


def register_replay(subparsers: Any) -> None:
    """``pollinid replay build``: the replay kit of a released version."""
    p = subparsers.add_parser("replay", help="replay kits: what a retrain without the original photos needs")
    sub = p.add_subparsers(dest="replay_command", metavar="ACTION")
    sub.required = True
    b = sub.add_parser("build", help="features of a version's training and evaluation photos (replay.npz)")
    b.add_argument("--model", required=True, type=Path, help="the version folder (model.onnx + model.json)")
    b.add_argument("--data", required=True, type=Path, action="append",
                   help="its training data (ImageFolder with train/valid); several times to merge sources")
    b.add_argument("--out", type=Path, default=None,
                   help="output folder (default: the version folder; a read-only release: use "
                        "<data_dir>/replay/<name>/<version>)")
    b.add_argument("--per-class", type=int, default=8, help="training photos per class (default 8)")
    b.add_argument("--max-eval-per-class", type=int, default=None, help="evaluation photos per class (all)")
    b.add_argument("--threads", type=int, default=0)
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_cmd_build)


def _cmd_build(args: Any) -> int:
    from training.data import read_imagefolder

    splits: dict[str, list[Any]] = {}
    for source in args.data:
        for split, samples in read_imagefolder(source)[0].items():
            splits.setdefault(split, []).extend(samples)
    out = args.out or args.model
    path = build_kit(args.model, splits, out, per_class=args.per_class, max_eval_per_class=args.max_eval_per_class,
                     seed=args.seed, threads=args.threads)
    meta = json.loads(path.with_name(REPLAY_META_FILENAME).read_text(encoding="utf-8"))
    print(f"{path}: {meta['train_photos']} training and {meta['eval_photos']} evaluation photos, "
          f"{meta['bytes'] / 1e6:.1f} MB")
    return 0
