"""The admin page in Chromium: model versions with metrics and confusion matrix, activation, a retrain job's
live progress and cancel, an export job downloaded, and a new user's key shown once."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import expect

from service import accounts as auth
from service.core.modelcard import ModelCard
from service.jobs import rows as jobs
from service.jobs.rows import JobState
from service.jobs.worker import Worker
from tests.helpers import write_tiny_model
from tests.service.jobs_support import base_dataset

pytestmark = pytest.mark.browser


def _admin_key(server) -> str:
    state = server.app.state
    with state.sessionmaker() as session:
        _, key = auth.create_user(session=session, settings=state.settings, name="ada", role="admin")
        session.commit()
    return key


def _model_with_report(models_dir: Path) -> None:
    folder = write_tiny_model(models_dir, "tiny", "2")
    card = ModelCard.load(folder)
    card.metrics = {"n": 12, "top1": 0.9167, "top3": 1.0, "ece": 0.04, "per_class": {
        "red_admiral": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 4},
        "green_hairstreak": {"precision": 0.8, "recall": 1.0, "f1": 0.889, "support": 4},
        "common_blue": {"precision": 1.0, "recall": 0.75, "f1": 0.857, "support": 4}}}
    card.save(folder)
    Image.new("RGB", (60, 60), (200, 220, 240)).save(folder / "confusion.png")


def test_admin_sees_models_and_follows_a_job(live_server, page, tmp_path: Path) -> None:
    key = _admin_key(live_server)
    state = live_server.app.state
    _model_with_report(state.settings.models_dir)
    base = base_dataset(tmp_path / "base", n_train=2, n_valid=1)
    r = httpx.post(f"{live_server.url}/api/v1/admin/retrain", headers={"Authorization": f"Bearer {key}"},
                   json={"base_dataset": str(base), "backbone": "tiny_cnn", "epochs": 5})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]

    page.goto(live_server.url + "/admin")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Signed in with a key.").wait_for()

    # Model versions: tiny/1 is active; tiny/2 has metrics, a per-class table and a confusion matrix.
    row = page.locator('#models tr[data-version="tiny/2"]')
    row.wait_for()
    assert "91.7%" in row.inner_text()
    assert "active" in page.locator('#models tr[data-version="tiny/1"]').inner_text()
    page.get_by_role("button", name="Details of tiny/2").click()
    page.locator("#per-class tr").nth(2).wait_for()
    assert "common_blue" in page.locator("#per-class").inner_text()
    confusion = page.get_by_alt_text("Confusion matrix of tiny/2")
    confusion.wait_for()
    expect(confusion).to_have_js_property("naturalWidth", 60)  # the PNG, fetched with the key

    # The retrain job is listed as queued; a worker claims it and streams progress: the page follows.
    job_row = page.locator(f'#jobs tr[data-job="{job_id}"]')
    job_row.wait_for()
    assert "queued" in job_row.inner_text()
    claimed = jobs.claim_next(state.sessionmaker, worker_id="page-worker")
    assert claimed is not None and claimed.id == job_id
    jobs.report_progress(state.sessionmaker, job_id, "page-worker", progress=0.4, stage="train", epoch=2,
                         epochs=5, metrics={"train_loss": 0.61, "held_accuracy": 0.75},
                         log=["[train] epoch 2: loss 0.610, held-out NLL 0.700, acc 0.750"])
    expect(page.locator("#job-progress")).to_have_js_property("value", 40, timeout=10_000)
    summary = page.locator("#job-summary").inner_text()
    assert "running" in summary and "epoch 2/5" in summary and "40%" in summary
    assert "held_accuracy 0.750" in page.locator("#job-metrics").inner_text()
    assert "[train] epoch 2: loss 0.610" in page.locator("#job-log").input_value()

    # Cancel: the worker sees the request on its next heartbeat and stops.
    page.get_by_role("button", name="Cancel job", exact=True).click()
    expect(page.locator("#job-log")).to_have_value(re.compile("cancellation requested"), timeout=10_000)
    heartbeat = jobs.report_progress(state.sessionmaker, job_id, "page-worker", progress=0.45)
    assert heartbeat == jobs.Ownership.cancel
    jobs.finish(state.sessionmaker, job_id, "page-worker", state=JobState.cancelled)
    expect(job_row).to_contain_text("cancelled", timeout=10_000)

    # Activate tiny/2, then roll back to tiny/1.
    page.get_by_role("button", name="Activate tiny/2").click()
    page.get_by_text("tiny/2 is now active.").wait_for()
    assert state.registry.current.version == "2"
    page.get_by_role("button", name="Activate tiny/1").click()
    page.get_by_text("tiny/1 is now active.").wait_for()
    assert state.registry.current.version == "1"

    # An export job: started on the page, run by a real worker, downloaded with the key.
    page.get_by_role("button", name="CSV of observations").click()
    page.get_by_text(re.compile(r"Queued export job \d+")).wait_for()
    assert Worker(state.settings, state.sessionmaker, worker_id="export-worker").run_once()
    download_button = page.get_by_role("button", name=re.compile(r"Download job \d+"))
    download_button.wait_for(timeout=10_000)
    with page.expect_download() as info:
        download_button.click()
    download = info.value
    assert download.suggested_filename == "pollinid-observations.csv"
    assert Path(download.path()).read_text().startswith("id,observer_id,observer")

    # Users and keys: a new user's key is shown once.
    page.get_by_label("New user's name").fill("nina")
    page.get_by_label("Role").select_option("expert")
    page.get_by_role("button", name="Create user").click()
    page.locator("#new-key-value").wait_for()
    assert page.locator("#new-key-value").inner_text().startswith(auth.KEY_PREFIX)
    page.get_by_role("button", name="New key for nina").wait_for()
