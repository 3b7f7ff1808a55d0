"""Export jobs: a Darwin Core archive, a CSV or a training manifest, written by a child process.

The handler (:class:`ExportHandler`) writes the spec; the child (``python -m service.jobs.export_job
spec.json``) writes the export (:func:`service.exports.kinds.export`) into the attempt's folder and describes it
in ``export.json``, which becomes the job's result; the admin downloads the file from the job.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.jobs.handlers import Attempt
from service.jobs.params import ExportCreate
from service.jobs.protocol import EventKind, emit
from service.settings import Settings

EXPORT_FILENAME = "export.json"  # what an export child writes next to its file


@dataclass(frozen=True)
class ExportSpec:
    """What the export child reads (``spec.json``): the export's kind, the folder, the service's settings."""

    kind: str
    work_dir: str
    settings: dict[str, Any]


class ExportHandler:
    """Export jobs (see :class:`service.jobs.handlers.JobHandler`)."""

    downloadable = True

    def prepare(self, attempt: Attempt) -> ExportSpec:
        params = ExportCreate.model_validate(attempt.job.params)
        spec = ExportSpec(kind=params.kind, work_dir=str(attempt.work_dir),
                          settings=attempt.settings.model_dump(mode="json", exclude={"secret_key"}))
        attempt.spec_path.write_text(json.dumps(asdict(spec), indent=2) + "\n", encoding="utf-8")
        return spec

    def command(self, spec: ExportSpec, attempt: Attempt) -> list[str]:
        return [sys.executable, "-m", "service.jobs.export_job", str(attempt.spec_path)]

    def complete(self, spec: ExportSpec, attempt: Attempt) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((attempt.work_dir / EXPORT_FILENAME).read_text(encoding="utf-8"))
        return result

    def release(self, spec: ExportSpec, attempt: Attempt) -> None:
        """Nothing to undo: the attempt's folder holds whatever the child wrote."""

    def summary(self, spec: ExportSpec, result: dict[str, Any]) -> str:
        return f"wrote {result.get('filename')} ({result.get('records')} records)"


# -- the child: ``python -m service.jobs.export_job spec.json`` ------------------------------------------------


def run_export_child(spec_path: Path) -> int:
    """Write one export (dwca, csv, training manifest) into the spec's work folder."""
    from service.exports.kinds import MEDIA_TYPES, export
    from service.store.db import create_db_engine, make_session_factory

    spec = ExportSpec(**json.loads(spec_path.read_text(encoding="utf-8")))
    settings = Settings.model_validate(spec.settings)
    kind = spec.kind
    media_type, filename = MEDIA_TYPES[kind]
    work = Path(spec.work_dir)
    emit(EventKind.progress, stage="export", progress=0.05, message=f"writing the {kind} export")
    engine = create_db_engine(settings.resolved_database_url)
    try:
        with make_session_factory(engine)() as session:
            result = export(session, settings, kind, work / filename)
    finally:
        engine.dispose()
    info = {"kind": kind, "filename": filename, "media_type": media_type, "path": str(result.path),
            "records": result.records, "media": result.media, "size_bytes": result.path.stat().st_size}
    (work / EXPORT_FILENAME).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    emit(EventKind.progress, stage="done", progress=1.0, message=f"{result.records} records")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m service.jobs.export_job SPEC.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    try:
        return run_export_child(Path(args[0]))
    except Exception as exc:
        traceback.print_exc(file=sys.stdout)
        emit(EventKind.error, message=f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":  # pragma: no cover - the export child
    sys.exit(main())
