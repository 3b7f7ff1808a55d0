"""The training subcommands end to end on 32-px photos: train one epoch, evaluate, export, predict, resume."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from service.cli.main import main
from service.core.modelcard import ONNX_METADATA_KEY, ModelCard

from .conftest import color_photo

TINY = [
    "--backbone",
    "tiny_cnn",
    "--no-pretrained",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--no-progress",
    "--lr",
    "0.02",
    "--holdout",
    "0.2",
    "--threads",
    "1",
]


def _train(data: Path, out: Path, *extra: str) -> None:
    assert main(["train", "--data", str(data), "--out", str(out), *TINY, *extra]) == 0


def test_one_epoch_smoke_run_through_the_cli(color_dataset: Path, tmp_path: Path, capsys) -> None:
    run, export = tmp_path / "run", tmp_path / "models" / "colors" / "1"
    _train(
        color_dataset,
        run,
        "--mode",
        "full",
        "--epochs",
        "1",
        "--name",
        "colors",
        "--version",
        "1",
        "--export-dir",
        str(export),
        "--label-smoothing",
        "0.1",
        "--taxonomy-smoothing",
        "--balanced-sampling",
        "--balanced-finetune-epochs",
        "1",
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["export"] == str(export)
    # Run folder: resolved config, per-epoch CSV, curves, checkpoints.
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"] == "tiny_cnn" and config["epochs"] == 1 and config["taxonomy_smoothing"] is True
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 1 and float(rows[0]["held_nll"]) > 0
    for name in ("curves.png", "last.pt", "best.pt", "model.pt", "summary.json"):
        assert (run / name).is_file(), name
    # Exported model: card + ONNX with the card embedded + report files.
    card = ModelCard.load(export)
    assert card.labels == ["common_blue", "green_hairstreak", "red_admiral"]
    assert card.taxonomy["red_admiral"].genus == "Vanessa"
    assert card.calibration.temperature > 0 and card.calibration.ood_energy_threshold is not None
    assert 0 <= card.metrics["top1"] <= 1 and card.metrics["n"] == 12
    assert card.input.resize_mode == "longer_pad" and card.input.size == 32
    meta = {p.key: p.value for p in onnx.load(str(export / "model.onnx")).metadata_props}
    assert json.loads(meta[ONNX_METADATA_KEY])["metrics"]["top1"] == card.metrics["top1"]
    for name in ("report.md", "report.json", "confusion.png", "reliability.png"):
        assert (export / name).is_file(), name
    report = json.loads((export / "report.json").read_text())
    assert set(report["per_class"]) == set(card.labels)
    assert report["timing"]["test"]["images_per_second"] > 0 and "train_seconds" in report["timing"]

    # evaluate: same numbers through the same classifier, with TTA and its cost.
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(export),
                "--data",
                str(color_dataset),
                "--tta",
                "--field",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["top1"] == pytest.approx(card.metrics["top1"])
    assert evaluated["tta_top1"] is not None and evaluated["field_top1"] is not None
    # The pipeline evaluated the same photos as field-like composites too.
    assert 0 <= card.metrics["field_composites"]["top1"] <= 1
    assert "Test-time augmentation" in (tmp_path / "eval" / "report.md").read_text()

    # export: re-export the run's model.pt to a new folder (parity-checked).
    assert main(["export", "--checkpoint", str(run / "model.pt"), "--out", str(tmp_path / "re" / "1")]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["max_prob_diff"] <= 1e-4

    # predict: the service's classifier on real files, plus an unreadable one.
    photo = tmp_path / "red.jpg"
    color_photo((220, 30, 30), (300, 200), seed=42).save(photo)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a photo")
    assert main(["predict", "--model", str(export), str(photo), str(junk)]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert predicted[0]["model"] == {"name": "colors", "version": "1"}
    scores = [r["score"] for r in predicted[0]["results"]] or [0]
    assert sum(scores) == pytest.approx(1.0, abs=1e-4)  # all labels of the tiny model listed
    assert predicted[0]["rollup"] is None or predicted[0]["rollup"]["answer"]
    assert "error" in predicted[1]


def test_linear_mode_with_feature_cache(color_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train(
        color_dataset,
        run,
        "--mode",
        "linear",
        "--epochs",
        "2",
        "--views",
        "2",
        "--lr",
        "0.05",
        "--name",
        "colors",
        "--version",
        "lin",
    )
    caches = [p for p in (run / "cache").iterdir() if (p / "meta.json").is_file()]
    assert len(caches) == 3  # train views, held-out, evaluation
    train_cache = [p for p in caches if json.loads((p / "meta.json").read_text())["views"] == 2]
    assert len(train_cache) == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"]["top1"] >= 0.5  # colours are easy even for a 2-epoch linear head
    # The committed answer's thresholds were fitted on a leave-classes-out model and stored in the card.
    export = Path(summary["export"])
    card = ModelCard.load(export)
    thresholds = card.calibration.answer_thresholds
    assert thresholds is not None and set(thresholds) == {"no_insect", "species", "genus", "family", "order", "class"}
    assert all(0.5 <= t <= 1.0 for t in thresholds.values())
    fit = card.calibration.answer_fit
    assert len(fit["heldout_labels"]) == 1 and fit["heldout_photos"] > 0 and fit["known_photos"] > 0
    assert "known_species_at_species" in card.metrics["answers"]
    assert (export / "risk_coverage.png").is_file()
    assert "## Committed answer" in (export / "report.md").read_text()
    # pollinid fit-answers re-fits them for the finished run (same caches) and rewrites card and ONNX metadata.
    assert main(["fit-answers", "--run", str(run), "--model", str(export), "--epochs", "1"]) == 0
    refit = ModelCard.load(export)
    assert refit.calibration.answer_fit["epochs"] == 1
    assert refit.metrics["answers"]["by_rank"] and "Out of sample" in (export / "report.md").read_text()
    meta = {p.key: p.value for p in onnx.load(str(export / "model.onnx")).metadata_props}
    assert json.loads(meta[ONNX_METADATA_KEY])["calibration"]["answer_fit"]["epochs"] == 1
    assert len([p for p in (run / "cache").iterdir()]) == 3  # no new cache was built
    assert main(["fit-answers", "--run", str(tmp_path), "--model", str(export)]) == 2
    # A second run with the same settings reuses the caches.
    _train(
        color_dataset,
        tmp_path / "run2",
        "--mode",
        "linear",
        "--epochs",
        "1",
        "--views",
        "2",
        "--cache-dir",
        str(run / "cache"),
        "--name",
        "colors",
        "--version",
        "lin2",
    )
    assert len([p for p in (run / "cache").iterdir()]) == 3


def test_resume_continues_where_it_stopped(color_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ["--mode", "partial", "--trainable-stages", "1", "--no-cache", "--patience", "10"]
    _train(color_dataset, run, *common, "--epochs", "1", "--version", "a")
    first = list(csv.DictReader((run / "metrics.csv").open()))
    _train(color_dataset, run, *common, "--epochs", "3", "--resume", "--version", "b")
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert rows[0] == first[0]  # epoch 1 was not re-run
    import torch

    state = torch.load(run / "last.pt", weights_only=False)
    assert state["epoch"] == 2 and len(state["history"]) == 3


def test_mirror_tta_is_baked_into_the_exported_graph(color_dataset: Path, tmp_path: Path, capsys) -> None:
    import numpy as np
    from PIL import Image

    from service.core.preprocess import preprocess
    from service.inference.classifier import RuntimeOptions, load_classifier

    run, export = tmp_path / "run", tmp_path / "models" / "colors" / "1"
    _train(color_dataset, run, "--mode", "full", "--epochs", "1", "--mirror-tta", "--export-dir", str(export))
    card = ModelCard.load(export)
    assert card.training["test_time_augmentation"].startswith("mirror")
    # A photo and its mirror image get the same logits: the graph averages both (one ONNX call, batch N).
    photo = color_photo((30, 200, 40), (48, 32), seed=7)
    mirrored = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    re_export = tmp_path / "re" / "1"
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(run / "model.pt"), "--out", str(re_export)]) == 0
    assert json.loads(capsys.readouterr().out)["max_prob_diff"] <= 1e-4
    for folder in (export, re_export):
        clf = load_classifier(folder, RuntimeOptions(providers="cpu"))
        logits = clf.run(np.stack([preprocess(photo, clf.card.input), preprocess(mirrored, clf.card.input)]))
        assert logits.shape == (2, 3)
        np.testing.assert_allclose(logits[0], logits[1], atol=1e-5)
        assert np.abs(logits[0]).max() > 1e-3  # not trivially zero


def test_card_normalisation_defaults_to_the_backbone_and_can_be_overridden(
    color_dataset: Path, tmp_path: Path
) -> None:
    from training.pipeline import TrainConfig, input_spec_for

    lite = input_spec_for(TrainConfig(data="x", backbone="efficientnet_lite0"))
    assert lite.mean == (0.5, 0.5, 0.5) and lite.std == (0.5, 0.5, 0.5) and lite.size == 224
    export = tmp_path / "models" / "colors" / "1"
    _train(
        color_dataset,
        tmp_path / "run",
        "--mode",
        "full",
        "--epochs",
        "1",
        "--mean",
        "0.4,0.5,0.6",
        "--std",
        "0.2,0.25,0.3",
        "--export-dir",
        str(export),
    )
    card = ModelCard.load(export)
    assert card.input.mean == (0.4, 0.5, 0.6) and card.input.std == (0.2, 0.25, 0.3)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["mean"] == [0.4, 0.5, 0.6]


@pytest.mark.parametrize("value", ["0.5,0.5", "a,b,c"])
def test_bad_normalisation_is_a_clear_error(value: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "x", "--mean", value])
    assert exc.value.code == 2
    assert "expected three numbers R,G,B" in capsys.readouterr().err


def test_bad_option_is_a_clear_error(color_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown backbone 'nonet'"):
        main(["train", "--data", str(color_dataset), "--out", str(tmp_path / "r"), "--backbone", "nonet"])


def test_training_cli_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "from service.cli.main import build_parser\n"
        "p = build_parser(); a = p.parse_args(['train', '--data', 'x'])\n"
        "assert a.func.__module__ == 'training.cli'\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2]
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("gate", [None, 1000.0])
def test_predict_answers_as_identify_does(tmp_path: Path, sqlite_url: str, gate: float | None) -> None:
    """`pollinid predict` and POST /identify: the same answer for the same photo (one path, the API's names)."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.settings import Settings
    from tests.helpers import photo_bytes, tiny_card, tiny_onnx_bytes
    from training.cli import predict_photos

    folder = tmp_path / "models" / "tiny" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(tiny_onnx_bytes(3))
    card = tiny_card("tiny", "1")
    card.calibration.ood_energy_threshold = gate  # 1000: every photo is out of distribution
    card.save(folder)
    blobs = {"red": photo_bytes((220, 30, 30)), "mixed": photo_bytes((150, 40, 160))}
    for name, blob in blobs.items():
        (tmp_path / f"{name}.jpg").write_bytes(blob)
    predicted = predict_photos(folder, [tmp_path / f"{name}.jpg" for name in blobs], top_k=2)
    settings = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, models_dir=tmp_path / "models")
    with TestClient(create_app(settings)) as client:
        for mine, blob in zip(predicted, blobs.values(), strict=True):
            body = client.post("/api/v1/identify?top_k=2", files=[("photos", ("p.jpg", blob, "image/jpeg"))]).json()
            assert mine["rollup"] == body["rollup"] and mine["results"] == body["results"]
            assert mine["out_of_distribution"] == body["out_of_distribution"] is (gate is not None)
            assert mine["energy"] == body["images"][0]["energy"]
    assert predicted[0]["rollup"]["rank"] == ("genus" if gate else "species")
