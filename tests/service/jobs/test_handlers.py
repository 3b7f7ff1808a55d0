"""Job kinds as handlers: every kind has one, an unknown kind fails its job; the worker/child protocol."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.jobs.kinds import HANDLERS, handler_for
from service.jobs.protocol import EVENT_PREFIX, EventKind, RetrainSpec, event_line, parse_event
from service.jobs.rows import JobKind, JobState
from service.jobs.worker import Worker
from service.settings import Settings
from service.store.db import create_db_engine, init_db, make_session_factory
from service.store.tables import Job


@pytest.fixture
def setup(settings: Settings) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    engine = create_db_engine(settings.resolved_database_url)
    init_db(engine)
    try:
        yield settings, make_session_factory(engine)
    finally:
        engine.dispose()


def test_every_job_kind_has_a_handler_with_every_hook() -> None:
    assert set(HANDLERS) == set(JobKind)
    for kind in JobKind:
        handler = handler_for(kind)
        assert handler is not None, kind
        for hook in ("prepare", "command", "complete", "release", "summary"):
            assert callable(getattr(handler, hook)), (kind, hook)
        assert isinstance(handler.downloadable, bool)
    assert handler_for("bogus") is None
    assert [k for k, h in HANDLERS.items() if h.downloadable] == [JobKind.export]


def test_a_job_of_an_unknown_kind_fails_saying_so(setup: tuple[Settings, sessionmaker[Session]]) -> None:
    settings, factory = setup
    with factory() as session:
        job = Job(kind="bogus", state=JobState.queued.value, params={}, max_attempts=3, log_tail="")
        session.add(job)
        session.commit()
        job_id = job.id
    worker = Worker(settings, factory, worker_id="w")
    assert worker.run_once() is True
    with factory() as session:
        row = session.get(Job, job_id)
        assert row is not None and row.state == "failed" and row.finished_at is not None
        assert row.error == "unknown job kind 'bogus'"
    assert not (settings.jobs_path / str(job_id)).exists()  # nothing was prepared


def test_event_lines_round_trip_and_other_lines_are_log() -> None:
    line = event_line(EventKind.progress, stage="train", progress=0.5, epoch=2, path=Path("/x"))
    assert line.startswith(EVENT_PREFIX)
    assert parse_event(line) == {"event": "progress", "stage": "train", "progress": 0.5, "epoch": 2, "path": "/x"}
    assert parse_event("epoch 2: loss 0.3") is None
    assert parse_event(EVENT_PREFIX + "{not json") is None
    assert parse_event(EVENT_PREFIX + "[1, 2]") is None


def test_the_retrain_spec_is_the_json_the_child_reads(tmp_path: Path) -> None:
    spec = RetrainSpec(job_id=3, work_dir=str(tmp_path), base_dataset="/data/base", min_new_class_photos=5,
                       gate_holdout=0.2, name="tiny", version="2", export_dir="/m/tiny/2",
                       train={"epochs": 4}, observations_exported={"observations": 1, "photos": 2, "since": None})
    spec.write(tmp_path / "spec.json")
    data = json.loads((tmp_path / "spec.json").read_text(encoding="utf-8"))
    assert data["name"] == "tiny" and data["train"] == {"epochs": 4} and data["strategy"] == "train"
    assert RetrainSpec.read(tmp_path / "spec.json") == spec
    assert RetrainSpec.of(data) == spec and RetrainSpec.of(spec) is spec
    with pytest.raises(ValueError, match="unknown retrain spec fields"):
        RetrainSpec.from_dict({**data, "nme": "typo"})
