"""A tour of every page in every state that matters, in one language: the set-up of the walk that runs
the accessibility checks and keeps the screenshots (test_page_tour.py; plain functions, not fixtures).

Each scene brings a page of the live service to one state through the page itself (no text is matched, so a
scene works in any language): the volunteer page empty and with the results of a real photo, the specialist
page signed out and with an observation of the queue, the admin page signed out and with its lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.frontend.browser_support import make_user, watch_errors

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LANGUAGES = {"en": "en-GB", "fr": "fr-FR"}
PHONE = {"width": 360, "height": 780}
DESKTOP = {"width": 1280, "height": 900}


@dataclass
class Cast:
    """The people of the tour and what they made: one observation waiting in the queue, one export job."""

    server: Any
    volunteer: str
    expert: str
    admin: str
    observation_id: int


def cast(server: Any) -> Cast:
    """Users with keys, an observation of a real photo in the queue and a queued export job."""
    volunteer = make_user(server, "vera", "volunteer")
    expert = make_user(server, "eric", "expert")
    admin = make_user(server, "ada", "admin")
    with (FIXTURES / "peacock.jpg").open("rb") as photo:
        r = httpx.post(f"{server.url}/api/v1/observations", headers={"Authorization": f"Bearer {volunteer}"},
                       files={"photos": ("peacock.jpg", photo, "image/jpeg")},
                       data={"latitude": "45.1", "longitude": "5.7", "observed_at": "2024-06-15T10:00:00Z",
                             "flower": "Knautia arvensis"}, timeout=30)
    assert r.status_code == 201, r.text
    r2 = httpx.post(f"{server.url}/api/v1/admin/exports", headers={"Authorization": f"Bearer {admin}"},
                    json={"kind": "csv"}, timeout=30)
    assert r2.status_code == 201, r2.text
    return Cast(server=server, volunteer=volunteer, expert=expert, admin=admin, observation_id=r.json()["id"])


def open_page(browser: Any, lang: str, viewport: dict[str, int]) -> Any:
    """A page in a fresh context whose browser speaks ``lang`` and has chosen it on the pages' switch.

    Console errors, uncaught exceptions and failed requests are collected in ``page.console_errors``."""
    context = browser.new_context(viewport=viewport, locale=LANGUAGES[lang])
    context.add_init_script(f"try {{ localStorage.setItem('pollinid.lang', '{lang}'); }} catch (e) {{}}")
    page = context.new_page()
    watch_errors(page)
    return page


def _go(page: Any, cast: Cast, path: str, key: str | None) -> None:
    """Open ``path`` signed in with ``key`` (the pages keep it in localStorage), or signed out."""
    # A blank page of the service's origin (answered by the browser itself), so that localStorage is set before
    # the page's own scripts run.
    page.route(cast.server.url + "/__blank", lambda route: route.fulfill(
        status=200, content_type="text/html", body="<!doctype html><title>blank</title><link rel=icon href='data:,'>"))
    page.goto(cast.server.url + "/__blank")
    if key:
        page.evaluate("k => localStorage.setItem('pollinid.apiKey', k)", key)
    else:
        page.evaluate("() => localStorage.removeItem('pollinid.apiKey')")
    page.goto(cast.server.url + path)
    page.wait_for_load_state("load")


def _settled(page: Any) -> None:
    """Wait until nothing on the page is still loading: parts that load when seen (reference photos) are
    scrolled into view first."""
    for handle in page.query_selector_all("[aria-busy='true']"):
        handle.scroll_into_view_if_needed()
    page.wait_for_function("() => !document.querySelector('[aria-busy=\"true\"]')")
    page.wait_for_load_state("networkidle")
    page.evaluate("window.scrollTo(0, 0)")


def volunteer_empty(page: Any, cast: Cast) -> None:
    _go(page, cast, "/", None)
    page.locator("#mine tr").first.wait_for()


def volunteer_results(page: Any, cast: Cast) -> None:
    """Signed in, a real photo identified: the answer, the candidates and the where-and-when form."""
    _go(page, cast, "/", cast.volunteer)
    page.locator("#mine .status").first.wait_for()
    page.locator("#photos").set_input_files(str(FIXTURES / "red_admiral.jpg"))
    page.locator("#identify").click()
    page.locator("#cards .card").first.wait_for()
    page.locator("#details-panel:not(.hidden)").wait_for()
    _settled(page)


def expert_signed_out(page: Any, cast: Cast) -> None:
    _go(page, cast, "/expert", None)
    page.locator("#signin-status:not(:empty)").wait_for()


def expert_item(page: Any, cast: Cast) -> None:
    """Signed in as a specialist, the queued observation shown with its photo, model answer and history."""
    _go(page, cast, "/expert", cast.expert)
    page.locator("#item:not(.hidden)").wait_for()
    page.locator("#photo[src^='blob:']").wait_for()
    page.locator("#history tr").first.wait_for()
    _settled(page)


def expert_taxon_list(page: Any, cast: Cast) -> None:
    """The specialist types a name: the taxon combobox shows its options, one of them active."""
    expert_item(page, cast)
    page.locator("#taxon").fill("Vanes")
    page.locator("#taxon-list:not(.hidden) [role=option]").first.wait_for()
    page.locator("#taxon").press("ArrowDown")
    page.locator("#taxon-list [aria-selected=true]").wait_for()


def admin_signed_out(page: Any, cast: Cast) -> None:
    _go(page, cast, "/admin", None)
    page.locator("#signin-status:not(:empty)").wait_for()


def admin_lists(page: Any, cast: Cast) -> None:
    """Signed in as an admin: model versions, the queued export job with its detail, users and keys."""
    _go(page, cast, "/admin", cast.admin)
    page.locator("#models tr[data-version]").first.wait_for()
    page.locator("#jobs tr[data-job]").first.wait_for()
    page.locator("#job-detail:not(.hidden)").wait_for()
    page.locator("#users tr th").first.wait_for()


@dataclass(frozen=True)
class Scene:
    name: str
    viewport: dict[str, int]
    reach: Callable[[Any, Cast], None]


SCENES = (
    Scene("volunteer-empty", PHONE, volunteer_empty),
    Scene("volunteer-results", PHONE, volunteer_results),
    Scene("expert-signed-out", DESKTOP, expert_signed_out),
    Scene("expert-item", DESKTOP, expert_item),
    Scene("expert-taxon-list", DESKTOP, expert_taxon_list),
    Scene("admin-signed-out", DESKTOP, admin_signed_out),
    Scene("admin-lists", DESKTOP, admin_lists),
    Scene("admin-lists-phone", PHONE, admin_lists),  # wide tables scroll in their boxes
)


def tour(browser: Any, cast: Cast, lang: str, only: set[str] | None = None) -> Iterator[tuple[Scene, Any]]:
    """Each scene (or those named in ``only``) in ``lang``, reached on a page of that language; the page's errors
    fail the tour."""
    pages: dict[tuple[int, int], Any] = {}
    try:
        for scene in SCENES:
            if only is not None and scene.name not in only:
                continue
            size = (scene.viewport["width"], scene.viewport["height"])
            if size not in pages:
                pages[size] = open_page(browser, lang, scene.viewport)
            page = pages[size]
            scene.reach(page, cast)
            shown = page.evaluate("document.documentElement.lang")
            assert shown == lang, f"{scene.name}: the page is in {shown!r}, not {lang!r}"
            yield scene, page
            assert not page.console_errors, f"{scene.name} ({lang}): errors in the browser:\n" + \
                "\n".join(page.console_errors)
    finally:
        for page in pages.values():
            page.context.close()
