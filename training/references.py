"""``pollinid references build``: the small, licence-clear set of reference photos shipped beside the models.

The suggestion cards show photos of each suggested taxon to compare with: those of validated observations first,
then these (see :mod:`service.core.references`). The command reads each data folder's licence from a declared
list (``training/data/reference_sources.json``, by folder name) and refuses a folder that is not listed or whose
licence is null: photos without a licence are never shipped. For every taxon label of a licensed folder it
picks a few photos (the sharpest of the split, deterministic), shrinks them to a small JPEG without EXIF, and
writes them with ``index.json``. The output folder is replaced as a whole, only once everything was written.

This module needs Pillow only (no PyTorch).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageFilter, ImageOps, ImageStat
from pydantic import ValidationError

from service.core.modelcard import NOT_A_TAXON
from service.core.references import (
    FORMAT,
    INDEX_FILENAME,
    ReferenceIndex,
    ReferencePhotoFile,
    ReferenceSource,
    ReferenceTaxon,
)
from service.core.taxonomy import read_taxonomy_csv

DEFAULT_SOURCES = Path(__file__).resolve().parent / "data" / "reference_sources.json"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
TAXONOMY_FILENAME = "taxonomy.csv"


class ReferenceBuildError(ValueError):
    """Something that stops the build before anything is written (a source without a licence, ...)."""


@dataclass(frozen=True)
class Options:
    per_taxon: int = 3
    max_side: int = 240
    quality: int = 80
    splits: tuple[str, ...] = ("train", "valid")


# -- the declared sources -------------------------------------------------------------------------------


def read_sources(path: Path) -> dict[str, dict[str, Any]]:
    """``{folder name: {licence, credit, origin, evidence}}`` from the declared list (keys starting with ``_``
    are comments)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReferenceBuildError(f"the list of sources {path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise ReferenceBuildError(f"the list of sources {path} must be a JSON object keyed by folder name")
    return {k: v for k, v in data.items() if not k.startswith("_") and isinstance(v, dict)}


def licensed_source(name: str, declared: dict[str, dict[str, Any]], list_path: Path) -> ReferenceSource:
    """The source ``name`` with its licence, or :class:`ReferenceBuildError` when it may not be shipped."""
    entry = declared.get(name)
    if entry is None:
        raise ReferenceBuildError(
            f"data folder {name!r} is not in the list of sources {list_path}: its licence is unknown, so its "
            "photos cannot be shipped; add it with the licence its publisher states, or leave it out")
    if not entry.get("licence"):
        why = entry.get("evidence") or "no licence is stated"
        raise ReferenceBuildError(
            f"data folder {name!r} has no licence ({why}): its photos cannot be shipped; leave it out")
    try:
        return ReferenceSource(name=name, licence=entry["licence"], credit=entry.get("credit") or "",
                               origin=entry.get("origin") or "", evidence=entry.get("evidence") or "")
    except ValidationError as exc:
        why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ReferenceBuildError(f"data folder {name!r} in {list_path}: {why}") from None


# -- picking and shrinking photos -----------------------------------------------------------------------


def sharpness(img: Image.Image) -> float:
    """How clearly the photo shows one subject: edge strength in its centre (where the insect mostly is) over
    edge strength in its border (a busy or noisy background scores low), on a 160-px grey copy."""
    grey = ImageOps.contain(img.convert("L"), (160, 160))
    edges = grey.filter(ImageFilter.FIND_EDGES)
    w, h = edges.size
    box = (w // 5, h // 5, w - w // 5, h - h // 5)
    centre = float(ImageStat.Stat(edges.crop(box)).mean[0])
    mask = Image.new("L", edges.size, 255)
    mask.paste(0, box)
    border = float(ImageStat.Stat(edges, mask).mean[0])
    return centre / (border + 4.0)


def shrink(img: Image.Image, max_side: int, quality: int) -> tuple[bytes, tuple[int, int]]:
    """A JPEG of at most ``max_side`` pixels a side (never enlarged), no EXIF or other metadata."""
    img = ImageOps.exif_transpose(img).convert("RGB")
    if max(img.size) > max_side:
        img = ImageOps.contain(img, (max_side, max_side), Image.Resampling.LANCZOS)
    clean = Image.new("RGB", img.size)
    clean.paste(img)
    buf = io.BytesIO()
    clean.save(buf, "JPEG", quality=quality, optimize=True, progressive=True)
    return buf.getvalue(), clean.size


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.casefold()).strip("-")[:120] or "taxon"


def taxon_name(label: str, info: Any) -> str:
    """The name the taxa table gives a label's taxon: its scientific name, else its own rank's name, else
    the label (as :func:`service.observations.taxa.sync_taxa` does)."""
    if info.scientific_name:
        return str(info.scientific_name).strip()
    own = getattr(info, info.rank, None) if info.rank not in ("species", NOT_A_TAXON) else None
    return own.strip() if isinstance(own, str) and own.strip() else label


def _photos_of(folder: Path, label: str, splits: tuple[str, ...]) -> list[tuple[str, Path]]:
    out = []
    for split in splits:
        d = folder / split / label
        if d.is_dir():
            out += [(split, p) for p in sorted(d.iterdir()) if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file()]
    return out


def pick(folder: Path, label: str, options: Options) -> list[tuple[Path, Image.Image]]:
    """The ``per_taxon`` sharpest distinct photos of a label (the first split that has enough, ties by name)."""
    scored: list[tuple[int, float, str, Path]] = []
    seen: set[str] = set()
    for rank, split in enumerate(options.splits):
        for _, path in _photos_of(folder, label, (split,)):
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                    score = sharpness(img)
            except Exception:  # an unreadable file is simply not picked
                continue
            scored.append((rank, -score, path.name, path))
    scored.sort()
    chosen = []
    for _, _, _, path in scored[: options.per_taxon]:
        with Image.open(path) as img:
            img.load()
            chosen.append((path, img.copy()))
    return chosen


# -- the build ------------------------------------------------------------------------------------------


def build_references(data: list[Path], out: Path, *, sources: Path = DEFAULT_SOURCES,
                     options: Options | None = None, command: str = "") -> ReferenceIndex:
    """Write the reference set of the licensed ``data`` folders into ``out`` (replacing it).

    Raises:
        ReferenceBuildError: a folder not listed or without a licence, a folder without ``taxonomy.csv``, two
            folders with the same name, or no photo at all; nothing is written then.
    """
    options = options or Options()
    declared = read_sources(sources)
    folders: dict[str, tuple[Path, ReferenceSource]] = {}
    for folder in data:
        folder = Path(folder)
        if not folder.is_dir():
            raise ReferenceBuildError(f"data folder {folder} does not exist")
        if folder.name in folders:
            raise ReferenceBuildError(f"two data folders are named {folder.name!r}")
        folders[folder.name] = (folder, licensed_source(folder.name, declared, sources))  # refuses first
    for name, (folder, _) in folders.items():
        if not (folder / TAXONOMY_FILENAME).is_file():
            raise ReferenceBuildError(f"data folder {name!r} has no {TAXONOMY_FILENAME} (label → scientific name)")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        taxa: list[ReferenceTaxon] = []
        names: set[str] = set()
        for name, (folder, _) in folders.items():
            try:
                taxonomy = read_taxonomy_csv(folder / TAXONOMY_FILENAME)
            except (OSError, ValueError) as exc:
                raise ReferenceBuildError(f"data folder {name!r}: {exc}") from None
            for label in sorted(taxonomy):
                info = taxonomy[label]
                if info.rank == NOT_A_TAXON:
                    continue
                key = taxon_name(label, info)
                if key.casefold() in names:
                    continue  # an earlier folder already gave this taxon its photos
                files: list[ReferencePhotoFile] = []
                for i, (path, img) in enumerate(pick(folder, label, options), start=1):
                    data_bytes, (w, h) = shrink(img, options.max_side, options.quality)
                    file = f"{slug(key)}-{i}.jpg"
                    if (tmp / file).exists():
                        file = f"{slug(key)}-{slug(label)}-{i}.jpg"
                    (tmp / file).write_bytes(data_bytes)
                    files.append(ReferencePhotoFile(
                        file=file, width=w, height=h, size=len(data_bytes),
                        sha256=hashlib.sha256(data_bytes).hexdigest(),
                        original=path.relative_to(folder).as_posix()))
                if files:
                    names.add(key.casefold())
                    taxa.append(ReferenceTaxon(
                        name=key, scientific_name=info.scientific_name, label=label, rank=info.rank,
                        common_name=info.common_name, source=name, photos=files))
        if not taxa:
            raise ReferenceBuildError(f"no photo found in {[str(f) for f, _ in folders.values()]} "
                                      f"(splits {list(options.splits)}, one folder per label)")
        index = ReferenceIndex(format=FORMAT, command=command,
                               sources={name: src for name, (_, src) in folders.items()}, taxa=taxa)
        (tmp / INDEX_FILENAME).write_text(index.model_dump_json(indent=1) + "\n", encoding="utf-8")
        if out.exists():
            aside = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(aside)
            os.replace(tmp, out)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index


# -- the command ----------------------------------------------------------------------------------------


def register_references(subparsers: Any) -> None:
    """``pollinid references build``."""
    p = subparsers.add_parser("references", help="reference photos shipped beside the models")
    sub = p.add_subparsers(dest="references_command", metavar="ACTION")
    sub.required = True
    b = sub.add_parser(
        "build", help="pick, shrink and index a few licensed photos per taxon",
        description="Write a few photos per taxon of licence-clear data folders (ImageFolder with train/ and "
        "valid/, and taxonomy.csv), shrunk, without EXIF, with index.json. A folder whose licence the list "
        "of sources does not state is refused.")
    b.add_argument("--data", required=True, type=Path, action="append",
                   help="a data folder; its name is looked up in the list of sources; several times to merge")
    b.add_argument("--out", type=Path, default=Path("models") / "references",
                   help="output folder, replaced as a whole (default models/references)")
    b.add_argument("--sources", type=Path, default=DEFAULT_SOURCES,
                   help="the declared list of sources and licences (default training/data/reference_sources.json)")
    b.add_argument("--per-taxon", type=int, default=Options.per_taxon, help="photos per taxon (default 3)")
    b.add_argument("--max-side", type=int, default=Options.max_side,
                   help="longest side in pixels, never enlarged (default 240)")
    b.add_argument("--quality", type=int, default=Options.quality, help="JPEG quality (default 80)")
    b.set_defaults(func=_cmd_build)


def _cmd_build(args: argparse.Namespace) -> int:
    if args.per_taxon < 1 or not 16 <= args.max_side <= 2048 or not 10 <= args.quality <= 95:
        print("error: --per-taxon must be at least 1, --max-side 16 to 2048, --quality 10 to 95", file=sys.stderr)
        return 2
    options = Options(per_taxon=args.per_taxon, max_side=args.max_side, quality=args.quality)
    command = " ".join(["pollinid references build", *(f"--data /path/to/{Path(d).name}" for d in args.data),
                        f"--per-taxon {options.per_taxon} --max-side {options.max_side} --quality {options.quality}"])
    try:
        index = build_references(list(args.data), args.out, sources=args.sources, options=options, command=command)
    except ReferenceBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    photos = sum(len(t.photos) for t in index.taxa)
    size = sum(p.size for t in index.taxa for p in t.photos)
    print(f"{args.out}: {photos} photos of {len(index.taxa)} taxa, {size / 1e6:.2f} MB, from "
          + ", ".join(f"{s.name} ({s.licence})" for s in index.sources.values()))
    return 0
