"""A wheel install (the README's first command) carries the bundled model and the web pages."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_install_finds_the_bundled_model_and_pages(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, cwd=tmp_path)
    probe = (
        "from service.settings import Settings; s = Settings(data_dir='d'); "
        "import service.inference.registry as r; entries = r.scan_models(s.models_dir); "
        "print(s.models_dir); print(s.frontend_dir); print(len(entries)); "
        "from service.core.languages import languages; print(','.join(languages()))"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}).stdout.split()
    models_dir, frontend_dir, count, spoken = Path(out[0]), Path(out[1]), int(out[2]), out[3].split(",")
    assert models_dir.is_relative_to(target) and frontend_dir.is_relative_to(target)
    assert (frontend_dir / "index.html").is_file() and (frontend_dir / "static" / "api.js").is_file()
    # The language catalogues (read by the service too) and the offline map's data ship with the pages.
    assert spoken[0] == "en" and "fr" in spoken
    assert (frontend_dir / "static" / "map" / "world-110m.json").is_file()
    bundled = sorted(p.relative_to(ROOT / "models") for p in (ROOT / "models").glob("*/*/model.onnx"))
    assert count == len(bundled) >= 1
    for rel in bundled:
        assert (models_dir / rel).is_file() and (models_dir / rel).with_name("model.json").is_file()
    # The reference photos ship beside the versions (and are not taken for one: count above).
    references = sorted(p.name for p in (ROOT / "models" / "references").iterdir())
    assert "index.json" in references and len(references) > 100
    assert sorted(p.name for p in (models_dir / "references").iterdir()) == references


RETRAIN_PROBE = r"""
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
from service.jobs import rows as jobs
from service.store.db import create_db_engine, init_db, make_session_factory
from service.jobs.retrain import check_request
from service.api.schemas.jobs import RetrainCreate
from service.settings import Settings
from service.jobs.worker import Worker

work = Path(sys.argv[1])
base = work / "roots" / "colours"
rng = np.random.default_rng(0)
for split, n in (("train", 6), ("valid", 3)):
    for label, color in (("red", (220, 30, 30)), ("green", (30, 200, 40)), ("blue", (30, 40, 220))):
        folder = base / split / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.clip(np.array(color) + rng.integers(-30, 31, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr, "RGB").save(folder / f"{i}.jpg")
settings = Settings(data_dir=work / "data", retrain_data_roots=[work / "roots"])
engine = create_db_engine(settings.resolved_database_url)
init_db(engine)
factory = make_session_factory(engine)
body = RetrainCreate(base_dataset=str(base), name="colours", include_observations=False, backbone="tiny_cnn",
                     pretrained=False, mode="full", epochs=1, batch_size=8, input_size=32, views=1, workers=0,
                     threads=1, device="cpu", options={"amp": False, "warmup_epochs": 0.0})
with factory() as session:
    params = check_request(body, session=session, settings=settings)
    job = jobs.create_job(session=session, kind="retrain", params=params, created_by=None)
    session.commit()
    job_id = job.id
Worker(settings, factory, worker_id="wheel").run_once()
with factory() as session:
    row = jobs.get_job(session=session, job_id=job_id)
    print(json.dumps({"state": row.state, "error": row.error, "result": row.result}, default=str))
"""


@pytest.mark.slow
def test_a_retrain_in_a_wheel_install_writes_nothing_inside_the_package(tmp_path):
    pytest.importorskip("torch")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, cwd=tmp_path)

    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p.relative_to(target)): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in target.rglob("*") if p.is_file()}

    before = snapshot()
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1",
           "HOME": str(tmp_path)}
    work = tmp_path / "work"
    out = subprocess.run([sys.executable, "-c", RETRAIN_PROBE, str(work)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    job = json.loads(out.stdout.strip().splitlines()[-1])
    assert job["state"] == "succeeded", (job["error"], out.stderr[-2000:])
    folder = Path(job["result"]["model"]["path"])
    assert folder == (work / "data" / "models" / "colours" / "1").resolve()
    assert (folder / "model.onnx").is_file() and (folder / "gate.json").is_file()
    assert snapshot() == before  # nothing written, changed or added inside the installed package
