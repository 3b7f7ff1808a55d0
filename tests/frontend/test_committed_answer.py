"""The committed answer in plain words (issue 11 item 5), on the volunteer and specialist pages, in Chromium.

The real service answers with a tiny real ONNX model (tests/frontend/answer_model.py) whose answer depends on
the photo's colour: a species, a genus, a family, "no insect", "an insect, not placed", and nothing at all.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.frontend.answer_model import write_answer_model, write_photo
from tests.frontend.browser_support import make_user, sign_in

pytestmark = pytest.mark.browser

# kind of answer -> (words the answer box shows, the name in italics or None, data-kind)
EXPECTED = {
    "species": ("Peacock (Aglais io)", "Aglais io", "taxon"),
    "genus": ("Bumblebee (genus Bombus)", "Bombus", "taxon"),
    "family": ("Wasp (family Vespidae): the species needs an expert", None, "taxon"),
    "no_insect": ("No insect found in this photo: try closer", None, "no_insect"),
    "insect": ("An insect we cannot place yet", None, "insect"),
    "none": ("Not sure", None, "none"),
}


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """Overrides the shared fixture: the models folder holds only the colour-answer model."""
    root = tmp_path / "models"
    write_answer_model(root)
    return root


def _identify(page, url: str, photo: Path) -> None:
    page.goto(url + "/")
    page.get_by_label("Take or choose 1 to 5 photos").set_input_files(str(photo))
    page.get_by_role("button", name="Identify").click()
    page.locator(".card").first.wait_for()


def test_volunteer_page_shows_each_kind_of_answer_in_words(live_server, page, tmp_path):
    key = make_user(live_server, "vera", "volunteer")
    page.goto(live_server.url + "/")
    sign_in(page, key)
    for kind, (words, italic, data_kind) in EXPECTED.items():
        _identify(page, live_server.url, write_photo(tmp_path / f"{kind}.jpg", kind))
        answer = page.locator("#rollup")
        text = answer.inner_text().strip()
        assert words in text, (kind, text)
        assert answer.get_attribute("data-kind") == data_kind, kind
        assert page.locator("#answer").is_visible()
        # Scientific names in italics at genus rank and below; none for a family or for the other answers.
        italics = answer.locator("i").all_inner_texts()
        assert italics == ([italic] if italic else []), (kind, italics)
        # The answer sits above the candidates, which stay listed as candidates with their scores.
        assert answer.bounding_box()["y"] < page.locator(".card").first.bounding_box()["y"], kind
        assert page.get_by_role("heading", name="Candidates the model considered").is_visible()
        assert page.locator(".card").count() == 4, kind
        assert re.search(r"score \d+%", page.locator(".card").first.inner_text()), kind
        detail = page.locator("#answer-detail").inner_text()
        if kind in ("species", "genus", "family"):
            assert f"Answer at {kind} rank" in detail, (kind, detail)
    # "No insect" is listed by its words, not as a taxon name in italics.
    _identify(page, live_server.url, write_photo(tmp_path / "black.jpg", "no_insect"))
    assert page.locator(".card").first.inner_text().startswith("1. No insect (flower or plant only)")


def test_older_answers_are_worded_on_the_page_and_never_parsed_as_html(live_server, page):
    """A roll-up without ``answer``/``kind`` (stored before the service wrote them) gets the same words."""
    page.goto(live_server.url + "/")
    got = page.evaluate("""async () => {
      const m = await import("/static/answer.js");
      const show = (rollup) => {
        const p = document.createElement("p");
        m.renderAnswer(p, rollup);
        return { text: p.textContent, italics: [...p.querySelectorAll("i")].map((i) => i.textContent),
                 elements: p.querySelectorAll("*").length - p.querySelectorAll("i").length, kind: p.dataset.kind };
      };
      return {
        species: show({ taxon: { scientific_name: "Aglais io", common_name: "Peacock", rank: "species" },
                        rank: "species", score: 0.97 }),
        genus: show({ taxon: { scientific_name: "Bombus", common_name: "Bumblebee", rank: "genus" },
                      rank: "genus", score: 0.93 }),
        family: show({ taxon: { scientific_name: "Vespidae", common_name: "Wasp", rank: "family" },
                       rank: "family", score: 0.95 }),
        no_insect: show({ taxon: { scientific_name: "no_insect", label: "no_insect", rank: "none" },
                          rank: "none", score: 0.99 }),
        insect: show({ taxon: { scientific_name: "Insecta", rank: "class" }, rank: "class", score: 0.9 }),
        none: show(null),
        hostile: show({ taxon: { scientific_name: "<img src=x onerror=alert(1)>", common_name: "<b>bold</b>",
                                 rank: "genus" }, rank: "genus", score: 0.9,
                        answer: "<b>bold</b> (genus <img src=x onerror=alert(1)>): the species needs an expert." }),
      };
    }""")
    assert got["species"] == {"text": "Peacock (Aglais io)", "italics": ["Aglais io"], "elements": 0, "kind": "taxon"}
    assert got["genus"]["text"] == "Bumblebee (genus Bombus): the species needs an expert."
    assert got["genus"]["italics"] == ["Bombus"]
    assert got["family"]["text"] == "Wasp (family Vespidae): the species needs an expert."
    assert got["family"]["italics"] == []
    assert got["no_insect"]["text"] == "No insect found in this photo: try closer."
    assert got["no_insect"]["kind"] == "no_insect"
    assert got["insect"]["text"].startswith("An insect we cannot place yet")
    assert got["insect"]["kind"] == "insect"
    assert got["none"]["text"].startswith("Not sure")
    assert got["none"]["kind"] == "none"
    hostile = got["hostile"]
    assert hostile["text"].startswith("<b>bold</b> (genus <img src=x onerror=alert(1)>)")
    assert hostile["elements"] == 0 and hostile["italics"] == ["<img src=x onerror=alert(1)>"]


def test_specialist_page_shows_the_committed_answer_and_its_rank(live_server, page, tmp_path):
    volunteer = make_user(live_server, "vera", "volunteer")
    expert = make_user(live_server, "eric", "expert")
    page.goto(live_server.url + "/")
    sign_in(page, volunteer)
    _identify(page, live_server.url, write_photo(tmp_path / "green.jpg", "genus"))
    page.get_by_role("button", name="Submit observation").click()
    page.get_by_text(re.compile(r"Saved as observation \d+")).wait_for()
    # The volunteer's own list words the model's answer the same way.
    page.locator("#mine").get_by_text(re.compile(r"Bumblebee \(genus Bombus\).*\(model\)")).wait_for()

    page.goto(live_server.url + "/expert")
    sign_in(page, expert)
    page.get_by_role("heading", name=re.compile(r"Observation \d+")).wait_for()
    answer = page.locator("#model-rollup")
    assert "Bumblebee (genus Bombus)" in answer.inner_text()
    assert answer.locator("i").all_inner_texts() == ["Bombus"]
    assert page.locator("#model-answer-meta dd[data-field=rank]").inner_text() == "genus"
    assert re.fullmatch(r"\d+%", page.locator("#model-answer-meta dd[data-field=score]").inner_text())
    # Beside the ranked candidates, which keep their scores; "no insect" is listed but not proposable.
    candidates = page.locator("#suggestions li")
    assert candidates.count() == 4
    assert re.search(r"genus Bombus \(Bumblebee\) — \d+%", candidates.first.inner_text())
    assert page.locator("#suggestions li button").count() == 3


def test_specialist_says_not_an_insect_with_the_button_and_the_key(live_server, page, tmp_path):
    """Two specialists say "not an insect" (one by the button, one by the i key): the observation closes as
    not_an_insect, the verdict that sends its photos to the no_insect training label."""
    volunteer = make_user(live_server, "vera", "volunteer")
    experts = [make_user(live_server, name, "expert") for name in ("eric", "erin")]
    page.goto(live_server.url + "/")
    sign_in(page, volunteer)
    _identify(page, live_server.url, write_photo(tmp_path / "blue.jpg", "family"))
    page.get_by_role("button", name="Submit observation").click()
    page.get_by_text(re.compile(r"Saved as observation \d+")).wait_for()

    for i, key in enumerate(experts):
        page.goto(live_server.url + "/expert")
        sign_in(page, key)
        page.get_by_role("heading", name=re.compile(r"Observation \d+")).wait_for()
        if i == 0:
            page.get_by_role("button", name="Not an insect (i)").click()
        else:
            page.locator("body").press("i")
        page.locator("#identify-status").get_by_text(re.compile(r"Saved\. Status:")).wait_for()
    assert "not an insect" in page.locator("#identify-status").inner_text()
