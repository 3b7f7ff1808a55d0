"""Model version states: releases and trained candidates, and what each state allows.

A version is one of

* ``released``: a model shipped with pollinid (the read-only bundled ``models/`` folder, or
  ``POLLINID_MODELS_DIR``), or a trained version an admin activated after it passed its gate;
* ``candidate``: a trained version whose gate has not decided yet;
* ``gate_passed`` / ``gate_failed``: a trained version the non-regression gate judged (``gate.json``);
* ``retired``: withdrawn by an admin; kept on disk for the record.

Trained versions live in a writable folder under the data folder (``POLLINID_TRAINED_MODELS_DIR``, default
``<data_dir>/models``), never in the installed package. The state is kept in the ``model_versions`` table and
written into the trained version's card (``model.json``, key ``status``), so that a fresh database reads the
same state from disk. When nothing is active, only ``released`` versions (then ``gate_passed`` ones) are ever
activated by default; a ``candidate``, ``gate_failed`` or ``retired`` version is activated only by an admin
with ``force`` and a reason, and every activation is recorded (``model_activations``).
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Any

from service.core.modelcard import CARD_FILENAME


class VersionState(StrEnum):
    candidate = "candidate"
    gate_passed = "gate_passed"
    gate_failed = "gate_failed"
    released = "released"
    retired = "retired"


class Origin(StrEnum):
    release = "release"  # shipped: the (read-only) models folder
    trained = "trained"  # written by a retrain job into the trained models folder


STATES: tuple[str, ...] = tuple(s.value for s in VersionState)
# States a version may be activated in by default, best first.
DEFAULT_STATES: tuple[str, ...] = (VersionState.released.value, VersionState.gate_passed.value)
# States whose activation needs ``force`` and a reason.
FORCE_STATES: frozenset[str] = frozenset({VersionState.candidate.value, VersionState.gate_failed.value,
                                          VersionState.retired.value})
GATE_FILENAME = "gate.json"
# A version's replay kit (training/replay.py): features for retrains without the original photos.
REPLAY_FILENAME = "replay.npz"
REPLAY_META_FILENAME = "replay.json"


def disk_state(card: Any, folder: Path, origin: str) -> str:
    """The state a version folder says it is in, for a database that has no row for it yet.

    The card's ``status`` wins; else a ``gate.json`` decides (a folder a retrain wrote before states existed,
    even inside the releases folder); else a card with retrain provenance is a candidate; else a folder of
    the releases folder is released and one of the trained folder a candidate.
    """
    status = getattr(card, "status", None) if card is not None else None
    if isinstance(status, str) and status in STATES:
        return status
    gate = folder / GATE_FILENAME
    if gate.is_file():
        try:
            passed = json.loads(gate.read_text(encoding="utf-8")).get("passed")
        except (OSError, ValueError, AttributeError):
            passed = None
        if passed is True:
            return VersionState.gate_passed.value
        if passed is False:
            return VersionState.gate_failed.value
    training = getattr(card, "training", None) if card is not None else None
    if isinstance(training, dict) and training.get("retrain"):
        return VersionState.candidate.value
    return VersionState.released.value if origin == Origin.release else VersionState.candidate.value


def write_card_state(folder: Path, state: str, *, reason: str | None = None) -> bool:
    """Write ``status`` (and ``status_reason``) into a trained version's ``model.json``, atomically.

    Returns False when the card cannot be written (a read-only release): the database still holds the state.
    """
    path = folder / CARD_FILENAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("status") == state and data.get("status_reason") == reason:
            return True
        data["status"] = state
        data["status_reason"] = reason
        tmp = folder / f".{CARD_FILENAME}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return True
    except (OSError, ValueError):
        return False


async def attach_trained_models(registry: Any, trained_dir: Path) -> None:
    """Give a started registry the trained models folder and register what it holds (state from disk)."""
    import asyncio

    registry.trained_dir = trained_dir
    await asyncio.to_thread(registry.scan)
