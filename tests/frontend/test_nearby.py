"""Where and when on the volunteer page, in Chromium: the place and date entered go with the photos, the switch
"Use where and when" (on by default, remembered) changes the order and the labels, both scores are shown, and
the committed answer does not move. In English and in French; SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.nearby.occurrences import OccurrenceLimits, import_archive
from tests.frontend.browser_support import make_user
from tests.helpers import photo_bytes
from tests.service.nearby.archives import dwca, occurrence_row

pytestmark = pytest.mark.browser

PURPLE = (150, 30, 140)  # the tiny model: red admiral first, common blue a close second


def _import_blues(server: Any, tmp_path: Path) -> None:
    rows = [occurrence_row("Polyommatus icarus (Rottemburg, 1775)", 45.0 + (i % 10) * 0.02, 5.0, "2022-06-10",
                           genus="Polyommatus", gbif_id=i) for i in range(12)]
    archive = tmp_path / "blues.zip"
    archive.write_bytes(dwca(rows))
    state = server.app.state
    with state.sessionmaker() as session:
        import_archive(session, archive, file_name=archive.name, limits=OccurrenceLimits.from_settings(state.settings))


def _cards(page: Any) -> list[str]:
    return [c.get_attribute("data-label") for c in page.locator("#cards .card").all()]


def _enter_place(page: Any) -> None:
    # Date first, then the place: the re-ask fires once, when the place is complete.
    page.locator("#observed-at").fill("2024-06-12T10:00")
    page.locator("#latitude").fill("45")
    page.locator("#latitude").press("Tab")
    page.locator("#longitude").fill("5")
    page.locator("#longitude").press("Tab")


@pytest.mark.parametrize(("language", "seen", "not_seen", "with_text"), [
    ("en", "Seen nearby in June (12 records)", "Not recorded nearby", "with where and when"),
    ("fr", "Observé à proximité en juin (données : 12)", "Jamais signalé à proximité", "avec lieu et date"),
])
def test_switch_changes_order_labels_and_scores(live_server, page, tmp_path, language, seen, not_seen,
                                                with_text) -> None:
    _import_blues(live_server, tmp_path)
    photo = tmp_path / "purple.jpg"
    photo.write_bytes(photo_bytes(PURPLE))
    page.add_init_script(f"localStorage.setItem('pollinid.lang', '{language}')")
    page.goto(live_server.url + "/")
    page.locator("#photos").set_input_files(str(photo))
    page.locator("#identify").click()
    page.locator("#cards .card").first.wait_for()
    # No place yet: the model's order, and the status asks for the place.
    assert _cards(page)[:2] == ["red_admiral", "common_blue"]
    assert page.locator("#nearby-switch").is_checked()  # on by default
    assert page.locator(".card .nearby").count() == 0
    rollup = page.locator("#rollup").inner_text()

    with page.expect_response(lambda r: r.url.endswith("/api/v1/identify?top_k=5") and r.status == 200):
        _enter_place(page)
    page.locator("#cards .card .nearby").first.wait_for()
    assert _cards(page)[0] == "common_blue"
    blue = page.locator('#cards .card[data-label="common_blue"]')
    red = page.locator('#cards .card[data-label="red_admiral"]')
    assert seen in blue.inner_text()
    assert not_seen in red.inner_text()
    assert with_text in blue.inner_text()  # both scores
    assert page.locator("#rollup").inner_text() == rollup  # the committed answer stays the model's

    # Off: the model's order, no nearby labels, the model's score alone; no new request needed.
    page.locator("#nearby-switch").uncheck()
    assert _cards(page)[:2] == ["red_admiral", "common_blue"]
    assert page.locator(".card .nearby").count() == 0
    assert with_text not in page.locator("#cards").inner_text()
    assert page.locator("#rollup").inner_text() == rollup
    page.locator("#nearby-switch").check()
    assert _cards(page)[0] == "common_blue"

    # Remembered: off after a reload, and the next answer is asked without the evidence.
    page.locator("#nearby-switch").uncheck()
    page.reload()
    page.locator("#photos").set_input_files(str(photo))
    page.locator("#identify").click()
    page.locator("#cards .card").first.wait_for()
    assert page.locator("#nearby-switch").is_checked() is False
    assert _cards(page)[:2] == ["red_admiral", "common_blue"]


def test_a_reask_still_on_its_way_when_the_observation_is_sent_is_dropped(live_server, page, tmp_path) -> None:
    """The place typed just before "Save": the re-ask it starts must not bring the saved photos' answer back."""
    photo = tmp_path / "purple.jpg"
    photo.write_bytes(photo_bytes(PURPLE))
    page.goto(live_server.url + "/")
    page.evaluate("(key) => localStorage.setItem('pollinid.apiKey', key)", make_user(live_server, "rita", "volunteer"))
    page.reload()
    page.locator("#photos").set_input_files(str(photo))
    page.locator("#identify").click()
    page.locator("#cards .card").first.wait_for()

    held: list[Any] = []
    page.route("**/api/v1/identify*", lambda route: held.append(route))
    _enter_place(page)
    page.wait_for_function("() => document.querySelector('#identify').disabled")  # the re-ask is on its way
    assert page.evaluate("document.activeElement.id") != "results-title"  # and leaves the focus alone
    page.locator("#submit").click()
    page.locator("#saved").wait_for()
    assert page.locator("#results-panel").is_hidden()
    with page.expect_response(lambda r: "/api/v1/identify" in r.url) as answered:
        for route in held:
            route.continue_()
    assert answered.value.ok
    page.unroute("**/api/v1/identify*")
    page.wait_for_timeout(200)  # the late answer has been handled (or dropped)
    assert page.locator("#results-panel").is_hidden()
    assert page.locator("#saved").is_visible()
    assert page.locator("#identify").is_disabled()  # no photos chosen: nothing to identify
    assert page.locator("#identify-status").inner_text() == ""
