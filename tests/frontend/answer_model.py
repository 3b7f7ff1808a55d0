"""A tiny real ONNX model whose committed answer depends on the photo's colour, one colour per kind of answer.

Labels at three ranks plus ``no_insect``: the species ``peacock`` (*Aglais io*), the genus-rank label ``bombus``
(Bumblebee, genus *Bombus*), the family-rank label ``vespidae`` (Wasp, family Vespidae) and ``no_insect``.
The network is the helpers' pooled-colour linear layer with these weights (columns: labels; rows: the
normalised mean R, G, B in -1..1):

    peacock   ( 6, -2, -2)   red   → peacock   ≈ 0.99  → species answer
    bombus    (-2,  6, -2)   green → bombus    ≈ 0.99  → genus answer
    vespidae  (-2, -2,  6)   blue  → vespidae  ≈ 0.99  → family answer
    no_insect (-2, -2, -2)   black → no_insect ≈ 0.99  → "no insect"
                             white → each insect label ≈ 1/3: no taxon reaches 0.9, class Insecta ≈ 1 → "insect"
                             grey  → every label ≈ 1/4: class Insecta 0.75 < 0.8, no_insect 0.25 → null
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.core.modelcard import InputSpec, LabelTaxon, ModelCard
from tests.helpers import photo_bytes, tiny_onnx_bytes

LABELS = ["peacock", "bombus", "vespidae", "no_insect"]
TAXONOMY = {
    "peacock": LabelTaxon(scientific_name="Aglais io", common_name="Peacock", rank="species", genus="Aglais",
                          family="Nymphalidae", order="Lepidoptera"),
    "bombus": LabelTaxon(scientific_name="Bombus", common_name="Bumblebee", rank="genus", genus="Bombus",
                         family="Apidae", order="Hymenoptera"),
    "vespidae": LabelTaxon(scientific_name="Vespidae", common_name="Wasp", rank="family", family="Vespidae",
                           order="Hymenoptera"),
    "no_insect": LabelTaxon(common_name="No insect (flower or plant only)", rank="none"),
}
WEIGHTS = np.array([[6, -2, -2, -2],
                    [-2, 6, -2, -2],
                    [-2, -2, 6, -2]], dtype=np.float32)
THRESHOLDS = {"species": 0.9, "genus": 0.9, "family": 0.9, "order": 0.9, "class": 0.8, "no_insect": 0.9}

# The photo colour that gives each kind of committed answer.
COLOURS: dict[str, tuple[int, int, int]] = {
    "species": (220, 30, 30),
    "genus": (30, 220, 30),
    "family": (30, 30, 220),
    "no_insect": (10, 10, 10),
    "insect": (240, 240, 240),
    "none": (128, 128, 128),
}


def write_answer_model(models_dir: Path, name: str = "answers", version: str = "1") -> Path:
    """Write ``models_dir/name/version/{model.onnx, model.json}`` and return the version folder."""
    card = ModelCard(
        name=name, version=version, architecture="tiny-linear",
        input=InputSpec(size=32, resize=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        labels=LABELS, taxonomy=TAXONOMY,
        calibration={"temperature": 1.0, "answer_thresholds": THRESHOLDS},  # type: ignore[arg-type]
    )
    folder = models_dir / name / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(tiny_onnx_bytes(len(LABELS), size=32, weights=WEIGHTS))
    card.save(folder)
    return folder


def write_photo(path: Path, kind: str) -> Path:
    """A small JPEG of the colour that gives the answer ``kind``."""
    path.write_bytes(photo_bytes(COLOURS[kind], size=(96, 72)))
    return path
