"""The ``env`` fixture (the app on SQLite and PostgreSQL, one user per role) for the nearby tests."""

from tests.service.observation_support import env  # noqa: F401
