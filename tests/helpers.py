"""Test helpers: tiny real ONNX models and photos made with Pillow (no mocks, no downloads)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from service.core.modelcard import InputSpec, LabelTaxon, ModelCard

# A colour world: the tiny model tells images apart by their mean colour.
COLOR_LABELS: dict[str, tuple[int, int, int]] = {
    "red_admiral": (220, 30, 30),
    "green_hairstreak": (30, 200, 40),
    "common_blue": (30, 40, 220),
}
COLOR_TAXONOMY: dict[str, LabelTaxon] = {
    "red_admiral": LabelTaxon(scientific_name="Vanessa atalanta", common_name="Red admiral", genus="Vanessa",
                              family="Nymphalidae", order="Lepidoptera"),
    "green_hairstreak": LabelTaxon(scientific_name="Callophrys rubi", common_name="Green hairstreak",
                                   genus="Callophrys", family="Lycaenidae", order="Lepidoptera"),
    "common_blue": LabelTaxon(scientific_name="Polyommatus icarus", common_name="Common blue",
                              genus="Polyommatus", family="Lycaenidae", order="Lepidoptera"),
}


def tiny_onnx_bytes(num_classes: int = 3, *, size: int | None = 32, sharpness: float = 8.0,
                    input_name: str = "input", output_name: str = "logits", weights: np.ndarray | None = None,
                    opset: int = 18) -> bytes:
    """A real ONNX network: global average pool of the normalised RGB input, then a linear layer.

    With the default weights, class ``i`` (for i < 3) scores the i-th colour channel, so a red photo is
    class 0, a green one class 1 and a blue one class 2.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if weights is None:
        weights = np.zeros((3, num_classes), dtype=np.float32)
        for i in range(min(3, num_classes)):
            weights[:, i] = -sharpness / 2
            weights[i, i] = sharpness
    bias = np.zeros((num_classes,), dtype=np.float32)
    spatial = size if size is not None else "size"
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 3, spatial, spatial])
    y = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", num_classes])
    nodes = [
        helper.make_node("ReduceMean", [input_name, "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [x], [y],
        initializer=[numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
                     numpy_helper.from_array(weights.astype(np.float32), "W"),
                     numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tiny_card(name: str = "tiny", version: str = "1", *, labels: list[str] | None = None,
              size: int = 32, temperature: float = 1.0) -> ModelCard:
    labels = labels or list(COLOR_LABELS)
    return ModelCard(
        name=name, version=version, architecture="tiny-linear",
        input=InputSpec(size=size, resize=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        labels=labels, taxonomy={k: v for k, v in COLOR_TAXONOMY.items() if k in labels},
        calibration={"temperature": temperature},  # type: ignore[arg-type]
    )


def write_tiny_model(models_dir: Path, name: str = "tiny", version: str = "1", **kwargs: object) -> Path:
    """Write ``models_dir/name/version/{model.onnx, model.json}`` and return the version folder."""
    card = tiny_card(name, version, **kwargs)  # type: ignore[arg-type]
    folder = models_dir / name / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(tiny_onnx_bytes(card.num_classes, size=card.input.size))
    card.save(folder)
    return folder


def photo_bytes(color: tuple[int, int, int] = (220, 30, 30), size: tuple[int, int] = (64, 48),
                fmt: str = "JPEG", mode: str = "RGB", noise: bool = True, **save: object) -> bytes:
    """A photo of one colour (with a little noise) in the given format."""
    rng = np.random.default_rng(0)
    arr = np.empty((size[1], size[0], 3), dtype=np.int16)
    arr[...] = color
    if noise:
        arr += rng.integers(-10, 11, size=arr.shape, dtype=np.int16)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()
