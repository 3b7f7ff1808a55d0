"""The specialist's queue in Chromium: filters narrow it, the next observation is ready before the verdict, and
the page counts what the specialist validated today."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.frontend.browser_support import make_user, sign_in
from tests.helpers import photo_bytes
from tests.service.observation_support import BLUE, GREEN, RED
from tests.service.validation.test_queue import mixed

pytestmark = pytest.mark.browser
GREY = (128, 128, 128)


def post_obs(server: Any, key: str, photo: bytes, *, lat: float, lon: float, when: str) -> int:
    r = httpx.post(f"{server.url}/api/v1/observations", headers={"Authorization": f"Bearer {key}"},
                   data={"observed_at": when, "latitude": str(lat), "longitude": str(lon), "licence": "CC-BY"},
                   files=[("photos", ("p.png", photo, "image/png"))], timeout=30)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def shown(page: Any, obs_id: int) -> None:
    page.get_by_role("heading", name=f"Observation {obs_id}", exact=True).wait_for()


def wait_for_media(page: Any, count: int) -> None:
    """Until ``count`` photos were downloaded by the page (its CSP forbids wait_for_function's eval)."""
    for _ in range(200):
        got = page.evaluate("() => performance.getEntriesByType('resource')"
                            ".filter((e) => e.name.includes('/api/v1/media/')).length")
        if got >= count:
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"{got} photos downloaded, expected {count}")


def apply(page: Any) -> None:
    page.get_by_role("button", name="Apply filters").click()


def test_filters_narrow_the_queue(live_server, page):
    volunteer = make_user(live_server, "vera", "volunteer")
    expert = make_user(live_server, "eric", "expert")
    # By uncertainty: the grey one (order) first, then the family one, then the sure species.
    grey_lyon_aug = post_obs(live_server, volunteer, photo_bytes(GREY), lat=45.75, lon=4.85,
                             when="2024-08-10T10:00:00Z")
    family_lyon_jun = post_obs(live_server, volunteer, mixed(GREEN, BLUE, 0.5), lat=45.70, lon=4.80,
                               when="2024-06-10T10:00:00Z")
    species_paris_jun = post_obs(live_server, volunteer, photo_bytes(RED), lat=48.86, lon=2.35,
                                 when="2024-06-12T10:00:00Z")

    page.goto(live_server.url + "/expert")
    sign_in(page, expert)
    shown(page, grey_lyon_aug)
    page.locator("#queue-filters-box summary").click()  # open the filter panel
    assert page.locator("#queue-filters-active").inner_text() == "none"

    # "Near me": the browser's location fills the place in.
    page.context.grant_permissions(["geolocation"], origin=live_server.url)
    page.context.set_geolocation({"latitude": 45.76, "longitude": 4.84, "accuracy": 30})
    page.get_by_role("button", name="Near me").click()
    page.get_by_text("Location found.").wait_for()
    assert page.get_by_label("Near (latitude, longitude)").input_value() == "45.7600, 4.8400"
    page.get_by_label("Radius (km)").fill("30")
    page.get_by_label("Observed from").fill("2024-06-01")
    page.get_by_label("Observed until").fill("2024-06-30")
    apply(page)
    shown(page, family_lyon_jun)  # the August one and the one in Paris are filtered out
    assert page.locator("#queue-filters-active").inner_text() == "2 active"

    # Rank of the model's answer, and a taxon chosen from the suggestions.
    page.get_by_role("button", name="Clear filters").click()
    shown(page, grey_lyon_aug)
    page.get_by_label("Model's answer placed at").select_option("species")
    apply(page)
    shown(page, species_paris_jun)
    page.get_by_label("Model's answer placed at").select_option("")
    page.get_by_role("combobox", name="Taxon group").fill("Lycaen")
    page.get_by_role("option", name=re.compile(r"Lycaenidae")).click()
    apply(page)
    shown(page, grey_lyon_aug)  # its top-1 species (the current taxon) is a Lycaenid too
    page.get_by_label("Model's answer placed at").select_option("family")
    apply(page)
    shown(page, family_lyon_jun)
    page.get_by_label("Model's answer placed at").select_option("genus")
    apply(page)
    page.get_by_text("The queue is empty").wait_for()

    # A bad place is refused with the service's message, and nothing else is shown.
    page.get_by_label("Model's answer placed at").select_option("")
    page.get_by_role("combobox", name="Taxon group").fill("")
    page.get_by_label("Near (latitude, longitude)").fill("95, 4")
    apply(page)
    page.locator("#queue-error").get_by_text("latitude 95 is out of range").wait_for()
    page.console_errors[:] = [e for e in page.console_errors if "422" not in e and "Failed to load" not in e]


def test_next_observation_is_ready_before_the_verdict_and_today_counts(live_server, page):
    volunteer = make_user(live_server, "vera", "volunteer")
    expert = make_user(live_server, "eric", "expert")
    ids = [post_obs(live_server, volunteer, mixed(GREEN, BLUE, share), lat=45.7, lon=4.8, when="2024-06-10T10:00:00Z")
           for share in (31 / 64, 32 / 64, 33 / 64)]
    scores: dict[int, float] = {}
    for oid in ids:
        got = httpx.get(f"{live_server.url}/api/v1/observations/{oid}",
                        headers={"Authorization": f"Bearer {volunteer}"}).json()
        scores[oid] = got["prediction"]["top1_score"]
    order = sorted(ids, key=lambda i: scores[i])

    page.goto(live_server.url + "/expert")
    sign_in(page, expert)
    shown(page, order[0])
    page.locator("#queue-today:not(.hidden)").wait_for()
    assert page.locator("#queue-today-count").inner_text() == "0"
    # The next observation's photo is downloaded while the first is judged.
    wait_for_media(page, 2)

    # From now on the queue does not answer until the test lets it: the next observation must not need it.
    held: list[Any] = []
    page.route(re.compile(r".*/api/v1/validation/queue\?.*"), lambda route: held.append(route))
    before = page.locator("#photo").get_attribute("src")
    page.get_by_role("button", name="Agree (a)").click()
    shown(page, order[1])
    # Its photo (another blob than the first one's) is shown at once, from the prefetched download.
    page.locator(f"#photo[src^='blob:']:not([src='{before}'])").wait_for(timeout=2000)
    assert page.locator("#photo").evaluate("(img) => img.decode().then(() => img.naturalWidth > 0)")
    page.locator("#queue-today-count").get_by_text("1", exact=True).wait_for()
    for _ in range(100):  # the page asks for the one after in the background
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the page did not ask the queue for the next one"
    for route in held:
        route.continue_()
    page.unroute(re.compile(r".*/api/v1/validation/queue\?.*"))

    wait_for_media(page, 3)
    page.keyboard.press("x")  # cannot tell: counted too
    shown(page, order[2])
    page.locator("#queue-today-count").get_by_text("2", exact=True).wait_for()
    assert "Agreed 1" in (page.locator("#queue-today").get_attribute("title") or "")
    # Passing one over with "Next" is not a verdict: the count stays, and the queue is then empty.
    page.get_by_role("button", name="Next observation").click()
    page.get_by_text("The queue is empty").wait_for()
    assert page.locator("#queue-today-count").inner_text() == "2"
    page.locator("#queue-skipped").get_by_text("1 observation passed over").wait_for()
