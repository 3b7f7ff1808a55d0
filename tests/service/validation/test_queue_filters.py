"""The specialists' queue filters (taxon, rank, place, date) and their day's count, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import typing
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from service.api.routes.validation import RankFilter
from service.settings import Settings
from service.store.tables import Identification, Observation
from service.validation.filters import ANSWER_RANK_FILTERS, EARTH_RADIUS_KM
from tests.helpers import photo_bytes
from tests.service.observation_support import BLUE, GREEN, RED, Env, env, make_env  # noqa: F401
from tests.service.validation.test_queue import mixed

GREY = (128, 128, 128)
LYON, GRENOBLE, PARIS = (45.76, 4.84), (45.19, 5.72), (48.86, 2.35)
FIJI_EAST, FIJI_WEST = (-17.70, 179.95), (-17.70, -179.90)  # either side of the antimeridian


def queue(env: Env, who: str = "exp", **params: object) -> list[int]:  # noqa: F811
    r = env.client.get("/api/v1/validation/queue", headers=env.h(who), params={"limit": 50, **params})
    assert r.status_code == 200, r.text
    return [item["observation"]["id"] for item in r.json()["data"]]


def release_all(env: Env, who: str, ids: list[int]) -> None:  # noqa: F811
    for i in ids:
        assert env.client.delete(f"/api/v1/validation/queue/{i}/lease", headers=env.h(who)).status_code == 204


def peek(env: Env, who: str = "exp", **params: object) -> list[int]:  # noqa: F811
    """The queue's answer, then its leases given back (so that the next call sees the same queue)."""
    items = queue(env, who, **params)
    release_all(env, who, items)
    return items


def km(a: tuple[float, float], b: tuple[float, float]) -> float:
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(b[1] - a[1]) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


def test_rank_is_the_rank_of_the_models_committed_answer(env: Env) -> None:  # noqa: F811
    species = env.post_obs(photos=[photo_bytes(RED)]).json()
    family = env.post_obs(photos=[mixed(GREEN, BLUE, 0.5)]).json()
    order = env.post_obs(photos=[photo_bytes(GREY)]).json()
    nothing = env.post_obs(photos=[photo_bytes(BLUE)]).json()
    ranks = {o["id"]: o["prediction"]["result"]["rollup"]["rank"] for o in (species, family, order)}
    assert ranks == {species["id"]: "species", family["id"]: "family", order["id"]: "order"}
    # The model dared say nothing about this one (as for photos unlike anything it knows).
    with env.session() as s:
        obs = s.get(Observation, nothing["id"])
        obs.prediction = {**obs.prediction, "rollup": None}
        s.commit()
    assert peek(env, rank="family") == [family["id"]]
    assert peek(env, rank="order") == [order["id"]]
    assert peek(env, rank="species") == [species["id"]]
    assert peek(env, rank="uncommitted") == [nothing["id"]]
    assert peek(env, rank="genus") == []
    assert peek(env, rank="no_insect") == []
    # Combined with the taxon: the family answer's current taxon (the top-1 species) is a Lycaenid.
    assert peek(env, rank="family", taxon="Lycaenidae") == [family["id"]]
    assert peek(env, rank="family", taxon="Nymphalidae") == []


def test_the_rank_values_are_the_same_in_the_route_and_the_filter() -> None:
    assert typing.get_args(RankFilter) == ANSWER_RANK_FILTERS


def test_place_near_a_point_and_in_a_box(env: Env) -> None:  # noqa: F811
    where = {"lyon": LYON, "grenoble": GRENOBLE, "paris": PARIS, "fiji_e": FIJI_EAST, "fiji_w": FIJI_WEST}
    ids = {name: env.post_obs(latitude=lat, longitude=lon).json()["id"] for name, (lat, lon) in where.items()}
    nowhere = env.post_obs(latitude=None, longitude=None).json()
    assert nowhere["latitude"] is None
    d = km(LYON, GRENOBLE)
    assert 90 < d < 100

    def got(**params: object) -> set[int]:
        return set(peek(env, **params))

    assert got(near="45.76,4.84", radius_km=d - 1) == {ids["lyon"]}
    assert got(near="45.76,4.84", radius_km=d + 1) == {ids["lyon"], ids["grenoble"]}
    assert got(near=" 45.76 , 4.84 ") == {ids["lyon"]}  # default radius: 25 km
    assert got(near="45.76,4.84", radius_km=km(LYON, PARIS) + 1) == {ids["lyon"], ids["grenoble"], ids["paris"]}
    # Across the antimeridian: the circle and the box wrap around.
    assert km(FIJI_EAST, FIJI_WEST) < 20
    assert got(near="-17.7,179.99", radius_km=20) == {ids["fiji_e"], ids["fiji_w"]}
    assert got(near="-17.7,-179.99", radius_km=20) == {ids["fiji_e"], ids["fiji_w"]}
    assert got(bbox="179,-18,-179,-17") == {ids["fiji_e"], ids["fiji_w"]}
    assert got(bbox="179.9,-18,180,-17") == {ids["fiji_e"]}
    assert got(bbox="4,45,6,46") == {ids["lyon"], ids["grenoble"]}
    # Both: inside the box and near the point.
    assert got(bbox="4,45,6,46", near="45.2,5.7", radius_km=10) == {ids["grenoble"]}
    # The whole world is every observation that has a place, never the one without.
    assert got(near="0,0", radius_km=20_000) == set(ids.values())
    assert got(bbox="-180,-90,180,90") == set(ids.values())
    assert nowhere["id"] in got()


def test_date_days_are_counted_in_the_asked_time_zone(env: Env) -> None:  # noqa: F811
    # 22:30 UTC on 1 June is 00:30 on 2 June in Paris (UTC+2 in summer).
    late = env.post_obs(observed_at="2024-06-01T22:30:00Z").json()["id"]
    june1 = env.post_obs(observed_at="2024-06-01T10:00:00Z").json()["id"]
    june3 = env.post_obs(observed_at="2024-06-03T23:59:59Z").json()["id"]
    july = env.post_obs(observed_at="2024-07-01T00:00:00Z").json()["id"]

    def got(**params: object) -> set[int]:
        return set(peek(env, **params))

    assert got(observed_from="2024-06-01", observed_to="2024-06-01") == {late, june1}
    assert got(observed_from="2024-06-01", observed_to="2024-06-01", tz="Europe/Paris") == {june1}
    assert got(observed_from="2024-06-02", observed_to="2024-06-02", tz="Europe/Paris") == {late}
    assert got(observed_from="2024-06-02", observed_to="2024-06-02") == set()
    assert got(observed_from="2024-06-02") == {june3, july}
    assert got(observed_to="2024-06-03") == {late, june1, june3}
    assert got(observed_to="2024-06-03", tz="Europe/Paris") == {late, june1}  # june3 is 4 June in Paris
    assert got(observed_from="2024-06-30", observed_to="2024-06-30", tz="America/New_York") == {july}


def test_filters_combine_keep_the_order_and_the_leases(env: Env) -> None:  # noqa: F811
    # Three uncertain Lycaenids near Lyon in June, of increasing certainty, and decoys that each fail one filter.
    shares = (31 / 64, 32 / 64, 33 / 64)  # the model can only place these at family rank
    good = [env.post_obs(photos=[mixed(GREEN, BLUE, s)], latitude=45.7, longitude=4.8,
                         observed_at="2024-06-10T12:00:00Z").json() for s in shares]
    assert all(o["prediction"]["result"]["rollup"]["rank"] == "family" for o in good)
    scores = [o["prediction"]["top1_score"] for o in good]
    expected = [o["id"] for _, o in sorted(zip(scores, good, strict=True), key=lambda p: p[0])]
    far = env.post_obs(photos=[mixed(GREEN, BLUE, 0.5)], latitude=48.86, longitude=2.35,
                       observed_at="2024-06-10T12:00:00Z").json()["id"]
    late = env.post_obs(photos=[mixed(GREEN, BLUE, 0.5)], latitude=45.7, longitude=4.8,
                        observed_at="2024-08-10T12:00:00Z").json()["id"]
    sure = env.post_obs(photos=[photo_bytes(BLUE)], latitude=45.7, longitude=4.8,
                        observed_at="2024-06-10T12:00:00Z").json()["id"]
    params = {"taxon": "Lycaenidae", "rank": "family", "near": "45.76,4.84", "radius_km": 30,
              "observed_from": "2024-06-01", "observed_to": "2024-06-30", "tz": "Europe/Paris"}
    first = queue(env, "exp", **params)
    assert first == expected  # most uncertain first, and none of far, late, sure
    assert not {far, late, sure} & set(first)
    # The leases still keep two specialists apart, filters or not.
    assert queue(env, "exp2", **params) == []
    assert set(queue(env, "exp2", limit=50)) == {far, late, sure}
    assert queue(env, "exp", **{**params, "limit": 1}) == expected[:1]  # your own leases come back to you
    with env.session() as s:
        leased = {oid: uid for oid, uid in s.execute(select(Observation.id, Observation.lease_user_id))}
    assert {leased[i] for i in expected} == {env.ids["exp"]}


def test_queue_filters_respect_the_per_expert_lease_cap(settings: Settings) -> None:
    for e in make_env(settings.model_copy(update={"queue_max_leases_per_expert": 2})):
        for share in (31 / 64, 32 / 64, 33 / 64):
            e.post_obs(photos=[mixed(GREEN, BLUE, share)])
        other = e.post_obs(photos=[photo_bytes(GREY)]).json()["id"]
        held = queue(e, "exp", rank="family")
        assert len(held) == 2
        # At the cap, a wider or another filter leases nothing new; the held ones come back when they match.
        assert queue(e, "exp") == held
        assert queue(e, "exp", rank="order") == []
        assert queue(e, "exp2", rank="order") == [other]
        release_all(e, "exp", held[:1])
        again = queue(e, "exp", rank="family")
        assert len(again) == 2 and held[1] in again


BAD = [
    ({"radius_km": 10}, "radius_km needs near"),
    ({"near": "91,5"}, "latitude 91 is out of range"),
    ({"near": "45,181"}, "longitude 181 is out of range"),
    ({"near": "lyon"}, "near must be 2 comma-separated numbers"),
    ({"near": "1,2,3"}, "near must be 2 comma-separated numbers"),
    ({"near": "nan,5"}, "near must be 2 comma-separated numbers"),
    ({"near": "45,5", "radius_km": 0}, "radius_km must be more than 0"),
    ({"near": "45,5", "radius_km": 25_000}, "radius_km must be more than 0 and at most 20000"),
    ({"near": "45,5", "radius_km": "far"}, "radius_km"),
    ({"bbox": "1,2,3"}, "bbox must be 4 comma-separated numbers"),
    ({"bbox": "4,46,6,45"}, "min_lat 46 is above max_lat 45"),
    ({"bbox": "4,45,200,46"}, "longitude 200 is out of range"),
    ({"observed_from": "2024-06-10", "observed_to": "2024-06-01"}, "observed_from (2024-06-10) is after observed_to"),
    ({"observed_from": "2024-13-01"}, "observed_from"),
    ({"observed_to": "yesterday"}, "observed_to"),
    ({"tz": "Mars/Olympus_Mons"}, "unknown time zone 'Mars/Olympus_Mons'"),
    ({"tz": "../../etc/passwd"}, "unknown time zone"),
    ({"rank": "kingdom"}, "rank"),
    ({"taxon": "Nowhere"}, "Nowhere"),
]


@pytest.mark.parametrize(("params", "message"), BAD, ids=[str(p) for p, _ in BAD])
def test_bad_filters_are_refused_and_lease_nothing(env: Env, params: dict[str, object], message: str) -> None:  # noqa: F811
    oid = env.post_obs().json()["id"]
    r = env.client.get("/api/v1/validation/queue", headers=env.h("exp"), params=params)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] in ("invalid_request", "unknown_taxon")
    assert message in error["message"], error
    with env.session() as s:
        assert s.get(Observation, oid).lease_user_id is None


# -- the specialist's day ----------------------------------------------------------------------------------


def stats(env: Env, who: str = "exp", **params: object) -> dict[str, typing.Any]:  # noqa: F811
    r = env.client.get("/api/v1/validation/stats", headers=env.h(who), params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_stats_count_todays_current_identifications_by_kind(env: Env) -> None:  # noqa: F811
    assert stats(env) == {**stats(env), "identified_today": 0, "agreed": 0, "corrected": 0, "cannot_tell": 0,
                          "not_an_insect": 0}
    obs = [env.post_obs(photos=[photo_bytes(c)]).json()["id"] for c in (RED, GREEN, BLUE, RED, GREEN)]
    assert env.identify("exp", obs[0], "agree").status_code == 201
    assert env.identify("exp", obs[1], "propose", taxon="Polyommatus icarus").status_code == 201
    assert env.identify("exp", obs[2], "cannot_tell").status_code == 201
    assert env.identify("exp", obs[3], "not_an_insect").status_code == 201
    # Changing one's mind on the same observation counts it once, with its newest kind.
    assert env.identify("exp", obs[2], "agree").status_code == 201
    # A withdrawn identification no longer counts; nor do other people's.
    w = env.identify("exp", obs[4], "agree").json()["identification"]["id"]
    assert env.client.post(f"/api/v1/observations/{obs[4]}/identifications/{w}/withdraw",
                           headers=env.h("exp")).status_code == 200
    assert env.identify("exp2", obs[0], "agree").status_code == 201
    got = stats(env, tz="Europe/Paris")
    assert got["tz"] == "Europe/Paris"
    assert (got["identified_today"], got["agreed"], got["corrected"], got["cannot_tell"], got["not_an_insect"]) == (
        4, 2, 1, 0, 1)
    assert stats(env, "exp2")["identified_today"] == 1
    assert stats(env, "exp3")["identified_today"] == 0
    since = datetime.fromisoformat(got["since"])
    assert since.utcoffset() in (timedelta(hours=1), timedelta(hours=2))
    assert since.astimezone(ZoneInfo("Europe/Paris")).time().isoformat() == "00:00:00"


@pytest.mark.parametrize("zone", ["Europe/Paris", "Pacific/Kiritimati", "America/Los_Angeles", "UTC"])
def test_stats_start_at_local_midnight_of_the_asked_time_zone(env: Env, zone: str) -> None:  # noqa: F811
    """Identifications placed around local midnight (set in the database): only today's count."""
    tz = ZoneInfo(zone)
    now = datetime.now(UTC)
    local_midnight = datetime.combine(now.astimezone(tz).date(), datetime.min.time(), tzinfo=tz).astimezone(UTC)
    utc_midnight = datetime.combine(now.date(), datetime.min.time(), tzinfo=UTC)
    moments = [local_midnight - timedelta(seconds=1), local_midnight + timedelta(seconds=1),
               utc_midnight - timedelta(seconds=1), utc_midnight + timedelta(seconds=1),
               now - timedelta(minutes=1), now - timedelta(days=1)]
    moments = [m for m in moments if m < now]
    obs = [env.post_obs(photos=[photo_bytes(RED, size=(40 + i, 40))]).json()["id"] for i in range(len(moments))]
    for oid in obs:
        assert env.identify("exp", oid, "agree").status_code == 201
    with env.session() as s:
        for oid, when in zip(obs, moments, strict=True):
            s.execute(update(Identification).where(Identification.observation_id == oid).values(created_at=when))
        s.commit()
    expected = sum(1 for m in moments if m.astimezone(tz).date() == now.astimezone(tz).date())
    assert 1 <= expected < len(moments)
    got = stats(env, tz=zone)
    assert got["identified_today"] == expected == got["agreed"]
    assert datetime.fromisoformat(got["since"]) == local_midnight


def test_stats_refuse_an_unknown_time_zone(env: Env) -> None:  # noqa: F811
    for bad in ("Mars/Olympus_Mons", "Europe", "../../etc/passwd", "x" * 65):
        r = env.client.get("/api/v1/validation/stats", headers=env.h("exp"), params={"tz": bad})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_request"
    assert stats(env)["tz"] == "UTC"
    assert env.client.get("/api/v1/validation/stats", headers=env.h("vol")).status_code == 403
