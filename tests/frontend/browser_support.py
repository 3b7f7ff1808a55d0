"""Helpers shared by the browser tests (plain functions, not fixtures)."""

from __future__ import annotations

from typing import Any

from service import accounts as auth


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
