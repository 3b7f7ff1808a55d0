"""Lists of observations: filters, bounding box, pages and cursors (service.observations.queries)."""

from __future__ import annotations

from tests.helpers import photo_bytes
from tests.service.observation_support import BLUE, GREEN, Env, env  # noqa: F401


def test_list_filters_and_pages(env: Env) -> None:  # noqa: F811
    red = env.post_obs(observed_at="2024-06-01T10:00:00Z", latitude=45, longitude=5, session_id="A").json()
    green = env.post_obs(
        photos=[photo_bytes(GREEN)],
        observed_at="2024-07-01T10:00:00Z",
        latitude=-10,
        longitude=170,
        session_id="A",
    ).json()
    blue = env.post_obs(
        "vol2",
        photos=[photo_bytes(BLUE)],
        observed_at="2024-08-01T10:00:00Z",
        latitude=60,
        longitude=-175,
        session_id="B",
    ).json()

    def ids(**params) -> list[int]:
        r = env.client.get("/api/v1/observations", headers=env.h("exp"), params=params)
        assert r.status_code == 200, r.text
        assert r.json()["count"] == len(r.json()["data"]) or "limit" in params
        return sorted(o["id"] for o in r.json()["data"])

    assert ids() == sorted([red["id"], green["id"], blue["id"]])
    assert ids(taxon="Lycaenidae") == sorted([green["id"], blue["id"]])  # family: descendants included
    assert ids(taxon="Vanessa") == [red["id"]]
    assert ids(taxon=str(red["taxon"]["id"])) == [red["id"]]
    assert ids(observer=env.ids["vol2"]) == [blue["id"]]
    assert ids(session_id="A") == sorted([red["id"], green["id"]])
    assert ids(observed_from="2024-06-15T00:00:00Z") == sorted([green["id"], blue["id"]])
    assert ids(observed_from="2024-06-15T00:00:00Z", observed_to="2024-07-15T00:00:00Z") == [green["id"]]
    assert ids(bbox="0,40,10,50") == [red["id"]]
    assert ids(bbox="160,-90,-170,90") == sorted([green["id"], blue["id"]])  # across the antimeridian
    assert ids(status="needs_id") == sorted([red["id"], green["id"], blue["id"]])
    assert ids(status="validated") == []
    # Pages: offset and cursor.
    page = env.client.get("/api/v1/observations", headers=env.h("exp"), params={"limit": 2}).json()
    assert page["count"] == 3 and len(page["data"]) == 2 and page["next_cursor"]
    rest = env.client.get(
        "/api/v1/observations", headers=env.h("exp"), params={"limit": 2, "cursor": page["next_cursor"]}
    ).json()
    assert [o["id"] for o in page["data"] + rest["data"]] == [blue["id"], green["id"], red["id"]]
    off = env.client.get(
        "/api/v1/observations", headers=env.h("exp"), params={"limit": 2, "offset": 2}
    ).json()
    assert [o["id"] for o in off["data"]] == [red["id"]]
    for bad in (
        {"taxon": "Unknownia"},
        {"bbox": "1,2,3"},
        {"bbox": "0,95,10,99"},
        {"status": "done"},
        {"cursor": "!!"},
        {"limit": 0},
        {"observed_from": "nope"},
        {"taxon": "' OR 1=1 --"},
    ):
        r = env.client.get("/api/v1/observations", headers=env.h("exp"), params=bad)
        assert r.status_code == 422, (bad, r.status_code)
