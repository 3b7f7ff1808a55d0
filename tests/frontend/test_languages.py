"""Two languages, then more (issue 15 item 1): the pages in French and English, in Chromium.

A French browser gets French pages, with the taxa's French names and the committed answer worded in French;
the switch in the header changes the language and is remembered; a browser language without a catalogue gets
English; dates and percentages follow the language; no English word is left on a French page, and every key the
pages use is in both catalogues.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from service.core.modelcard import LabelTaxon, ModelCard
from tests.frontend.answer_model import write_answer_model, write_photo
from tests.frontend.browser_support import browser_page, make_user

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = ROOT / "frontend"
CATALOGUES = FRONTEND / "static" / "i18n"
PAGES = {"/": "volunteer", "/expert": "expert", "/admin": "admin"}
FRENCH_NAMES = {"peacock": "Paon-du-jour", "bombus": "Bourdon", "no_insect": "Pas d'insecte (fleur ou plante seule)"}
# Words that only English has: none of them may be seen (text, placeholders, labels) on a French page.
ENGLISH_ONLY = re.compile(r"\b(the|and|your|with|which|sign|signed|submit|refresh|identify|validate|next|history|"
                          r"retrain|users|keys|jobs|start|take|choose|insect|queue|model|answer|flower|where|when|"
                          r"status|comment|reason|loading|photos of|paste|agree|cannot)\b", re.IGNORECASE)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """The colour-answer model, with French names for three of its four labels (the wasp has none)."""
    root = tmp_path / "models"
    folder = write_answer_model(root)
    card = ModelCard.load(folder)
    for label, name in FRENCH_NAMES.items():
        card.taxonomy[label] = LabelTaxon.model_validate({**card.taxonomy[label].model_dump(), "common_name_fr": name})
    card.save(folder)
    return root


def _visible_words(page: Any) -> str:
    """The page's visible text and the words of its placeholders, labels, titles and alternative texts."""
    text: str = page.evaluate("""() => {
      const parts = [document.title, document.body.innerText];
      for (const node of document.querySelectorAll("[placeholder],[aria-label],[alt],[title]")) {
        if (node.closest(".hidden")) continue;
        for (const attr of ["placeholder", "aria-label", "alt", "title"]) {
          if (node.hasAttribute(attr)) parts.push(node.getAttribute(attr));
        }
      }
      return parts.join("\\n");
    }""")
    return text.replace("pollinid", "")


def _wait_ready(page: Any) -> None:
    page.locator("#language option").nth(1).wait_for(state="attached")


@pytest.mark.parametrize("path", list(PAGES))
def test_a_french_browser_gets_french_pages(live_server, browser, request, path):
    with browser_page(browser, request, "fr-FR") as page:
        page.goto(live_server.url + path)
        _wait_ready(page)
        assert page.evaluate("document.documentElement.lang") == "fr"
        assert page.locator("#language").input_value() == "fr"
        assert page.get_by_label("Langue").is_visible()
        assert "pollinid" in page.title() and page.title() != {"/": "pollinid — which insect is this?",
                                                               "/expert": "pollinid — validation queue",
                                                               "/admin": "pollinid — admin"}[path]
        words = _visible_words(page)
        left = sorted(set(m.group(0).lower() for m in ENGLISH_ONLY.finditer(words)))
        assert not left, f"English words on the French page {path}: {left}\n{words}"
        assert page.get_by_role("button", name="Se connecter").is_visible()


def test_the_volunteer_flow_in_french(live_server, browser, request, tmp_path):
    key = make_user(live_server, "vera", "volunteer")
    with browser_page(browser, request, "fr-FR") as page:
        page.goto(live_server.url + "/")
        page.get_by_label("Clé d'API").fill(key)
        page.get_by_role("button", name="Se connecter").click()
        page.get_by_text("Connecté avec une clé.").wait_for()
        expected = {
            "species": ("Paon-du-jour (Aglais io)", "Réponse au rang : espèce"),
            "genus": ("Bourdon (genre Bombus) : l'espèce demande l'avis d'un spécialiste.", "Réponse au rang : genre"),
            # No French name for the wasp: its scientific name, never the English one.
            "family": ("Famille Vespidae : l'espèce demande l'avis d'un spécialiste.", "Réponse au rang : famille"),
            "no_insect": ("Aucun insecte trouvé sur cette photo : approchez-vous.", "Réponse : pas d'insecte"),
        }
        for kind, (sentence, detail) in expected.items():
            page.goto(live_server.url + "/")
            page.get_by_label("Prenez ou choisissez de 1 à 5 photos").set_input_files(
                str(write_photo(tmp_path / f"{kind}.jpg", kind)))
            page.get_by_role("button", name="Identifier", exact=True).click()
            page.locator(".card").first.wait_for()
            assert page.locator("#rollup").inner_text() == sentence, kind
            shown = page.locator("#answer-detail").inner_text()
            assert shown.startswith(detail), (kind, shown)
            # Percentages the French way: a (narrow) no-break space before the sign.
            assert re.search(r"probabilité \d+[\u202f\u00a0]%", shown), shown
            assert re.search(r"score \d+[\u202f\u00a0]%", page.locator(".card").first.inner_text())
        assert "Wasp" not in page.locator("#cards").inner_text()
        assert page.locator(".card").first.inner_text().startswith("1. Pas d'insecte (fleur ou plante seule)")
        # Send the last one, then the observation is listed with a French date and status.
        page.get_by_role("button", name="Envoyer l'observation").click()
        page.get_by_text(re.compile(r"Enregistrée comme observation \d+")).wait_for()
        row = page.locator("#mine tr").first
        row.get_by_text("à identifier").wait_for()
        when = row.locator("td").first.inner_text()
        assert re.search(r"\d{1,2} [a-zéû]+\.? \d{4}", when), when  # e.g. "3 déc. 2026, 06:12"
        words = _visible_words(page)
        assert not sorted(set(m.group(0).lower() for m in ENGLISH_ONLY.finditer(words))), words


def test_the_switch_changes_the_language_and_is_remembered(live_server, browser, request):
    with browser_page(browser, request, "en-US") as page:
        page.goto(live_server.url + "/expert")
        _wait_ready(page)
        assert page.evaluate("document.documentElement.lang") == "en"
        assert page.get_by_role("heading", name="Validation queue").is_visible()
        with page.expect_navigation():
            page.get_by_label("Language").select_option("fr")
        _wait_ready(page)
        assert page.get_by_role("heading", name="File de validation").is_visible()
        page.reload()
        _wait_ready(page)
        assert page.evaluate("document.documentElement.lang") == "fr"
        # Remembered on every page of the site, not only this one.
        page.goto(live_server.url + "/admin")
        _wait_ready(page)
        assert page.get_by_role("heading", name="Versions du modèle").is_visible()
        with page.expect_navigation():
            page.get_by_label("Langue").select_option("en")
        _wait_ready(page)
        assert page.get_by_role("heading", name="Model versions").is_visible()


@pytest.mark.parametrize("locale", ["de-DE", "ja-JP"])
def test_a_browser_language_without_a_catalogue_gets_english(live_server, browser, request, locale):
    with browser_page(browser, request, locale) as page:
        page.goto(live_server.url + "/")
        _wait_ready(page)
        assert page.evaluate("navigator.language").split("-")[0] == locale.split("-")[0]
        assert page.evaluate("document.documentElement.lang") == "en"
        assert page.get_by_role("heading", name="1. Photos of one insect").is_visible()
        assert page.title() == "pollinid — which insect is this?"


def test_the_default_browser_context_is_english(live_server, page):
    """The other browser tests assert English words: their context (no locale given) must be English."""
    page.goto(live_server.url + "/")
    _wait_ready(page)
    assert page.evaluate("document.documentElement.lang") == "en"


@pytest.mark.parametrize(("locale", "percent", "month"), [("fr-FR", "12\u202f%", "juin"), ("en-US", "12%", "Jun")])
def test_dates_and_numbers_follow_the_language(live_server, browser, request, locale, percent, month):
    with browser_page(browser, request, locale) as page:
        page.goto(live_server.url + "/")
        _wait_ready(page)
        got = page.evaluate("""async () => {
          const m = await import("/static/i18n.js");
          return { percent: m.formatPercent(0.1234), date: m.formatDate("2024-06-15T10:00:00Z"),
                   number: m.formatNumber(1234.5), month: m.monthName(6) };
        }""")
        assert got["percent"].replace("\u00a0", "\u202f") == percent
        assert month in got["date"], got
        assert got["number"] == ("1\u202f234,5" if locale == "fr-FR" else "1,234.5")


def test_api_errors_are_shown_in_the_page_language(live_server, browser, request):
    with browser_page(browser, request, "fr-FR") as page:
        page.goto(live_server.url + "/expert")
        _wait_ready(page)
        page.get_by_label("Clé d'API").fill("not-a-real-key")
        page.get_by_role("button", name="Se connecter").click()
        page.locator("#queue-error").get_by_text("Cette clé n'est pas valide : connectez-vous avec une clé valide.") \
            .wait_for()
        page.console_errors.clear()  # the 401 is what this test asks for


# -- the catalogues (no browser needed) -------------------------------------------------------------------------

def _catalogue(code: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CATALOGUES / f"{code}.json").read_text(encoding="utf-8"))
    return data


def test_every_language_has_the_same_keys_as_english():
    languages = sorted(path.stem for path in CATALOGUES.glob("*.json"))
    assert set(languages) >= {"en", "fr"}
    english = _catalogue("en")
    for code in languages:
        other = _catalogue(code)
        assert set(other) == set(english), (code, sorted(set(english) ^ set(other)))
        for key, value in english.items():
            if isinstance(value, dict):  # plural forms
                assert isinstance(other[key], dict) and "other" in other[key], (code, key)
            placeholders = set(re.findall(r"\{(\w+)\}", json.dumps(value)))
            assert set(re.findall(r"\{(\w+)\}", json.dumps(other[key]))) == placeholders, (code, key)


def test_every_key_the_pages_use_is_in_the_catalogues():
    used: set[str] = set()
    for html in FRONTEND.glob("*.html"):
        text = html.read_text(encoding="utf-8")
        used |= set(re.findall(r'data-i18n="([^"]+)"', text))
        for spec in re.findall(r'data-i18n-attr="([^"]+)"', text):
            used |= {pair.split(":", 1)[1].strip() for pair in spec.split(";") if ":" in pair}
    for script in (FRONTEND / "static").glob("*.js"):
        used |= set(re.findall(r'\bt\(\s*"([A-Za-z0-9_.]+)"', script.read_text(encoding="utf-8")))
    english, french = _catalogue("en"), _catalogue("fr")
    assert len(used) > 150
    assert not sorted(used - set(english)), "keys missing from en.json"
    assert not sorted(used - set(french)), "keys missing from fr.json"


def test_the_french_catalogue_is_french():
    """No value copied over from English untranslated (beyond words both languages share)."""
    english, french = _catalogue("en"), _catalogue("fr")
    shared_words = {"Pages", "Latitude", "Longitude", "Session", "Taxon", "Photos", "Score", "score",
                    "Observation", "Photo", "Version", "Actions", "Top", "ECE", "zoom", "candidate", "active",
                    "Exports", "architecture"}
    same = [k for k, v in english.items() if isinstance(v, str) and not k.startswith("_") and v == french[k]
            and set(re.findall(r"[A-Za-z]{3,}", re.sub(r"\{\w+\}", "", v))) - shared_words]
    assert not same, same
