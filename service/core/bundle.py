"""Where the data folders shipped with pollinid lie: the bundled models and the web pages (with their language
catalogues). Plain paths: the settings' defaults and :mod:`service.core.languages` read them."""

from __future__ import annotations

from pathlib import Path


def _bundled_dir(folder: str) -> Path:
    """Find a bundled data folder (``models`` or ``frontend``).

    In a source checkout (editable install) this is ``<repo>/<folder>``; in a wheel install it is the
    ``pollinid_bundle.<folder>`` package data (a namespace package: located through its import spec).
    """
    repo_dir = Path(__file__).resolve().parent.parent.parent / folder
    if repo_dir.is_dir():
        return repo_dir
    from importlib.util import find_spec

    try:
        spec = find_spec(f"pollinid_bundle.{folder}")
    except ModuleNotFoundError:
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    return repo_dir  # missing: the registry says clearly that no model was found


def bundled_models_dir() -> Path:
    """Return the folder of the models shipped with pollinid."""
    return _bundled_dir("models")


def bundled_frontend_dir() -> Path:
    """Return the folder of the web pages shipped with pollinid."""
    return _bundled_dir("frontend")
