"""Languages of the service's answers: the ``Accept-Language`` choice, taxa's common names per language, and the
committed answer's sentence in each language.

English is the fallback everywhere. A taxon's English common name is ``common_name``; other languages' names
are ``common_names[<code>]`` (taxonomy CSV columns ``common_name_<code>``, the ``taxon_names`` table). A language
with no name for a taxon has none: an answer in that language carries ``common_name: null`` there (the pages
then show the scientific name, which every reader shares), never another language's name and never a machine
translation.

Adding a language is one file: its catalogue ``frontend/static/i18n/<code>.json`` holds the pages' messages and
the committed answer's sentences and rank words, which the service reads too (:func:`catalogues`); taxa's names
in it come with the data (``common_name_<code>`` columns).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from service.core.bundle import bundled_frontend_dir

logger = logging.getLogger(__name__)

DEFAULT_LANGUAGE = "en"

# A language code as the taxonomy's ``common_name_<code>`` columns and the ``taxon_names`` table hold it.
LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}$")
COMMON_NAME_PREFIX = "common_name_"

# The catalogue keys the service reads: the committed answer's sentences ({common}, {rank}, {name}) and the rank
# words. The pages build the same sentences from the same keys, so the API and the pages say the same words.
ANSWER_KEYS = ("not_sure", "no_insect", "insect", "species_common", "coarse_common", "coarse")
RANK_KEYS = ("species", "genus", "family", "order", "class")
ROOT_NAME_KEY = "answer.root_name"  # class Insecta's common name ("Insect", "Insecte")


def catalogue_dir() -> Path:
    """The languages' catalogues: ``frontend/static/i18n/<code>.json``, one file per language."""
    return bundled_frontend_dir() / "static" / "i18n"


@lru_cache(maxsize=1)
def catalogues() -> dict[str, dict[str, Any]]:
    """``{code: catalogue}`` of the installation's languages (:func:`read_catalogues` of :func:`catalogue_dir`)."""
    return read_catalogues(catalogue_dir())


def read_catalogues(directory: Path) -> dict[str, dict[str, Any]]:
    """``{code: catalogue}`` of every ``<code>.json`` in ``directory`` (English first).

    Adding a language is one file: a catalogue holds the pages' messages and the service's answer sentences. A
    file whose name is not a language code, that is not JSON, or that lacks a sentence the service needs is left
    out (and logged), so a half-made catalogue never breaks answers in the others.
    """
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        code = path.stem.lower()
        if not is_language_code(code):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            logger.warning("language catalogue %s is unreadable: %s", path, exc)
            continue
        missing = [key for key in (*(f"answer.{k}" for k in ANSWER_KEYS),
                                   *(f"answer.rank_{k}" for k in RANK_KEYS), "_language")
                   if not isinstance(data, dict) or not isinstance(data.get(key), str)]
        if missing:
            logger.warning("language catalogue %s lacks %s: left out", path, ", ".join(missing))
            continue
        found[code] = data
    if DEFAULT_LANGUAGE not in found:
        raise RuntimeError(f"the English catalogue {directory / 'en.json'} is missing or incomplete: "
                           "reinstall pollinid")
    return {DEFAULT_LANGUAGE: found.pop(DEFAULT_LANGUAGE), **found}


def languages() -> tuple[str, ...]:
    """The languages the service speaks (English first): those with a catalogue."""
    return tuple(catalogues())


def language_names() -> dict[str, str]:
    """``{code: the language's name in itself}``: the pages' language switch."""
    return {code: str(data["_language"]) for code, data in catalogues().items()}


def root_common_names() -> dict[str, str]:
    """Class Insecta's common name per language (from each catalogue's ``answer.root_name``)."""
    return {code: str(data[ROOT_NAME_KEY]) for code, data in catalogues().items()
            if isinstance(data.get(ROOT_NAME_KEY), str) and data[ROOT_NAME_KEY].strip()}


_TAG = re.compile(r"^(?:\*|[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*)$")
_Q = re.compile(r"^q\s*=\s*(0(?:\.\d{0,3})?|1(?:\.0{0,3})?)$", re.IGNORECASE)


def parse_accept_language(header: str | None) -> list[tuple[str, float]]:
    """``[(tag, q)]`` of an ``Accept-Language`` header, best first (ties keep the header's order).

    Tags are lower-cased (``fr-ch``); malformed entries and ``q=0`` are dropped; a header that cannot be read
    at all gives ``[]``. Never raises.
    """
    if not header or len(header) > 4096:
        return []
    out: list[tuple[int, str, float]] = []
    for index, part in enumerate(header.split(",")):
        pieces = [p.strip() for p in part.split(";")]
        tag = pieces[0]
        if not tag or not _TAG.match(tag):
            continue
        q = 1.0
        valid = True
        for param in pieces[1:]:
            match = _Q.match(param)
            if match is None:
                valid = False
                break
            q = float(match.group(1))
        if valid and q > 0:
            out.append((index, tag.lower(), q))
    out.sort(key=lambda item: (-item[2], item[0]))
    return [(tag, q) for _, tag, q in out]


def pick_language(header: str | None, available: Iterable[str] | None = None) -> str:
    """The best of ``available`` for an ``Accept-Language`` header; English when nothing fits or it is garbage.

    ``fr-CH`` matches ``fr``; ``*`` matches the first available language (English first when offered).
    """
    offered = [code.lower() for code in (languages() if available is None else available)]
    if not offered:
        return DEFAULT_LANGUAGE
    for tag, _q in parse_accept_language(header):
        if tag == "*":
            return DEFAULT_LANGUAGE if DEFAULT_LANGUAGE in offered else offered[0]
        if tag in offered:
            return tag
        base = tag.split("-", 1)[0]
        if base in offered:
            return base
    return DEFAULT_LANGUAGE


def is_language_code(code: str) -> bool:
    return bool(LANGUAGE_CODE.match(code))


def common_names_of(values: Mapping[str, Any]) -> dict[str, str]:
    """``{code: name}`` from ``common_name_<code>`` keys (blank values are unknown and left out)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if not key.startswith(COMMON_NAME_PREFIX):
            continue
        code = key[len(COMMON_NAME_PREFIX):].lower()
        if is_language_code(code) and isinstance(value, str) and value.strip():
            out[code] = value.strip()
    return out


def name_in(common_name: str | None, common_names: Mapping[str, str] | None, language: str) -> str | None:
    """A taxon's common name in ``language``: English is ``common_name``; another language's own name or None."""
    if language == DEFAULT_LANGUAGE:
        return (common_names or {}).get(DEFAULT_LANGUAGE) or common_name
    return (common_names or {}).get(language)


def rank_word(rank: str, language: str) -> str:
    word = _catalogue(language).get(f"answer.rank_{rank}")
    return str(word) if isinstance(word, str) else rank


def _catalogue(language: str) -> dict[str, Any]:
    found = catalogues()
    return found.get(language) or found[DEFAULT_LANGUAGE]


def answer_sentence(kind: str | None, rank: str | None, scientific_name: str | None, common_name: str | None,
                    language: str = DEFAULT_LANGUAGE) -> str:
    """The committed answer in plain words: ``kind`` None means no answer at all (nothing is safe to say)."""
    words = _catalogue(language)
    if kind is None:
        return str(words["answer.not_sure"])
    if kind in ("no_insect", "insect"):
        return str(words[f"answer.{kind}"])
    name = scientific_name or ""
    rank = rank or "species"
    if rank == "species":
        if common_name and common_name != name:
            return str(words["answer.species_common"]).format(common=common_name, name=name)
        return name
    word = rank_word(rank, language)
    if common_name:
        return str(words["answer.coarse_common"]).format(common=common_name, rank=word, name=name)
    sentence = str(words["answer.coarse"])
    # The sentence starts with the rank word: capitalised there ("Family Vespidae: ...").
    if sentence.startswith("{rank}"):
        word = word[:1].upper() + word[1:]
    return sentence.format(rank=word, name=name)


def localize_taxon(taxon: Mapping[str, Any] | None, language: str) -> dict[str, Any] | None:
    """A taxon dict (with ``common_name`` and optionally ``common_names``) with ``common_name`` in ``language``.

    A dict without ``common_names`` (stored before names per language existed) knows English only.
    """
    if taxon is None:
        return None
    out = dict(taxon)
    if language == DEFAULT_LANGUAGE:
        return out
    if out.get("rank") == "none" and "common_names" not in out:
        out["common_name"] = None
        return out
    out["common_name"] = name_in(out.get("common_name"), out.get("common_names"), language)
    return out


def localize_rollup(rollup: Mapping[str, Any] | None, language: str) -> dict[str, Any] | None:
    """A committed answer dict with its taxon's name and its ``answer`` sentence in ``language``."""
    if rollup is None:
        return None
    out = dict(rollup)
    taxon = localize_taxon(out.get("taxon"), language) or {}
    out["taxon"] = taxon
    kind = out.get("kind") or "taxon"
    out["answer"] = answer_sentence(kind, out.get("rank"), taxon.get("scientific_name"), taxon.get("common_name"),
                                    language)
    return out


def localize_answer(result: Mapping[str, Any], language: str) -> dict[str, Any]:
    """An identification result dict (``/identify``'s response, an observation's stored prediction) with every
    taxon's common name and the committed answers' sentences in ``language``. English returns it as it is."""
    out = dict(result)
    if language == DEFAULT_LANGUAGE:
        return out

    def scores(items: Any) -> Any:
        if not isinstance(items, list):
            return items
        return [{**item, "taxon": localize_taxon(item.get("taxon"), language)} if isinstance(item, dict) else item
                for item in items]

    if "results" in out:
        out["results"] = scores(out["results"])
    if isinstance(out.get("rollup"), dict):
        out["rollup"] = localize_rollup(out["rollup"], language)
    if isinstance(out.get("taxon_filter"), dict):
        out["taxon_filter"] = localize_taxon(out["taxon_filter"], language)
    if isinstance(out.get("images"), list):
        out["images"] = [
            {**image, "results": scores(image.get("results")),
             "rollup": localize_rollup(image.get("rollup"), language) if isinstance(image.get("rollup"), dict)
             else image.get("rollup")} if isinstance(image, dict) else image
            for image in out["images"]]
    return out
