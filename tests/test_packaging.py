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
        "import service.registry as r; entries = r.scan_models(s.models_dir); "
        "print(s.models_dir); print(s.frontend_dir); print(len(entries))"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}).stdout.split()
    models_dir, frontend_dir, count = Path(out[0]), Path(out[1]), int(out[2])
    assert models_dir.is_relative_to(target) and frontend_dir.is_relative_to(target)
    assert (frontend_dir / "index.html").is_file() and (frontend_dir / "static" / "api.js").is_file()
    bundled = sorted(p.relative_to(ROOT / "models") for p in (ROOT / "models").glob("*/*/model.onnx"))
    assert count == len(bundled) >= 1
    for rel in bundled:
        assert (models_dir / rel).is_file() and (models_dir / rel).with_name("model.json").is_file()
