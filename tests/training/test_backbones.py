"""The backbone registry: known names, clear errors, staged networks and training modes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.backbones import create_model, known_backbones


def test_unknown_backbone_lists_known_names() -> None:
    with pytest.raises(ValueError) as err:
        create_model("resnet9000", 3)
    message = str(err.value)
    assert "unknown backbone 'resnet9000'" in message
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "tiny_cnn"):
        assert name in message
    assert set(known_backbones()) >= {"efficientnet_lite0", "tiny_cnn", "torchvision:<arch>", "timm:<arch>"}


def test_unknown_torchvision_architecture() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'torchvision:nonet'"):
        create_model("torchvision:nonet", 3, weights=None, pretrained=False)


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"weights file not found: .*nope\.pth"):
        create_model("torchvision:resnet18", 3, weights=missing)


def test_torchvision_without_weights_says_how_to_fix() -> None:
    with pytest.raises(ValueError, match=r"needs its ImageNet weights on disk: pass weights=PATH"):
        create_model("torchvision:resnet18", 3)


def test_torchvision_with_a_weights_file(tmp_path: Path) -> None:
    import torchvision

    source = torchvision.models.mobilenet_v3_small(weights=None)
    path = tmp_path / "mnv3.pth"
    torch.save(source.state_dict(), path)
    net = create_model("torchvision:mobilenet_v3_small", 4, weights=path)
    trunk = dict(net.named_parameters())
    # A trunk tensor came from the file; the classifier is new (4 outputs).
    first = next(v for k, v in trunk.items() if k.startswith("stages.0"))
    assert torch.equal(first, source.features[0][0].weight)
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 4)


def test_tiny_cnn_modes_freeze_the_right_stages() -> None:
    net = create_model("tiny_cnn", 3)
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 3)
    for mode, expected in (("full", 0), ("linear", net.pool_index + 1), ("partial", net.pool_index - 1)):
        start = net.split_index(mode, trainable_stages=1)
        assert start == expected
        net.freeze_before(start)
        trainable = {n.split(".")[1] for n, p in net.named_parameters() if p.requires_grad}
        assert trainable == {
            str(i) for i in range(start, len(net.stages)) if list(net.stages[i].parameters())
        }
        # Composition is unchanged by the split.
        net.eval()
        torch.testing.assert_close(net.forward_from(net.forward_until(x, start), start), net(x))
    with pytest.raises(ValueError, match="unknown training mode"):
        net.split_index("half")


def test_frozen_batchnorm_stays_in_eval_mode() -> None:
    net = create_model("tiny_cnn", 3)
    net.freeze_before(net.split_index("linear"))
    net.train()
    assert not net.stages[0].training and net.stages[-1].training


def test_efficientnet_lite0_loads_packaged_weights_offline() -> None:
    net = create_model("efficientnet_lite0", 5, input_size=224)
    assert net.architecture == "efficientnet_lite0"
    assert len(net.stages) == 20 and net.pool_index == 18
    net.eval()
    with torch.inference_mode():
        out = net(torch.zeros(1, 3, 224, 224))
    assert out.shape == (1, 5) and torch.isfinite(out).all()
    # The stem's weights are the packaged ImageNet ones, not a random init.
    from training.backbones import lite_weights_file

    state = torch.load(lite_weights_file(0), map_location="cpu", weights_only=True)
    assert torch.equal(net.stages[0][0].weight, state["_conv_stem.weight"])


def _fixture_batch() -> torch.Tensor:
    import numpy as np
    from PIL import Image

    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    photos = [Image.open(fixtures / f"{name}.jpg").convert("RGB") for name in ("monarch", "peacock", "red_admiral")]
    return torch.stack([torch.from_numpy(np.asarray(p, dtype=np.float32) / 255).permute(2, 0, 1) for p in photos])


@pytest.mark.parametrize("variant", [0, 2])
def test_lite_normalization_matches_what_the_weights_were_trained_with(variant: int) -> None:
    """The stem's batch-norm statistics reveal the input scaling the weights saw during pretraining.

    Fed real photos normalised the registry's way, the stem convolution's output variance is close to the
    stored running variance; with torchvision's ImageNet statistics it is several times too large (the
    bug that cost the first shipped models about seven points of linear-probe accuracy).
    """
    from training.backbones import IMAGENET_NORMALIZATION, TF_NORMALIZATION, default_normalization

    name = f"efficientnet_lite{variant}"
    assert default_normalization(name) == TF_NORMALIZATION
    net = create_model(name, 5).eval()
    conv, bn = net.stages[0][0], net.stages[0][1]
    live = bn.running_var > 1e-6
    x = _fixture_batch()

    def log_variance_ratio(normalization: tuple) -> float:
        mean, std = (torch.tensor(v)[:, None, None] for v in normalization)
        with torch.inference_mode():
            var = conv((x - mean) / std).var((0, 2, 3))
        return torch.log(var[live] / bn.running_var[live]).median().item()

    assert abs(log_variance_ratio(default_normalization(name))) < 0.75
    assert log_variance_ratio(IMAGENET_NORMALIZATION) > 1.2


def test_other_backbones_default_to_imagenet_statistics() -> None:
    from training.backbones import IMAGENET_NORMALIZATION, default_normalization

    assert default_normalization("tiny_cnn") == IMAGENET_NORMALIZATION
    assert default_normalization("torchvision:resnet18") == IMAGENET_NORMALIZATION
    assert default_normalization("timm:convnext_tiny") == IMAGENET_NORMALIZATION
