"""GET /api/v1/vocabulary answers each enum's values, and the OpenAPI document shows those enums on the fields,
query parameters and path parameters that take them."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.vocabulary import (
    DEFAULT_LICENCE,
    ExportKind,
    IdentificationKind,
    JobKind,
    JobState,
    Licence,
    LocationSource,
    ObservationStatus,
    Role,
)
from service.inference.versions import FORCE_STATES, Origin, VersionState
from service.jobs.rows import TERMINAL_STATES
from service.settings import Settings


def values(enum: type[StrEnum]) -> list[str]:
    return [member.value for member in enum]


def test_vocabulary_answers_exactly_the_enums_values_without_a_key(sqlite_settings: Settings) -> None:
    with TestClient(create_app(sqlite_settings)) as client:
        r = client.get("/api/v1/vocabulary")
    assert r.status_code == 200
    assert r.json() == {
        "licences": ["CC0", "CC-BY", "CC-BY-NC"],
        "default_licence": "CC-BY",
        "roles": values(Role),
        "observation_statuses": values(ObservationStatus),
        "identification_kinds": values(IdentificationKind),
        "export_kinds": values(ExportKind),
        "job_kinds": values(JobKind),
        "job_states": values(JobState),
        "job_states_finished": [s.value for s in JobState if s in TERMINAL_STATES],
        "version_states": values(VersionState),
        "version_states_needing_force": [s.value for s in VersionState if s in FORCE_STATES],
        "version_origins": values(Origin),
        "location_sources": values(LocationSource),
    }
    assert r.json()["licences"] == values(Licence) and r.json()["default_licence"] == DEFAULT_LICENCE
    assert r.json()["job_states_finished"] == ["succeeded", "failed", "cancelled"]
    assert r.json()["version_states_needing_force"] == ["candidate", "gate_failed", "retired"]


def _enum_of(schema: dict[str, Any], fragment: dict[str, Any]) -> list[str] | None:
    """The enum values a schema fragment allows (through $ref, anyOf/oneOf/allOf), None when it is no enum."""
    if "$ref" in fragment:
        return _enum_of(schema, schema["components"]["schemas"][fragment["$ref"].rsplit("/", 1)[-1]])
    if "enum" in fragment:
        return list(fragment["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        for option in fragment.get(key, []):
            found = _enum_of(schema, option)
            if found is not None:
                return found
    return None


def _field(schema: dict[str, Any], model: str, name: str) -> dict[str, Any]:
    return schema["components"]["schemas"][model]["properties"][name]


def _parameter(schema: dict[str, Any], method: str, path: str, name: str) -> dict[str, Any]:
    op = schema["paths"][path][method]
    return next(p for p in op["parameters"] if p["name"] == name)["schema"]


def test_openapi_shows_the_enums_on_every_field_that_takes_them(sqlite_settings: Settings) -> None:
    with TestClient(create_app(sqlite_settings)) as client:
        schema = client.get("/openapi.json").json()
    form = schema["paths"]["/api/v1/observations"]["post"]["requestBody"]["content"]["multipart/form-data"]
    form_schema = form["schema"]
    if "$ref" in form_schema:
        form_schema = schema["components"]["schemas"][form_schema["$ref"].rsplit("/", 1)[-1]]
    expected: list[tuple[str, dict[str, Any], type[StrEnum]]] = [
        ("ObservationPublic.licence", _field(schema, "ObservationPublic", "licence"), Licence),
        ("ObservationUpdate.licence", _field(schema, "ObservationUpdate", "licence"), Licence),
        ("POST /observations licence", form_schema["properties"]["licence"], Licence),
        ("ObservationPublic.status", _field(schema, "ObservationPublic", "status"), ObservationStatus),
        ("GET /observations ?status", _parameter(schema, "get", "/api/v1/observations", "status"),
         ObservationStatus),
        ("ConsensusPublic.status", _field(schema, "ConsensusPublic", "status"), ObservationStatus),
        ("IdentificationCreate.kind", _field(schema, "IdentificationCreate", "kind"), IdentificationKind),
        ("IdentificationPublic.kind", _field(schema, "IdentificationPublic", "kind"), IdentificationKind),
        ("IdentificationPublic.user_role", _field(schema, "IdentificationPublic", "user_role"), Role),
        ("UserCreate.role", _field(schema, "UserCreate", "role"), Role),
        ("UserUpdate.role", _field(schema, "UserUpdate", "role"), Role),
        ("UserPublic.role", _field(schema, "UserPublic", "role"), Role),
        ("ExportCreate.kind", _field(schema, "ExportCreate", "kind"), ExportKind),
        ("GET /admin/exports/{kind}", _parameter(schema, "get", "/api/v1/admin/exports/{kind}", "kind"),
         ExportKind),
        ("JobPublic.kind", _field(schema, "JobPublic", "kind"), JobKind),
        ("JobPublic.state", _field(schema, "JobPublic", "state"), JobState),
        ("GET /admin/jobs ?kind", _parameter(schema, "get", "/api/v1/admin/jobs", "kind"), JobKind),
        ("GET /admin/jobs ?state", _parameter(schema, "get", "/api/v1/admin/jobs", "state"), JobState),
        ("ModelVersionPublic.state", _field(schema, "ModelVersionPublic", "state"), VersionState),
        ("ModelVersionPublic.origin", _field(schema, "ModelVersionPublic", "origin"), Origin),
        ("ModelActivationPublic.state", _field(schema, "ModelActivationPublic", "state"), VersionState),
        ("VocabularyPublic.licences", _field(schema, "VocabularyPublic", "licences")["items"], Licence),
    ]
    for where, fragment, enum in expected:
        assert _enum_of(schema, fragment) == values(enum), where
