"""One walk through every page in every state that matters (tests/frontend/tour.py), in English and in French:
axe-core finds no serious or critical violation in any state, and each state's full-page screenshot is kept in
the test artifacts (``$POLLINID_TEST_ARTIFACTS``, default ``test-artifacts/``) as
``screenshots/<language>/<scene>.png``. The screenshot is taken before axe judges the page, so a failing state
leaves its picture behind, and every state is checked before the test fails."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.frontend import tour
from tests.frontend.a11y import blocking_violations, describe
from tests.frontend.browser_support import ARTIFACTS

pytestmark = pytest.mark.browser


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """The pages do not depend on the database: one run, on SQLite."""
    return sqlite_url


@pytest.mark.parametrize("lang", sorted(tour.LANGUAGES))
def test_every_page_passes_axe_and_leaves_a_screenshot(live_server, browser, lang: str) -> None:
    cast = tour.cast(live_server)
    folder = ARTIFACTS / "screenshots" / lang
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    violations = []
    for scene, page in tour.tour(browser, cast, lang):
        path = folder / f"{scene.name}.png"
        path.unlink(missing_ok=True)
        page.screenshot(path=str(path), full_page=True)
        saved.append(path)
        blocking = blocking_violations(page)
        if blocking:
            violations.append(f"{scene.name} ({lang}):\n{describe(blocking)}")

    assert not violations, "axe-core: serious or critical violations on\n" + "\n".join(violations)
    assert [p.stem for p in saved] == [s.name for s in tour.SCENES]
    for path, scene in zip(saved, tour.SCENES, strict=True):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        with Image.open(path) as img:
            img.load()
            # The whole page: as wide as the screen, at least as tall, and a page drawn (text, photos, colours),
            # not a blank or one-colour frame.
            assert img.width == scene.viewport["width"], (path, img.size)
            assert img.height >= scene.viewport["height"], (path, img.size)
            colours = img.convert("RGB").getcolors(maxcolors=1_000_000)
            assert colours is not None and len(colours) >= 50, (path, len(colours or []))
        assert path.stat().st_size > 10_000, (path, path.stat().st_size)
