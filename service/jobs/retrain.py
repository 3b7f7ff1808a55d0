"""Retrain jobs, the service side: check the request, prepare the data, then register and gate the result.

The training itself runs in a child process (``python -m training.worker_entry spec.json``; see
:mod:`service.jobs.worker`), so the service never imports PyTorch. This module:

1. :func:`check_request` turns an admin's :class:`~service.jobs.params.RetrainCreate` into the job's
   :class:`~service.jobs.params.RetrainParams` (the base dataset must exist on the server, the model name is
   known, the version is free);
2. :func:`prepare` writes, for one attempt, the validated observations as a training manifest (the
   service's own export, :func:`service.exports.training_manifest.write_training_manifest`), their taxonomy, and the
   child's :class:`~service.jobs.protocol.RetrainSpec` (``spec.json``); it picks the new version and reserves
   its folder (:func:`release_reservation` gives it back);
3. :func:`complete` registers the exported candidate as a model version, applies the non-regression gate
   (:mod:`service.jobs.gate`) to the two metric sets the child measured, writes ``gate.json`` next to the
   model, and activates the candidate when ``auto_activate`` is set and it passed.

With an object store (``POLLINID_OBJECT_STORE_URL``), :func:`prepare` downloads the photos of the manifest
into the attempt's folder (the child reads local files) and the active version into the model cache, and
:func:`complete` uploads the exported version (:func:`service.store.model_objects.upload_version`) before it
is registered, so that every replica can load it.

:class:`RetrainHandler` is the worker's handle on these steps (:mod:`service.jobs.handlers`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.core.errors import Conflict, InvalidRequest
from service.core.languages import COMMON_NAME_PREFIX
from service.core.modelcard import CARD_FILENAME, NOT_A_TAXON, ONNX_FILENAME, RANKS
from service.core.taxonomy import NO_INSECT
from service.exports.lookups import TaxonCache as _Taxa
from service.exports.training_manifest import write_training_manifest
from service.inference.classifier import RuntimeOptions
from service.inference.registry import ModelRegistry
from service.inference.versions import VersionState, write_card_state
from service.jobs.gate import GateConfig, compare
from service.jobs.handlers import Attempt
from service.jobs.params import RetrainCreate, RetrainParams
from service.jobs.protocol import RESULT_FILENAME, SPEC_FILENAME, RetrainSpec
from service.jobs.retrain_plan import plan_retrain, replay_kit
from service.settings import Settings
from service.store.model_objects import fetch_version, read_manifest, upload_version
from service.store.objects import media_store, model_store
from service.store.storage import fetch_media
from service.store.tables import ModelVersion, Taxon, TaxonLabel, TaxonName

logger = logging.getLogger(__name__)

DATASET_SUFFIXES = (".csv", ".json")
TAXONOMY_COLUMNS = ("label", "scientific_name", "common_name", "rank", "genus", "family", "order")


def _active_row(session: Session) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))
                           .order_by(ModelVersion.activated_at.desc())).first()


def data_roots(settings: Settings) -> list[Path]:
    """The folders retrain inputs may come from (``settings.retrain_data_roots``, else data_dir/datasets)."""
    roots = list(settings.retrain_data_roots) or [settings.data_dir / "datasets"]
    return [Path(os.path.realpath(r)) for r in roots]


def resolve_in_roots(value: str, roots: list[Path], *, field: str, want_file: bool = False) -> Path:
    """The real path of ``value`` if it lies inside one of ``roots`` and exists there.

    Symbolic links and ``..`` are followed before the check, ``~`` is not expanded, and a relative path is
    taken inside each root in turn. The error says the same whether or not something exists outside the
    roots, so a request cannot probe the server's file system.

    Raises:
        InvalidRequest: a NUL byte, an unusable path, a path outside the roots, or nothing there.
    """
    hint = "a path inside the retrain data folders (POLLINID_RETRAIN_DATA_ROOTS)"
    outside = InvalidRequest(f"{field} must be {hint}", detail={"field": field})
    if not value or "\x00" in value or len(value) > 4096:
        raise outside
    candidates = [Path(value)] if os.path.isabs(value) else [root / value for root in roots]
    for candidate in candidates:
        try:
            real = Path(os.path.realpath(candidate))
        except (OSError, ValueError):
            raise outside from None
        root = next((r for r in roots if real == r or real.is_relative_to(r)), None)
        if root is None:
            continue
        try:
            found = real.is_file() if want_file else real.exists()
        except (OSError, ValueError):
            found = False
        if found:
            return real
    if any(_inside(c, roots) for c in candidates):
        what = "file" if want_file else "file or folder"
        raise InvalidRequest(f"{field} {value!r} does not exist in the retrain data folders (no such {what})",
                             detail={"field": field})
    raise outside


def _inside(candidate: Path, roots: list[Path]) -> bool:
    try:
        real = Path(os.path.realpath(candidate))
    except (OSError, ValueError):
        return False
    return any(real == r or real.is_relative_to(r) for r in roots)


def check_request(body: RetrainCreate, *, session: Session, settings: Settings) -> dict[str, Any]:
    """Validate a retrain request against the server; return the job's params (a
    :class:`~service.jobs.params.RetrainParams` as JSON, as the job's row stores them).

    Raises:
        InvalidRequest: the base dataset or weights are outside the retrain data folders, missing, or of an
            unknown kind; no model name can be chosen.
        Conflict: the requested version already exists.
    """
    roots = data_roots(settings)
    base: Path | None = None
    if body.base_dataset is not None:
        base = resolve_in_roots(body.base_dataset, roots, field="base_dataset")
        if base.is_file() and base.suffix.lower() not in DATASET_SUFFIXES:
            raise InvalidRequest(f"base dataset {body.base_dataset!r}: expected a folder, a .csv manifest or a "
                                 "COCO/iNat .json file")
        if not base.is_dir() and not base.is_file():
            raise InvalidRequest(f"base dataset {body.base_dataset!r} is neither a folder nor a file")
    weights = (resolve_in_roots(body.weights, roots, field="weights", want_file=True)
               if body.weights is not None else None)
    name = body.name
    if name is None:
        active = _active_row(session)
        if active is None:
            raise InvalidRequest("no model is active: give the new model's name")
        name = active.name
    if body.version is not None:
        exists = session.scalar(select(ModelVersion.id).where(ModelVersion.name == name,
                                                              ModelVersion.version == body.version))
        folders = (settings.models_dir / name / body.version, settings.trained_models_path / name / body.version)
        store = model_store(settings)
        if (exists is not None or any(f.exists() for f in folders)
                or (store is not None and read_manifest(store, name, body.version) is not None)):
            raise Conflict(f"model {name}/{body.version} already exists; choose another version")
    params = RetrainParams.model_validate({
        **body.model_dump(),
        "base_dataset": str(base) if base is not None else None,
        "name": name,
        "weights": str(weights) if weights is not None else body.weights,
        "min_new_class_photos": (body.min_new_class_photos if body.min_new_class_photos is not None
                                 else settings.retrain_min_new_class_photos),
    })
    # Work out what it would train on; a request bound to fail is refused here (422), not queued.
    params.plan = plan_retrain(params, session=session, settings=settings)
    return params.model_dump(mode="json")


def _versions_on_disk(folders: list[Path], name: str) -> list[str]:
    return [p.name for f in folders if (f / name).is_dir() for p in (f / name).iterdir()]


def _next_version(models_dir: Path, name: str, existing: list[str], job_id: int) -> str:
    """The next free version: one more than the largest numeric version, else ``r<job id>``."""
    on_disk = _versions_on_disk([models_dir], name)
    numbers = [int(v) for v in {*existing, *on_disk} if re.fullmatch(r"\d{1,9}", v)]
    if numbers or not (existing or on_disk):
        return str(max(numbers, default=0) + 1)
    return f"r{job_id}"


def _reserve_version(models_dir: Path, name: str, wanted: str | None, existing: list[str],
                     job_id: int) -> str:
    """Create the version's folder atomically (two jobs never share one) and return the version.

    ``models_dir`` is the trained models folder; ``existing`` also holds the released versions.
    """
    (models_dir / name).mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        version = wanted or _next_version(models_dir, name, existing, job_id)
        folder = models_dir / name / version
        try:
            folder.mkdir()
            return version
        except FileExistsError:
            if wanted is not None:
                if not (folder / ONNX_FILENAME).exists() and not any(folder.iterdir()):
                    return version  # our own reservation from an earlier attempt of this job
                raise Conflict(f"model {name}/{version} already exists") from None
            existing = [*existing, version]
    raise Conflict(f"could not find a free version for model {name}")


def observation_taxonomy(session: Session, labels: set[str]) -> dict[str, dict[str, str | None]]:
    """Taxonomy rows (``scientific_name, common_name, rank, genus, family, order``, and ``common_name_<code>``
    for the names in other languages the ``taxon_names`` table has) for manifest labels.

    A label keeps its taxon's own rank (``bombus``: genus Bombus, with its family and order); ``no_insect``
    (photos the specialists found no insect in) is rank ``none``, not a taxon.
    """
    taxa = _Taxa(session)
    by_label: dict[str, int] = {str(r[0]): int(r[1]) for r in session.execute(
        select(TaxonLabel.label, TaxonLabel.taxon_id))}
    out: dict[str, dict[str, str | None]] = {}
    for label in sorted(labels):
        if label == NO_INSECT:
            out[label] = {"scientific_name": None, "common_name": "No insect", "rank": NOT_A_TAXON,
                          "genus": None, "family": None, "order": None}
            continue
        taxon: Taxon | None = taxa.get(by_label.get(label))
        if taxon is None:
            taxon = session.scalars(select(Taxon).where(Taxon.scientific_name == label,
                                                        Taxon.rank != NOT_A_TAXON).order_by(Taxon.id)).first()
        if taxon is None:
            continue
        lineage = taxa.lineage(taxon)
        out[label] = {
            "scientific_name": taxon.scientific_name,
            "common_name": taxon.common_name,
            "rank": taxon.rank if taxon.rank in RANKS else "species",
            "genus": lineage.get("genus"),
            "family": lineage.get("family"),
            "order": lineage.get("order"),
            **{f"{COMMON_NAME_PREFIX}{n.language}": n.name
               for n in session.scalars(select(TaxonName).where(TaxonName.taxon_id == taxon.id))},
        }
    return out


def _since_text(params: RetrainParams) -> str | None:
    """``observations_since`` as the job's params hold it (JSON)."""
    since: str | None = params.model_dump(mode="json", include={"observations_since"})["observations_since"]
    return since


def prepare(job_id: int, params: RetrainParams, *, factory: sessionmaker[Session], settings: Settings,
            work_dir: Path) -> RetrainSpec:
    """Write this attempt's inputs into ``work_dir`` and return the child's spec (also in ``spec.json``)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    name = params.name
    manifest: Path | None = None
    taxonomy: Path | None = None
    observations = photos = 0
    with factory() as session:
        if params.include_observations:
            manifest = work_dir / "observations.csv"
            photo_store = media_store(settings)
            # The child reads local files: photos in an object store are fetched into this attempt's folder.
            media_root = None if photo_store.is_local else work_dir / "photos"
            exported = write_training_manifest(session, settings, manifest, since=params.observations_since,
                                               media_root=media_root)
            observations, photos = exported.records, exported.media
            with manifest.open(newline="", encoding="utf-8") as fh:
                manifest_rows = list(csv.DictReader(fh))
            labels = {row["label"] for row in manifest_rows}
            if media_root is not None:
                fetch_media(photo_store, {Path(row["path"]).name for row in manifest_rows}, media_root)
            taxonomy = work_dir / "observations_taxonomy.csv"
            rows = observation_taxonomy(session, labels)
            # The names in other languages go along (common_name_<code>), so the new card keeps them.
            languages = sorted({k for info in rows.values() for k in info if k.startswith(COMMON_NAME_PREFIX)})
            with taxonomy.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=[*TAXONOMY_COLUMNS, *languages], restval="")
                writer.writeheader()
                for label, info in rows.items():
                    writer.writerow({"label": label, **{k: v or "" for k, v in info.items()}})
        row = _active_row(session)
        # The gate compares with the active version of the same model; another model's classes are not
        # this candidate's to keep.
        active = (row.name, row.version, row.path) if row is not None and row.name == name else None
        existing = list(session.scalars(select(ModelVersion.version).where(ModelVersion.name == name)))
        session.rollback()
    # Trained versions go to the data folder's trained models folder, never into the releases (the package).
    existing += _versions_on_disk([settings.models_dir], name)
    version = _reserve_version(settings.trained_models_path, name, params.version, existing, job_id)
    active_folder = None
    if active is not None and not (Path(active[2]) / ONNX_FILENAME).is_file():
        store = model_store(settings)  # trained on another host: this worker's cached copy
        fetched = (fetch_version(store, active[0], active[1], settings.model_cache_path)
                   if store is not None else None)
        if fetched is not None:
            active = (active[0], active[1], str(fetched))
    if active is not None and (Path(active[2]) / ONNX_FILENAME).is_file():
        active_folder = str(Path(active[2]).resolve())
    strategy = params.plan.get("strategy", "train")
    kit = params.plan.get("replay_kit")
    if strategy == "head" and active is not None:
        # The kit of the version active now (another may have been activated since the request).
        found = replay_kit(settings, active[0], active[1], Path(active[2]))
        kit = str(found) if found is not None else None
    train = {
        "backbone": params.backbone, "pretrained": params.pretrained, "mode": params.mode,
        "epochs": params.epochs, "batch_size": params.batch_size, "lr": params.lr,
        "views": params.views, "holdout": params.holdout, "workers": params.workers,
        "threads": params.threads, "device": params.device, "seed": params.seed,
        **({"weights": params.weights} if params.weights else {}),
        **({"input_size": params.input_size} if params.input_size else {}),
        **params.options,
    }
    spec = RetrainSpec(
        job_id=job_id,
        work_dir=str(work_dir),
        base_dataset=params.base_dataset,
        observations_manifest=str(manifest) if manifest else None,
        observations_taxonomy=str(taxonomy) if taxonomy else None,
        observations_exported={"observations": observations, "photos": photos, "since": _since_text(params)},
        min_new_class_photos=params.min_new_class_photos,
        strategy=strategy,
        replay_kit=kit,
        gate_holdout=params.gate_holdout,
        gate_min_class_support=params.min_class_support,
        seed=params.seed,
        active_model=active_folder,
        active_model_ref=f"{active[0]}/{active[1]}" if active is not None else None,
        name=name,
        version=version,
        export_dir=str((settings.trained_models_path / name / version).resolve()),
        train=train,
    )
    spec.write(work_dir / SPEC_FILENAME)
    return spec


def release_reservation(spec: RetrainSpec) -> None:
    """Remove the version folder reserved by :func:`prepare` if nothing was exported into it."""
    folder = Path(spec.export_dir)
    try:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    except OSError:
        pass


def complete(spec: RetrainSpec, child: dict[str, Any], params: RetrainParams, *,
             factory: sessionmaker[Session], settings: Settings) -> dict[str, Any]:
    """Register the candidate, apply the gate, maybe activate; return the job's result."""
    name, version = spec.name, spec.version
    folder = Path(spec.export_dir)
    if not (folder / ONNX_FILENAME).is_file() or not (folder / CARD_FILENAME).is_file():
        raise RuntimeError(f"the training child finished but {folder} holds no exported model")
    evaluation = child.get("gate_evaluation") or {}
    config = GateConfig(tolerance=params.tolerance, class_margin=params.class_margin,
                        min_class_support=params.min_class_support,
                        new_class_min_recall=params.new_class_min_recall)
    decision = compare(evaluation.get("candidate") or {}, evaluation.get("active"), config,
                       evaluation.get("new_classes"))
    gate = {
        **decision,
        "active_model": spec.active_model_ref,
        "candidate_model": f"{name}/{version}",
        "evaluation_photos": evaluation.get("photos"),
        "common_labels": evaluation.get("common_labels"),
        "candidate_all_classes": evaluation.get("candidate_all"),
    }
    tmp = folder / ".gate.json.tmp"
    tmp.write_text(json.dumps(gate, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, folder / "gate.json")
    state = VersionState.gate_passed if decision["passed"] else VersionState.gate_failed
    reason = "; ".join(decision["reasons"][:3])
    # The state goes into the card first, so that a fresh database reads it from disk too.
    write_card_state(folder, state.value, reason=reason)
    store = model_store(settings)
    if store is not None:  # shared before it is registered: a row never names a version other hosts lack
        upload_version(store, folder, name, version)
    options = RuntimeOptions(providers="cpu", intra_op_threads=1)
    registry = ModelRegistry(settings.models_dir, factory, options, trained_dir=settings.trained_models_path,
                             object_store=store, cache_dir=settings.model_cache_path)
    registry.scan()  # registers the new version's row (its card is read, not yet loaded)
    registry.set_state(name, version, state.value, reason=reason)
    activated = False
    activation_error = None
    if params.auto_activate:
        if decision["passed"]:
            try:
                registry.activate(name, version,
                                  reason=f"retrain job {spec.job_id}: auto_activate after passing the gate")
                activated = True
            except Exception as exc:  # an invalid export must not fail the job's bookkeeping
                activation_error = str(getattr(exc, "message", exc))
                logger.error("candidate %s/%s passed the gate but cannot be activated: %s", name, version,
                             activation_error)
        else:
            logger.info("candidate %s/%s did not pass the gate: %s", name, version, decision["reasons"])
    return {
        "model": {"name": name, "version": version, "path": str(folder), "state": (
            VersionState.released.value if activated else state.value)},
        "gate": gate,
        "activated": activated,
        "activation_error": activation_error,
        "data": child.get("data"),
        "training": child.get("training"),
    }


class RetrainHandler:
    """Retrain jobs (see :class:`service.jobs.handlers.JobHandler`): the child is ``training.worker_entry``."""

    downloadable = False

    def prepare(self, attempt: Attempt) -> RetrainSpec:
        params = RetrainParams.model_validate(attempt.job.params)
        spec = prepare(attempt.job.id, params, factory=attempt.factory, settings=attempt.settings,
                       work_dir=attempt.work_dir)
        exported = spec.observations_exported
        attempt.log(f"training {spec.name}/{spec.version} from "
                    f"{spec.base_dataset or 'the active model and its replay kit (last layer only)'}"
                    f" + {exported['observations']} validated observations ({exported['photos']} photos)")
        return spec

    def command(self, spec: RetrainSpec, attempt: Attempt) -> list[str]:
        return [sys.executable, "-m", "training.worker_entry", str(attempt.spec_path)]

    def complete(self, spec: RetrainSpec, attempt: Attempt) -> dict[str, Any]:
        child = json.loads((attempt.work_dir / RESULT_FILENAME).read_text(encoding="utf-8"))
        attempt.log("registering the candidate and applying the gate")
        return complete(spec, child, RetrainParams.model_validate(attempt.job.params), factory=attempt.factory,
                        settings=attempt.settings)

    def release(self, spec: RetrainSpec, attempt: Attempt) -> None:
        release_reservation(spec)

    def summary(self, spec: RetrainSpec, result: dict[str, Any]) -> str:
        gate = result.get("gate") or {}
        model = result.get("model") or {}
        return (f"candidate {model.get('name')}/{model.get('version')}: gate "
                f"{'passed' if gate.get('passed') else 'failed'} ({'; '.join(gate.get('reasons', []))}); "
                f"{'activated' if result.get('activated') else 'not activated'}")
