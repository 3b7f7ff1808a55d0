"""The worker/child protocol: what the worker hands a job's child process, and what the child says back.

The worker (:mod:`service.jobs.worker`) runs every job in a child process started with one argument, the path
of the attempt's ``spec.json``. The child writes its output on stdout: an *event* is one line
``@@pollinid {json}`` with an ``event`` key (:class:`EventKind`); any other line is log. Its result goes into a
file of the attempt's folder (a retrain child's ``result.json``).

:class:`RetrainSpec` is the retrain child's ``spec.json``, written by :func:`service.jobs.retrain.prepare` and
read by ``training.worker_entry``. This module is imported by the training package too, so it stays small and
uses the standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

EVENT_PREFIX = "@@pollinid "
SPEC_FILENAME = "spec.json"  # what the worker hands the child, in the attempt's folder
RESULT_FILENAME = "result.json"  # what a retrain child writes there when it succeeds


class EventKind(StrEnum):
    """What an event line says: progress (stage, progress 0..1, epoch, epochs, metrics), a log message, or the
    error the child fails with."""

    progress = "progress"
    log = "log"
    error = "error"


_print_lock = threading.Lock()


def event_line(kind: str, /, **fields: Any) -> str:
    """The stdout line of one event (no newline)."""
    return EVENT_PREFIX + json.dumps({"event": kind, **fields}, default=str)


def emit(kind: str, /, **fields: Any) -> None:
    """Send one event to the worker (thread safe)."""
    line = event_line(kind, **fields)
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def parse_event(line: str) -> dict[str, Any] | None:
    """The event of an output line, or None for a log line (a line without the prefix, or not a JSON object)."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(line[len(EVENT_PREFIX):])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


@dataclass(kw_only=True)
class RetrainSpec:
    """One attempt of a retrain job, as the training child reads it (``spec.json``).

    Paths are absolute strings (the file is JSON). ``strategy`` is ``train`` (a base dataset plus the validated
    observations) or ``head`` (no base dataset: a new last layer on the active network and its replay kit).
    """

    job_id: int
    work_dir: str
    base_dataset: str | None = None
    observations_manifest: str | None = None
    observations_taxonomy: str | None = None
    observations_exported: dict[str, Any] = field(default_factory=dict)  # observations, photos, since
    min_new_class_photos: int
    strategy: str = "train"
    replay_kit: str | None = None
    gate_holdout: float
    gate_min_class_support: int = 3
    seed: int = 0
    active_model: str | None = None  # the active version's folder, when it is the same model
    active_model_ref: str | None = None  # its ``name/version``
    name: str = ""
    version: str = ""
    export_dir: str = ""  # the candidate's (reserved) version folder
    train: dict[str, Any] = field(default_factory=dict)  # training options (``TrainConfig`` fields)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetrainSpec:
        """The spec of a JSON object; unknown keys are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown retrain spec fields {unknown}")
        return cls(**dict(data))

    @classmethod
    def of(cls, spec: RetrainSpec | Mapping[str, Any]) -> RetrainSpec:
        return spec if isinstance(spec, RetrainSpec) else cls.from_dict(spec)

    @classmethod
    def read(cls, path: Path) -> RetrainSpec:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
