"""The service's vocabularies (public): licences, roles, statuses, kinds and states, each from its one enum."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.schemas.vocabulary import VocabularyPublic
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

router = APIRouter(tags=["vocabulary"])


@router.get("/vocabulary", response_model=VocabularyPublic)
def read_vocabulary() -> VocabularyPublic:
    """Every value of the service's enumerated fields: what a page may offer, and what the API accepts."""
    return VocabularyPublic(
        licences=list(Licence),
        default_licence=DEFAULT_LICENCE,
        roles=list(Role),
        observation_statuses=list(ObservationStatus),
        identification_kinds=list(IdentificationKind),
        export_kinds=list(ExportKind),
        job_kinds=list(JobKind),
        job_states=list(JobState),
        job_states_finished=[s for s in JobState if s in TERMINAL_STATES],
        version_states=list(VersionState),
        version_states_needing_force=[s for s in VersionState if s in FORCE_STATES],
        version_origins=list(Origin),
        location_sources=list(LocationSource),
    )
