"""Occurrence downloads: imported whole or refused whole (malformed, too big, zip bomb, bad coordinate,
duplicate), listed and deleted, over the admin REST API and the command line, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.cli.main import main
from service.settings import Settings, get_settings
from service.store.tables import OccurrenceImport, OccurrenceRecord, Taxon
from tests.service.nearby.archives import COLUMNS, dwca, meta_xml, occurrence_row, red_admirals
from tests.service.observation_support import Env

URL = "/api/v1/admin/occurrences"


def _post(env: Env, data: bytes, who: str = "admin", name: str = "0012345-240101.zip"):
    return env.client.post(URL, headers=env.h(who), files={"file": (name, data, "application/zip")})


def _counts(env: Env) -> tuple[int, int]:
    with env.session() as s:
        return (s.scalar(select(func.count()).select_from(OccurrenceImport)) or 0,
                s.scalar(select(func.count()).select_from(OccurrenceRecord)) or 0)


def _refused(env: Env, data: bytes, status: int, code: str, *words: str) -> dict:
    r = _post(env, data)
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] == code, body
    for word in words:
        assert word in body["message"], body["message"]
    assert _counts(env) == (0, 0)  # nothing half-way
    return body


def test_a_gbif_archive_is_imported_rank_aware_listed_and_deleted(env: Env) -> None:
    rows = [
        *red_admirals(3),
        # Authorship stripped, a subspecies counts for its species.
        occurrence_row("Polyommatus icarus icarus", 45.1, 5.1, "2023-07-01", rank="SUBSPECIES",
                       species="Polyommatus icarus", genus="Polyommatus", family="Lycaenidae"),
        # A species the installation does not name, in a genus it knows: counts for the genus.
        occurrence_row("Vanessa cardui (Linnaeus, 1758)", 45.2, 5.2, "2023-08-01", genus="Vanessa",
                       family="Nymphalidae", order="Lepidoptera"),
        # A genus-rank record: the genus, never a species of it.
        occurrence_row("Callophrys Billberg, 1820", 45.3, 5.3, "2023-05-01", rank="GENUS", genus="Callophrys"),
        # Unknown everywhere: skipped and counted.
        occurrence_row("Apis mellifera Linnaeus, 1758", 45.0, 5.0, "2023-06-01", genus="Apis",
                       family="Apidae", order="Hymenoptera"),
        # No place, and no date: skipped and counted.
        occurrence_row("Vanessa atalanta", "", "", "2023-06-01"),
        occurrence_row("Vanessa atalanta", 45.0, 5.0, ""),
        # An interval: its start.
        occurrence_row("Vanessa atalanta", 45.0, 5.0, "2022-12-30/2023-01-02"),
    ]
    r = _post(env, dwca(rows))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["file_name"] == "0012345-240101.zip"
    assert (body["rows_read"], body["rows_imported"], body["rows_unknown_taxon"], body["rows_incomplete"]) == \
        (10, 7, 1, 2)
    with env.session() as s:
        by_name = {t.id: (t.rank, t.scientific_name) for t in s.scalars(select(Taxon))}
        got = sorted((by_name[r.taxon_id], r.month) for r in s.scalars(select(OccurrenceRecord)))
    assert got == sorted([
        (("species", "Vanessa atalanta"), 6), (("species", "Vanessa atalanta"), 6),
        (("species", "Vanessa atalanta"), 6), (("species", "Polyommatus icarus"), 7),
        (("genus", "Vanessa"), 8), (("genus", "Callophrys"), 5), (("species", "Vanessa atalanta"), 12)])

    listed = env.client.get(URL, headers=env.h("admin")).json()
    assert listed["count"] == 1 and listed["records"] == 7 and listed["data"][0]["id"] == body["id"]

    # The same file again: refused, nothing added.
    again = _post(env, dwca(rows), name="renamed.zip")
    assert again.status_code == 409 and again.json()["error"]["code"] == "duplicate_archive"
    assert str(body["id"]) in again.json()["error"]["message"]
    assert _counts(env) == (1, 7)

    # Only admins.
    assert _post(env, dwca(red_admirals(1)), who="exp").status_code == 403
    assert env.client.get(URL, headers=env.h("vol")).status_code == 403

    gone = env.client.delete(f"{URL}/{body['id']}", headers=env.h("admin"))
    assert gone.status_code == 200 and gone.json() == {"id": body["id"], "records_deleted": 7}
    assert _counts(env) == (0, 0)
    assert env.client.delete(f"{URL}/{body['id']}", headers=env.h("admin")).status_code == 404
    # Deleted: the same file can be imported again.
    assert _post(env, dwca(rows)).status_code == 201


def test_malformed_archives_are_refused_whole(env: Env) -> None:
    _refused(env, b"gbifID\tdecimalLatitude\n1\t45\n", 422, "invalid_archive", "not a zip")
    _refused(env, dwca(red_admirals(2), with_meta=False), 422, "invalid_archive", "meta.xml")
    _refused(env, dwca(red_admirals(2), meta="<archive><core"), 422, "invalid_archive", "XML")
    _refused(env, dwca(red_admirals(2), meta=meta_xml(row_type="http://rs.tdwg.org/dwc/terms/Event")), 422,
             "invalid_archive", "occurrence core")
    _refused(env, dwca(red_admirals(2), meta=meta_xml(location="elsewhere.txt")), 422, "invalid_archive",
             "elsewhere.txt")
    no_date = [c for c in COLUMNS if c != "eventDate"]
    body = _refused(env, dwca(red_admirals(2), no_date), 422, "invalid_archive", "eventDate")
    assert body["detail"]["missing"] == ["eventDate (or month)"]
    no_lat = [c for c in COLUMNS if c != "decimalLatitude"]
    _refused(env, dwca(red_admirals(2), no_lat), 422, "invalid_archive", "decimalLatitude")
    bomb_meta = '<!DOCTYPE a [<!ENTITY x "xxxxxxxx">]>' + meta_xml()
    _refused(env, dwca(red_admirals(1), meta=bomb_meta), 422, "invalid_archive", "DOCTYPE")
    # Not a multipart body or a zip.
    r = env.client.post(URL, headers=env.h("admin", **{"Content-Type": "text/plain"}), content=b"hello")
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = env.client.post(URL, headers=env.h("admin"), files={"other": ("a.zip", dwca(red_admirals(1)))})
    assert r.status_code == 422 and "'file'" in r.json()["error"]["message"]
    assert _counts(env) == (0, 0)


@pytest.mark.parametrize(("lat", "lon", "why"), [
    ("abc", "5.0", "decimalLatitude is 'abc'"),
    ("45.0", "181", "decimalLongitude is '181'"),
    ("-90.5", "5", "decimalLatitude is '-90.5'"),
    ("nan", "5", "decimalLatitude is 'nan'"),
    ("0", "0", "0,0"),
])
def test_one_bad_coordinate_refuses_the_whole_archive_naming_its_line(env: Env, lat: str, lon: str,
                                                                      why: str) -> None:
    rows = red_admirals(7000)  # more than one insert batch before the bad row
    rows.append(occurrence_row("Vanessa atalanta", lat, lon, "2023-06-01"))
    body = _refused(env, dwca(rows), 422, "invalid_archive", why, "line 7002", "nothing was imported")
    assert body["detail"]["line"] == 7002


def test_size_ratio_and_row_limits(env: Env) -> None:
    small = dwca(red_admirals(50))
    env.app.state.settings.occurrence_max_upload_bytes = len(small) - 1
    _refused(env, small, 413, "archive_too_large", "limit")
    env.app.state.settings.occurrence_max_upload_bytes = 10 * 1024 * 1024

    # A zip bomb: a few kilobytes that unpack to 50 MB.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.xml", meta_xml())
        zf.writestr("occurrence.txt", "\t".join(COLUMNS) + "\n" + "\t" * (50 * 1024 * 1024))
    assert len(buf.getvalue()) < 200_000
    _refused(env, buf.getvalue(), 413, "archive_too_large", "zip bomb")

    env.app.state.settings.occurrence_max_uncompressed_bytes = 1000
    _refused(env, dwca(red_admirals(50)), 413, "archive_too_large", "unpacks to")
    env.app.state.settings.occurrence_max_uncompressed_bytes = 10**9

    env.app.state.settings.occurrence_max_rows = 10
    _refused(env, dwca(red_admirals(11)), 413, "archive_too_large", "more than 10 rows")
    assert _post(env, dwca(red_admirals(10))).status_code == 201


def test_raw_zip_body_is_accepted(env: Env) -> None:
    r = env.client.post(f"{URL}?name=download.zip", headers=env.h("admin", **{"Content-Type": "application/zip"}),
                        content=dwca(red_admirals(4)))
    assert r.status_code == 201, r.text
    assert r.json()["file_name"] == "download.zip" and r.json()["rows_imported"] == 4


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("POLLINID_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("POLLINID_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("POLLINID_MODELS_DIR", str(settings.models_dir))
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_cli_imports_lists_refuses_and_deletes(env: Env, cli_env: Settings, tmp_path: Path, capsys) -> None:
    good = tmp_path / "good.zip"
    good.write_bytes(dwca(red_admirals(5)))
    assert main(["occurrences", "import", str(good)]) == 0
    out = capsys.readouterr().out
    assert "5 rows read, 5 imported" in out
    assert main(["occurrences", "import", str(good)]) == 2
    assert "imported already" in capsys.readouterr().err
    bad = tmp_path / "bad.zip"
    bad.write_bytes(dwca([*red_admirals(2), occurrence_row("Vanessa atalanta", "91", "5", "2023-06-01")]))
    assert main(["occurrences", "import", str(bad)]) == 2
    assert "line 4" in capsys.readouterr().err
    assert main(["occurrences", "list"]) == 0
    out = capsys.readouterr().out
    assert "good.zip" in out and "bad.zip" not in out and "5 occurrence records in all" in out
    assert _counts(env) == (1, 5)
    with env.session() as s:
        import_id = s.scalar(select(OccurrenceImport.id))
    assert main(["occurrences", "delete", str(import_id)]) == 0
    assert "its 5 records" in capsys.readouterr().out
    assert _counts(env) == (0, 0)
