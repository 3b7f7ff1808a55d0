"""Job kinds as handlers: what the worker asks of each kind of job.

The worker (:mod:`service.jobs.worker`) knows no job kind. For a claimed job it looks up the kind's handler
(:data:`service.jobs.kinds.HANDLERS`) and, for one attempt:

1. ``prepare``: write the attempt's inputs and ``spec.json`` into its folder; return the spec;
2. ``command``: the child process to run (its argv);
3. when the child succeeded, ``complete``: record the outcome (a retrain registers and gates the candidate);
   return the job's result;
4. when it did not (cancelled, failed, worker shutting down, job lost), ``release``: undo what ``prepare``
   holds (a retrain's reserved version folder);
5. ``summary``: the one line the job's log ends with.

A new kind of job: a module with its handler, its value in :class:`~service.jobs.rows.JobKind`, and one entry in
:data:`~service.jobs.kinds.HANDLERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from service.jobs.protocol import SPEC_FILENAME
from service.jobs.rows import Claimed
from service.settings import Settings

SpecT = TypeVar("SpecT")


@dataclass(frozen=True)
class Attempt:
    """One run of a claimed job: its folder ``<jobs_dir>/<job id>/attempt-<n>/``, the database, the settings,
    and the job's log."""

    job: Claimed
    work_dir: Path
    factory: sessionmaker[Session]
    settings: Settings
    log: Callable[..., Any]  # log(*lines): append lines to the job's log tail

    @property
    def spec_path(self) -> Path:
        return self.work_dir / SPEC_FILENAME


class JobHandler(Protocol[SpecT]):
    """The hooks of one kind of job (see the module's docstring)."""

    #: whether a succeeded job of this kind has a file to download (its result's ``path``)
    downloadable: bool

    def prepare(self, attempt: Attempt) -> SpecT:
        """Write the attempt's inputs and spec (``attempt.spec_path``); return the spec."""
        ...

    def command(self, spec: SpecT, attempt: Attempt) -> list[str]:
        """The child process's argv."""
        ...

    def complete(self, spec: SpecT, attempt: Attempt) -> dict[str, Any]:
        """Record what the child made; return the job's result."""
        ...

    def release(self, spec: SpecT, attempt: Attempt) -> None:
        """Undo what :meth:`prepare` holds: the attempt ended without success."""
        ...

    def summary(self, spec: SpecT, result: dict[str, Any]) -> str:
        """The job's last log line, from its result."""
        ...
