"""Issue 16, item 3: CSV export formula injection and NUL bytes in text fields, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io

import pytest

from tests.helpers import photo_bytes
from tests.service.observation_support import Env, env  # noqa: F401

FORMULAS = ["=HYPERLINK(\"http://evil.example\",\"x\")", "+1+1", "-2+3", "@SUM(A1:A9)", "\t=1", "\r=1"]


def _csv(env: Env) -> list[dict[str, str]]:  # noqa: F811
    r = env.client.get("/api/v1/admin/exports/csv", headers=env.h("admin"))
    assert r.status_code == 200, r.text
    return list(csv.DictReader(io.StringIO(r.text)))


def test_csv_export_neutralises_formula_prefixes(env: Env) -> None:  # noqa: F811
    r = env.client.post("/api/v1/admin/users", headers=env.h("admin"), json={"name": "=cmd|' /C calc'!A0",
                                                                            "role": "volunteer"})
    assert r.status_code == 201, r.text
    evil_key = r.json()["key"]
    ids = {}
    for i, formula in enumerate(FORMULAS):
        r = env.post_obs(flower=formula, notes=formula, session_id=formula[:100], latitude="-45.5",
                         longitude="-5.25", photos=None)
        assert r.status_code == 201, r.text
        ids[r.json()["id"]] = formula
        if i == 0:
            r = env.client.post("/api/v1/observations", headers={"Authorization": f"Bearer {evil_key}"},
                                data={"observed_at": "2024-06-01T10:00:00Z", "notes": "plain"},
                                files=[("photos", ("a.jpg", photo_bytes(), "image/jpeg"))])
            assert r.status_code == 201, r.text
    rows = _csv(env)
    for row in rows:
        for column, value in row.items():
            assert not value.startswith(("=", "+", "@", "\t", "\r")), (column, value)
            if value.startswith("-"):  # only numbers may start with a minus
                float(value)
    by_id = {int(row["id"]): row for row in rows}
    for obs_id, formula in ids.items():
        row = by_id[obs_id]
        assert row["notes"] == "'" + formula and row["flower"] == "'" + formula
        assert row["session_id"] == "'" + formula[:100]
        assert row["latitude"] == "-45.5" and row["longitude"] == "-5.25"  # numbers stay numbers
    assert any(row["observer"] == "'=cmd|' /C calc'!A0" for row in rows)


@pytest.mark.parametrize("field", ["notes", "flower", "session_id", "flower_taxon"])
def test_nul_in_observation_text_is_refused(env: Env, field: str) -> None:  # noqa: F811
    r = env.post_obs(**{field: "Knautia\x00arvensis"})
    assert r.status_code == 422, r.text
    assert "NUL" in r.json()["error"]["message"]
    obs = env.post_obs().json()
    r = env.client.patch(f"/api/v1/observations/{obs['id']}", headers=env.h("vol"),
                         json={field: "a\x00b"})
    assert r.status_code == 422, r.text
    assert "NUL" in r.json()["error"]["message"]
    assert "\x00" not in _csv_text(env)


def _csv_text(env: Env) -> str:  # noqa: F811
    return env.client.get("/api/v1/admin/exports/csv", headers=env.h("admin")).text


def test_nul_anywhere_else_is_a_422_not_a_500(env: Env) -> None:  # noqa: F811
    obs = env.post_obs().json()
    r = env.client.post(f"/api/v1/observations/{obs['id']}/identifications", headers=env.h("exp"),
                        json={"kind": "agree", "comment": "ok\x00"})
    assert r.status_code == 422, r.text
    r = env.client.post("/api/v1/admin/users", headers=env.h("admin"), json={"name": "nul\x00name",
                                                                            "role": "volunteer"})
    assert r.status_code == 422, r.text
    r = env.client.get("/api/v1/observations", headers=env.h("exp"), params={"session_id": "S\x00"})
    assert r.status_code == 422, r.text
    with env.session() as s:
        from sqlalchemy import text

        assert s.execute(text("SELECT count(*) FROM users WHERE name LIKE 'nul%'")).scalar() == 0
