"""Reference photos on the suggestion cards (volunteer) and the candidates (specialist), in Chromium: the images
load, the credit is shown, a taxon without any says so, a validated observation's photo comes first, and the
page speaks French when asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.frontend.a11y import assert_accessible
from tests.frontend.browser_support import make_user, sign_in

pytestmark = pytest.mark.browser
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
# The test model (tiny/1) knows red_admiral (Vanessa atalanta) and green_hairstreak (Callophrys rubi), both in
# the bundled lepidoptera100 set, and common_blue (Polyommatus icarus), which the set does not have.
LOADED = "els => els.length > 0 && els.every(e => e.complete && e.naturalWidth > 0)"


def _strip(page: Any, card: Any) -> Any:
    card.scroll_into_view_if_needed()  # strips load when they come into view
    strip = card.locator(".refs")
    strip.locator(".refs-photos, .refs-none").first.wait_for()
    return strip


def _assert_loaded(page: Any, strip: Any, count: int) -> None:
    images = strip.locator("img")
    assert images.count() == count
    page.wait_for_function(LOADED, arg=images.element_handles())


def test_volunteer_cards_show_reference_photos_with_credit_or_say_there_is_none(live_server: Any, page: Any) -> None:
    page.goto(live_server.url + "/")
    page.locator("#photos").set_input_files(str(FIXTURES / "red_admiral.jpg"))
    page.locator("#identify").click()
    cards = page.locator(".card")
    cards.first.wait_for()
    assert cards.count() == 3
    assert page.locator(".card img[src^='blob:']").count() == 0  # not the volunteer's own photo again

    admiral = _strip(page, page.locator(".card[data-label='red_admiral']"))
    _assert_loaded(page, admiral, 3)
    for i in range(3):
        alt = admiral.locator("img").nth(i).get_attribute("alt") or ""
        assert "Vanessa atalanta" in alt and f"{i + 1} of 3" in alt
    credit = admiral.locator(".refs-credit").inner_text()
    assert "lepidoptera100" in credit and "CC0" in credit
    assert admiral.get_attribute("aria-label") == "Reference photos of Vanessa atalanta"

    hairstreak = _strip(page, page.locator(".card[data-label='green_hairstreak']"))
    _assert_loaded(page, hairstreak, 3)

    blue = _strip(page, page.locator(".card[data-label='common_blue']"))
    assert blue.locator("img").count() == 0
    assert blue.locator(".refs-none").inner_text() == "No reference photo for this taxon yet"

    assert_accessible(page, "volunteer cards with reference photos")
    # Choosing a card still works with the photos inside it.
    page.locator(".card[data-label='red_admiral'] .refs img").first.click()
    assert "selected" in (page.locator(".card[data-label='red_admiral']").get_attribute("class") or "")


def _observation(server: Any, key: str, photo: str = "red_admiral.jpg") -> dict[str, Any]:
    r = httpx.post(f"{server.url}/api/v1/observations", headers={"Authorization": f"Bearer {key}"},
                   data={"observed_at": "2024-06-01T10:00:00Z", "latitude": "45.0", "longitude": "5.0",
                         "licence": "CC-BY"},
                   files=[("photos", ("a.jpg", (FIXTURES / photo).read_bytes(), "image/jpeg"))])
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _agree(server: Any, key: str, obs_id: int) -> dict[str, Any]:
    r = httpx.post(f"{server.url}/api/v1/observations/{obs_id}/identifications",
                   headers={"Authorization": f"Bearer {key}"}, json={"kind": "agree", "taxon": "Vanessa atalanta"})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_specialist_candidates_show_a_validated_observation_first(live_server: Any, page: Any) -> None:
    vera = make_user(live_server, "vera", "volunteer")
    experts = [make_user(live_server, name, "expert") for name in ("eric", "emma")]
    validated = _observation(live_server, vera)
    for key in experts:
        result = _agree(live_server, key, validated["id"])
    assert result["consensus"]["status"] == "validated"
    waiting = _observation(live_server, vera, "peacock.jpg")  # needs_id: in the queue, never a reference photo

    page.goto(live_server.url + "/expert")
    sign_in(page, experts[0])
    page.get_by_role("heading", name=f"Observation {waiting['id']}").wait_for()
    candidate = page.locator("#suggestions li").filter(has=page.locator(".refs[data-taxon='red_admiral']"))
    strip = _strip(page, candidate)
    _assert_loaded(page, strip, 3)
    figures = strip.locator("figure")
    assert figures.first.get_attribute("data-source") == "observation"
    assert [figures.nth(i).get_attribute("data-source") for i in (1, 2)] == ["bundled", "bundled"]
    assert page.locator(".refs figure[data-source='observation']").count() == 1  # not the waiting one
    credit = strip.locator(".refs-credit").inner_text()
    assert "© vera, CC-BY" in credit and "lepidoptera100" in credit
    src = strip.locator("img").first.get_attribute("src") or ""
    assert src.startswith("/api/v1/reference-photos/observations/") and waiting["photos"][0]["sha256"] not in src

    none = _strip(page, page.locator("#suggestions li").filter(has=page.locator(".refs[data-taxon='common_blue']")))
    assert none.locator(".refs-none").inner_text() == "No reference photo for this taxon yet"
    assert_accessible(page, "specialist candidates with reference photos")


def test_reference_photos_speak_french(live_server: Any, page: Any) -> None:
    page.goto(live_server.url + "/")
    page.evaluate("localStorage.setItem('pollinid.lang', 'fr')")
    page.reload()
    page.locator("#photos").set_input_files(str(FIXTURES / "red_admiral.jpg"))
    page.locator("#identify").click()
    page.locator(".card").first.wait_for()
    blue = _strip(page, page.locator(".card[data-label='common_blue']"))
    assert blue.locator(".refs-none").inner_text() == "Pas encore de photo de référence pour ce taxon"
    admiral = _strip(page, page.locator(".card[data-label='red_admiral']"))
    _assert_loaded(page, admiral, 3)
    assert admiral.locator(".refs-credit").inner_text().startswith("Photos : ")
    assert admiral.locator("img").first.get_attribute("alt") == "Photo de référence 1 sur 3 : Vanessa atalanta"
