"""Accessibility in Chromium: axe-core finds no serious or critical violation on any page, in English and in
French, signed out and signed in, in the states that matter."""

from __future__ import annotations

import pytest

from tests.frontend import tour
from tests.frontend.a11y import assert_accessible

pytestmark = pytest.mark.browser


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """The pages do not depend on the database: one run, on SQLite."""
    return sqlite_url


@pytest.mark.parametrize("lang", sorted(tour.LANGUAGES))
def test_every_page_passes_axe(live_server, browser, lang: str) -> None:
    cast = tour.cast(live_server)
    seen = []
    for scene, page in tour.tour(browser, cast, lang):
        assert_accessible(page, f"{scene.name} ({lang})")
        seen.append(scene.name)
    assert seen == [s.name for s in tour.SCENES]
