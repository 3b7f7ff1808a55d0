"""Exports: Darwin Core Archive, CSV, training manifest; CLI and admin route."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from service.cli.main import main
from service.settings import get_settings
from tests.helpers import photo_bytes
from tests.service.observation_support import BLUE, GREEN, Env, env  # noqa: F401


def _populate(env: Env) -> dict[str, int]:  # noqa: F811
    ids = {
        "species": env.post_obs(
            licence="CC0",
            flower="Knautia arvensis",
            session_id="S1",
            photos=[photo_bytes(), photo_bytes(size=(50, 50))],
        ).json()["id"],
        "genus": env.post_obs("vol2", licence="CC-BY-NC", photos=[photo_bytes(GREEN)]).json()["id"],
        "pending": env.post_obs(licence="CC-BY", photos=[photo_bytes(BLUE)]).json()["id"],
    }
    for who in ("exp", "exp2"):
        env.identify(who, ids["species"], "agree")
        env.identify(who, ids["genus"], "propose", taxon="Callophrys")
    return ids


def test_dwca_holds_only_validated_records_with_media(env: Env, tmp_path: Path) -> None:  # noqa: F811
    ids = _populate(env)
    r = env.client.get("/api/v1/admin/exports/dwca", headers=env.h("admin"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    assert set(zf.namelist()) == {"occurrence.txt", "multimedia.txt", "meta.xml", "eml.xml"}
    occ = list(csv.DictReader(io.StringIO(zf.read("occurrence.txt").decode()), delimiter="\t"))
    assert len(occ) == 2
    by_id = {row["id"].rsplit("/", 1)[-1]: row for row in occ}
    assert set(by_id) == {str(ids["species"]), str(ids["genus"])}
    sp = by_id[str(ids["species"])]
    assert sp["scientificName"] == "Vanessa atalanta" and sp["taxonRank"] == "species"
    assert (sp["family"], sp["order"], sp["genus"]) == ("Nymphalidae", "Lepidoptera", "Vanessa")
    assert sp["basisOfRecord"] == "HumanObservation" and sp["eventDate"] == "2024-06-01T10:00:00Z"
    assert sp["license"].startswith("http://creativecommons.org/publicdomain/zero/")
    assert sp["decimalLatitude"] == "45.000000" and sp["eventID"] == "S1"
    assert "Knautia arvensis" in sp["associatedTaxa"] and sp["identifiedBy"] == "exp | exp2"
    assert by_id[str(ids["genus"])]["taxonRank"] == "genus"
    media = list(csv.DictReader(io.StringIO(zf.read("multimedia.txt").decode()), delimiter="\t"))
    assert len(media) == 3 and all(
        m["type"] == "StillImage" and "/api/v1/media/" in m["identifier"] for m in media
    )
    meta = ET.fromstring(zf.read("meta.xml"))
    ns = {"d": "http://rs.tdwg.org/dwc/text/"}
    core = meta.find("d:core", ns)
    assert core.get("rowType") == "http://rs.tdwg.org/dwc/terms/Occurrence"
    header = zf.read("occurrence.txt").decode().splitlines()[0].split("\t")
    for field in core.findall("d:field", ns):
        assert header[int(field.get("index"))] == field.get("term").rsplit("/", 1)[-1]
    assert meta.find("d:extension", ns).get("rowType") == "http://rs.gbif.org/terms/1.0/Multimedia"
    eml = ET.fromstring(zf.read("eml.xml"))
    assert eml.find("dataset/title").text


def test_csv_and_training_manifest_from_the_cli(
    env: Env,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    ids = _populate(env)
    monkeypatch.setenv("POLLINID_DATABASE_URL", env.settings.resolved_database_url)
    monkeypatch.setenv("POLLINID_DATA_DIR", str(env.settings.data_dir))
    get_settings.cache_clear()
    try:
        assert main(["export-data", "csv", "--out", str(tmp_path / "all.csv")]) == 0
        assert main(["export-data", "training", "--out", str(tmp_path / "train.csv")]) == 0
        assert main(["export-data", "dwca", "--out", str(tmp_path / "dwca.zip")]) == 0
        assert "2 records" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()
    rows = list(csv.DictReader((tmp_path / "all.csv").open()))
    assert sorted(int(r["id"]) for r in rows) == sorted(ids.values())
    assert {r["status"] for r in rows} == {"validated", "needs_id"}
    train = list(csv.DictReader((tmp_path / "train.csv").open()))
    assert list(train[0]) == ["path", "label", "observation_id", "observer", "rank"]
    # Only the species-level validated observation: the genus Callophrys has a species label below it, so a
    # record validated at the genus could be that species and is left out.
    assert [(r["label"], r["observation_id"], r["observer"], r["rank"]) for r in train] == [
        ("red_admiral", str(ids["species"]), str(env.ids["vol"]), "species")
    ] * 2
    assert all(Path(r["path"]).is_file() for r in train)
    assert zipfile.is_zipfile(tmp_path / "dwca.zip")
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_export_route_is_admin_only_and_checks_kind(env: Env) -> None:  # noqa: F811
    assert env.client.get("/api/v1/admin/exports/csv", headers=env.h("exp")).status_code == 403
    r = env.client.get("/api/v1/admin/exports/xml", headers=env.h("admin"))
    assert r.status_code == 422
    r = env.client.get("/api/v1/admin/exports/training", headers=env.h("admin"))
    assert r.status_code == 200 and r.text.splitlines() == ["path,label,observation_id,observer,rank"]
