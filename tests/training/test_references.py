"""``pollinid references build`` on tiny data folders made with Pillow: picks, shrinks, strips EXIF, indexes,
and refuses a folder without a licence without touching the existing set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.ExifTags import GPS, IFD

from service.cli.main import main
from service.core.references import INDEX_FILENAME, ReferenceIndex
from service.observations.references import bundled_set

TAXONOMY = (
    "label,scientific_name,common_name,rank,genus,family,order\n"
    "red_admiral,Vanessa atalanta,Red admiral,species,Vanessa,Nymphalidae,Lepidoptera\n"
    "mystery_moth,,Mystery moth,species,,Erebidae,Lepidoptera\n"
    "bombus,Bombus,Bumblebee,genus,Bombus,Apidae,Hymenoptera\n"
    "no_insect,,No insect,none,,,\n"
)
LABELS = ("red_admiral", "mystery_moth", "bombus", "no_insect")


def _clear(size: int, seed: int) -> Image.Image:
    """A flat background with a sharp, contrasted subject in the centre."""
    img = Image.new("RGB", (size, size), (90 + seed, 140, 90))
    c = size // 2
    for i, x in enumerate(range(c - size // 6, c + size // 6, 4)):
        img.paste((250, 250, 250) if i % 2 else (10, 10, 10), (x, c - size // 6, x + 4, c + size // 6))
    return img


def _busy(size: int, seed: int) -> Image.Image:
    """Noise everywhere: nothing stands out."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def _save(img: Image.Image, path: Path) -> None:
    exif = Image.Exif()
    gps = exif.get_ifd(IFD.GPSInfo)
    gps[GPS.GPSLatitudeRef], gps[GPS.GPSLatitude] = "N", (45.0, 10.0, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=95, exif=exif)


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    for li, label in enumerate(LABELS):
        # Busy photos sort first by name; the clear ones must still be picked.
        for i in range(3):
            _save(_busy(300, li * 10 + i), folder / "train" / label / f"a{i}.jpg")
        for i in range(2):
            _save(_clear(300, li * 10 + i), folder / "train" / label / f"z{i}.jpg")
        _save(_clear(64, li), folder / "valid" / label / "v0.jpg")
    (folder / "taxonomy.csv").write_text(TAXONOMY, encoding="utf-8")
    return folder


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    path = tmp_path / "sources.json"
    path.write_text(json.dumps({
        "_comment": "test sources",
        "open-butterflies": {"licence": "CC0", "credit": "Open butterflies, CC0", "origin": "made by the test"},
        "closed-insects": {"licence": None, "evidence": "none of its sources states a licence"},
    }), encoding="utf-8")
    return path


def _build(out: Path, sources: Path, *data: Path, extra: tuple[str, ...] = ()) -> int:
    args = ["references", "build", "--out", str(out), "--sources", str(sources), "--per-taxon", "2",
            "--max-side", "120", *extra]
    for d in data:
        args += ["--data", str(d)]
    return main(args)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_build_picks_clear_photos_shrinks_them_and_writes_the_index(tmp_path: Path, sources: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = _folder(tmp_path, "open-butterflies")
    out = tmp_path / "models" / "references"
    assert _build(out, sources, data) == 0
    assert "6 photos of 3 taxa" in capsys.readouterr().out
    index = ReferenceIndex.model_validate_json((out / INDEX_FILENAME).read_text(encoding="utf-8"))
    assert index.sources["open-butterflies"].licence == "CC0"
    assert "--data /path/to/open-butterflies" in index.command
    by_label = {t.label: t for t in index.taxa}
    assert set(by_label) == {"red_admiral", "mystery_moth", "bombus"}  # no_insect is no taxon
    assert by_label["red_admiral"].name == "Vanessa atalanta"
    assert by_label["mystery_moth"].name == "mystery_moth"  # no species name: the taxa table's name, the label
    assert by_label["bombus"].name == "Bombus" and by_label["bombus"].rank == "genus"
    for entry in index.taxa:
        assert [p.original for p in entry.photos] == [f"train/{entry.label}/z0.jpg", f"train/{entry.label}/z1.jpg"]
        for photo in entry.photos:
            path = out / photo.file
            assert path.stat().st_size == photo.size
            assert hashlib.sha256(path.read_bytes()).hexdigest() == photo.sha256
            with Image.open(path) as img:
                assert img.format == "JPEG" and img.size == (photo.width, photo.height) == (120, 120)
                assert not img.getexif()  # the source photos carry GPS; the shipped ones nothing
    assert sorted(p.name for p in out.iterdir()) == sorted([INDEX_FILENAME, *(p.file for t in index.taxa
                                                                              for p in t.photos)])
    # The service reads it, and a second build writes the same bytes.
    assert bundled_set(out) is not None
    before = _digests(out)
    assert _build(out, sources, data) == 0
    assert _digests(out) == before


def test_photos_are_never_enlarged(tmp_path: Path, sources: Path) -> None:
    data = _folder(tmp_path, "open-butterflies")
    out = tmp_path / "refs"
    assert _build(out, sources, data, extra=("--max-side", "400")) == 0
    index = ReferenceIndex.model_validate_json((out / INDEX_FILENAME).read_text(encoding="utf-8"))
    assert {(p.width, p.height) for t in index.taxa for p in t.photos} == {(300, 300)}


@pytest.mark.parametrize("bad", ["closed-insects", "unlisted-insects"])
def test_a_source_without_a_licence_is_refused_and_nothing_changes(tmp_path: Path, sources: Path, bad: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    good = _folder(tmp_path, "open-butterflies")
    out = tmp_path / "refs"
    assert _build(out, sources, good) == 0
    before = _digests(out)
    capsys.readouterr()
    assert _build(out, sources, good, _folder(tmp_path, bad)) == 2
    err = capsys.readouterr().err
    assert bad in err and "cannot be shipped" in err
    assert ("no licence" in err) if bad == "closed-insects" else ("not in the list of sources" in err)
    assert _digests(out) == before  # the existing set is untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary folder left
    # Alone, it is refused too, and no set is created.
    assert _build(tmp_path / "new", sources, tmp_path / bad) == 2
    assert not (tmp_path / "new").exists()


def test_bad_options_and_missing_taxonomy(tmp_path: Path, sources: Path) -> None:
    data = _folder(tmp_path, "open-butterflies")
    assert _build(tmp_path / "r", sources, data, extra=("--per-taxon", "0")) == 2
    (data / "taxonomy.csv").unlink()
    assert _build(tmp_path / "r", sources, data) == 2
    assert not (tmp_path / "r").exists()
