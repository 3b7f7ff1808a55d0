"""Keyboard use in Chromium: the volunteer flow done with the keyboard alone, and a visible focus ring on every
control that Tab reaches, on every page.

The keyboard flow never clicks: Tab, Shift+Tab, Enter, Space and the arrow keys only. The photo is chosen by
pressing Space on the focused file input, which opens the browser's file chooser; Playwright answers that chooser
(its ``filechooser`` event) as a person picks a file in the dialog.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.frontend import tour
from tests.frontend.browser_support import make_user

pytestmark = pytest.mark.browser


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """The pages do not depend on the database: one run, on SQLite."""
    return sqlite_url


def _focused(page: Any, selector: str) -> bool:
    return bool(page.evaluate("s => !!document.activeElement && document.activeElement.matches(s)", selector))


def _tab_to(page: Any, selector: str, *, back: bool = False, limit: int = 80) -> int:
    """Press Tab (or Shift+Tab) until the focused element matches ``selector``; return how many presses."""
    key = "Shift+Tab" if back else "Tab"
    for presses in range(1, limit + 1):
        page.keyboard.press(key)
        if _focused(page, selector):
            return presses
    raise AssertionError(f"{selector} is not reached with {key} ({limit} presses)")


def test_volunteer_records_an_observation_with_the_keyboard_alone(live_server, page) -> None:
    key = make_user(live_server, "kim", "volunteer")
    # Chromium hands file choosers to Playwright only once a listener exists; one added by expect_file_chooser
    # at the key press itself can come too late (the dialog then opens unseen), so listen from the start.
    page.on("filechooser", lambda chooser: None)
    page.goto(live_server.url + "/")
    page.locator("#signin-status:not(:empty)").wait_for()  # the page's scripts have run

    # Sign in: Tab to the key field, type it, Enter submits the form.
    _tab_to(page, "#key")
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    page.locator("#mine .muted, #mine tr td").first.wait_for()
    assert page.evaluate("localStorage.getItem('pollinid.apiKey')") == key

    # Choose a photo: Space on the focused file input opens the file chooser.
    _tab_to(page, "#photos")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(str(tour.FIXTURES / "red_admiral.jpg"))
    page.locator("#previews img").wait_for()

    # Identify: focus lands on the results, so the next Tab reaches the candidates.
    _tab_to(page, "#identify")
    with page.expect_response(lambda r: "/api/v1/identify" in r.url) as answered:
        page.keyboard.press("Enter")
    names = {r["taxon"]["label"]: r["taxon"]["scientific_name"] for r in answered.value.json()["results"]}
    page.locator("#cards .card").first.wait_for()
    page.wait_for_function("document.activeElement && document.activeElement.id === 'results-title'")
    labels = page.locator("#cards .card").evaluate_all("cards => cards.map(c => c.dataset.label)")
    assert len(labels) == 3, labels

    # The candidates are one radio group: Tab enters it, the arrow keys pick, Space picks the focused one.
    # (From the results' heading, a few Tabs at most: the where-and-when switch may come first.)
    _tab_to(page, "input[name=pick]", limit=3)
    page.keyboard.press("Space")
    assert page.locator(".card.selected").get_attribute("data-label") == labels[0]
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert page.locator(".card.selected").get_attribute("data-label") == labels[2]
    page.keyboard.press("ArrowUp")
    assert page.locator(".card.selected").count() == 1
    picked = page.locator(".card.selected").get_attribute("data-label")
    assert picked == labels[1]
    assert _focused(page, "#pick-1")

    # Where and when: the coordinate fields are the keyboard path (a typo corrected with Shift+Tab).
    _tab_to(page, "#flower")
    page.keyboard.type("Knautia arvensis")
    _tab_to(page, "#latitude")
    page.keyboard.type("45.9")
    _tab_to(page, "#longitude")
    page.keyboard.type("5.7")
    _tab_to(page, "#latitude", back=True)
    page.keyboard.press("Control+A")
    page.keyboard.type("45.1")
    assert page.locator("#latitude").input_value() == "45.1"
    assert page.locator("#longitude").input_value() == "5.7"

    # Submit: Enter on the focused button; focus goes back to the photos for the next insect.
    _tab_to(page, "#submit")
    page.keyboard.press("Enter")
    page.locator("#saved:not(.hidden)").wait_for()
    page.wait_for_function("document.activeElement && document.activeElement.id === 'photos'")

    # The service has the observation and the volunteer's pick.
    headers = {"Authorization": f"Bearer {key}"}
    observations = httpx.get(f"{live_server.url}/api/v1/observations", headers=headers, timeout=30).json()["data"]
    assert len(observations) == 1
    obs = observations[0]
    assert (obs["latitude"], obs["longitude"], obs["flower_text"]) == (45.1, 5.7, "Knautia arvensis")
    ids = httpx.get(f"{live_server.url}/api/v1/observations/{obs['id']}/identifications", headers=headers,
                    timeout=30).json()["data"]
    assert [(i["kind"], i["taxon"]["scientific_name"]) for i in ids] == [("propose", names[picked])]


# -- visible focus ---------------------------------------------------------------------------------------

_FOCUS_STYLE = """() => {
  const e = document.activeElement;
  if (!e || e === document.body) return null;
  // Seen already: a control with parts Tab goes through (a date field), or the round is over (the first one).
  if (e.hasAttribute("data-focus-seen")) return { again: true, round: e.hasAttribute("data-focus-first") };
  if (!document.querySelector("[data-focus-first]")) e.setAttribute("data-focus-first", "");
  e.setAttribute("data-focus-seen", "");
  const style = (node) => { const s = getComputedStyle(node);
    return { outline: `${s.outlineStyle} ${s.outlineWidth} ${s.outlineColor}`, outlineStyle: s.outlineStyle,
             outlineWidth: parseFloat(s.outlineWidth), outlineColor: s.outlineColor, shadow: s.boxShadow }; };
  // The colour the ring is drawn on: the first ancestor with an opaque background.
  let back = "rgb(255, 255, 255)";
  for (let n = e.parentElement; n; n = n.parentElement) {
    const bg = getComputedStyle(n).backgroundColor;
    if (bg && bg !== "transparent" && !bg.startsWith("rgba(0, 0, 0, 0)")) { back = bg; break; }
  }
  const focused = style(e);
  // Named by its id, else by its tag, class, name and the id of the part of the page it is in.
  const within = e.parentElement && e.parentElement.closest("[id]");
  const name = e.id ? `#${e.id}` : `${e.tagName.toLowerCase()}${e.className ? "." + e.className : ""}` +
    `[${e.getAttribute("aria-label") || e.textContent.trim().slice(0, 40)}]` + (within ? ` in #${within.id}` : "");
  e.blur();
  const blurred = style(e);
  e.focus();  // back where it was, so that the next Tab goes on from here
  return { again: false, name, focused, blurred, back };
}"""


def _rgb(css: str) -> tuple[float, float, float]:
    values = [float(v) for v in re.findall(r"[\d.]+", css)[:3]]
    return values[0], values[1], values[2]


def _contrast(a: str, b: str) -> float:
    def luminance(css: str) -> float:
        c = [v / 255 for v in _rgb(css)]
        c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _check_focus_ring(page: Any, where: str) -> list[str]:
    """Tab through every control of the page; each must show an outline of 2 px or more that it has only when
    focused, with 3:1 contrast against what is around it (WCAG 2.4.7, 1.4.11). Returns the controls seen."""
    seen: list[str] = []
    problems: list[str] = []
    outside = 0
    for _ in range(200):  # from wherever focus is, round the page once (the browser's own UI counts as outside)
        page.keyboard.press("Tab")
        info = page.evaluate(_FOCUS_STYLE)
        if info is None:
            outside += 1
            if outside > 3:
                break
            continue
        if info["again"]:
            if info["round"]:
                break
            continue
        seen.append(info["name"])
        f, b = info["focused"], info["blurred"]
        if f["outlineStyle"] in ("none", "hidden") or f["outlineWidth"] < 2:
            problems.append(f"{info['name']}: no focus outline ({f['outline']})")
        elif (f["outline"], f["shadow"]) == (b["outline"], b["shadow"]):
            problems.append(f"{info['name']}: looks the same focused and not ({f['outline']})")
        elif _contrast(f["outlineColor"], info["back"]) < 3:
            problems.append(f"{info['name']}: ring {f['outlineColor']} on {info['back']} "
                            f"({_contrast(f['outlineColor'], info['back']):.2f}:1 < 3:1)")
    assert len(seen) >= 5, f"{where}: Tab reached only {seen}"
    assert not problems, f"{where}: focus not visible:\n" + "\n".join(problems)
    return seen


def test_every_control_shows_its_focus(live_server, browser) -> None:
    cast = tour.cast(live_server)
    wanted = {"volunteer-results", "expert-item", "admin-lists", "admin-lists-phone"}
    reached: dict[str, list[str]] = {}
    for scene, page in tour.tour(browser, cast, "en", only=wanted):
        reached[scene.name] = _check_focus_ring(page, scene.name)
    assert set(reached) == wanted
    # The controls that matter are among them: the candidates, the viewer and a row's actions.
    assert "#pick-0" in reached["volunteer-results"] and "#submit" in reached["volunteer-results"]
    assert "#viewer" in reached["expert-item"] and "#agree" in reached["expert-item"]
    assert any(n.endswith(" in #models") for n in reached["admin-lists"]), reached["admin-lists"]
    assert any(n.endswith(" in #users") for n in reached["admin-lists"]), reached["admin-lists"]
    # On a phone the wide tables scroll in boxes that Tab reaches (to scroll them with the arrow keys).
    assert any(n.startswith("div[") for n in reached["admin-lists-phone"]), reached["admin-lists-phone"]
