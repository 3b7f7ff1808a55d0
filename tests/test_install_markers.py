"""``pip install .`` works on the machines people have: pyproject's environment markers choose onnxruntime-gpu
where it ships wheels (Linux x86_64, Windows AMD64) and the CPU onnxruntime elsewhere, exactly one of them."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
FLAVOURS = {"onnxruntime", "onnxruntime-gpu"}


def _env(sys_platform: str, platform_system: str, machine: str, os_name: str = "posix") -> dict[str, str]:
    env = dict(default_environment())
    env.update(sys_platform=sys_platform, platform_system=platform_system, platform_machine=machine,
               os_name=os_name, python_version="3.11", python_full_version="3.11.9",
               implementation_name="cpython", platform_python_implementation="CPython")
    return env


# platform.machine() as each system spells it: x86_64 on Linux, AMD64/ARM64 on Windows, arm64 on macOS.
ENVIRONMENTS = {
    "linux x86_64": (_env("linux", "Linux", "x86_64"), "onnxruntime-gpu"),
    "windows amd64": (_env("win32", "Windows", "AMD64", "nt"), "onnxruntime-gpu"),
    "macos arm64": (_env("darwin", "Darwin", "arm64"), "onnxruntime"),
    "macos x86_64": (_env("darwin", "Darwin", "x86_64"), "onnxruntime"),
    "linux aarch64": (_env("linux", "Linux", "aarch64"), "onnxruntime"),
    "windows arm64": (_env("win32", "Windows", "ARM64", "nt"), "onnxruntime"),
}


def _requirements() -> list[Requirement]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return [Requirement(line) for line in tomllib.load(f)["project"]["dependencies"]]


def _chosen(env: dict[str, str]) -> list[Requirement]:
    return [r for r in _requirements() if r.name in FLAVOURS and (r.marker is None or r.marker.evaluate(env))]


@pytest.mark.parametrize("where", list(ENVIRONMENTS))
def test_exactly_one_onnxruntime_flavour_per_platform(where: str) -> None:
    env, expected = ENVIRONMENTS[where]
    chosen = _chosen(env)
    assert [r.name for r in chosen] == [expected], (where, [str(r) for r in chosen])
    assert chosen[0].specifier.contains("1.20") and not chosen[0].extras
    # Every other dependency is the same everywhere (no other platform-only requirement slipped in).
    rest = [r for r in _requirements() if r.name not in FLAVOURS]
    assert {r.name for r in rest if r.marker is None or r.marker.evaluate(env)} == {r.name for r in rest}


def test_both_flavours_are_declared_with_the_same_versions() -> None:
    flavours = {r.name: r for r in _requirements() if r.name in FLAVOURS}
    assert set(flavours) == FLAVOURS
    assert flavours["onnxruntime"].specifier == flavours["onnxruntime-gpu"].specifier
    assert all(r.marker is not None for r in flavours.values())


def test_this_machine_has_the_flavour_its_markers_choose() -> None:
    env = dict(default_environment())
    (chosen,) = _chosen(env)
    installed = {name for name in FLAVOURS if _installed(name)}
    assert chosen.name in installed, (chosen.name, installed)


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def test_code_imports_the_module_both_wheels_provide() -> None:
    """Both wheels install the module ``onnxruntime``; nothing imports a flavour-specific name or asks for one
    distribution's metadata (which would fail on the other)."""
    sources = [p for folder in ("service", "training", "bench") for p in (ROOT / folder).rglob("*.py")]
    text = {p: p.read_text(encoding="utf-8") for p in sources}
    assert any(re.search(r"^import onnxruntime as ort$", t, re.M) for p, t in text.items() if "service" in p.parts)
    flavour_specific = re.compile(r"import onnxruntime_gpu|from onnxruntime_gpu|"
                                  r"(version|distribution|metadata)\(\s*[\"']onnxruntime[-_]gpu")
    assert [p for p, t in text.items() if flavour_specific.search(t)] == []
    import onnxruntime

    assert "CPUExecutionProvider" in onnxruntime.get_available_providers()
