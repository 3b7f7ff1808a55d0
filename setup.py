"""Packaging glue: pyproject.toml holds the metadata; this adds the bundled models and web pages.

``models/`` and ``frontend/`` are data folders at the repository root (the layout is fixed); they are
installed as the package data of ``pollinid_bundle.models`` and ``pollinid_bundle.frontend`` so a wheel
install serves the bundled model and pages too.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
BUNDLES = {"pollinid_bundle.models": "models", "pollinid_bundle.frontend": "frontend"}
bundles = {pkg: folder for pkg, folder in BUNDLES.items() if (HERE / folder).is_dir()}

setup(
    packages=[*find_packages(include=["service", "service.*", "training", "training.*"]), *bundles],
    package_dir=bundles,
)
