"""The admin page's retrain loop controls in Chromium, against the real service (issue 12, docs/retrain.md):
version origin and state, a forced activation that needs a reason and lands in the activation history, the 409
of a version retired behind the page's back, retiring from the page, and a retrain form that omits a blank base
dataset (a last-layer retrain) and shows a refused plan readably."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.frontend.browser_support import make_user, sign_in
from tests.helpers import photo_bytes, write_tiny_model

pytestmark = pytest.mark.browser

# An API string that would run script if the page built HTML from it.
HOSTILE = '<img src=x onerror="document.title=\'pwned\'"> rollback while the gate is fixed'


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_force_activation_needs_a_reason_and_is_audited(live_server, page) -> None:
    state = live_server.app.state
    key = make_user(live_server, "ada", "admin")
    trained = state.settings.trained_models_path
    failed = write_tiny_model(trained, "tiny", "2")
    (failed / "gate.json").write_text(json.dumps({"passed": False, "reasons": ["top-1 dropped by 0.2"]}))
    write_tiny_model(trained, "tiny", "3")  # a trained folder without a gate: a candidate

    page.goto(live_server.url + "/admin")
    sign_in(page, key)

    release = page.locator('#models tr[data-version="tiny/1"]')
    gate_failed = page.locator('#models tr[data-version="tiny/2"]')
    candidate = page.locator('#models tr[data-version="tiny/3"]')
    expect(release).to_contain_text("release")
    expect(release).to_contain_text("released")
    expect(release).to_contain_text("active")
    expect(gate_failed).to_contain_text("trained")
    expect(gate_failed).to_contain_text("gate failed")
    expect(candidate).to_contain_text("candidate")
    # No plain Activate for a failed or unjudged version: only the force flow.
    expect(page.get_by_role("button", name="Activate tiny/2", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Activate tiny/3", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Force activate tiny/3", exact=True)).to_be_visible()

    # Without a reason the API refuses (422), the message is shown in the form, nothing changes.
    page.get_by_role("button", name="Force activate tiny/2", exact=True).click()
    expect(page.locator("#version-action-title")).to_have_text("Force activate tiny/2 (gate failed)")
    expect(page.locator("#version-action-help")).to_contain_text("failed its non-regression gate")
    page.get_by_role("button", name="Confirm force activation of tiny/2").click()
    error = page.locator("#version-action-error")
    expect(error).to_contain_text("needs a reason")
    expect(error).to_contain_text("HTTP 422")
    assert state.registry.current.version == "1"
    page.console_errors.clear()  # the expected 422

    # With a reason it is activated; its state stays gate_failed; the reason is shown as text, never as HTML.
    page.get_by_label("Reason (required, recorded with your name)").fill(HOSTILE)
    page.get_by_role("button", name="Confirm force activation of tiny/2").click()
    expect(page.locator("#models-status")).to_have_text("tiny/2 is now active (forced).")
    assert state.registry.current.version == "2"
    expect(gate_failed).to_contain_text("active")
    expect(gate_failed).to_contain_text("gate failed")
    expect(page.locator("#version-action")).to_be_hidden()

    newest = page.locator("#activations tr").first
    expect(newest).to_contain_text("tiny/2")
    expect(newest).to_contain_text("forced")
    expect(newest).to_contain_text("ada")
    expect(newest).to_contain_text("gate failed")
    expect(newest.locator("td.reason")).to_have_text(HOSTILE)
    expect(newest).to_contain_text("tiny/1")  # the version active before
    expect(page.locator("#activations")).to_contain_text("the service")  # tiny/1's default activation at start
    assert page.locator("#activations img").count() == 0
    assert page.title() != "pwned"
    audit = httpx.get(f"{live_server.url}/api/v1/admin/models/activations", headers=_headers(key)).json()
    assert audit["data"][0]["forced"] is True and audit["data"][0]["reason"] == HOSTILE

    # tiny/1 is retired behind the page's back: its plain Activate now answers 409, shown clearly, and the row
    # is redrawn with the force flow.
    r = httpx.post(f"{live_server.url}/api/v1/admin/models/1/retire", headers=_headers(key), params={"name": "tiny"})
    assert r.status_code == 200, r.text
    page.get_by_role("button", name="Activate tiny/1", exact=True).click()
    models_error = page.locator("#models-error")
    expect(models_error).to_contain_text("tiny/1 is retired")
    expect(models_error).to_contain_text("Force activate")
    expect(models_error).to_contain_text("HTTP 409")
    expect(page.get_by_role("button", name="Force activate tiny/1", exact=True)).to_be_visible()
    expect(release).to_contain_text("retired")
    assert state.registry.current.version == "2"
    page.console_errors.clear()  # the expected 409

    # Retire the candidate from the page (reason optional).
    page.get_by_role("button", name="Retire tiny/3", exact=True).click()
    page.get_by_role("button", name="Confirm retiring tiny/3").click()
    expect(page.locator("#models-status")).to_have_text("tiny/3 is retired.")
    expect(candidate).to_contain_text("retired")
    expect(page.get_by_role("button", name="Retire tiny/3", exact=True)).to_have_count(0)
    # The active version has neither Retire nor Activate.
    expect(page.get_by_role("button", name="Retire tiny/2", exact=True)).to_have_count(0)


def _validated_green_observation(server, volunteer: str, experts: list[str], taxon: str | None = "Callophrys rubi",
                                 status: str = "validated") -> None:
    r = httpx.post(f"{server.url}/api/v1/observations", headers=_headers(volunteer),
                   data={"observed_at": "2024-06-01T10:00:00Z", "latitude": "45.0", "longitude": "5.0",
                         "licence": "CC-BY"},
                   files=[("photos", ("g.jpg", photo_bytes((30, 200, 40)), "image/jpeg"))])
    assert r.status_code == 201, r.text
    obs = r.json()["id"]
    for expert in experts:
        r = httpx.post(f"{server.url}/api/v1/observations/{obs}/identifications", headers=_headers(expert),
                       json={"kind": "propose", "taxon": taxon} if taxon else {"kind": "not_an_insect"})
        assert r.status_code in (200, 201), r.text
    assert httpx.get(f"{server.url}/api/v1/observations/{obs}", headers=_headers(experts[0])).json()["status"] \
        == status


def test_retrain_form_omits_a_blank_base_dataset_and_shows_the_plan(live_server, page, tmp_path: Path) -> None:
    state = live_server.app.state
    key = make_user(live_server, "ada", "admin")
    volunteer = make_user(live_server, "vera", "volunteer")
    experts = [make_user(live_server, "exp1", "expert"), make_user(live_server, "exp2", "expert")]
    _validated_green_observation(live_server, volunteer, experts)
    one_class = tmp_path / "one_class" / "train" / "red_admiral"
    one_class.mkdir(parents=True)
    for i in range(3):
        (one_class / f"r{i}.jpg").write_bytes(photo_bytes((220, 30, 30)))

    page.goto(live_server.url + "/admin")
    sign_in(page, key)
    expect(page.locator("#base-dataset-help")).to_contain_text("from validated photos only")

    def retrain_request(request) -> bool:
        return request.method == "POST" and request.url.endswith("/api/v1/admin/retrain")

    # Blank: the request has no base_dataset field (an empty one would be a 422 on its length); the API asks for
    # a replay kit, which tiny/1 lacks, and the page says so.
    with page.expect_request(retrain_request) as sent:
        page.get_by_role("button", name="Start retraining").click()
    body = sent.value.post_data_json
    assert "base_dataset" not in body and "backbone" not in body and "epochs" not in body, body
    refusal = page.locator("#retrain-error")
    expect(refusal).to_contain_text("has no replay kit")
    expect(refusal).to_contain_text("Model: tiny/1")
    expect(refusal).not_to_contain_text("at least 1 character")
    page.console_errors.clear()  # the expected 422

    # A base dataset of one class: too few classes; the plan in the 422 names the label below the minimum.
    page.get_by_label("Base dataset").fill(str(tmp_path / "one_class"))
    with page.expect_request(retrain_request) as sent:
        page.get_by_role("button", name="Start retraining").click()
    assert sent.value.post_data_json["base_dataset"] == str(tmp_path / "one_class")
    expect(refusal).to_contain_text("too few classes")
    expect(refusal).to_contain_text("Plan: full retrain on the base dataset")
    expect(refusal).to_contain_text("Classes in the base dataset: 1")
    expect(refusal).to_contain_text(
        "Below the minimum of 10 validated photos (not learnt): green_hairstreak (1 photo)")
    page.console_errors.clear()  # the expected 422

    # With tiny/1's replay kit, a blank base dataset queues a last-layer retrain.
    pytest.importorskip("torch")
    from tests.service.jobs_support import base_dataset
    from training.data import read_imagefolder
    from training.replay import build_kit

    splits, _, _ = read_imagefolder(base_dataset(tmp_path / "original", n_train=4, n_valid=3))
    build_kit(state.settings.models_dir / "tiny" / "1", splits,
              state.settings.data_dir / "replay" / "tiny" / "1", per_class=4)
    page.get_by_label("Base dataset").fill("")
    # tiny/1 knows green_hairstreak, so a last-layer retrain has nothing to learn from it (a 422 at request time);
    # a photo the specialists call "not an insect" is a new class, no_insect, once the minimum is 1.
    _validated_green_observation(live_server, volunteer, experts, taxon=None, status="not_an_insect")
    page.get_by_label("Photos a new class needs").fill("1")
    with page.expect_request(retrain_request) as sent:
        page.get_by_role("button", name="Start retraining").click()
    assert "base_dataset" not in sent.value.post_data_json
    status = page.locator("#retrain-status")
    expect(status).to_contain_text("last layer of tiny/1, no base photos")
    expect(refusal).to_be_hidden()
    jobs = httpx.get(f"{live_server.url}/api/v1/admin/jobs", headers=_headers(key)).json()["data"]
    assert len(jobs) == 1
    assert jobs[0]["params"]["base_dataset"] is None and jobs[0]["params"]["plan"]["strategy"] == "head"
    assert jobs[0]["params"]["plan"]["known_class_photos"] == {"green_hairstreak": 1}
    expect(page.locator(f'#jobs tr[data-job="{jobs[0]["id"]}"]')).to_contain_text("(last layer)")
