"""``pollinid ensemble``: two tiny runs at 32 and 40 px become one served, calibrated ONNX model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli.main import main
from service.core.modelcard import InputSpec, ModelCard
from tests.helpers import COLOR_LABELS

from .conftest import color_photo
from .test_cli import _train


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    return x - _logsumexp(x)[:, None]


@pytest.fixture(scope="module")
def members(color_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    """Two runs on the same photos with the same hold-out (same --seed, --holdout), at 32 and 40 px.

    Returns:
        [(RUN/model.pt, the run's exported folder)] for both.
    """
    root = tmp_path_factory.mktemp("members")
    out = []
    for key, size, extra in (("a", "32", ["--epochs", "2"]), ("b", "40", ["--epochs", "1", "--lr", "0.05"])):
        run, export = root / key, root / "models" / key
        _train(
            color_dataset,
            run,
            "--mode",
            "full",
            "--input-size",
            size,
            "--name",
            "colors",
            "--version",
            key,
            "--export-dir",
            str(export),
            *extra,
        )
        out.append((run / "model.pt", export))
    return out


def _ensemble(*args: str) -> int:
    return main(["ensemble", *args, "--threads", "1", "--no-progress"])


def test_two_input_sizes_become_one_served_model(
    members: list[tuple[Path, Path]], tmp_path: Path, capsys
) -> None:
    from service.core.preprocess import preprocess
    from service.inference.classifier import RuntimeOptions, load_classifier

    (pt_a, dir_a), (pt_b, dir_b) = members
    out = tmp_path / "models" / "colors-ens" / "1"
    capsys.readouterr()
    args = ["--member", str(pt_a), "--member", str(pt_b), "--out", str(out), "--name", "colors-ens"]
    assert _ensemble(*args, "--version", "1", "--int8") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["export"] == str(out) and 0 <= printed["metrics"]["top1"] <= 1

    # The folder is what the service serves.
    clf = load_classifier(out, RuntimeOptions(providers="cpu"))
    card = clf.card
    card_a, card_b = ModelCard.load(dir_a), ModelCard.load(dir_b)
    assert (card.name, card.version) == ("colors-ens", "1")
    assert card.input == card_b.input and card.input.size == 40  # the largest member's spec
    assert card.architecture == "ensemble(tiny_cnn@32,tiny_cnn@40)"
    assert card.labels == card_a.labels and card.taxonomy["red_admiral"].genus == "Vanessa"
    parts = card.training["ensemble_of"]
    assert [p["input_size"] for p in parts] == [32, 40]
    assert [p["version"] for p in parts] == ["a", "b"]
    assert [p["temperature"] for p in parts] == [card_a.calibration.temperature, card_b.calibration.temperature]
    assert [p["top1"] for p in parts] == [card_a.metrics["top1"], card_b.metrics["top1"]]
    # Calibrated on the members' own held-out slice (re-created from their cards), evaluated on valid.
    assert card.training["heldout_photos"] == card_a.training["heldout_photos"] == 6
    assert card.training["data_hash"] == card_a.training["data_hash"]
    assert card.training["calibrated_on"] == "held-out slice of train"
    assert card.calibration.temperature > 0 and card.calibration.ood_energy_threshold is not None
    assert card.metrics["n"] == 12 and card.metrics["evaluation_split"] == "valid"
    assert 0 <= card.metrics["top1"] <= 1 and 0 <= card.metrics["field_composites"]["top1"] <= 1
    assert set(card.metrics["per_class"]) == set(card.labels)
    assert card.metrics["variants"]["int8"]["file"] == "model.int8.onnx"
    for name in ("model.int8.onnx", "report.md", "report.json", "confusion.png", "reliability.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "## Ensemble" in report and "tiny_cnn@32" in report and "Training curve" not in report
    assert json.loads((out / "report.json").read_text())["history"] == []

    # The served output is the mean of the members' calibrated probabilities, each member run from its own
    # exported folder on the photo preprocessed at its own size. Uniform square photos make the ensemble's
    # bilinear resize of the 40-px input exactly the 32-px preprocessing, so the comparison can be tight.
    photos = [Image.new("RGB", (48, 48), c) for c in COLOR_LABELS.values()]
    photos += [Image.new("RGB", (64, 64), (128, 100, 40)), Image.new("RGB", (30, 30), (240, 240, 240))]
    served = clf.run(np.stack([preprocess(p, card.input) for p in photos])).astype(np.float64)
    runs = []
    for folder in (dir_a, dir_b):
        member = load_classifier(folder, RuntimeOptions(providers="cpu"))
        z = member.run(np.stack([preprocess(p, member.card.input) for p in photos])).astype(np.float64)
        runs.append((z, member.temperature))

    def mean_log_prob(use_temperature: bool) -> np.ndarray:
        probs = [np.exp(_log_softmax(z / (t if use_temperature else 1.0))) for z, t in runs]
        return np.log(np.mean(probs, axis=0))

    expected = mean_log_prob(True)
    np.testing.assert_allclose(_log_softmax(served), expected, atol=1e-4)
    # ... a comparison that would catch ignored temperatures or a single member standing in for both:
    assert np.abs(mean_log_prob(False) - expected).max() > 1e-3
    for z, t in runs:
        assert np.abs(_log_softmax(z / t) - expected).max() > 1e-3
    # The energy score the OOD gate reads (at T = 1) is the members' mean energy, not a constant.
    energies = np.mean([t * _logsumexp(z / t) for z, t in runs], axis=0)
    np.testing.assert_allclose(_logsumexp(served), energies, atol=1e-4)
    assert np.ptp(energies) > 1e-3

    # On ordinary photos the served graph is the torch ensemble (resize inside the graph included).
    from training.ensemble import Ensemble, load_member

    loaded = [load_member(pt) for pt in (pt_a, pt_b)]
    net = Ensemble(
        [m for m, _ in loaded], [c.input.size for _, c in loaded], [c.calibration.temperature for _, c in loaded]
    )
    shots = [color_photo(c, (50, 36), seed=i) for i, c in enumerate(COLOR_LABELS.values())]
    noisy = np.stack([preprocess(p, card.input) for p in shots])
    import torch

    with torch.no_grad():
        torch_out = net(torch.from_numpy(noisy)).numpy()
    np.testing.assert_allclose(clf.run(noisy), torch_out, atol=1e-4)


def test_ensemble_module_averages_calibrated_probabilities() -> None:
    import torch
    import torch.nn.functional as F

    from training import backbones
    from training.ensemble import Ensemble

    torch.manual_seed(0)
    nets = [backbones.create_model("tiny_cnn", 3, pretrained=False, input_size=s).eval() for s in (32, 40)]
    temps = [0.5, 2.0]
    ens = Ensemble(nets, [32, 40], temps).eval()
    assert ens.input_size == 40 and ens.architecture == "ensemble(tiny_cnn@32,tiny_cnn@40)"
    x = torch.randn(4, 3, 40, 40)
    with torch.no_grad():
        out = ens(x)
        z = [nets[0](F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)), nets[1](x)]
    probs = torch.stack([torch.softmax(zi / t, 1) for zi, t in zip(z, temps, strict=True)]).mean(0)
    torch.testing.assert_close(torch.softmax(out, 1), probs, atol=1e-6, rtol=1e-5)
    energy = torch.stack([t * torch.logsumexp(zi / t, 1) for zi, t in zip(z, temps, strict=True)]).mean(0)
    torch.testing.assert_close(torch.logsumexp(out, 1), energy, atol=1e-5, rtol=1e-5)
    # Any temperature the ensemble is calibrated with scales the averaged probabilities, never the shift.
    torch.testing.assert_close(torch.softmax(out / 3, 1), torch.softmax(probs.log() / 3, 1), atol=1e-6, rtol=1e-5)


def _card(path: str, **changes: object) -> ModelCard:
    labels = ["common_blue", "green_hairstreak", "red_admiral"]
    config = {"data": "photos", "valid": None, "image_root": None, "taxonomy": None, "holdout": 0.2, "seed": 0}
    training: dict[str, object] = {"config": config, "data_hash": "abc"}
    spec = InputSpec(size=32, resize=32, resize_mode="longer_pad", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    for key, value in changes.items():
        if key == "labels":
            labels = value  # type: ignore[assignment]
        elif key in ("mean", "std", "resize_mode"):
            spec = spec.model_copy(update={key: value})
        elif key in config:
            config = {**config, key: value}
            training["config"] = config
        elif key == "config":
            training.pop("config")
        else:
            training[key] = value
    return ModelCard(name="m", version=path, architecture="tiny_cnn", input=spec, labels=labels, training=training)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": ["common_blue", "red_admiral", "green_hairstreak"]}, "same labels in another order"),
        ({"labels": ["common_blue", "red_admiral"]}, r"different labels \(2 vs 3; only in run-b: \[\], only in "),
        ({"std": (0.2, 0.2, 0.2)}, "input std"),
        ({"resize_mode": "shorter"}, "input resize_mode"),
        ({"seed": 1}, "seed 1 vs 0"),
        ({"holdout": 0.1}, "holdout 0.1 vs 0.2"),
        ({"data_hash": "def"}, "trained on other photos"),
        ({"config": None}, "no training config"),
    ],
)
def test_members_that_do_not_fit_together_are_named(changes: dict[str, object], message: str) -> None:
    from training.ensemble import EnsembleError, check_members

    with pytest.raises(EnsembleError, match=message) as exc:
        check_members([_card("run-a"), _card("run-b", **changes)], ["run-a", "run-b"])
    assert "run-b" in str(exc.value)
    options = check_members([_card("run-a"), _card("run-b")], ["run-a", "run-b"])
    assert options == {"data": "photos", "valid": None, "image_root": None, "taxonomy": None, "holdout": 0.2, "seed": 0}


def test_a_member_trained_on_other_labels_is_refused(
    members: list[tuple[Path, Path]], color_dataset: Path, tmp_path: Path, capsys
) -> None:
    two = tmp_path / "two-colours"
    shutil.copytree(color_dataset, two)
    for split in ("train", "valid"):
        shutil.rmtree(two / split / "common_blue")
    _train(two, tmp_path / "two-run", "--mode", "full", "--epochs", "1", "--export-dir", str(tmp_path / "two-model"))
    odd = tmp_path / "two-run" / "model.pt"
    capsys.readouterr()
    out = tmp_path / "ens"
    assert _ensemble("--member", str(members[0][0]), "--member", str(odd), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert f"member {odd} differs from {members[0][0]}: different labels (2 vs 3" in err
    assert "common_blue" in err and not out.exists()
    # Members that fit, but --data pointing at other photos: their held-out slice cannot be re-created.
    pair = ["--member", str(members[0][0]), "--member", str(members[1][0])]
    assert _ensemble(*pair, "--data", str(two), "--out", str(out)) == 2
    assert "are not the members'" in capsys.readouterr().err and not out.exists()


def test_member_count_and_unreadable_members(members: list[tuple[Path, Path]], tmp_path: Path, capsys) -> None:
    pt = str(members[0][0])
    with pytest.raises(SystemExit) as exc:
        _ensemble("--member", pt, "--out", str(tmp_path / "e"))
    assert exc.value.code == 2
    assert "at least two --member runs" in capsys.readouterr().err
    missing = tmp_path / "nowhere" / "model.pt"
    assert _ensemble("--member", pt, "--member", str(missing), "--out", str(tmp_path / "e")) == 2
    assert f"{missing}: no such file" in capsys.readouterr().err
    last = members[1][0].parent / "last.pt"  # a training checkpoint, not a run's final model.pt
    assert _ensemble("--member", pt, "--member", str(last), "--out", str(tmp_path / "e")) == 2
    assert f"{last} has no model card; use RUN/model.pt" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
