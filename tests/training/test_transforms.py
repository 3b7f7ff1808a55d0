"""Training's evaluation transform is the service's preprocessing; augmentation behaves."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from service.core.imaging import decode_image
from service.core.modelcard import InputSpec
from service.core.preprocess import preprocess
from training.data import PhotoDataset, Sample
from training.transforms import AugmentConfig, EvalTransform, TrainTransform

from .conftest import color_photo


@pytest.mark.parametrize(
    "spec",
    [
        InputSpec(size=32, resize=36, resize_mode="shorter"),
        InputSpec(size=32, resize=32, resize_mode="longer_pad", interpolation="bicubic"),
        InputSpec(size=24, resize=24, resize_mode="stretch", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    ],
)
def test_eval_transform_equals_service_preprocess(tmp_path, spec: InputSpec) -> None:
    photo = color_photo((200, 120, 40), (57, 41), seed=3)
    path = tmp_path / "p.jpg"
    photo.save(path, quality=92)
    # The service's path: bytes -> decode_image -> preprocess.
    service_tensor = preprocess(decode_image(path.read_bytes()).image, spec)
    # Training's path: the dataset (which decodes with decode_image) and its eval transform.
    dataset = PhotoDataset([Sample(path, "x")], {"x": 0}, EvalTransform(spec))
    tensor, _label, _index = dataset[0]
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    assert tensor.shape == (3, spec.size, spec.size)
    np.testing.assert_array_equal(tensor.numpy(), service_tensor)


def test_train_transform_shape_range_and_seed() -> None:
    spec = InputSpec(size=32, resize=32, resize_mode="longer_pad")
    photo = color_photo((30, 200, 40), (64, 48), seed=1)
    a = [TrainTransform(spec, seed=5)(photo) for _ in range(2)]
    b = TrainTransform(spec, seed=5)
    assert a[0].shape == (3, 32, 32)
    np.testing.assert_array_equal(a[0].numpy(), b(photo).numpy())  # same seed, same view
    assert not np.array_equal(b(photo).numpy(), a[0].numpy())  # the stream moves on


def test_zoom_out_pads_with_the_mean_colour() -> None:
    spec = InputSpec(size=32, resize=32, resize_mode="longer_pad")
    config = AugmentConfig(
        scale=(1, 1),
        ratio=(1, 1),
        zoom_out=1.0,
        zoom_out_scale=(0.5, 0.5),
        hflip=0,
        brightness=0,
        contrast=0,
        saturation=0,
        hue=0,
    )
    out = TrainTransform(spec, config, seed=0)(Image.new("RGB", (40, 40), (255, 0, 0))).numpy()
    # The canvas is the mean colour, which normalises to ~0; the shrunken photo is bright red.
    assert np.isclose(out, 0, atol=0.02).all(axis=0).mean() == pytest.approx(0.75, abs=0.05)


def test_unreadable_photo_in_dataset_yields_none(tmp_path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    good = tmp_path / "good.png"
    buf = io.BytesIO()
    color_photo((1, 2, 3)).save(buf, "PNG")
    good.write_bytes(buf.getvalue())
    ds = PhotoDataset(
        [Sample(bad, "x"), Sample(good, "x")], {"x": 0}, EvalTransform(InputSpec(size=16, resize=16))
    )
    assert ds[0] is None and ds[1] is not None


def test_field_composite_is_a_large_off_centre_frame() -> None:
    from training.evaluation import field_composite

    photo = color_photo((200, 30, 30), (224, 224), seed=2)
    rng = np.random.default_rng(0)
    frames = [field_composite(photo, rng) for _ in range(5)]
    for frame in frames:
        short, long = sorted(frame.size)
        assert long >= 640 and abs(short - long * 3 // 4) <= 1
    assert len({f.size for f in frames}) > 1


def test_zoom_out_with_blurred_background() -> None:
    spec = InputSpec(size=32, resize=32, resize_mode="longer_pad")
    config = AugmentConfig(scale=(1, 1), ratio=(1, 1), zoom_out=1.0, zoom_out_scale=(0.5, 0.5), hflip=0,
                           brightness=0, contrast=0, saturation=0, hue=0, zoom_out_fill="blur")
    out = TrainTransform(spec, config, seed=0)(Image.new("RGB", (40, 40), (255, 0, 0))).numpy()
    # No mean-colour padding: the surround is the (blurred) red photo itself.
    assert not np.isclose(out, 0, atol=0.02).all(axis=0).any()
