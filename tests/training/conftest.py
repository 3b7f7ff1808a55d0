"""Fixtures for training tests: tiny synthetic photo sets made with Pillow (never /work/shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import COLOR_LABELS

TAXONOMY_CSV = (
    "label,scientific_name,common_name,genus,family,order\n"
    "red_admiral,Vanessa atalanta,Red admiral,Vanessa,Nymphalidae,Lepidoptera\n"
    "green_hairstreak,Callophrys rubi,Green hairstreak,Callophrys,Lycaenidae,Lepidoptera\n"
    "common_blue,Polyommatus icarus,Common blue,Polyommatus,Lycaenidae,Lepidoptera\n"
)


def color_photo(color: tuple[int, int, int], size: tuple[int, int] = (40, 32), seed: int = 0) -> Image.Image:
    """A noisy photo of one colour with a darker blob (something to look at)."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.empty((h, w, 3), dtype=np.int16)
    arr[...] = color
    arr += rng.integers(-40, 41, size=arr.shape, dtype=np.int16)
    y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    arr[y0 : y0 + h // 3, x0 : x0 + w // 3] //= 2
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def make_imagefolder(root: Path, n_train: int = 10, n_valid: int = 4, *, taxonomy: bool = True) -> Path:
    """``root/{train,valid}/<label>/*.jpg`` for the three colour classes, plus ``taxonomy.csv``."""
    seed = 0
    for split, n in (("train", n_train), ("valid", n_valid)):
        for label, color in COLOR_LABELS.items():
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed += 1
                size = (40, 32) if i % 2 else (32, 44)
                color_photo(color, size, seed).save(folder / f"{label}_{i}.jpg", quality=90)
    if taxonomy:
        (root / "taxonomy.csv").write_text(TAXONOMY_CSV)
    return root


@pytest.fixture(scope="session")
def color_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ImageFolder of red, green and blue photos (read-only: copy it before breaking it)."""
    return make_imagefolder(tmp_path_factory.mktemp("colors"))
