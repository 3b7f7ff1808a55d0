"""Labelled photos from three layouts, group-aware splits, and a clear report of bad data.

Layouts:

* ImageFolder: ``root/<split>/<label>/*.jpg`` (splits ``train``, ``valid``/``val``, ``test``) or
  ``root/<label>/*.jpg`` (one split), with an optional ``root/taxonomy.csv``.
* CSV manifest: ``path,label[,observation_id,observer][,split]`` (the service's training export);
  relative paths are relative to the manifest's folder.
* iNaturalist-2018 / COCO JSON: ``images`` (id, file_name), ``annotations`` (image_id, category_id),
  ``categories`` (id, name, kingdom ... genus); file names relative to ``--image-root`` or the JSON's folder.

Photos are decoded with the service's :func:`service.core.imaging.decode_image`, so training sees photos the way
the service does (EXIF orientation, any mode to RGB, DCT-scaled JPEGs).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from service.core.imaging import DecodeLimits, decode_image
from service.core.modelcard import LabelTaxon
from service.core.taxonomy import read_taxonomy_csv

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".bmp", ".gif", ".tif", ".tiff"}
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
}


@dataclass(frozen=True)
class Sample:
    """One labelled photo."""

    path: Path
    label: str
    observation_id: str | None = None
    observer: str | None = None


@dataclass
class DataReport:
    """Everything that was wrong with the data, said once and clearly."""

    unreadable: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    unknown_labels: dict[str, int] = field(default_factory=dict)
    duplicates_across_splits: list[tuple[str, str]] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.unreadable
            or self.empty_classes
            or self.unknown_labels
            or self.duplicates_across_splits
            or self.missing_files
        )

    def lines(self) -> list[str]:
        """Human-readable problems, one per line."""
        out = []
        if self.unreadable:
            out.append(f"{len(self.unreadable)} unreadable photo(s) skipped: {self.unreadable[:5]}")
        if self.missing_files:
            out.append(f"{len(self.missing_files)} listed photo(s) missing on disk: {self.missing_files[:5]}")
        if self.empty_classes:
            out.append(
                f"{len(self.empty_classes)} class(es) with no usable training photo, left out: "
                f"{self.empty_classes}"
            )
        if self.unknown_labels:
            out.append(f"photos with labels the model does not have, left out: {dict(self.unknown_labels)}")
        if self.duplicates_across_splits:
            out.append(
                f"{len(self.duplicates_across_splits)} photo(s) appear in more than one split, removed "
                f"from the training side: {self.duplicates_across_splits[:5]}"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "unreadable": len(self.unreadable),
            "unreadable_examples": self.unreadable[:20],
            "missing_files": len(self.missing_files),
            "empty_classes": self.empty_classes,
            "unknown_labels": self.unknown_labels,
            "duplicates_across_splits": len(self.duplicates_across_splits),
            "duplicate_examples": [list(p) for p in self.duplicates_across_splits[:20]],
        }


@dataclass
class LabelledData:
    """Samples by split, the label list (model output order) and the taxonomy of the labels."""

    splits: dict[str, list[Sample]]
    classes: list[str]
    taxonomy: dict[str, LabelTaxon] = field(default_factory=dict)
    report: DataReport = field(default_factory=DataReport)
    source: str = ""

    @property
    def class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def targets(self, split: str) -> list[int]:
        index = self.class_index
        return [index[s.label] for s in self.splits[split]]


# -- reading the layouts ------------------------------------------------------------------------------


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_imagefolder(root: Path) -> tuple[dict[str, list[Sample]], list[str], list[str]]:
    """Samples by split from an ImageFolder tree; also the class folders seen and the empty ones."""
    root = Path(root)
    split_dirs = {
        SPLIT_ALIASES[d.name.lower()]: d
        for d in sorted(root.iterdir())
        if d.is_dir() and d.name.lower() in SPLIT_ALIASES
    }
    if not split_dirs:
        split_dirs = {"train": root}
    splits: dict[str, list[Sample]] = {}
    folders: set[str] = set()
    empty: list[str] = []
    for split, folder in split_dirs.items():
        samples = []
        for class_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
            folders.add(class_dir.name)
            photos = _images_in(class_dir)
            if not photos and split == "train":
                empty.append(class_dir.name)
            samples.extend(Sample(p, class_dir.name) for p in photos)
        splits[split] = samples
    return splits, sorted(folders), empty


def read_manifest(path: Path) -> dict[str, list[Sample]]:
    """Samples from a CSV manifest ``path,label[,observation_id,observer][,split]``."""
    path = Path(path)
    splits: dict[str, list[Sample]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: a manifest needs columns path,label; missing {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            photo, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if not photo or not label:
                raise ValueError(f"{path}:{line}: empty path or label")
            split = SPLIT_ALIASES.get((row.get("split") or "train").strip().lower())
            if split is None:
                raise ValueError(
                    f"{path}:{line}: unknown split {row.get('split')!r}; use train, valid or test"
                )
            file = Path(photo) if Path(photo).is_absolute() else path.parent / photo
            splits[split].append(
                Sample(
                    file,
                    label,
                    (row.get("observation_id") or "").strip() or None,
                    (row.get("observer") or "").strip() or None,
                )
            )
    return dict(splits)


COCO_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus")


def read_coco(
    path: Path, image_root: Path | None = None, split: str = "train"
) -> tuple[dict[str, list[Sample]], dict[str, LabelTaxon]]:
    """Samples and taxonomy from an iNaturalist-2018 / COCO-style JSON file."""
    path = Path(path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    for key in ("images", "annotations", "categories"):
        if key not in doc:
            raise ValueError(f"{path}: not a COCO/iNat file, no {key!r} list")
    root = Path(image_root) if image_root else path.parent
    cats = {c["id"]: c for c in doc["categories"]}
    names = {cid: str(c.get("name", cid)) for cid, c in cats.items()}
    taxonomy = {}
    for cid, c in cats.items():
        info = {r: c.get(r) for r in COCO_RANKS if c.get(r)}
        taxonomy[names[cid]] = LabelTaxon(
            scientific_name=c.get("name"), common_name=c.get("common_name"), **info
        )
    images = {im["id"]: im for im in doc["images"]}
    samples = []
    for ann in doc["annotations"]:
        im = images.get(ann["image_id"])
        if im is None:
            raise ValueError(f"{path}: annotation {ann.get('id')} names unknown image {ann['image_id']}")
        cid = ann["category_id"]
        label = names.get(cid, str(cid))
        obs = im.get("observation_id") or ann.get("observation_id")
        observer = im.get("rights_holder") or im.get("observer") or im.get("user_id")
        samples.append(
            Sample(
                root / im["file_name"],
                label,
                str(obs) if obs is not None else None,
                str(observer) if observer is not None else None,
            )
        )
    return {split: samples}, taxonomy


def load_data(
    source: Path | str | Sequence[Path | str],
    *,
    valid: Path | None = None,
    image_root: Path | None = None,
    taxonomy_csv: Path | None = None,
    classes: Sequence[str] | None = None,
    check_readable: bool = True,
    dedupe: bool = True,
) -> LabelledData:
    """Load labelled photos from any supported layout and report bad data.

    Args:
        source: an ImageFolder root, a ``.csv`` manifest or a ``.json`` COCO/iNat file.
        valid: an optional second file (manifest or JSON) for the validation split.
        image_root: where COCO file names are relative to.
        taxonomy_csv: label taxonomy; defaults to ``source/taxonomy.csv`` for ImageFolder.
        classes: the label list to use (e.g. an existing model's); photos of other labels are reported as
            unknown and left out. By default the labels of the training split, sorted.
        check_readable: open every photo once; unreadable ones are skipped and counted.
        dedupe: remove training photos whose bytes also appear in another split.

    Several sources (a list) are read one by one, each with its own ``taxonomy.csv``, and merged: their
    labels must not clash (one label, two different taxa), and the classes are the union of theirs.
    """
    if not isinstance(source, (str, Path)):
        sources = [Path(s) for s in source]
        if len(sources) != 1:
            return _merge_sources(sources, valid=valid, image_root=image_root, taxonomy_csv=taxonomy_csv,
                                  classes=classes, check_readable=check_readable, dedupe=dedupe)
        source = sources[0]
    source = Path(source)
    report = DataReport()
    taxonomy: dict[str, LabelTaxon] = {}
    folders: list[str] = []
    if source.is_dir():
        splits, folders, report.empty_classes = read_imagefolder(source)
        if taxonomy_csv is None and (source / "taxonomy.csv").is_file():
            taxonomy_csv = source / "taxonomy.csv"
    elif source.suffix.lower() == ".csv":
        splits = read_manifest(source)
    elif source.suffix.lower() == ".json":
        splits, taxonomy = read_coco(source, image_root)
    else:
        raise ValueError(f"{source}: expected an ImageFolder directory, a .csv manifest or a COCO .json file")
    if valid is not None:
        extra = (
            read_manifest(valid)
            if Path(valid).suffix.lower() == ".csv"
            else read_coco(valid, image_root, split="valid")[0]
        )
        splits["valid"] = [s for v in extra.values() for s in v]
    if taxonomy_csv is not None:
        taxonomy.update(read_taxonomy_csv(Path(taxonomy_csv)))
    if "train" not in splits:
        raise ValueError(f"{source}: no training photos found (splits: {sorted(splits)})")

    for split, samples in splits.items():
        kept = []
        for s in samples:
            if not s.path.is_file():
                report.missing_files.append(str(s.path))
            elif check_readable and not is_readable(s.path):
                report.unreadable.append(str(s.path))
            else:
                kept.append(s)
        splits[split] = kept

    train_counts = Counter(s.label for s in splits["train"])
    if classes is None:
        empty_after = sorted(set(folders) - set(train_counts) - set(report.empty_classes))
        report.empty_classes = sorted(set(report.empty_classes) | set(empty_after))
        classes = sorted(train_counts)
    else:
        classes = list(classes)
        report.empty_classes = sorted(set(report.empty_classes) | {c for c in classes if not train_counts[c]})
    known = set(classes)
    unknown: Counter[str] = Counter()
    for split, samples in splits.items():
        unknown.update(f"{split}:{s.label}" for s in samples if s.label not in known)
        splits[split] = [s for s in samples if s.label in known]
    report.unknown_labels = dict(sorted(unknown.items()))
    if dedupe and len(splits) > 1:
        report.duplicates_across_splits = _drop_duplicates(splits)
    if not classes:
        raise ValueError(f"{source}: no class has a readable training photo")
    data = LabelledData(
        splits=splits,
        classes=list(classes),
        taxonomy={k: v for k, v in taxonomy.items() if k in known},
        report=report,
        source=str(source),
    )
    for line in report.lines():
        logger.warning("data: %s", line)
    return data


def _merge_sources(
    sources: Sequence[Path],
    *,
    valid: Path | None,
    image_root: Path | None,
    taxonomy_csv: Path | None,
    classes: Sequence[str] | None,
    check_readable: bool,
    dedupe: bool,
) -> LabelledData:
    if not sources:
        raise ValueError("no data source given")
    if valid is not None:
        raise ValueError("--valid applies to one source; give each source its own valid split instead")
    parts = [load_data(s, image_root=image_root, check_readable=check_readable, dedupe=dedupe) for s in sources]
    splits: dict[str, list[Sample]] = defaultdict(list)
    taxonomy: dict[str, LabelTaxon] = {}
    report = DataReport()
    for source, part in zip(sources, parts, strict=True):
        for label, info in part.taxonomy.items():
            if label in taxonomy and taxonomy[label] != info:
                raise ValueError(f"label {label!r} means two different taxa in the data sources "
                                 f"({taxonomy[label].scientific_name!r} and {info.scientific_name!r}, in {source})")
            taxonomy[label] = info
        for split, samples in part.splits.items():
            splits[split].extend(samples)
        for name in ("unreadable", "missing_files", "empty_classes", "duplicates_across_splits"):
            getattr(report, name).extend(getattr(part.report, name))
        for key, n in part.report.unknown_labels.items():
            report.unknown_labels[key] = report.unknown_labels.get(key, 0) + n
    if taxonomy_csv is not None:
        taxonomy.update(read_taxonomy_csv(Path(taxonomy_csv)))
    merged_classes = sorted({c for part in parts for c in part.classes})
    if classes is not None:
        known = set(classes)
        unknown: Counter[str] = Counter()
        for split, samples in splits.items():
            unknown.update(f"{split}:{s.label}" for s in samples if s.label not in known)
            splits[split] = [s for s in samples if s.label in known]
        for key, n in unknown.items():
            report.unknown_labels[key] = report.unknown_labels.get(key, 0) + n
        counts = Counter(s.label for s in splits["train"])
        report.empty_classes = sorted(set(report.empty_classes) | {c for c in classes if not counts[c]})
        merged_classes = list(classes)
    return LabelledData(
        splits=dict(splits),
        classes=merged_classes,
        taxonomy={k: v for k, v in taxonomy.items() if k in set(merged_classes)},
        report=report,
        source=" + ".join(str(s) for s in sources),
    )


def is_readable(path: Path) -> bool:
    """Whether Pillow can parse the photo's header and verify its data stream."""
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:
        return False


def file_digest(path: Path) -> str:
    """SHA-1 of a file's bytes (duplicate detection and data provenance)."""
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _drop_duplicates(splits: dict[str, list[Sample]]) -> list[tuple[str, str]]:
    held: dict[str, str] = {}
    for split, samples in splits.items():
        if split == "train":
            continue
        for s in samples:
            held.setdefault(file_digest(s.path), str(s.path))
    dupes = []
    kept = []
    for s in splits["train"]:
        other = held.get(file_digest(s.path))
        if other is not None:
            dupes.append((str(s.path), other))
        else:
            kept.append(s)
    splits["train"] = kept
    return dupes


def data_fingerprint(samples: Iterable[Sample]) -> str:
    """A hash of the (path, label) list: data provenance for the model card and cache keys."""
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.path}\t{s.label}\n".encode())
    return h.hexdigest()[:16]


# -- group-aware splitting ----------------------------------------------------------------------------


def _group_key(s: Sample) -> str:
    if s.observer:
        return f"observer:{s.observer}"
    if s.observation_id:
        return f"observation:{s.observation_id}"
    return f"photo:{s.path}"


def group_split(
    samples: Sequence[Sample], fraction: float, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Split off about ``fraction`` of each class, keeping observers (else observations) on one side.

    Photos of one observer, or of one observation when the observer is unknown, all land on the same side,
    as iNaturalist 2018 isolated photographers. Without ids each photo is its own group (a stratified split).

    Returns:
        (kept, held_out).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    # Observation ids known but observers partly unknown: union photos of one observation with its observer.
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for s in samples:
        keys = [
            k
            for k in (
                f"observer:{s.observer}" if s.observer else None,
                f"observation:{s.observation_id}" if s.observation_id else None,
            )
            if k
        ]
        for k in keys[1:]:
            parent[find(k)] = find(keys[0])
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[find(_group_key(s))].append(s)
    need = {c: n * fraction for c, n in Counter(s.label for s in samples).items()}
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    held_keys: set[str] = set()
    for key in order:
        counts = Counter(s.label for s in groups[key])
        # Take the group if every class it holds still needs at least half of what it brings.
        if all(need[c] >= n / 2 for c, n in counts.items()):
            held_keys.add(key)
            for c, n in counts.items():
                need[c] -= n
    kept = [s for s in samples if find(_group_key(s)) not in held_keys]
    held = [s for s in samples if find(_group_key(s)) in held_keys]
    return kept, held


# -- torch datasets -----------------------------------------------------------------------------------


class PhotoDataset:
    """(tensor, class index) pairs; a photo that fails to decode yields ``None`` (dropped by the collate)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        class_index: dict[str, int],
        transform: Callable[[Image.Image], Any],
        min_side: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.class_index = class_index
        self.transform = transform
        self.min_side = min_side
        self.limits = DecodeLimits()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int, int] | None:
        s = self.samples[i]
        try:
            img = decode_image(s.path.read_bytes(), limits=self.limits, min_side=self.min_side).image
        except Exception as exc:
            logger.warning("skipping unreadable photo %s: %s", s.path, exc)
            return None
        return self.transform(img), self.class_index[s.label], i


def collate_skip_none(batch: list[Any]) -> Any:
    """Default collation after dropping photos that failed to decode."""
    import torch.utils.data

    kept = [b for b in batch if b is not None]
    if not kept:
        return None
    return torch.utils.data.default_collate(kept)
