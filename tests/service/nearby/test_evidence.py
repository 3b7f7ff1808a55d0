"""Where and when as evidence: the counts (near/far, in/out of season, a genus counts its species, validated
observations and occurrences) and the bounded re-ranking, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select

from service.core.vocabulary import ObservationStatus
from service.inference.results import TaxonPublic, TaxonScore
from service.nearby.evidence import (
    Counts,
    NearbyParams,
    Place,
    count_records,
    day_of_year,
    factors,
    haversine_km,
    label_paths,
    rerank,
    season_distance,
)
from service.store.tables import Observation, Taxon
from tests.service.nearby.archives import dwca, occurrence_row
from tests.service.observation_support import Env

PARAMS = NearbyParams(radius_km=100.0, season_days=30, alpha=1.0, weight=1.0, clip_low=0.2, clip_high=5.0)


def test_distances_and_seasons() -> None:
    assert haversine_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.5, abs=1.0)  # Paris-London
    assert haversine_km(0.0, 179.9, 0.0, -179.9) == pytest.approx(22.2, abs=0.2)  # across the antimeridian
    assert season_distance(day_of_year(12, 25), day_of_year(1, 5)) == 11  # around the new year
    assert season_distance(day_of_year(6, 1), day_of_year(6, 1)) == 0
    assert day_of_year(2, 29) == day_of_year(2, 28) == 59


def test_factors_are_bounded_and_neutral_without_records() -> None:
    # No records anywhere near: every factor is 1 (the model's order).
    assert factors([0, 0, 0], 0, 110, PARAMS) == [(pytest.approx(1 / 110), 1.0)] * 3
    (p_many, f_many), (p_none, f_none) = factors([100, 0], 1000, 110, PARAMS)
    assert p_many == pytest.approx(101 / 1110)  # 10x the uniform prior, but...
    assert f_many == 5.0  # ...clipped high
    assert p_none == pytest.approx(1 / 1110) and f_none == 0.2  # 0.099, clipped low
    # Few records nearby: weak evidence either way (alpha).
    assert factors([0], 10, 110, PARAMS)[0][1] == pytest.approx(110 / 120)
    soft = NearbyParams(weight=0.5, clip_low=0.2, clip_high=5.0)
    assert factors([100], 100, 110, soft)[0][1] == pytest.approx(5.0 ** 0.5)


def _score(label: str, score: float) -> TaxonScore:
    return TaxonScore(taxon=TaxonPublic(label=label, scientific_name=label, rank="species"), score=score)


def test_rerank_keeps_every_candidate_and_their_model_scores() -> None:
    results = [_score("a", 0.6), _score("b", 0.3), _score("no_insect", 0.1)]
    paths = {"a": "/1/2/", "b": "/1/3/"}
    counts = Counts(by_path={"/1/3/": 40, "/1/9/": 10}, observations=0, occurrences=50)
    out = rerank(results, paths, counts, Place(45.0, 5.0, date(2024, 6, 1)), PARAMS, classes=10)
    assert [r.taxon.label for r in out] == ["b", "a", "no_insect"]
    assert {r.taxon.label: r.score for r in out} == {"a": 0.6, "b": 0.3, "no_insect": 0.1}  # untouched
    by = {r.taxon.label: r for r in out}
    assert by["no_insect"].nearby is None
    assert by["a"].nearby.records == 0 and by["b"].nearby.records == 40 and by["b"].nearby.month == 6
    # Combined scores keep the candidates' total probability.
    scale = by["b"].nearby.combined / (0.3 * by["b"].nearby.factor)  # no_insect: its score times the scale
    total = by["a"].nearby.combined + by["b"].nearby.combined + 0.1 * scale
    assert total == pytest.approx(1.0, abs=1e-5)


def _taxon_ids(env: Env) -> dict[str, Taxon]:
    with env.session() as s:
        return {t.scientific_name: t for t in s.scalars(select(Taxon))}


def test_counts_near_far_in_and_out_of_season_genus_and_observations(env: Env) -> None:
    rows = [
        occurrence_row("Vanessa atalanta", 45.0, 5.0, "2019-06-10", genus="Vanessa"),  # here, in season
        occurrence_row("Vanessa atalanta", 45.5, 5.5, "2021-07-01", genus="Vanessa"),  # 68 km, 30 days
        occurrence_row("Vanessa atalanta", 46.5, 5.0, "2021-06-01", genus="Vanessa"),  # 167 km: far
        occurrence_row("Vanessa atalanta", 45.0, 5.0, "2021-12-01", genus="Vanessa"),  # out of season
        occurrence_row("Vanessa atalanta", 45.0, 5.0, "2021-08-15", genus="Vanessa"),  # 75 days: out
        occurrence_row("Vanessa cardui", 45.2, 5.1, "2020-06-20", genus="Vanessa"),  # the genus only
        occurrence_row("Polyommatus icarus", 44.6, 4.6, "2020-05-15", genus="Polyommatus"),  # 55 km, 17 days
    ]
    r = env.client.post("/api/v1/admin/occurrences", headers=env.h("admin"),
                        files={"file": ("o.zip", dwca(rows), "application/zip")})
    assert r.status_code == 201 and r.json()["rows_imported"] == 7
    # Two validated observations of the green hairstreak here, one needing an id (not counted).
    ids = []
    for when in ("2024-06-03T10:00:00Z", "2024-05-20T10:00:00Z", "2024-06-03T10:00:00Z"):
        made = env.post_obs(observed_at=when, latitude="45.01", longitude="5.01")
        assert made.status_code == 201, made.text
        ids.append(made.json()["id"])
    taxa = _taxon_ids(env)
    with env.session() as s:
        for i in ids[:2]:
            obs = s.get(Observation, i)
            obs.status, obs.taxon_id = ObservationStatus.validated.value, taxa["Callophrys rubi"].id
        s.get(Observation, ids[2]).taxon_id = taxa["Callophrys rubi"].id
        s.commit()

    place = Place(45.0, 5.0, date(2024, 6, 1))
    with env.session() as s:
        counts = count_records(s, place, PARAMS)
        paths = label_paths(s, ["red_admiral", "green_hairstreak", "common_blue", "no_such_label"])
    assert set(paths) == {"red_admiral", "green_hairstreak", "common_blue"}
    assert counts.occurrences == 4 and counts.observations == 2 and counts.total == 6
    assert counts.of(paths["red_admiral"]) == 2
    assert counts.of(paths["common_blue"]) == 1
    assert counts.of(paths["green_hairstreak"]) == 2
    assert counts.of(taxa["Vanessa"].path) == 3  # the genus counts its species and its own records
    assert counts.of(taxa["Lepidoptera"].path) == 6

    # Winter: only the December record, and the late-December window wraps into January.
    with env.session() as s:
        winter = count_records(s, Place(45.0, 5.0, date(2024, 12, 20)), PARAMS)
        assert winter.total == 1 and winter.of(paths["red_admiral"]) == 1
        wide = count_records(s, place, NearbyParams(radius_km=200.0, season_days=30))
        assert wide.of(paths["red_admiral"]) == 3
        elsewhere = count_records(s, Place(-33.9, 151.2, date(2024, 6, 1)), PARAMS)
        assert elsewhere.total == 0
