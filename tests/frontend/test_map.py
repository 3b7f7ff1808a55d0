"""The offline map (frontend/static/map.js) in Chromium: it draws from the bundled data only, a click picks the
place, the marker drags, typed coordinates move it, the device's fix shows its accuracy, the observation keeps
the place, its precision and how it was given, and the specialist sees it on the same map."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.frontend.a11y import assert_accessible
from tests.frontend.browser_support import ARTIFACTS, make_user

pytestmark = pytest.mark.browser
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# How many distinct colours the canvas shows: a blank (or water-only) map has one or two.
CANVAS_COLOURS = """(selector) => {
  const canvas = document.querySelector(selector + ' canvas');
  const ctx = canvas.getContext('2d');
  const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const seen = new Set();
  for (let i = 0; i < data.length; i += 16) seen.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
  return seen.size;
}"""


def state(page: Any, selector: str) -> dict[str, str]:
    """The map's state, mirrored on its element's data- attributes."""
    return page.eval_on_selector(f"{selector} .map", "(el) => ({...el.dataset})")


def fields(page: Any) -> tuple[float, float]:
    return float(page.locator("#latitude").input_value()), float(page.locator("#longitude").input_value())


def map_box(page: Any, selector: str) -> dict[str, float]:
    """The map's box in the viewport, scrolled into view first (photos loading above it move it down)."""
    view = page.locator(f"{selector} .map-view")
    view.scroll_into_view_if_needed()
    return view.bounding_box()


def wait_level(page: Any, selector: str, level: str) -> None:
    page.wait_for_function(
        "([sel, level]) => { const m = document.querySelector(sel + ' .map');"
        " return m && m.dataset.level === level && Number(m.dataset.drawn) > 0; }", arg=[selector, level])


def open_signed_in(page: Any, server: Any, path: str, key: str) -> None:
    """Open a page with this API key remembered (as its sign-in form leaves it)."""
    page.goto(server.url + path)
    page.evaluate("(key) => localStorage.setItem('pollinid.apiKey', key)", key)
    page.reload()


def identify_photo(page: Any) -> None:
    page.locator("#photos").set_input_files(str(FIXTURES / "red_admiral.jpg"))
    page.locator("#identify").click()
    page.locator(".card").first.wait_for()
    page.wait_for_load_state("networkidle")  # the candidates' reference photos are in: the layout stays put


def to_details(page: Any, server: Any) -> None:
    """Sign in as a new volunteer, identify a photo: the "Where and when" panel (with the map) shows."""
    open_signed_in(page, server, "/", make_user(server, "vera", "volunteer"))
    identify_photo(page)
    page.locator("#place-map .map-view").wait_for()


def submit(page: Any, server: Any) -> dict[str, Any]:
    page.locator("#submit").click()
    saved = page.locator("#saved")
    saved.wait_for()
    obs_id = int(re.search(r"\d+", saved.inner_text()).group())  # type: ignore[union-attr]
    key = page.evaluate("localStorage.getItem('pollinid.apiKey')")
    response = page.request.get(f"{server.url}/api/v1/observations/{obs_id}",
                                headers={"Authorization": f"Bearer {key}"})
    assert response.ok, response.text()
    return response.json()


def test_the_volunteer_picks_drags_and_types_the_place_on_an_offline_map(live_server, page):
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url)
            if not r.url.startswith((live_server.url + "/", "blob:", "data:")) else None)
    to_details(page, live_server)
    sel = "#place-map"
    wait_level(page, sel, "110m")
    assert page.evaluate(CANVAS_COLOURS, sel) > 3  # land, water, coasts, borders: not a blank canvas
    assert state(page, sel).get("latitude") is None  # no place yet
    assert "No place yet" in page.locator(f"{sel} .map-readout").inner_text()

    # Typing coordinates moves the marker there (and zooms in: the 10 m detail level is loaded).
    page.locator("#latitude").fill("45.188")
    page.locator("#longitude").fill("5.7245")
    wait_level(page, sel, "10m")
    s = state(page, sel)
    assert float(s["latitude"]) == pytest.approx(45.188) and float(s["longitude"]) == pytest.approx(5.7245)
    assert "Coordinates typed in" in page.locator("#locator").inner_text()
    assert page.evaluate(CANVAS_COLOURS, sel) > 3
    page.wait_for_function("() => Number(document.querySelector('#place-map .map').dataset.cities) > 0")  # names shown
    assert_accessible(page, "volunteer page with the map and a typed place")

    # A click 60 px east of the marker picks a place a little east of it, at the same latitude.
    # The new place asks for the answer again (once), and the page stays where the volunteer is working: the
    # focus is not sent back up to the results.
    box = map_box(page, sel)
    mx, my = float(s["markerX"]), float(s["markerY"])
    with page.expect_response(lambda r: "/api/v1/identify" in r.url and r.status == 200):
        page.mouse.click(box["x"] + mx + 60, box["y"] + my)
    page.wait_for_load_state("networkidle")
    assert page.evaluate("document.activeElement.id") != "results-title"
    assert page.locator(f"{sel} .map-view").bounding_box()["y"] == pytest.approx(box["y"], abs=2)  # not scrolled
    lat, lon = fields(page)
    assert lat == pytest.approx(45.188, abs=0.01) and 5.7245 < lon < 5.7245 + 1
    s = state(page, sel)
    assert (float(s["latitude"]), float(s["longitude"])) == (pytest.approx(lat, abs=1e-6), pytest.approx(lon, abs=1e-6))
    assert float(s["precision"]) > 0  # what a click can aim at this zoom
    assert "Place picked on the map" in page.locator("#locator").inner_text()

    # Dragging the marker (by its head, 18 px above its point) moves the place south-west.
    box = map_box(page, sel)
    mx, my = float(s["markerX"]), float(s["markerY"])
    page.mouse.move(box["x"] + mx, box["y"] + my - 18)
    page.mouse.down()
    for step in range(1, 6):
        page.mouse.move(box["x"] + mx - 12 * step, box["y"] + my - 18 + 8 * step)
    page.mouse.up()
    dragged = fields(page)
    assert dragged[0] < lat and dragged[1] < lon
    s = state(page, sel)
    assert float(s["markerX"]) == pytest.approx(mx - 60, abs=1.5)
    assert float(s["markerY"]) == pytest.approx(my + 40, abs=1.5)

    # Dragging the map elsewhere pans it and leaves the place alone.
    box = map_box(page, sel)
    page.mouse.move(box["x"] + 40, box["y"] + box["height"] - 30)
    page.mouse.down()
    page.mouse.move(box["x"] + 90, box["y"] + box["height"] - 60, steps=4)
    page.mouse.up()
    assert fields(page) == dragged
    assert float(state(page, sel)["markerX"]) == pytest.approx(mx - 60 + 50, abs=1.5)

    # The keyboard: the map takes focus (visible ring), +/− zoom, arrows pan, Enter places the marker at the centre.
    page.locator("#longitude").focus()
    page.keyboard.press("Tab")  # the map comes right after the coordinate fields
    assert page.evaluate("document.activeElement.classList.contains('map-view')")
    assert page.eval_on_selector(f"{sel} .map-view", "(el) => getComputedStyle(el).outlineStyle") != "none"
    zoom = float(state(page, sel)["zoom"])
    page.keyboard.press("-")
    assert float(state(page, sel)["zoom"]) == pytest.approx(round(zoom) - 1)
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    centred = fields(page)
    assert centred != dragged and centred[1] > dragged[1]  # the view moved east before the marker was placed
    page.get_by_role("button", name="Zoom the map in").click()
    assert float(state(page, sel)["zoom"]) == pytest.approx(round(zoom))

    # The observation keeps the place as the fields show it, how it was given and its precision.
    body = submit(page, live_server)
    assert body["latitude"] == pytest.approx(centred[0], abs=1e-6)
    assert body["longitude"] == pytest.approx(centred[1], abs=1e-6)
    assert body["location_source"] == "map" and body["coordinate_precision_m"] > 0
    assert not outside, f"requests left the service: {outside}"
    # The map's data came gzipped.
    encoding = page.evaluate("async () => (await fetch('/static/map/world-110m.json')).headers.get('content-encoding')")
    assert encoding == "gzip"


@pytest.fixture
def located_page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A page whose device reports a position 35 m accurate (the page fixture's checks, with geolocation)."""
    context = browser.new_context(viewport={"width": 800, "height": 900}, permissions=["geolocation"],
                                  geolocation={"latitude": 48.8566, "longitude": 2.3522, "accuracy": 35})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, errors


def test_my_location_fills_the_fields_shows_its_accuracy_and_the_specialist_sees_the_place(live_server, located_page):
    page = located_page
    to_details(page, live_server)
    page.locator("#locate").click()
    page.get_by_text(re.compile(r"Position from your device \(±35 m\)")).wait_for()
    assert fields(page) == (pytest.approx(48.8566), pytest.approx(2.3522))
    sel = "#place-map"
    s = state(page, sel)
    assert s["precision"] == "35" and float(s["precisionPx"]) > 10  # the circle is drawn, zoomed to show it
    assert "±35 m" in page.locator(f"{sel} .map-readout").inner_text()
    wait_level(page, sel, "10m")
    body = submit(page, live_server)
    assert (body["latitude"], body["longitude"]) == (pytest.approx(48.8566), pytest.approx(2.3522))
    assert body["location_source"] == "gps" and body["coordinate_precision_m"] == 35

    # A second observation without any place.
    identify_photo(page)
    page.locator("#latitude").fill("")
    page.locator("#longitude").fill("")
    unplaced = submit(page, live_server)
    assert unplaced["latitude"] is None and unplaced["location_source"] is None

    # The specialist's page shows the place, read-only, with the precision circle; or says there is none.
    open_signed_in(page, live_server, "/expert", make_user(live_server, "eric", "expert"))
    page.locator("#item-title").wait_for()
    seen: set[int] = set()
    while True:
        current = int(re.search(r"\d+", page.locator("#item-title").inner_text()).group())  # type: ignore[union-attr]
        if current == body["id"]:
            wait_level(page, "#place-view", "10m")
            s = state(page, "#place-view")
            assert float(s["latitude"]) == pytest.approx(48.8566) and s["precision"] == "35"
            assert float(s["precisionPx"]) > 10
            assert page.evaluate(CANVAS_COLOURS, "#place-view") > 3
            label = page.locator("#place-view .map-view").get_attribute("aria-label")
            assert label == "Map of the observation's place"
            assert_accessible(page, "specialist page with the observation's place on the map")
            # read-only: a click does not move the place
            page.locator("#place-view .map-view").click(position={"x": 20, "y": 20})
            assert float(state(page, "#place-view")["latitude"]) == pytest.approx(48.8566)
        else:
            assert current == unplaced["id"]
            page.locator("#place-view").get_by_text("No place given.").wait_for()
            assert page.locator("#place-view .map-view").is_hidden()
        seen.add(current)
        if seen == {body["id"], unplaced["id"]}:
            break
        page.locator("#next").click()  # the queue's other observation
        page.wait_for_function("(id) => !document.querySelector('#item-title').textContent.includes(id)",
                               arg=str(current))
