"""Issue 16, item 9: ``observed_at`` is ISO 8601 only, within a plausible range (1800 to now + clock skew)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from service.settings import Settings
from tests.service.observation_support import Env, make_env


@pytest.fixture
def env(sqlite_settings: Settings) -> Iterator[Env]:
    yield from make_env(sqlite_settings)


REFUSED = ["-1", "0", "99999999999", "1700000000", "1700000000.5", "1e10", "yesterday", "01/06/2024",
           "2024-06-01T10:00:00Z junk", "1799-12-31T23:59:59Z", "2024-13-01T00:00:00Z", ""]


@pytest.mark.parametrize("value", REFUSED)
def test_upload_refuses_non_iso_or_implausible_dates(env: Env, value: str) -> None:
    r = env.post_obs(observed_at=value)
    assert r.status_code == 422, (value, r.status_code, r.text)
    body = r.json()["error"]
    assert "observed_at" in str(body), body


def test_upload_refuses_the_future_beyond_clock_skew(env: Env) -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
    assert env.post_obs(observed_at=soon).status_code == 201
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert env.post_obs(observed_at=later).status_code == 422


@pytest.mark.parametrize(("value", "stored"), [
    ("2024-06-01T10:00:00Z", "2024-06-01T10:00:00"),
    ("2024-06-01T12:00:00+02:00", "2024-06-01T10:00:00"),
    ("2024-06-01 10:00:00.250Z", "2024-06-01T10:00:00.250000"),
    ("2024-06-01", "2024-06-01T00:00:00"),
    ("1800-01-01T00:00:00Z", "1800-01-01T00:00:00"),
])
def test_upload_accepts_iso_8601(env: Env, value: str, stored: str) -> None:
    r = env.post_obs(observed_at=value)
    assert r.status_code == 201, r.text
    assert r.json()["observed_at"].startswith(stored)


def test_edit_and_filters_take_iso_8601_only(env: Env) -> None:
    obs = env.post_obs().json()
    for value in (-1, 99999999999, 1700000000, "-1", "1700000000"):
        r = env.client.patch(f"/api/v1/observations/{obs['id']}", headers=env.h("vol"), json={"observed_at": value})
        assert r.status_code == 422, (value, r.text)
    r = env.client.patch(f"/api/v1/observations/{obs['id']}", headers=env.h("vol"),
                         json={"observed_at": "2023-05-04T03:02:01Z"})
    assert r.status_code == 200 and r.json()["observed_at"].startswith("2023-05-04T03:02:01")
    for name in ("observed_from", "observed_to"):
        assert env.client.get("/api/v1/observations", headers=env.h("vol"), params={name: "0"}).status_code == 422
        r = env.client.get("/api/v1/observations", headers=env.h("vol"), params={name: "2023-01-01"})
        assert r.status_code == 200, r.text
