"""The words shared across rooms, each defined once: licences, observation statuses, identification kinds,
roles, export kinds, job kinds and job states.

Every schema, route parameter, check, table default and writer uses these enums; the pages read them from
``GET /api/v1/vocabulary``. A :class:`~enum.StrEnum` member *is* its string (``Licence.cc_by == "CC-BY"``), so
JSON bodies, database rows and query strings carry the same plain strings as before. Model version states and
origins live with what they allow, in :mod:`service.inference.versions`.
"""

from __future__ import annotations

from enum import StrEnum


class Licence(StrEnum):
    """The licence a volunteer gives an observation's photos and data (all three are accepted by GBIF)."""

    cc0 = "CC0"
    cc_by = "CC-BY"
    cc_by_nc = "CC-BY-NC"


DEFAULT_LICENCE = Licence.cc_by


class LocationSource(StrEnum):
    """How an observation's place was given: read from a photo's EXIF GPS, the device's geolocation fix, picked
    on the map, coordinates typed in, or sent without saying how (``user``, also what an edit records)."""

    user = "user"
    exif = "exif"
    gps = "gps"
    map = "map"
    typed = "typed"


class ObservationStatus(StrEnum):
    """Where an observation stands with the specialists (:mod:`service.validation.consensus` decides it)."""

    needs_id = "needs_id"
    validated = "validated"
    disputed = "disputed"
    cannot_tell = "cannot_tell"
    not_an_insect = "not_an_insect"


class IdentificationKind(StrEnum):
    """What an identification says: agree with a taxon, propose one, cannot tell, or no insect at all."""

    agree = "agree"
    propose = "propose"
    cannot_tell = "cannot_tell"
    not_an_insect = "not_an_insect"


class Role(StrEnum):
    """What a user may do: volunteers observe, experts also validate, admins also run the installation."""

    volunteer = "volunteer"
    expert = "expert"
    admin = "admin"


class ExportKind(StrEnum):
    """The exports an admin downloads or queues as a job: one writer each (:mod:`service.exports.kinds`)."""

    dwca = "dwca"
    csv = "csv"
    training = "training"


class JobKind(StrEnum):
    """The kinds of background job (one handler each in :mod:`service.jobs.kinds`)."""

    retrain = "retrain"
    export = "export"


class JobState(StrEnum):
    """A job's state: ``queued`` → ``running`` → ``succeeded`` | ``failed`` | ``cancelled``."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
