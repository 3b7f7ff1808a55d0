"""Issue 11: the retrain child's data merge (:func:`training.worker_entry.build_dataset`) keeps label ranks.

A base dataset in the insects-extra style (labels at genus, family and order rank, a leaf inside a leaf, and
``no_insect``) or an older one (taxonomy without a ``rank`` column) is merged with validated observations
whose taxonomy the service wrote (``rank`` column): the merged ``taxonomy.csv`` the training run reads must
place every label at its own rank.
"""

from __future__ import annotations

import csv
from pathlib import Path

from service.core.taxonomy import TaxonTree, read_taxonomy_csv
from tests.training.conftest import TAXONOMY_CSV, color_photo
from training.worker_entry import build_dataset

EXTRA = """label,source_label,common_name,scientific_name,rank,genus,family,order,group
coccinellidae,Ladybird,Ladybird,Coccinellidae,family,,Coccinellidae,Coleoptera,beetle
coleoptera,beetle,Beetle (other than ladybirds),Coleoptera,order,,,Coleoptera,beetle
vespidae,wasp,Wasp,Vespidae,family,,Vespidae,Hymenoptera,wasp
no_insect,flowers,No insect (flower or plant only),,none,,,,no insect
"""
COLORS = {"coccinellidae": (200, 20, 20), "coleoptera": (20, 20, 20), "vespidae": (230, 220, 30),
          "no_insect": (30, 200, 40), "red_admiral": (220, 30, 30), "green_hairstreak": (30, 200, 40),
          "common_blue": (30, 40, 220)}


def _imagefolder(root: Path, labels: list[str], taxonomy: str) -> Path:
    seed = 0
    for split, n in (("train", 4), ("valid", 2)):
        for label in labels:
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed += 1
                color_photo(COLORS[label], seed=seed).save(folder / f"{label}_{i}.jpg")
    (root / "taxonomy.csv").write_text(taxonomy, encoding="utf-8")
    return root


def _observations(work: Path, rows: list[tuple[str, int]], taxonomy: str) -> tuple[Path, Path]:
    photos = work / "photos"
    photos.mkdir(parents=True)
    manifest = work / "observations.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "observation_id", "observer", "rank"])
        n = 0
        for label, count in rows:
            for _ in range(count):
                n += 1
                path = photos / f"{n}.jpg"
                color_photo((120, 90, 10), seed=100 + n).save(path)
                writer.writerow([str(path), label, n, n % 3, ""])
    tax = work / "observations_taxonomy.csv"
    tax.write_text(taxonomy, encoding="utf-8")
    return manifest, tax


def _spec(work: Path, base: Path, manifest: Path, tax: Path) -> dict:
    return {"job_id": 1, "work_dir": str(work), "base_dataset": str(base), "observations_manifest": str(manifest),
            "observations_taxonomy": str(tax), "observations_exported": {}, "min_new_class_photos": 3,
            "gate_holdout": 0.25, "seed": 0}


def test_an_insects_extra_base_keeps_its_ranks_and_gains_a_genus(tmp_path: Path) -> None:
    base = _imagefolder(tmp_path / "base", ["coccinellidae", "coleoptera", "vespidae", "no_insect"], EXTRA)
    work = tmp_path / "work"
    manifest, tax = _observations(work, [("bombus", 4), ("no_insect", 3), ("coleoptera", 3)], (
        "label,scientific_name,common_name,rank,genus,family,order\n"
        "bombus,Bombus,Bumblebee,genus,Bombus,Apidae,Hymenoptera\n"
        "no_insect,,No insect,none,,,\n"
        "coleoptera,Coleoptera,,order,,,Coleoptera\n"))
    data = build_dataset(_spec(work, base, manifest, tax))
    assert data["report"]["new_classes"] == ["bombus"]
    merged = read_taxonomy_csv(Path(data["taxonomy"]))
    assert set(merged) == {"bombus", "coccinellidae", "coleoptera", "vespidae", "no_insect"}
    assert {k: v.rank for k, v in merged.items()} == {"bombus": "genus", "coccinellidae": "family",
                                                      "coleoptera": "order", "vespidae": "family",
                                                      "no_insect": "none"}
    # The base dataset's entry wins over the observations' (its common name and group are kept).
    assert merged["coleoptera"].common_name == "Beetle (other than ladybirds)"
    assert merged["coleoptera"].group == "beetle"
    tree = TaxonTree.from_labels(merged, merged)
    assert tree.is_within(tree.label_key("coccinellidae"), tree.label_key("coleoptera"))
    assert tree.label_key("bombus") == "genus:Bombus" and not tree.is_taxon_label("no_insect")


def test_an_older_base_without_rank_gains_no_insect(tmp_path: Path) -> None:
    base = _imagefolder(tmp_path / "base", ["red_admiral", "green_hairstreak", "common_blue"], TAXONOMY_CSV)
    work = tmp_path / "work"
    manifest, tax = _observations(work, [("no_insect", 4), ("vespidae", 2)], (
        "label,scientific_name,common_name,rank,genus,family,order\n"
        "no_insect,,No insect,none,,,\n"
        "vespidae,Vespidae,Wasp,family,,Vespidae,Hymenoptera\n"))
    data = build_dataset(_spec(work, base, manifest, tax))
    report = data["report"]
    assert report["new_classes"] == ["no_insect"] and report["classes_below_minimum"] == {"vespidae": 2}
    merged = read_taxonomy_csv(Path(data["taxonomy"]))
    assert merged["red_admiral"].rank == "species" and merged["red_admiral"].genus == "Vanessa"
    assert merged["no_insect"].rank == "none" and "vespidae" not in merged
    with open(data["manifest"], encoding="utf-8") as fh:
        labels = {r["label"] for r in csv.DictReader(fh)}
    assert labels == {"red_admiral", "green_hairstreak", "common_blue", "no_insect"}
