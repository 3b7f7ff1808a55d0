"""Security: keys kept as HMAC digests, no IDOR between volunteers, no path traversal in media, and SQL
injection through every filter of every list route leaves the database intact."""

from __future__ import annotations

import hashlib
import hmac
import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, text

from service import accounts as auth
from service.settings import Settings
from service.store.tables import ApiKey, Identification, Observation, Photo, User
from tests.hardening.support import LiveService, create_users
from tests.helpers import photo_bytes, write_tiny_model
from tests.service.observation_support import BLUE, GREEN, RED, Env, env  # noqa: F401

# -- keys ----------------------------------------------------------------------------------------------


def _all_text_in_database(e: Env) -> str:
    """Every value of every table, as text (to look for a leaked key)."""
    out = []
    with e.session() as s:
        bind = s.get_bind()
        for table in inspect(bind).get_table_names():
            for row in s.execute(text(f'SELECT * FROM "{table}"')):
                out.append(" ".join(str(v) for v in row))
    return "\n".join(out)


def test_keys_are_stored_as_hmac_sha256_under_the_server_secret(env: Env) -> None:  # noqa: F811
    dump = _all_text_in_database(env)
    with env.session() as s:
        rows = {r.user_id: r for r in s.scalars(select(ApiKey))}
    for name, key in env.keys.items():
        assert key not in dump, f"the key of {name} is stored in clear"
        row = rows[env.ids[name]]
        expected = hmac.new(env.settings.secret_key.encode(), key.encode(), hashlib.sha256).hexdigest()
        assert row.key_hash == expected
        assert key[: len(row.prefix)] == row.prefix and len(row.prefix) <= 10  # only a short prefix
        # A plain (unkeyed) SHA-256 of the key is not what is stored: the secret is needed.
        assert row.key_hash != hashlib.sha256(key.encode()).hexdigest()
    # The same key under another server secret authenticates no one.
    other = Settings(**{**env.settings.model_dump(), "secret_key": "another-secret"})
    with env.session() as s:
        assert auth.authenticate(session=s, settings=other, key=env.keys["vol"]) is None
        assert auth.authenticate(session=s, settings=env.settings, key=env.keys["vol"]) is not None
        # A key that differs in its last character, or is a prefix of a real key, is refused.
        key = env.keys["vol"]
        altered = key[:-1] + ("A" if key[-1] != "A" else "B")
        assert auth.authenticate(session=s, settings=env.settings, key=altered) is None
        assert auth.authenticate(session=s, settings=env.settings, key=key[:10]) is None
    assert env.client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {env.keys['vol'][:-1]}"}
                          ).status_code == 401


def test_authentication_compares_in_constant_time() -> None:
    """The final comparison goes through hmac.compare_digest (checked on the function's code)."""
    names = auth.authenticate.__code__.co_names
    assert "compare_digest" in names and "hash_key" in names


# -- IDOR ----------------------------------------------------------------------------------------------


def test_a_volunteer_cannot_reach_another_volunteers_data(env: Env) -> None:  # noqa: F811
    mine = env.post_obs("vol", photos=[photo_bytes(RED)], notes="vol's private note").json()
    theirs = env.post_obs("vol2", photos=[photo_bytes(GREEN)]).json()
    assert env.identify("exp", mine["id"], "propose", taxon="Vanessa atalanta").status_code == 201
    ident_id = env.client.get(f"/api/v1/observations/{mine['id']}/identifications",
                              headers=env.h("vol")).json()["data"][0]["id"]
    sha = mine["photos"][0]["sha256"]
    h2 = env.h("vol2")
    c = env.client
    oid = mine["id"]

    def refused(r: Any) -> None:
        assert r.status_code in (403, 404), (r.request.method, r.request.url, r.status_code, r.text)
        assert "vol's private note" not in r.text and '"photos"' not in r.text

    refused(c.get(f"/api/v1/observations/{oid}", headers=h2))
    refused(c.patch(f"/api/v1/observations/{oid}", headers=h2, json={"notes": "defaced"}))
    refused(c.get(f"/api/v1/media/{sha}", headers=h2))
    refused(c.get(f"/api/v1/observations/{oid}/identifications", headers=h2))
    refused(c.post(f"/api/v1/observations/{oid}/identifications", headers=h2, json={"kind": "agree"}))
    refused(c.post(f"/api/v1/observations/{oid}/identifications/{ident_id}/withdraw", headers=h2))
    # Lists never show it, whatever the filter.
    for params in ({}, {"observer": env.ids["vol"]}, {"status": "needs_id"}, {"limit": 500}):
        r = c.get("/api/v1/observations", headers=h2, params=params)
        assert r.status_code == 200
        assert all(o["observer_id"] == env.ids["vol2"] for o in r.json()["data"]), params
        assert oid not in [o["id"] for o in r.json()["data"]]
    # Enumerating ids finds only one's own.
    for i in range(1, theirs["id"] + 5):
        r = c.get(f"/api/v1/observations/{i}", headers=h2)
        assert r.status_code == (200 if i == theirs["id"] else 404), i
    # Experts may read it but not edit it; the observation is unchanged.
    assert c.get(f"/api/v1/observations/{oid}", headers=env.h("exp")).status_code == 200
    r = c.patch(f"/api/v1/observations/{oid}", headers=env.h("exp"), json={"notes": "x"})
    assert r.status_code == 403
    # An expert cannot withdraw another expert's identification.
    r = c.post(f"/api/v1/observations/{oid}/identifications/{ident_id}/withdraw", headers=env.h("exp2"))
    assert r.status_code == 403
    after = c.get(f"/api/v1/observations/{oid}", headers=env.h("vol")).json()
    assert after["notes"] == "vol's private note"
    with env.session() as s:
        ident = s.get(Identification, ident_id)
        assert ident is not None and ident.withdrawn_at is None


# -- path traversal ------------------------------------------------------------------------------------

TRAVERSALS = [
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e/%2e%2e/etc/passwd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%252f..%252fetc%252fpasswd",
    "....//....//etc/passwd",
    "..\\..\\etc\\passwd",
    "%2Fetc%2Fpasswd",
    "/etc/passwd",
    "..%00/etc/passwd",
    "%00",
    "{sha}/../../../../etc/passwd",
    "{sha}%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "{sha}%00.jpg",
    "{upper}",
    "{prefix}",
    "../{sha}",
    "..%2F{short}%2F{sha}",
]


@pytest.fixture(scope="module")
def media_service(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LiveService, dict[str, str], str]]:
    root: Path = tmp_path_factory.mktemp("traversal")
    write_tiny_model(root / "models", "tiny", "1")
    url = f"sqlite:///{root / 'db.sqlite3'}"
    keys, _ = create_users(url, LiveService.secret, {"vol": "volunteer", "admin": "admin"})
    with LiveService(root / "data", url, root / "models") as service:
        import httpx

        r = httpx.post(f"{service.url}/api/v1/observations",
                       headers={"Authorization": f"Bearer {keys['vol']}"},
                       data={"observed_at": "2024-06-01T10:00:00Z"},
                       files=[("photos", ("p.jpg", photo_bytes(), "image/jpeg"))], timeout=30)
        assert r.status_code == 201
        yield service, keys, r.json()["photos"][0]["sha256"]


def _raw_get(service: LiveService, path: str, key: str) -> tuple[int, bytes, str]:
    """GET exactly ``path`` (no client-side normalisation of dots or escapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {key}")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("content-type") or ""
    finally:
        conn.close()


@pytest.mark.parametrize("who", ["vol", "admin"])
def test_media_paths_cannot_escape_the_media_folder(media_service: Any, who: str) -> None:
    service, keys, sha = media_service
    secret_file = service.data_dir.parent / "db.sqlite3"
    status, body, _ = _raw_get(service, f"/api/v1/media/{sha}", keys[who])
    assert status == 200 and body[:2] == b"\xff\xd8"
    for template in TRAVERSALS:
        attack = template.format(sha=sha, upper=sha.upper(), prefix=sha[:2], short=sha[:2])
        for prefix in ("/api/v1/media/", "/api/v1/admin/models/tiny/1/files/"):
            status, body, ctype = _raw_get(service, prefix + attack, keys[who])
            assert status in (400, 403, 404, 405, 422), (attack, status, body[:200])
            assert b"root:" not in body and b"SQLite format" not in body, attack
            if status != 400:  # uvicorn itself answers 400 to a malformed request line
                assert ctype.startswith("application/json"), (attack, ctype)
    assert secret_file.exists()
    assert _raw_get(service, "/api/v1/ready", keys[who])[0] == 200


# -- SQL injection -------------------------------------------------------------------------------------

INJECTIONS = [
    "' OR '1'='1",
    "' OR 1=1 --",
    "1; DROP TABLE observations; --",
    "1' ; DELETE FROM api_keys; --",
    "%' OR '%'='",
    '" OR ""="',
    "1) UNION SELECT key_hash FROM api_keys --",
    "' UNION SELECT NULL, sqlite_version() --",
    "'; SELECT pg_sleep(5); --",
    "\\'; --",
    "a\x00b",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "*",
    "%",
    "_",
]
# Every filter parameter of every list route: (path, role, parameters).
LIST_FILTERS: list[tuple[str, str, list[str]]] = [
    ("/api/v1/observations", "vol", ["status", "taxon", "observer", "session_id", "observed_from",
                                     "observed_to", "bbox", "limit", "offset", "cursor"]),
    ("/api/v1/observations", "admin", ["status", "taxon", "observer", "session_id", "bbox", "cursor"]),
    ("/api/v1/taxa", "vol", ["q", "rank", "limit", "offset"]),
    ("/api/v1/validation/queue", "exp", ["taxon", "limit"]),
    ("/api/v1/admin/users", "admin", ["limit", "offset"]),
    ("/api/v1/admin/jobs", "admin", ["kind", "state", "limit", "offset"]),
    ("/api/v1/observations/{oid}/identifications", "vol", []),
]


def _snapshot(e: Env) -> dict[str, Any]:
    with e.session() as s:
        return {
            "tables": sorted(inspect(s.get_bind()).get_table_names()),
            "observations": s.scalar(select(func.count()).select_from(Observation)),
            "photos": s.scalar(select(func.count()).select_from(Photo)),
            "users": s.scalar(select(func.count()).select_from(User)),
            "keys": sorted((k.id, k.key_hash, k.revoked_at is None) for k in s.scalars(select(ApiKey))),
        }


def test_sql_injection_through_every_filter(env: Env) -> None:  # noqa: F811
    for who, color in (("vol", RED), ("vol2", GREEN), ("vol", BLUE)):
        assert env.post_obs(who, photos=[photo_bytes(color)]).status_code == 201
    before = _snapshot(env)
    own = {o["id"] for o in env.client.get("/api/v1/observations", headers=env.h("vol")).json()["data"]}
    oid = min(own)
    checked = 0
    for path, who, params in LIST_FILTERS:
        url = path.format(oid=oid)
        for param in params or ["unused"]:
            for payload in INJECTIONS:
                r = env.client.get(url, headers=env.h(who), params={param: payload})
                assert r.status_code in (200, 404, 422), (url, param, repr(payload), r.status_code,
                                                          r.text[:300])
                assert r.headers["content-type"].startswith("application/json")
                if r.status_code == 200:
                    data = r.json()["data"]
                    if url == "/api/v1/observations" and who == "vol":
                        assert {o["id"] for o in data} <= own, (param, payload)
                    assert "key_hash" not in r.text
                else:
                    code = r.json()["error"]["code"]
                    assert code and code != "internal_error", r.text
                checked += 1
    assert checked > 300
    assert _snapshot(env) == before
    # Still serving, and a normal filter still works.
    r = env.client.get("/api/v1/observations", headers=env.h("admin"), params={"status": "needs_id"})
    assert r.status_code == 200 and r.json()["count"] == 3
