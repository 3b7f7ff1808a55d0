"""Every kind of job and its handler: the one table the worker and the job routes look a kind up in.

A new kind of job: its value in :class:`~service.jobs.rows.JobKind`, a module with its handler
(:class:`~service.jobs.handlers.JobHandler`), and its line here.
"""

from __future__ import annotations

from typing import Any

from service.jobs.export_job import ExportHandler
from service.jobs.handlers import JobHandler
from service.jobs.retrain import RetrainHandler
from service.jobs.rows import JobKind

HANDLERS: dict[str, JobHandler[Any]] = {
    JobKind.retrain: RetrainHandler(),
    JobKind.export: ExportHandler(),
}


def handler_for(kind: str) -> JobHandler[Any] | None:
    """The handler of a job kind; None for a kind this service does not know (the job fails, saying so)."""
    return HANDLERS.get(kind)
