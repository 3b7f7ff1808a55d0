"""Identifications: the audit trail, withdrawal, consensus in the same transaction, concurrency, stats."""

from __future__ import annotations

import threading

import pytest

from service.settings import Settings
from tests.helpers import photo_bytes
from tests.service.observation_support import GREEN, RED, Env, env, make_env  # noqa: F401


def test_agree_defaults_to_the_model_suggestion_and_two_validate(env: Env) -> None:  # noqa: F811
    obs = env.post_obs().json()
    first = env.identify("exp", obs["id"], "agree", comment="clear wing pattern")
    assert first.status_code == 201, first.text
    ident = first.json()["identification"]
    assert ident["taxon"]["scientific_name"] == "Vanessa atalanta" and ident["user_name"] == "exp"
    assert ident["model_suggestion"]["model"] == {"name": "tiny", "version": "1"}
    assert ident["model_suggestion"]["taxon_id"] == obs["prediction"]["taxon"]["id"]
    assert first.json()["consensus"]["status"] == "needs_id"
    second = env.identify("exp2", obs["id"], "agree", taxon="Vanessa atalanta")
    consensus = second.json()["consensus"]
    assert consensus["status"] == "validated" and consensus["taxon"]["scientific_name"] == "Vanessa atalanta"
    assert consensus["agreement_weight"] == 2 and consensus["identification_count"] == 2
    got = env.client.get(f"/api/v1/observations/{obs['id']}", headers=env.h("vol")).json()
    assert got["status"] == "validated" and got["community_taxon"]["rank"] == "species"


def test_history_keeps_superseded_and_withdrawn_identifications(env: Env) -> None:  # noqa: F811
    oid = env.post_obs().json()["id"]
    a = env.identify("exp", oid, "propose", taxon="Callophrys rubi").json()["identification"]
    env.identify("exp", oid, "propose", taxon="Vanessa atalanta")  # changes their mind: supersedes
    b = env.identify("exp2", oid, "agree", taxon="Vanessa atalanta").json()
    assert b["consensus"]["status"] == "validated"
    w = env.client.post(
        f"/api/v1/observations/{oid}/identifications/{b['identification']['id']}/withdraw",
        headers=env.h("exp2"),
    )
    assert w.status_code == 200 and w.json()["consensus"]["status"] == "needs_id"
    assert w.json()["identification"]["withdrawn_at"] is not None
    again = env.client.post(
        f"/api/v1/observations/{oid}/identifications/{b['identification']['id']}/withdraw",
        headers=env.h("exp2"),
    )
    assert again.status_code == 409
    other = env.client.post(
        f"/api/v1/observations/{oid}/identifications/{a['id']}/withdraw", headers=env.h("exp2")
    )
    assert other.status_code == 403
    history = env.client.get(f"/api/v1/observations/{oid}/identifications", headers=env.h("vol")).json()
    assert history["count"] == 3
    assert [(h["user_name"], h["taxon"]["scientific_name"], h["current"]) for h in history["data"]] == [
        ("exp", "Callophrys rubi", False),
        ("exp", "Vanessa atalanta", True),
        ("exp2", "Vanessa atalanta", False),
    ]
    assert all(h["created_at"] and h["model_suggestion"] for h in history["data"])


def test_disputes_and_cannot_tell(env: Env) -> None:  # noqa: F811
    oid = env.post_obs().json()["id"]
    env.identify("exp", oid, "propose", taxon="Vanessa atalanta")
    r = env.identify("exp2", oid, "not_an_insect")
    assert r.json()["consensus"]["status"] == "disputed"
    oid2 = env.post_obs(photos=[photo_bytes(GREEN)]).json()["id"]
    env.identify("exp", oid2, "cannot_tell", comment="too blurry")
    r = env.identify("exp2", oid2, "cannot_tell")
    assert r.json()["consensus"]["status"] == "cannot_tell" and r.json()["consensus"]["taxon"] is None


def test_identification_errors(env: Env) -> None:  # noqa: F811
    oid = env.post_obs().json()["id"]
    theirs = env.post_obs("vol2").json()["id"]
    cases = [
        ({"kind": "propose", "taxon": "Nonexistens"}, 422, "unknown_taxon"),
        ({"kind": "propose", "taxon": 999999}, 422, "unknown_taxon"),
        ({"kind": "propose"}, 422, "invalid_request"),
        ({"kind": "cannot_tell", "taxon": "Vanessa"}, 422, "invalid_request"),
        ({"kind": "maybe", "taxon": "Vanessa"}, 422, "invalid_request"),
        ({"kind": "agree", "taxon": "Vanessa", "extra": 1}, 422, "invalid_request"),
    ]
    for body, status, code in cases:
        r = env.client.post(f"/api/v1/observations/{oid}/identifications", headers=env.h("exp"), json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (body, r.text)
    r = env.client.post(
        f"/api/v1/observations/{theirs}/identifications", headers=env.h("vol"), json={"kind": "agree"}
    )
    assert r.status_code == 404  # another volunteer's observation
    assert (
        env.client.post(
            "/api/v1/observations/999999/identifications", headers=env.h("exp"), json={"kind": "agree"}
        ).status_code
        == 404
    )
    # Identification at genus rank is allowed.
    assert env.identify("exp", oid, "propose", taxon="Vanessa").status_code == 201


def test_specialist_weight_and_n_are_settings(tmp_path, sqlite_url, models_dir) -> None:
    settings = Settings(
        data_dir=tmp_path / "d",
        database_url=sqlite_url,
        models_dir=models_dir,
        consensus_min_agreements=3,
        consensus_specialist_weight=2.0,
    )
    for e in make_env(settings, {"vol": "volunteer", "vol2": "volunteer", "exp": "expert"}):
        oid = e.post_obs().json()["id"]
        assert e.identify("vol", oid, "agree").json()["consensus"]["status"] == "needs_id"  # weight 1
        r = e.identify("exp", oid, "agree").json()["consensus"]  # weight 2: total 3 = N
        assert r["status"] == "validated" and r["agreement_weight"] == 3


def test_concurrent_identifications_never_lose_an_update(postgres_url: str, tmp_path, models_dir) -> None:
    people = {"vol": "volunteer", **{f"e{i}": "expert" for i in range(8)}}
    settings = Settings(
        data_dir=tmp_path / "d", database_url=postgres_url, models_dir=models_dir, consensus_min_agreements=8
    )
    for e in make_env(settings, people):
        oid = e.post_obs().json()["id"]
        barrier = threading.Barrier(8)
        codes: list[int] = []

        def post(who: str) -> None:
            barrier.wait()  # noqa: B023 - the loop body runs once
            codes.append(e.identify(who, oid, "agree", taxon="Vanessa atalanta").status_code)  # noqa: B023

        threads = [threading.Thread(target=post, args=(f"e{i}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes == [201] * 8
        got = e.client.get(f"/api/v1/observations/{oid}", headers=e.h("e0")).json()
        # Every identification is counted: without the row lock some transactions would compute the
        # consensus from a snapshot missing the others and the last writer would store a lower count.
        assert got["identification_count"] == 8
        assert got["status"] == "validated"


def test_live_model_accuracy(env: Env) -> None:  # noqa: F811
    right = env.post_obs().json()["id"]  # red: model says Vanessa atalanta
    wrong = env.post_obs(photos=[photo_bytes(GREEN)]).json()["id"]  # model says Callophrys rubi
    genus = env.post_obs(photos=[photo_bytes(RED, size=(70, 50))]).json()["id"]
    for who in ("exp", "exp2"):
        env.identify(who, right, "agree")
        env.identify(who, wrong, "propose", taxon="Polyommatus icarus")  # 2nd in the model's top-3
        env.identify(who, genus, "propose", taxon="Vanessa")
    env.post_obs()  # not validated: not counted
    stats = env.client.get("/api/v1/stats/models", headers=env.h("exp")).json()
    assert stats["count"] == 1
    row = stats["data"][0]
    assert (row["model_name"], row["model_version"], row["validated"]) == ("tiny", "1", 3)
    assert row["top1_correct"] == 2 and row["top3_correct"] == 3
    assert row["top1_accuracy"] == pytest.approx(2 / 3)
    assert env.client.get("/api/v1/stats/models", headers=env.h("vol")).status_code == 403
