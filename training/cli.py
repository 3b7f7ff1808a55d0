"""``pollinid train | evaluate | export | ensemble | predict | fit-answers | quantize | replay | references``.

This module must import without PyTorch: ``pollinid serve`` builds the whole parser. Torch and the
training modules are imported inside the command functions only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from training.config import TrainConfig, add_arguments, config_values

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the training subcommands to the ``pollinid`` parser."""
    _register_train(subparsers)
    _register_evaluate(subparsers)
    _register_export(subparsers)
    _register_ensemble(subparsers)
    _register_predict(subparsers)
    _register_fit_answers(subparsers)
    _register_quantize(subparsers)
    from training.replay import register_replay

    register_replay(subparsers)  # pollinid replay build
    from training.references import register_references

    register_references(subparsers)  # pollinid references build


# -- train --------------------------------------------------------------------------------------------


def _register_train(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "train",
        help="train, calibrate, evaluate and export a model (needs PyTorch)",
        description="Train a classifier on labelled photos and export it as a model "
        "version (ONNX + model card + evaluation report).",
    )
    p.add_argument("--config", help="JSON file of options; command-line flags override it")
    add_arguments(p)  # one flag per TrainConfig field
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """Run :func:`training.pipeline.train` with the command line's options."""
    from training.pipeline import train

    config = TrainConfig.from_dict(config_values(args))
    result = train(config)
    if "metrics" in result:
        print(json.dumps({k: result[k] for k in ("export", "metrics", "timings")}, indent=2, default=str))
    return 0


# -- evaluate -----------------------------------------------------------------------------------------


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("evaluate", help="evaluate an exported model on labelled photos")
    p.add_argument("--model", required=True, help="model version folder (model.onnx + model.json)")
    p.add_argument(
        "--data",
        required=True,
        action="append",
        help="ImageFolder root, CSV manifest or COCO/iNat JSON; give it several times to merge sources",
    )
    p.add_argument("--split", default="valid", help="which split to evaluate (default valid)")
    p.add_argument("--image-root")
    p.add_argument("--onnx-file", help="another ONNX file of the folder (model.fp16.onnx, model.int8.onnx)")
    p.add_argument("--tta", action="store_true", help="also evaluate with test-time augmentation")
    p.add_argument(
        "--field", action="store_true", help="also evaluate on field-like composites of the photos"
    )
    p.add_argument("--out", help="report folder (default MODEL/eval-SPLIT)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a model folder through the service's classifier and write a report."""
    from service.core.modelcard import ModelCard
    from training.data import load_data
    from training.evaluation import evaluate_model_dir
    from training.report import write_report

    folder = Path(args.model)
    card = ModelCard.load(folder)
    data = load_data(
        args.data, image_root=Path(args.image_root) if args.image_root else None, classes=card.labels
    )
    split = {"val": "valid", "validation": "valid"}.get(args.split, args.split)
    if split not in data.splits:
        print(f"error: no {split!r} split in {args.data}; splits: {sorted(data.splits)}", file=sys.stderr)
        return 2
    evaluation = evaluate_model_dir(
        folder, data.splits[split], tta=args.tta, field=args.field, onnx_file=args.onnx_file
    )
    out = Path(args.out) if args.out else folder / f"eval-{split}"
    write_report(out, card=card, evaluation=evaluation, problems=data.report.lines())
    m = evaluation["metrics"]
    print(
        json.dumps(
            {
                "report": str(out / "report.md"),
                "n": m["n"],
                "top1": m["top1"],
                "top3": m["top3"],
                "top5": m["top5"],
                "nll": m["nll"],
                "macro_f1": m["macro_f1"],
                "f1a": m["f1a"],
                "mrr": m["mrr"],
                "ece": m["ece"],
                "genus_accuracy": m["genus_accuracy"],
                "family_accuracy": m["family_accuracy"],
                "images_per_second": evaluation["timing"]["images_per_second"],
                "tta_top1": evaluation.get("tta", {}).get("metrics", {}).get("top1"),
                "field_top1": evaluation.get("field", {}).get("metrics", {}).get("top1"),
            },
            indent=2,
        )
    )
    return 0


# -- export -------------------------------------------------------------------------------------------


def _register_export(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("export", help="export a trained run (RUN/model.pt) to ONNX + model card")
    p.add_argument("--checkpoint", required=True, help="RUN/model.pt written by `pollinid train`")
    p.add_argument("--out", required=True, help="version folder to create, e.g. models/NAME/VERSION")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--int8", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Rebuild the network from a run's ``model.pt`` and export it (parity-checked)."""
    from training.ensemble import EnsembleError, load_member
    from training.export import export_model

    try:
        model, card = load_member(Path(args.checkpoint))
    except EnsembleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = export_model(
        model,
        card,
        Path(args.out),
        opset=args.opset,
        fp16=args.fp16,
        int8=args.int8,
        overwrite=args.overwrite,
    )
    print(
        json.dumps(
            {
                "folder": str(result.folder),
                "max_prob_diff": result.max_prob_diff,
                "size_bytes": result.size_bytes,
                "variants": {k: str(v) for k, v in result.variants.items()},
            },
            indent=2,
        )
    )
    return 0


# -- ensemble -----------------------------------------------------------------------------------------


def _register_ensemble(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "ensemble",
        help="combine trained runs into one calibrated, exported model (needs PyTorch)",
        description="Average the calibrated probabilities of several trained runs (each at its own input "
        "size) in one ONNX graph, calibrate it on the runs' held-out slice, export, evaluate and report it.",
    )
    p.add_argument(
        "--member",
        action="append",
        required=True,
        metavar="RUN/model.pt",
        help="a run's model.pt written by `pollinid train`; give it two or more times",
    )
    p.add_argument(
        "--data",
        help="the photos (default: the data the members were trained on, from their model cards)",
    )
    p.add_argument("--valid", help="with --data: a second manifest/JSON for the validation split")
    p.add_argument("--image-root", help="with --data: folder COCO file names are relative to")
    p.add_argument("--taxonomy", help="with --data: taxonomy CSV")
    p.add_argument("--out", required=True, help="version folder to write, e.g. models/NAME/VERSION (replaced)")
    p.add_argument("--name", help="model name in the card (default: the first member's)")
    p.add_argument("--version", help="model version (default: a UTC timestamp)")
    p.add_argument("--fp16", action="store_true", help="also export fp16")
    p.add_argument("--int8", action="store_true", help="also export int8")
    p.add_argument("--tta", action="store_true", help="also evaluate with test-time augmentation")
    p.add_argument(
        "--ood-percentile", type=float, default=1.0, help="percentile of held-out energy for the OOD gate"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for the calibration pass")
    p.add_argument("--batch-size", type=int, default=32, help="photos per batch in the calibration pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (calibration pass)")
    p.add_argument("--no-progress", dest="progress", action="store_false")

    def run(args: argparse.Namespace) -> int:
        if len(args.member) < 2:
            p.error(f"an ensemble needs at least two --member runs, got {len(args.member)}")
        return cmd_ensemble(args)

    p.set_defaults(func=run)


def cmd_ensemble(args: argparse.Namespace) -> int:
    """Run :func:`training.ensemble.run_ensemble`; a member that cannot be read or combined exits with 2."""
    from training.ensemble import EnsembleError, run_ensemble

    try:
        result = run_ensemble(
            [Path(m) for m in args.member],
            args.data,
            Path(args.out),
            name=args.name,
            version=args.version,
            valid=args.valid,
            image_root=args.image_root,
            taxonomy=args.taxonomy,
            int8=args.int8,
            fp16=args.fp16,
            tta=args.tta,
            ood_percentile=args.ood_percentile,
            threads=args.threads,
            workers=args.workers,
            batch_size=args.batch_size,
            device=args.device,
            progress=args.progress,
        )
    except EnsembleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: result[k] for k in ("export", "metrics", "timings")}, indent=2, default=str))
    return 0


# -- predict ------------------------------------------------------------------------------------------


def _register_predict(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("predict", help="identify photos with a model folder (the service's code path)")
    p.add_argument("--model", required=True, help="model version folder (model.onnx + model.json)")
    p.add_argument("photos", nargs="+", help="photo files")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument(
        "--threshold",
        type=float,
        default=0.8,
        help="committed-answer threshold for ranks the model card has no fitted threshold for",
    )
    p.add_argument("--variant", choices=["auto", "fp32", "int8"], default="auto",
                   help="network file on the CPU, as POLLINID_CPU_VARIANT (default auto: the card's CPU default)")
    p.set_defaults(func=cmd_predict)


def predict_photos(
    model_dir: Path, photos: list[Path], top_k: int = 5, threshold: float = 0.8, variant: str = "auto"
) -> list[dict[str, Any]]:
    """Identify each photo exactly as the service does, through the same functions as ``/identify``.

    Decode and preprocess (:func:`service.inference.identify.prepare_photo`), the model
    (:meth:`service.inference.classifier.Classifier.run`), then calibration, the OOD gate, the top-k and the
    committed answer (:func:`service.inference.identify.answer_logits`). Each photo is answered on its own;
    the keys are the API's (``results``, ``rollup``: the committed answer, ``energy``,
    ``out_of_distribution``). A photo that cannot be read gets ``{"photo", "error"}`` instead of results.
    ``variant`` picks the network file on the CPU as the service's ``POLLINID_CPU_VARIANT`` does.
    """
    from service.core.errors import PollinidError
    from service.core.imaging import DecodeLimits
    from service.inference.classifier import RuntimeOptions, load_classifier
    from service.inference.identify import OOD_FINEST_RANK, answer_logits, prepare_photo

    clf = load_classifier(Path(model_dir), RuntimeOptions(providers="cpu", cpu_variant=variant))
    card = clf.card
    out: list[dict[str, Any]] = []
    for photo in photos:
        try:
            prepared = prepare_photo(Path(photo).read_bytes(), card.input, DecodeLimits())
        except (OSError, PollinidError) as exc:
            out.append({"photo": str(photo), "error": getattr(exc, "message", str(exc))})
            continue
        answer = answer_logits(clf, clf.run(prepared.tensor[None]), top_k, threshold)
        unknown = answer.out_of_distribution
        out.append(
            {
                "photo": str(photo),
                "model": {"name": card.name, "version": card.version},
                "network": clf.variant,  # fp32 (model.onnx) or the card's variant that ran
                "results": [r.model_dump(mode="json") for r in answer.results],
                "energy": round(float(answer.energies[0]), 4),
                "out_of_distribution": unknown,
                "answer_finest_rank": OOD_FINEST_RANK if unknown else None,
                "rollup": None if answer.rollup is None else answer.rollup.model_dump(mode="json"),
            }
        )
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    """Print the identification of each photo as JSON."""
    results = predict_photos(Path(args.model), [Path(p) for p in args.photos], args.top_k, args.threshold,
                             args.variant)
    print(json.dumps(results, indent=2))
    return 1 if all("error" in r for r in results) else 0


# -- fit-answers --------------------------------------------------------------------------------------


def _register_fit_answers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "fit-answers",
        help="fit a trained model's committed-answer thresholds on held-out classes (needs PyTorch)",
        description="Train the leave-classes-out model of a finished run (on its feature caches) and write the "
        "fitted per-rank thresholds into the run's exported model (model.json and the ONNX metadata). "
        "`pollinid train` does this itself; this command is for runs trained without it.",
    )
    p.add_argument("--run", required=True, help="the run folder (holds config.json)")
    p.add_argument("--model", required=True, help="the run's exported model folder to update")
    p.add_argument("--epochs", type=int, help="epochs of the leave-classes-out model (default: the run's)")
    p.set_defaults(func=cmd_fit_answers)


def cmd_fit_answers(args: argparse.Namespace) -> int:
    """Fit and store the answer thresholds; print them with the fit's report."""
    from training.pipeline import fit_answers_for_run

    run, model = Path(args.run), Path(args.model)
    for path, what in ((run / "config.json", "run folder"), (model / "model.json", "model folder")):
        if not path.is_file():
            print(f"error: {path.parent} is not a {what} (no {path.name})", file=sys.stderr)
            return 2
    answers = fit_answers_for_run(run, model, epochs=args.epochs)
    print(json.dumps({"thresholds": answers["thresholds"], "fit": answers["fit"]}, indent=2, default=str))
    return 0


# -- quantize -----------------------------------------------------------------------------------------


def _register_quantize(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "quantize",
        help="write an int8 (static QDQ) variant of a model version when it keeps its accuracy",
        description="Quantize MODEL/model.onnx to MODEL/model.int8.onnx (ONNX Runtime static QDQ, per-channel "
        "int8 weights, activations calibrated on training photos), evaluate both on the validation photos "
        "through the same code path, and record the variant in model.json only when top-1 drops by at "
        "most --max-top1-drop and ECE rises by at most --max-ece-rise. model.onnx is never changed.",
    )
    p.add_argument("--model", required=True, help="model version folder (model.onnx + model.json)")
    p.add_argument("--data", required=True, action="append",
                   help="ImageFolder root, CSV manifest or COCO/iNat JSON; give it several times to merge sources")
    p.add_argument("--calibration-photos", type=int, default=300, help="training photos for calibration")
    p.add_argument("--calibration-split", default="train", help="split the calibration photos come from")
    p.add_argument("--split", default="valid", help="split the two networks are compared on")
    p.add_argument("--method", action="append", choices=["minmax", "percentile", "entropy"],
                   help="calibration method; give several to try them in order (default minmax)")
    p.add_argument("--exclude-sensitive", action="store_true",
                   help="also try keeping the first convolution and the logits' node in float")
    p.add_argument("--max-top1-drop", type=float, default=0.005)
    p.add_argument("--max-ece-rise", type=float, default=0.01)
    p.add_argument("--not-cpu-default", action="store_true",
                   help="record the variant without making it what the service loads on the CPU")
    p.add_argument("--dry-run", action="store_true", help="measure only; write nothing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the result as JSON here")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    """Run :func:`training.quantize.quantize_version`; exit 0 when shipped (or measured), 1 when missed."""
    from service.core.modelcard import ModelCard
    from training.data import load_data
    from training.quantize import QuantizeError, quantize_version

    folder = Path(args.model)
    try:
        card = ModelCard.load(folder)
    except (OSError, ValueError) as exc:
        print(f"error: {folder}: no readable model card: {exc}", file=sys.stderr)
        return 2
    data = load_data(args.data, classes=card.labels)
    for split in (args.calibration_split, args.split):
        if split not in data.splits or not data.splits[split]:
            print(f"error: no {split!r} split in {args.data}; splits: {sorted(data.splits)}", file=sys.stderr)
            return 2
    try:
        result = quantize_version(
            folder, data.splits[args.calibration_split], data.splits[args.split],
            calibration_photos=args.calibration_photos, methods=args.method or ["minmax"],
            exclude_sensitive=args.exclude_sensitive, max_top1_drop=args.max_top1_drop,
            max_ece_rise=args.max_ece_rise, cpu_default=not args.not_cpu_default, ship=not args.dry_run,
            seed=args.seed,
        )
    except (QuantizeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    passed = any(a["passed"] for a in result["attempts"])
    return 0 if passed else 1
