"""Languages of the service's answers: the ``Accept-Language`` choice, taxa's common names per language, and the
committed answer's sentence in each language.

English is the fallback everywhere. A taxon's English common name is ``common_name``; other languages' names
are ``common_names[<code>]`` (taxonomy CSV columns ``common_name_<code>``, the ``taxon_names`` table). A language
with no name for a taxon has none: an answer in that language carries ``common_name: null`` there (the pages
then show the scientific name, which every reader shares), never another language's name and never a machine
translation.

Adding a language to the service is one entry in :data:`ANSWER_SENTENCES` (its sentences and rank words);
its names come with the data (``common_name_<code>`` columns).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

DEFAULT_LANGUAGE = "en"

# A language code as the taxonomy's ``common_name_<code>`` columns and the ``taxon_names`` table hold it.
LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}$")
COMMON_NAME_PREFIX = "common_name_"

# The committed answer's sentences per language ({name}: the taxon's words) and the rank words.
ANSWER_SENTENCES: dict[str, dict[str, Any]] = {
    "en": {
        "not_sure": "Not sure: the photo does not show enough to name anything. Try a closer, sharper photo.",
        "no_insect": "No insect found in this photo: try closer.",
        "insect": "An insect we cannot place yet: an expert will look at it.",
        "species_common": "{common} ({name})",
        "coarse_common": "{common} ({rank} {name}): the species needs an expert.",
        "coarse": "{Rank} {name}: the species needs an expert.",
        "ranks": {"species": "species", "genus": "genus", "family": "family", "order": "order", "class": "class"},
    },
    "fr": {
        "not_sure": "Incertain : la photo ne montre pas assez de détails pour nommer quoi que ce soit. "
                    "Essayez une photo plus nette, prise de plus près.",
        "no_insect": "Aucun insecte trouvé sur cette photo : approchez-vous.",
        "insect": "Un insecte que nous ne savons pas encore situer : un spécialiste l'examinera.",
        "species_common": "{common} ({name})",
        "coarse_common": "{common} ({rank} {name}) : l'espèce demande l'avis d'un spécialiste.",
        "coarse": "{Rank} {name} : l'espèce demande l'avis d'un spécialiste.",
        "ranks": {"species": "espèce", "genus": "genre", "family": "famille", "order": "ordre", "class": "classe"},
    },
}
LANGUAGES: tuple[str, ...] = tuple(ANSWER_SENTENCES)

# Class Insecta, the root of every model's tree, in each language.
ROOT_COMMON_NAMES: dict[str, str] = {"en": "Insect", "fr": "Insecte"}

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


def pick_language(header: str | None, available: Iterable[str] = LANGUAGES) -> str:
    """The best of ``available`` for an ``Accept-Language`` header; English when nothing fits or it is garbage.

    ``fr-CH`` matches ``fr``; ``*`` matches the first available language (English first when offered).
    """
    offered = [code.lower() for code in available]
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
    words: dict[str, str] = sentences(language)["ranks"]
    return words.get(rank, rank)


def sentences(language: str) -> dict[str, Any]:
    return ANSWER_SENTENCES.get(language) or ANSWER_SENTENCES[DEFAULT_LANGUAGE]


def answer_sentence(kind: str | None, rank: str | None, scientific_name: str | None, common_name: str | None,
                    language: str = DEFAULT_LANGUAGE) -> str:
    """The committed answer in plain words: ``kind`` None means no answer at all (nothing is safe to say)."""
    words = sentences(language)
    if kind is None:
        return str(words["not_sure"])
    if kind in ("no_insect", "insect"):
        return str(words[kind])
    name = scientific_name or ""
    rank = rank or "species"
    if rank == "species":
        if common_name and common_name != name:
            return str(words["species_common"]).format(common=common_name, name=name)
        return name
    word = rank_word(rank, language)
    if common_name:
        return str(words["coarse_common"]).format(common=common_name, rank=word, name=name)
    return str(words["coarse"]).format(Rank=word[:1].upper() + word[1:], name=name)


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
