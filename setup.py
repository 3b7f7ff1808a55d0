"""Packaging glue: pyproject.toml holds the metadata; this adds the bundled models and web pages.

``models/`` and ``frontend/`` are data folders at the repository root (the layout is fixed); they are
installed as the package data of ``pollinid_bundle.models`` and ``pollinid_bundle.frontend`` so a wheel
install serves the bundled model and pages too.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["service", "service.*", "training", "training.*"]),
              "pollinid_bundle.models", "pollinid_bundle.frontend"],
    package_dir={"pollinid_bundle.models": "models", "pollinid_bundle.frontend": "frontend"},
)
