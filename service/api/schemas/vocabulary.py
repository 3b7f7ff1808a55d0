"""The service's vocabularies, as the pages read them."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.core.vocabulary import (
    ExportKind,
    IdentificationKind,
    JobKind,
    JobState,
    Licence,
    LocationSource,
    ObservationStatus,
    Role,
)
from service.inference.versions import Origin, VersionState


class VocabularyPublic(BaseModel):
    """Every value each field may take, in a stable order; pages build their pickers and labels from these."""

    licences: list[Licence]
    default_licence: Licence = Field(description="the licence an observation gets when none is chosen")
    roles: list[Role]
    observation_statuses: list[ObservationStatus]
    identification_kinds: list[IdentificationKind]
    export_kinds: list[ExportKind]
    job_kinds: list[JobKind]
    job_states: list[JobState]
    job_states_finished: list[JobState] = Field(description="the states a job never leaves")
    version_states: list[VersionState]
    version_states_needing_force: list[VersionState] = Field(
        description="the states a model version is activated in only with force and a reason"
    )
    version_origins: list[Origin]
    location_sources: list[LocationSource] = Field(description="how an observation's place was given")
