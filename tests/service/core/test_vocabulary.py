"""Each vocabulary is defined once, as an enum: no second ``Literal``, tuple, list, set, dict or enum class in the
code spells the same values, and no page hard-codes a copy (the pages read ``GET /api/v1/vocabulary``).

Migrations keep their literal strings (they are history) and tests may spell values; everything else is
scanned, so a copy added anywhere in ``service/``, ``training/``, ``bench/`` or ``frontend/`` fails here.
"""

from __future__ import annotations

import ast
import re
from enum import StrEnum
from pathlib import Path

from service.core import vocabulary
from service.core.vocabulary import ExportKind, JobKind, Licence
from service.exports.darwin_core import GBIF_LICENCES
from service.exports.kinds import MEDIA_TYPES, WRITERS
from service.inference.versions import Origin, VersionState
from service.jobs.kinds import HANDLERS

ROOT = Path(__file__).resolve().parents[3]
ENUMS: list[type[StrEnum]] = [
    *(v for v in vars(vocabulary).values() if isinstance(v, type) and issubclass(v, StrEnum) and v is not StrEnum),
    VersionState,
    Origin,
]
# Where each enum is defined (its one home).
HOMES = {(e.__module__, e.__name__) for e in ENUMS}


def _values(enum: type[StrEnum]) -> frozenset[str]:
    return frozenset(m.value for m in enum)


def _strings(nodes: list[ast.expr]) -> list[str] | None:
    """The string constants of these nodes, or None when one of them is anything else."""
    out = []
    for node in nodes:
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            return None
        out.append(node.value)
    return out


def python_copies(source: str, module: str) -> list[str]:
    """Copies of a vocabulary in Python source: a ``Literal`` naming two or more values of one enum, or a tuple,
    list, set, dict (keys) or enum class spelling all the values of one."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{module}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", getattr(node.value, "attr", "")) == "Literal":
            elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            words = _strings(list(elts))
            for enum in ENUMS:
                if words and len(set(words)) >= 2 and set(words) <= _values(enum):
                    found.append(f"{where}: Literal{sorted(words)} restates {enum.__name__}")
            continue
        words = None
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            words = _strings(list(node.elts))
        elif isinstance(node, ast.Dict) and all(k is not None for k in node.keys):
            words = _strings([k for k in node.keys if k is not None])
        elif isinstance(node, ast.ClassDef) and (module, node.name) not in HOMES:
            assigned = [s.value for s in node.body if isinstance(s, ast.Assign)]
            words = _strings(assigned) if assigned else None
        for enum in ENUMS:
            if words and set(words) == _values(enum):
                found.append(f"{where}: {type(node).__name__} {sorted(words)} restates {enum.__name__}")
    return found


QUOTED = re.compile(r"\"([^\"\\]*)\"|'([^'\\]*)'")
ARRAY = re.compile(r"\[([^\[\]]*)\]")
SELECT = re.compile(r"<select\b.*?</select>", re.S | re.I)
ATTRIBUTE = re.compile(r"\b(?:value|data-[\w-]+)=\"([^\"]*)\"", re.I)


def page_copies(text: str, name: str) -> list[str]:
    """Copies of a vocabulary in a page: a JS array literal of all the values of one enum, a <select> offering
    two or more of them, or HTML attributes (value=, data-*=) spelling all of them."""
    found = []
    for m in ARRAY.finditer(text):
        body = m.group(1)
        if QUOTED.sub("", body).replace(",", "").strip():
            continue  # not an array of string literals only
        words = {a or b for a, b in QUOTED.findall(body)}
        found += [f"{name}: array {sorted(words)} restates {e.__name__}" for e in ENUMS if words == _values(e)]
    for m in SELECT.finditer(text):
        words = set(re.findall(r"<option\b[^>]*\bvalue=\"([^\"]*)\"", m.group(0), re.I))
        found += [f"{name}: <select> {sorted(words)} restates {e.__name__}" for e in ENUMS
                  if len(words) >= 2 and words <= _values(e)]
    attributes = set(ATTRIBUTE.findall(text))
    found += [f"{name}: attributes restate {e.__name__}" for e in ENUMS if _values(e) <= attributes]
    return found


def _python_sources() -> list[Path]:
    files = [p for folder in ("service", "training", "bench") for p in (ROOT / folder).rglob("*.py")]
    return [p for p in files if "migrations" not in p.relative_to(ROOT).parts]


def test_each_vocabulary_is_defined_once_in_the_code() -> None:
    sources = _python_sources()
    assert len(sources) > 50
    found = []
    for path in sources:
        rel = path.relative_to(ROOT)
        module = ".".join(rel.with_suffix("").parts)
        found += python_copies(path.read_text(encoding="utf-8"), module)
    assert found == []


def test_the_pages_hard_code_no_vocabulary() -> None:
    pages = sorted((ROOT / "frontend").rglob("*.js")) + sorted((ROOT / "frontend").rglob("*.html"))
    assert len(pages) >= 6
    found = []
    for path in pages:
        found += page_copies(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert found == []


def test_the_checks_catch_a_copy() -> None:
    """The scans above are real: each kind of copy they look for is reported."""
    assert python_copies('Licence = Literal["CC0", "CC-BY", "CC-BY-NC"]\n', "m")
    assert python_copies('def f(state: Literal["queued", "running"]) -> None: ...\n', "m")
    assert python_copies('ROLES = ("admin", "expert", "volunteer")\n', "m")
    assert python_copies('p.add_argument("kind", choices=["dwca", "csv", "training"])\n', "m")
    assert python_copies('URLS = {"CC0": "a", "CC-BY": "b", "CC-BY-NC": "c"}\n', "m")
    assert python_copies('class Kind(StrEnum):\n    retrain = "retrain"\n    export = "export"\n', "m")
    assert not python_copies('class JobKind(StrEnum):\n    retrain = "retrain"\n    export = "export"\n',
                             "service.core.vocabulary")
    assert not python_copies('mode: Literal["linear", "partial", "full"] = "partial"\n', "m")
    assert page_copies('const ACTIVE = new Set(["queued", "running", "succeeded", "failed", "cancelled"]);', "x.js")
    assert page_copies('<select id="r"><option value="expert">e</option><option value="admin">a</option></select>',
                       "x.html")
    assert page_copies('<button data-export="dwca"></button><button data-export="csv"></button>'
                       '<button data-export="training"></button>', "x.html")
    assert not page_copies('const LABELS = { dwca: "Darwin Core Archive" }; f(["a", b]);', "x.js")


def test_tables_keyed_by_a_vocabulary_cover_it_exactly() -> None:
    assert set(GBIF_LICENCES) == _values(Licence)
    assert set(WRITERS) == set(MEDIA_TYPES) == _values(ExportKind)
    assert set(HANDLERS) == _values(JobKind)
