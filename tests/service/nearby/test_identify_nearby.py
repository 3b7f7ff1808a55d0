"""/identify with where and when: both scores shown, the order changes only when nearby is on, the committed
answer never changes, bad place or date is a 422; one photo and several; SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from tests.helpers import photo_bytes
from tests.service.nearby.archives import dwca, occurrence_row
from tests.service.observation_support import Env

PURPLE = (150, 30, 140)  # the tiny model: red admiral first, common blue a close second


def _identify(env: Env, photos: list[bytes] | None = None, **form: str) -> Any:
    photos = photos or [photo_bytes(PURPLE)]
    return env.client.post("/api/v1/identify", data=form,
                           files=[("photos", (f"p{i}.jpg", b, "image/jpeg")) for i, b in enumerate(photos)])


def _import_common_blues(env: Env, n: int = 60) -> None:
    rows = [occurrence_row("Polyommatus icarus (Rottemburg, 1775)", 45.0 + (i % 10) * 0.02, 5.0,
                           "2022-06-10", genus="Polyommatus", gbif_id=i) for i in range(n)]
    r = env.client.post("/api/v1/admin/occurrences", headers=env.h("admin"),
                        files={"file": ("blues.zip", dwca(rows), "application/zip")})
    assert r.status_code == 201, r.text


def _labels(results: list[dict]) -> list[str]:
    return [r["taxon"]["label"] for r in results]


def test_nearby_reranks_only_when_on_and_keeps_both_scores_and_the_rollup(env: Env) -> None:
    plain = _identify(env)
    assert plain.status_code == 200, plain.text
    base = plain.json()
    assert base["nearby"] is None and all(r["nearby"] is None for r in base["results"])
    assert _labels(base["results"])[:2] == ["red_admiral", "common_blue"]

    # A place with no records nearby: evidence used, nothing moves.
    empty = _identify(env, latitude="45.0", longitude="5.0", observed_at="2024-06-12").json()
    assert empty["nearby"]["used"] is True and empty["nearby"]["records"] == 0
    assert _labels(empty["results"]) == _labels(base["results"])

    _import_common_blues(env)
    on = _identify(env, latitude="45.0", longitude="5.0", observed_at="2024-06-12T09:30:00+02:00").json()
    assert on["nearby"] == {"used": True, "reason": None, "latitude": 45.0, "longitude": 5.0,
                            "observed_on": "2024-06-12", "month": 6, "radius_km": 100.0, "season_days": 30,
                            "records": 60, "observations": 0, "occurrences": 60}
    assert _labels(on["results"])[0] == "common_blue"  # re-ranked
    assert sorted(_labels(on["results"])) == sorted(_labels(base["results"]))  # none removed
    by_label = {r["taxon"]["label"]: r for r in on["results"]}
    for r in base["results"]:  # the model's calibrated scores, unchanged
        assert by_label[r["taxon"]["label"]]["score"] == r["score"]
    blue = by_label["common_blue"]["nearby"]
    assert blue["records"] == 60 and blue["month"] == 6 and blue["radius_km"] == 100.0
    assert blue["combined"] > by_label["red_admiral"]["nearby"]["combined"]
    assert by_label["red_admiral"]["nearby"]["records"] == 0
    combined = [r["nearby"]["combined"] for r in on["results"]]
    assert combined == sorted(combined, reverse=True)
    assert on["rollup"] == base["rollup"]  # the committed answer is the model's
    assert on["images"][0]["rollup"] == base["images"][0]["rollup"]
    assert _labels(on["images"][0]["results"])[0] == "common_blue"

    # Switched off: the model's order, and the block says so.
    off = _identify(env, latitude="45.0", longitude="5.0", observed_at="2024-06-12", nearby="false").json()
    assert off["nearby"]["used"] is False and off["nearby"]["reason"] == "switched_off"
    assert off["results"] == base["results"] and off["rollup"] == base["rollup"]

    # Out of season (December) or far away (Sydney): no records, the model's order.
    winter = _identify(env, latitude="45.0", longitude="5.0", observed_at="2024-12-12").json()
    assert winter["nearby"]["records"] == 0 and _labels(winter["results"]) == _labels(base["results"])
    far = _identify(env, latitude="-33.9", longitude="151.2", observed_at="2024-06-12").json()
    assert far["nearby"]["records"] == 0 and _labels(far["results"]) == _labels(base["results"])

    # nearby=true without a place: said, not used.
    alone = _identify(env, nearby="true").json()
    assert alone["nearby"] == {**alone["nearby"], "used": False, "reason": "no_place"}
    # No date: today's season.
    today = _identify(env, latitude="45.0", longitude="5.0").json()
    assert today["nearby"]["used"] is True and today["nearby"]["observed_on"]


def test_several_photos_are_reranked_together(env: Env) -> None:
    _import_common_blues(env)
    photos = [photo_bytes(PURPLE), photo_bytes((160, 30, 130))]
    base = _identify(env, photos).json()
    on = _identify(env, photos, latitude="45.0", longitude="5.0", observed_at="2024-06-12").json()
    assert _labels(base["results"])[0] == "red_admiral" and _labels(on["results"])[0] == "common_blue"
    assert on["rollup"] == base["rollup"] and len(on["images"]) == 2
    for photo in on["images"]:
        assert all(r["nearby"] is not None for r in photo["results"])


def test_bad_place_date_or_switch_is_a_422(env: Env) -> None:
    for form, field in [({"latitude": "91", "longitude": "5"}, "latitude"),
                        ({"latitude": "45", "longitude": "east"}, "longitude"),
                        ({"latitude": "nan", "longitude": "5"}, "latitude"),
                        ({"latitude": "45"}, "longitude"),
                        ({"latitude": "45", "longitude": "5", "observed_at": "12/06/2024"}, "observed_at"),
                        ({"observed_at": "yesterday"}, "observed_at"),
                        ({"latitude": "45", "longitude": "5", "nearby": "maybe"}, "nearby")]:
        r = _identify(env, **form)
        assert r.status_code == 422, (form, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_request" and error["detail"]["field"] == field, error
