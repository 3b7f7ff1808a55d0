"""Schemathesis fuzzes every operation of the service's own OpenAPI schema, with each role's key.

A real uvicorn on loopback (SQLite), positive and negative data, a bounded number of examples per
operation (``POLLINID_FUZZ_EXAMPLES``, default 6). Every answer must be below 500 and conform to the
schema: documented status code, content type, headers and body. Admin calls may deactivate or demote the
fuzzing users themselves or revoke their keys; the test puts them back after each such call so that the
run keeps testing with valid keys.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import create_engine, text  # noqa: E402

from tests.hardening.support import LiveService, create_users  # noqa: E402
from tests.helpers import photo_bytes, write_tiny_model  # noqa: E402

EXAMPLES = int(os.environ.get("POLLINID_FUZZ_EXAMPLES", "6"))
PEOPLE = {"vol": "volunteer", "vol2": "volunteer", "exp": "expert", "admin": "admin"}
ROLE_USER = {"anonymous": None, "volunteer": "vol", "expert": "exp", "admin": "admin"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


class Target:
    """The fuzzed service, its users and a way to put them back as they were."""

    def __init__(self, service: LiveService, keys: dict[str, str], ids: dict[str, int], url: str) -> None:
        self.service, self.keys, self.ids = service, keys, ids
        self.engine = create_engine(url)

    def restore_users(self) -> None:
        """Undo what admin calls may have done to the fuzzing users (role, active, keys)."""
        with self.engine.begin() as conn:
            for name, role in PEOPLE.items():
                uid = self.ids[name]
                conn.execute(text("UPDATE users SET active = :t, role = :r WHERE id = :i"),
                             {"t": True, "r": role, "i": uid})
                conn.execute(text("UPDATE api_keys SET revoked_at = NULL WHERE user_id = :i"), {"i": uid})


def _start_target(root: Path, url: str) -> Iterator[Target]:
    write_tiny_model(root / "models", "tiny", "1")
    keys, ids = create_users(url, LiveService.secret, PEOPLE)
    limits = {"POLLINID_RATE_LIMIT_PER_IP": "10000000", "POLLINID_RATE_LIMIT_PER_KEY": "10000000"}
    service = LiveService(root / "data", url, root / "models", env=limits)
    with service:
        import httpx

        # A little data, so that small generated ids hit real rows.
        with httpx.Client(base_url=service.url, timeout=30) as client:
            for who in ("vol", "vol2"):
                r = client.post("/api/v1/observations", headers={"Authorization": f"Bearer {keys[who]}"},
                                data={"observed_at": "2024-06-01T10:00:00Z", "latitude": "45",
                                      "longitude": "5"},
                                files=[("photos", ("p.jpg", photo_bytes(), "image/jpeg"))])
                assert r.status_code == 201, r.text
                r = client.post(f"/api/v1/observations/{r.json()['id']}/identifications",
                                headers={"Authorization": f"Bearer {keys['exp']}"},
                                json={"kind": "propose", "taxon": "Vanessa atalanta"})
                assert r.status_code == 201, r.text
        t = Target(service, keys, ids, url)
        yield t
        t.engine.dispose()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The service on SQLite, shared by the roles' runs."""
    root: Path = tmp_path_factory.mktemp("fuzz")
    yield from _start_target(root, f"sqlite:///{root / 'fuzz.sqlite3'}")


@pytest.fixture
def pg_target(tmp_path: Path, postgres_url: str) -> Iterator[Target]:
    """The service on a fresh PostgreSQL database."""
    yield from _start_target(tmp_path, postgres_url)


def _fuzz_operation(target: Target, operation: Any, mode: GenerationMode, role: str,
                    headers: dict[str, str], failures: list[str], seen: set[tuple[str, str]],
                    examples: int) -> int:
    """Run ``examples`` generated cases of one operation; returns how many requests were made."""
    label = operation.label
    touches_users = "/admin/users" in operation.path and operation.method.upper() != "GET"
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
    calls = 0

    @hypothesis_settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal calls
        response = case.call(headers=headers, timeout=60)
        calls += 1
        try:
            case.validate_response(response, checks=checks)
        except BaseException as exc:  # every failure is collected and reported at the end
            key = (label, type(exc).__name__ + str(response.status_code))
            if key not in seen:
                seen.add(key)
                failures.append(f"{label} [{role}, {mode.value}] -> {response.status_code}:\n{exc}")
        finally:
            if touches_users:
                target.restore_users()

    with contextlib.suppress(Unsatisfiable):  # no negative data exists (e.g. no parameters at all)
        run()
    return calls


def _fuzz(target: Target, role: str, examples: int = EXAMPLES) -> tuple[dict[str, int], list[str]]:
    schema = schemathesis.openapi.from_url(f"{target.service.url}/openapi.json")
    user = ROLE_USER[role]
    headers = {"Authorization": f"Bearer {target.keys[user]}"} if user else {}
    calls: dict[str, int] = {}
    failures: list[str] = []
    seen: set[tuple[str, str]] = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        calls[operation.label] = sum(
            _fuzz_operation(target, operation, mode, role, headers, failures, seen, examples)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        )
    return calls, failures


@pytest.mark.parametrize("role", list(ROLE_USER))
def test_every_operation_conforms_and_never_fails(target: Target, role: str) -> None:
    t0 = time.monotonic()
    calls, failures = _fuzz(target, role)
    elapsed = time.monotonic() - t0
    print(f"{role}: {sum(calls.values())} requests over {len(calls)} operations in {elapsed:.1f} s")
    assert not failures, "\n\n".join(failures[:15])
    # Every operation of the schema was called, and the service is still serving.
    assert len(calls) >= 30
    assert all(n > 0 for n in calls.values()), {k: v for k, v in calls.items() if v == 0}
    import httpx

    assert httpx.get(f"{target.service.url}/api/v1/ready", timeout=10).status_code == 200


@pytest.mark.postgres
def test_a_smaller_pass_on_postgresql(pg_target: Target) -> None:
    """The same checks on PostgreSQL, as an admin (the role that reaches every operation), fewer examples."""
    calls, failures = _fuzz(pg_target, "admin", examples=max(2, EXAMPLES // 2))
    print(f"postgresql admin: {sum(calls.values())} requests over {len(calls)} operations")
    assert not failures, "\n\n".join(failures[:15])
    assert all(n > 0 for n in calls.values())
