"""A retrain job on a service whose photos are in an object store (a real S3 server on loopback).

The training child reads local files: the job's ``prepare`` fetches the manifest's photos from the bucket into
the attempt's folder; the downloadable training manifest names the photos by their ``s3://`` URL.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.exports.training_manifest import write_training_manifest
from service.jobs.params import RetrainCreate, RetrainParams
from service.jobs.retrain import prepare
from service.settings import Settings
from service.store.objects import media_store
from tests.service.jobs.test_retrain_ranks import _populate
from tests.service.jobs_support import base_dataset
from tests.service.observation_support import Env, make_env


@pytest.fixture
def s3_env(s3_settings: Settings) -> Iterator[Env]:
    yield from make_env(s3_settings)


def test_prepare_fetches_the_photos_from_the_bucket(s3_env: Env, tmp_path: Path) -> None:
    _populate(s3_env, tmp_path)
    assert [p for p in s3_env.settings.media_path.rglob("*") if p.is_file()] == []  # all in the bucket
    base = base_dataset(tmp_path / "base", n_train=4, n_valid=2)
    params = RetrainCreate(base_dataset=str(base)).model_dump(mode="json")
    params.update(name="tiny", base_dataset=str(base), min_new_class_photos=1, gate_holdout=0.25)
    work = tmp_path / "work"
    spec = prepare(7, RetrainParams.model_validate(params), factory=s3_env.app.state.sessionmaker,
                   settings=s3_env.settings, work_dir=work)
    with open(spec.observations_manifest or "", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and spec.observations_exported["photos"] == 6
    for row in rows:
        path = Path(row["path"])
        assert path.is_relative_to(work.resolve() / "photos") and path.is_file()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    assert not any(p.name.startswith(".tmp-") for p in (work / "photos").rglob("*"))
    # The export for people names each photo by its object URL.
    with s3_env.session() as s:
        write_training_manifest(s, s3_env.settings, tmp_path / "manifest.csv")
    with open(tmp_path / "manifest.csv", encoding="utf-8") as fh:
        urls = [r["path"] for r in csv.DictReader(fh)]
    store = media_store(s3_env.settings)
    assert urls and all(u.startswith(f"{s3_env.settings.object_store_url}/media/") for u in urls)
    assert {u.rsplit("/", 1)[1] for u in urls} <= {k.split("/")[1] for k in store.list()}
