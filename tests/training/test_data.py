"""Reading the three layouts, group-aware splits and the bad-data report."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from training.data import Sample, group_split, load_data, read_coco, read_manifest

from .conftest import make_imagefolder


def test_imagefolder_with_taxonomy(color_dataset: Path) -> None:
    data = load_data(color_dataset)
    assert data.classes == ["common_blue", "green_hairstreak", "red_admiral"]
    assert len(data.splits["train"]) == 30 and len(data.splits["valid"]) == 12
    assert data.taxonomy["red_admiral"].genus == "Vanessa"
    assert data.report.ok, data.report.lines()


def test_unreadable_photo_is_skipped_and_counted(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "d", n_train=3, n_valid=1)
    (root / "train" / "red_admiral" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "train" / "red_admiral" / "truncated.jpg").write_bytes(
        (root / "train" / "red_admiral" / "red_admiral_0.jpg").read_bytes()[:200]
    )
    data = load_data(root)
    assert len(data.report.unreadable) == 2
    assert len(data.splits["train"]) == 9
    assert any("2 unreadable photo(s) skipped" in line for line in data.report.lines())


def test_empty_class_is_reported_and_left_out(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "d", n_train=2, n_valid=1)
    (root / "train" / "ghost_moth").mkdir()
    data = load_data(root)
    assert data.report.empty_classes == ["ghost_moth"]
    assert "ghost_moth" not in data.classes
    assert any("ghost_moth" in line and "no usable training photo" in line for line in data.report.lines())


def test_class_whose_photos_are_all_unreadable_counts_as_empty(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "d", n_train=2, n_valid=1)
    (root / "train" / "ghost_moth").mkdir()
    (root / "train" / "ghost_moth" / "x.jpg").write_bytes(b"garbage")
    data = load_data(root)
    assert data.report.empty_classes == ["ghost_moth"]
    assert len(data.report.unreadable) == 1


def test_unknown_label_in_validation_is_reported(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "d", n_train=2, n_valid=1)
    shutil.copytree(root / "valid" / "red_admiral", root / "valid" / "peacock")
    data = load_data(root)
    assert data.report.unknown_labels == {"valid:peacock": 1}
    assert all(s.label != "peacock" for s in data.splits["valid"])
    assert any("peacock" in line for line in data.report.lines())


def test_duplicate_across_splits_is_removed_from_training(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "d", n_train=2, n_valid=1)
    shutil.copy(
        root / "valid" / "common_blue" / "common_blue_0.jpg", root / "train" / "common_blue" / "copy.jpg"
    )
    data = load_data(root)
    assert len(data.report.duplicates_across_splits) == 1
    assert data.report.duplicates_across_splits[0][0].endswith("copy.jpg")
    assert all(not str(s.path).endswith("copy.jpg") for s in data.splits["train"])


def test_manifest_with_groups_and_splits(tmp_path: Path, color_dataset: Path) -> None:
    rows = ["path,label,observation_id,observer,split"]
    for i, p in enumerate(sorted((color_dataset / "train" / "red_admiral").glob("*.jpg"))):
        rows.append(f"{p},red_admiral,obs{i // 2},alice,train")
    for p in sorted((color_dataset / "train" / "common_blue").glob("*.jpg")):
        rows.append(f"{p},common_blue,,bob,train")
    rel = Path("photos") / "x.jpg"
    (tmp_path / "photos").mkdir()
    shutil.copy(color_dataset / "valid" / "red_admiral" / "red_admiral_0.jpg", tmp_path / rel)
    rows.append(f"{rel},red_admiral,obs99,carol,valid")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    splits = read_manifest(manifest)
    assert splits["valid"][0].path == tmp_path / rel  # relative to the manifest's folder
    assert splits["train"][0].observation_id == "obs0" and splits["train"][0].observer == "alice"
    data = load_data(manifest)
    assert data.classes == ["common_blue", "red_admiral"]


def test_manifest_without_columns_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "m.csv"
    bad.write_text("file,species\na.jpg,x\n")
    with pytest.raises(ValueError, match="path,label"):
        read_manifest(bad)


def test_coco_inat_json(tmp_path: Path, color_dataset: Path) -> None:
    images, annotations = [], []
    for i, p in enumerate(sorted((color_dataset / "train" / "green_hairstreak").glob("*.jpg"))[:3]):
        images.append({"id": i, "file_name": f"train/green_hairstreak/{p.name}", "width": 40, "height": 32})
        annotations.append({"id": 100 + i, "image_id": i, "category_id": 7})
    doc = {
        "images": images,
        "annotations": annotations,
        "categories": [
            {
                "id": 7,
                "name": "Callophrys rubi",
                "kingdom": "Animalia",
                "order": "Lepidoptera",
                "family": "Lycaenidae",
                "genus": "Callophrys",
            }
        ],
    }
    path = tmp_path / "train.json"
    path.write_text(json.dumps(doc))
    splits, taxonomy = read_coco(path, image_root=color_dataset)
    assert [s.label for s in splits["train"]] == ["Callophrys rubi"] * 3
    assert taxonomy["Callophrys rubi"].family == "Lycaenidae"
    data = load_data(path, image_root=color_dataset)
    assert data.classes == ["Callophrys rubi"] and data.taxonomy["Callophrys rubi"].genus == "Callophrys"


def test_group_split_keeps_observers_and_observations_together() -> None:
    samples = []
    for obs in range(40):
        observer = f"u{obs % 8}" if obs < 32 else None  # the last 8 observations have no observer
        for k in range(3):
            samples.append(Sample(Path(f"/p/{obs}_{k}.jpg"), f"c{obs % 4}", f"o{obs}", observer))
    kept, held = group_split(samples, 0.25, seed=1)
    assert kept and held and len(kept) + len(held) == len(samples)
    for attr in ("observer", "observation_id"):
        left = {getattr(s, attr) for s in kept if getattr(s, attr)}
        right = {getattr(s, attr) for s in held if getattr(s, attr)}
        assert not left & right, f"{attr} on both sides: {left & right}"


def test_group_split_without_ids_is_stratified() -> None:
    samples = [Sample(Path(f"/p/{c}_{i}.jpg"), c) for c in "abcd" for i in range(20)]
    _, held = group_split(samples, 0.1, seed=0)
    assert Counter(s.label for s in held) == {c: 2 for c in "abcd"}
