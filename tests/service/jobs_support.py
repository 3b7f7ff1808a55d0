"""Helpers for the job, worker and retrain tests: a weak active model, a base dataset, validated data."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service.core.modelcard import LabelTaxon
from tests.helpers import tiny_card, tiny_onnx_bytes
from tests.service.observation_support import Env
from tests.training.conftest import color_photo, make_imagefolder

YELLOW = (230, 220, 30)
PURPLE = (140, 40, 160)
NEW_TAXA: dict[str, LabelTaxon] = {
    "brimstone": LabelTaxon(scientific_name="Gonepteryx rhamni", common_name="Brimstone", genus="Gonepteryx",
                            family="Pieridae", order="Lepidoptera"),
    "purple_emperor": LabelTaxon(scientific_name="Apatura iris", common_name="Purple emperor",
                                 genus="Apatura", family="Nymphalidae", order="Lepidoptera"),
}
TRAIN_OPTIONS: dict[str, Any] = {
    "backbone": "tiny_cnn", "pretrained": False, "mode": "full", "epochs": 8, "batch_size": 8, "lr": 0.01,
    "input_size": 32, "views": 1, "workers": 0, "threads": 1, "device": "cpu",
    "options": {"amp": False, "warmup_epochs": 0.0, "patience": 50},
}


def write_weak_model(models_dir: Path, name: str = "tiny", version: str = "1") -> Path:
    """A real ONNX colour model that gets red and blue right but calls every green photo blue."""
    # Rows are the input channels (R, G, B), columns the classes: nothing ever votes for green.
    weights = np.array([[8.0, 0.0, -4.0], [-4.0, 0.0, 4.0], [-4.0, 0.0, 4.0]], dtype=np.float32)
    folder = models_dir / name / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(tiny_onnx_bytes(3, weights=weights))
    tiny_card(name, version).save(folder)
    return folder


def base_dataset(root: Path, n_train: int = 10, n_valid: int = 4) -> Path:
    """An ImageFolder of red, green and blue photos with ``train``/``valid`` splits and a taxonomy."""
    return make_imagefolder(root, n_train=n_train, n_valid=n_valid)


def jpeg(color: tuple[int, int, int], seed: int) -> bytes:
    buf = io.BytesIO()
    color_photo(color, (40, 32), seed=seed).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def add_new_taxa(env: Env) -> None:
    from service.observations.taxa import sync_taxa

    with env.session() as session:
        sync_taxa(session, NEW_TAXA)
        session.commit()


def validated_observation(env: Env, who: str, color: tuple[int, int, int], taxon: str, seed: int,
                          photos: int = 1) -> int:
    """A volunteer's observation that two experts identify as ``taxon`` (so it is validated)."""
    r = env.post_obs(who, photos=[jpeg(color, seed * 10 + i) for i in range(photos)])
    assert r.status_code == 201, r.text
    obs_id = int(r.json()["id"])
    for expert in ("exp", "exp2"):
        r = env.identify(expert, obs_id, "propose", taxon=taxon)
        assert r.status_code in (200, 201), r.text
    r = env.client.get(f"/api/v1/observations/{obs_id}", headers=env.h("admin"))
    assert r.json()["status"] == "validated", r.json()
    return obs_id


def wait_for(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, *, what: str | None = None,
             logs: Callable[[], str] | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds, naming ``what`` (else
    ``check``) and showing ``logs()`` when given."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            message = f"timed out after {timeout} s waiting for {what or check}"
            raise AssertionError(message + (f"\n{logs()}" if logs else ""))
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): look at its state.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
