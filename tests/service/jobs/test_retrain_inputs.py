"""Issue 16, items 4 and 5: retrain ``options`` cannot override validated fields, and retrain paths stay
inside the configured data folders (``POLLINID_RETRAIN_DATA_ROOTS``) without revealing what exists elsewhere.

The ``settings`` fixture allows the test's own ``tmp_path`` as the one data folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from tests.service.jobs_support import base_dataset
from tests.service.observation_support import Env, env  # noqa: F401

URL = "/api/v1/admin/retrain"


def _post(env: Env, body: dict[str, Any]) -> Any:  # noqa: F811
    return env.client.post(URL, headers=env.h("admin"), json=body)


@pytest.mark.parametrize("options", [
    {"epochs": 100000}, {"workers": 1000}, {"batch_size": 10**9}, {"device": "cuda:99"},
    {"backbone": "../../../../tmp/evil"}, {"weights": "/etc/passwd"}, {"lr": 1e9}, {"threads": 10**6},
    {"data": "/etc"}, {"export_dir": "/tmp/x"},
])
def test_options_cannot_name_validated_or_reserved_fields(env: Env, tmp_path: Path,  # noqa: F811
                                                          options: dict[str, Any]) -> None:
    base = base_dataset(tmp_path / "base", n_train=2, n_valid=1)
    r = _post(env, {"base_dataset": str(base), "options": options})
    assert r.status_code == 422, r.text
    body = r.json()["error"]
    assert body["code"] == "invalid_request" and next(iter(options)) in body["message"]


@pytest.mark.parametrize("options", [
    {"patience": "soon"}, {"patience": -1}, {"warmup_epochs": 1e9}, {"label_smoothing": 1.5},
    {"optimizer": "lion"}, {"mean": [1e9, 0, 0]}, {"std": [1, 2]}, {"augment": {"hflip": 3}},
    {"augment": {"evil": 1}}, {"augment": {"scale": [0.9, 0.1]}}, {"no_such_option": 1},
    {"resize": 10**7}, {"max_grad_norm": -1},
])
def test_options_are_validated_themselves(env: Env, tmp_path: Path, options: dict[str, Any]) -> None:  # noqa: F811
    base = base_dataset(tmp_path / "base", n_train=2, n_valid=1)
    r = _post(env, {"base_dataset": str(base), "options": options})
    assert r.status_code == 422, (options, r.text)
    assert r.json()["error"]["code"] == "invalid_request"


def test_valid_options_are_kept(env: Env, tmp_path: Path) -> None:  # noqa: F811
    base = base_dataset(tmp_path / "base", n_train=2, n_valid=1)
    options = {"amp": False, "warmup_epochs": 0.0, "patience": 50, "augment": {"hflip": 0.2, "scale": [0.5, 1.0]},
               "mean": [0.5, 0.5, 0.5]}
    r = _post(env, {"base_dataset": str(base), "options": options})
    assert r.status_code == 201, r.text
    assert r.json()["params"]["options"] == options


def test_top_level_backbone_cannot_climb_out(env: Env, tmp_path: Path) -> None:  # noqa: F811
    base = base_dataset(tmp_path / "base", n_train=2, n_valid=1)
    for backbone in ("../../../../tmp/evil", "/etc/passwd", "a/../../b"):
        assert _post(env, {"base_dataset": str(base), "backbone": backbone}).status_code == 422, backbone


def test_paths_must_resolve_inside_the_data_folders(env: Env, tmp_path: Path) -> None:  # noqa: F811
    assert env.settings.retrain_data_roots == [tmp_path]
    base = base_dataset(tmp_path / "base", n_train=2, n_valid=1)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir(exist_ok=True)
    (outside / "w.pt").write_bytes(b"x")
    (tmp_path / "escape").symlink_to(outside, target_is_directory=True)

    answers = []
    for path in ("/etc", "/nonexistent/../../etc", "/definitely/not/here", str(outside), "escape",
                 f"{tmp_path}/../{outside.name}", "~root", "~nosuchuser/x", "base\x00x", "/" + "a" * 300,
                 "a" * 300, "a/" * 1500):
        r = _post(env, {"base_dataset": path})
        assert r.status_code == 422, (path, r.status_code, r.text)
        answers.append(r.json()["error"])
    # Outside the folders, existing or not, the answer is the same: nothing to probe.
    outside_answers = answers[:6]
    assert all(a == outside_answers[0] for a in outside_answers), outside_answers
    assert "/etc" not in str(outside_answers[0]) and "exist" not in outside_answers[0]["message"]

    weights = [_post(env, {"base_dataset": str(base), "weights": w}).json() for w in
               ("/etc/shadow", "/etc/passwd", "/no/such/weights.pt", str(outside / "w.pt"), "escape/w.pt")]
    assert all("error" in w for w in weights), weights
    assert all(w == weights[0] for w in weights), weights

    # Inside: relative paths are taken inside the folder, and the stored path is the real one.
    r = _post(env, {"base_dataset": "base"})
    assert r.status_code == 201, r.text
    assert r.json()["params"]["base_dataset"] == str(base.resolve())
    (tmp_path / "weights.pt").write_bytes(b"w")
    r = _post(env, {"base_dataset": str(base), "weights": "weights.pt"})
    assert r.status_code == 201 and r.json()["params"]["weights"] == str((tmp_path / "weights.pt").resolve())
    r = _post(env, {"base_dataset": "nowhere"})
    assert r.status_code == 422 and "does not exist" in r.json()["error"]["message"]


def test_data_roots_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.jobs.retrain import data_roots

    monkeypatch.setenv("POLLINID_RETRAIN_DATA_ROOTS", f"{tmp_path / 'a'}, {tmp_path / 'b'}")
    s = Settings(data_dir=tmp_path / "data")
    assert s.retrain_data_roots == [tmp_path / "a", tmp_path / "b"]
    monkeypatch.delenv("POLLINID_RETRAIN_DATA_ROOTS")
    assert data_roots(Settings(data_dir=tmp_path / "data")) == [(tmp_path / "data" / "datasets").resolve()]
