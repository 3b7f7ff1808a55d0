"""Helpers shared by the browser tests (plain functions, not fixtures)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service import accounts as auth

# Where the browser tests keep their screenshots (CI prints it).
ARTIFACTS = Path(os.environ.get("POLLINID_TEST_ARTIFACTS", "test-artifacts"))
PHONE = {"width": 360, "height": 780}


def watch_errors(page: Any) -> list[str]:
    """Collect the page's console errors, uncaught exceptions and failed requests in ``page.console_errors``
    (tests that expect an API error can clear it) and return that list."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("response",
            lambda r: errors.append(f"HTTP {r.status} {r.request.method} {r.url}") if r.status >= 400 else None)
    page.console_errors = errors
    return errors


@contextmanager
def browser_page(browser: Any, request: Any, locale: str | None = None, suffix: str = "") -> Iterator[Any]:
    """A page in a fresh phone-sized context (with this locale, if given): a screenshot named after the test is
    kept, and any console error, uncaught exception or failed request fails the test."""
    context = browser.new_context(viewport=PHONE, **({"locale": locale} if locale else {}))
    page = context.new_page()
    errors = watch_errors(page)
    try:
        yield page
    finally:
        try:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            name = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
            page.screenshot(path=str(ARTIFACTS / f"{name}{suffix}.png"), full_page=True)
        finally:
            context.close()
    assert not errors, "errors in the browser console:\n" + "\n".join(errors)


def make_user(server: Any, name: str, role: str) -> str:
    """Create a user in the live server's database and return its API key."""
    state = server.app.state
    with state.sessionmaker() as session:
        _, key = auth.create_user(session=session, settings=state.settings, name=name, role=role)
        session.commit()
    return key


def sign_in(page: Any, key: str) -> None:
    """Sign in on the page shown, with an API key."""
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Signed in with a key.").wait_for()
