"""Languages: the Accept-Language choice, names per language in taxonomy CSVs and cards, answers per language."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.languages import (
    answer_sentence,
    localize_answer,
    parse_accept_language,
    pick_language,
)
from service.core.modelcard import LabelTaxon, ModelCard
from service.core.taxonomy import TaxonTree, committed_answer, plain_answer, read_taxonomy_csv
from tests.helpers import tiny_card


@pytest.mark.parametrize(("header", "expected"), [
    ("fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5", "fr"),  # region falls back to its language
    ("fr", "fr"),
    ("FR-fr", "fr"),
    ("en-GB,en;q=0.9", "en"),
    ("de-DE, fr;q=0.5", "fr"),  # the first language offered, in q order
    ("en;q=0.4, fr;q=0.6", "fr"),  # q-values, not the order, decide
    ("fr;q=0, en", "en"),  # q=0 means "not this one"
    ("de, it;q=0.9", "en"),  # nothing offered: English
    ("xx-YY", "en"),
    ("*", "en"),
    ("", "en"),
    (None, "en"),
    ("fr;q=abc", "en"),  # a malformed q drops the entry
    ("fr;q=1.5", "en"),
    (";;;,,,", "en"),
    ("fr-\u00e9t\u00e9", "en"),  # not an ASCII tag
    ("\x00\x01 garbage ;;; q=", "en"),
    ("en;q=0.8, fr-BE;q=0.9", "fr"),
    ("x" * 10_000, "en"),
])
def test_pick_language(header: str | None, expected: str) -> None:
    assert pick_language(header) == expected


def test_parse_accept_language_orders_by_q_then_position() -> None:
    assert parse_accept_language("fr-CH, fr;q=0.9, en;q=0.8, *;q=0.5") == [
        ("fr-ch", 1.0), ("fr", 0.9), ("en", 0.8), ("*", 0.5)]
    assert parse_accept_language("de;q=0.5, it, es;q=0.5") == [("it", 1.0), ("de", 0.5), ("es", 0.5)]
    assert parse_accept_language("fr;q=0.000, en;Q=0.3") == [("en", 0.3)]
    assert parse_accept_language("en;level=1") == []  # an unknown parameter: not understood, dropped


def test_pick_language_among_what_is_available() -> None:
    assert pick_language("de-AT, fr;q=0.5", available=["en", "fr", "de"]) == "de"
    assert pick_language("*", available=["fr"]) == "fr"
    assert pick_language("fr", available=[]) == "en"


def test_answer_sentences_per_language() -> None:
    assert answer_sentence("taxon", "species", "Vanessa atalanta", "Vulcain", "fr") == "Vulcain (Vanessa atalanta)"
    assert answer_sentence("taxon", "genus", "Bombus", "Bourdon", "fr") == \
        "Bourdon (genre Bombus) : l'espèce demande l'avis d'un spécialiste."
    assert answer_sentence("taxon", "family", "Lycaenidae", None, "fr") == \
        "Famille Lycaenidae : l'espèce demande l'avis d'un spécialiste."
    assert answer_sentence("taxon", "family", "Lycaenidae", None, "en") == \
        "Family Lycaenidae: the species needs an expert."
    assert answer_sentence("no_insect", "none", None, None, "fr").startswith("Aucun insecte")
    assert answer_sentence(None, None, None, None, "fr").startswith("Incertain")
    # A language without sentences speaks English.
    assert answer_sentence("insect", "class", "Insecta", None, "xx") == \
        "An insect we cannot place yet: an expert will look at it."


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_taxonomy_csv_with_french_names(tmp_path: Path) -> None:
    csv = _write(tmp_path / "taxonomy.csv",
                 "label,scientific_name,common_name,common_name_fr,rank,genus,family,order\n"
                 "peacock,Aglais io,European peacock,Paon-du-jour,species,Aglais,Nymphalidae,Lepidoptera\n"
                 "adonis,Polyommatus bellargus,Adonis blue,,species,Polyommatus,Lycaenidae,Lepidoptera\n"
                 "bombus,Bombus,Bumblebee,Bourdon,genus,Bombus,Apidae,Hymenoptera\n")
    entries = read_taxonomy_csv(csv)
    assert entries["peacock"].common_names == {"fr": "Paon-du-jour"}
    assert entries["adonis"].common_names == {}  # blank: unknown, not an empty name
    tree = TaxonTree.from_labels(entries, entries)
    assert tree.leaf("peacock").common_name_in("fr") == "Paon-du-jour"
    assert tree.leaf("peacock").common_name_in("en") == "European peacock"
    assert tree.leaf("adonis").common_name_in("fr") is None
    assert tree.nodes["class:Insecta"].common_name_in("fr") == "Insecte"
    assert [n.label for n in tree.find("paon-du-jour")] == ["peacock"]  # a French name finds its taxon
    found = committed_answer(tree, {"bombus": 0.95, "peacock": 0.05}, {"genus": 0.8, "species": 0.8})
    assert found is not None
    assert plain_answer(tree, found, "fr") == "Bourdon (genre Bombus) : l'espèce demande l'avis d'un spécialiste."
    assert plain_answer(tree, found) == "Bumblebee (genus Bombus): the species needs an expert."


def test_old_taxonomy_csv_without_language_columns_loads(tmp_path: Path) -> None:
    csv = _write(tmp_path / "taxonomy.csv", "label,scientific_name,common_name,genus,family,order\n"
                                            "peacock,Aglais io,European peacock,Aglais,Nymphalidae,Lepidoptera\n")
    entries = read_taxonomy_csv(csv)
    assert entries["peacock"].common_name == "European peacock" and entries["peacock"].common_names == {}
    assert TaxonTree.from_labels(entries, entries).leaf("peacock").common_name_in("fr") is None


def test_card_keeps_names_per_language(tmp_path: Path) -> None:
    info = LabelTaxon.model_validate({"scientific_name": "Vanessa atalanta", "common_name": "Red admiral",
                                      "common_name_fr": "Vulcain", "common_name_de": " ", "common_name_bad!": "x"})
    assert info.common_names == {"fr": "Vulcain"}
    card = tiny_card(labels=["red_admiral"])
    card.taxonomy["red_admiral"] = info
    card.save(tmp_path)
    again = ModelCard.load(tmp_path)
    assert again.taxon_of("red_admiral").common_names == {"fr": "Vulcain"}
    # A card written before names per language loads as before.
    old = tiny_card(labels=["red_admiral"])
    assert old.taxon_of("red_admiral").common_names == {}


def test_localize_a_stored_answer() -> None:
    taxon = {"label": "red_admiral", "scientific_name": "Vanessa atalanta", "common_name": "Red admiral",
             "common_names": {"en": "Red admiral", "fr": "Vulcain"}, "rank": "species"}
    blue = {"label": "common_blue", "scientific_name": "Polyommatus icarus", "common_name": "Common blue",
            "common_names": {"en": "Common blue"}, "rank": "species"}
    old = {"label": "x", "scientific_name": "Vanessa", "common_name": "Admirals", "rank": "genus"}
    result = {"results": [{"taxon": taxon, "score": 0.9}, {"taxon": blue, "score": 0.1}],
              "rollup": {"taxon": taxon, "rank": "species", "score": 0.9, "kind": "taxon",
                         "answer": "Red admiral (Vanessa atalanta)"},
              "images": [{"results": [{"taxon": old, "score": 1.0}], "rollup": None}]}
    fr = localize_answer(result, "fr")
    assert [r["taxon"]["common_name"] for r in fr["results"]] == ["Vulcain", None]
    assert fr["rollup"]["answer"] == "Vulcain (Vanessa atalanta)"
    assert fr["images"][0]["results"][0]["taxon"]["common_name"] is None  # stored before names per language
    assert result["results"][0]["taxon"]["common_name"] == "Red admiral"  # the stored dict is not changed
    assert localize_answer(result, "en") == result


# -- one file per language -----------------------------------------------------------------------------------------

def _write_json(path: Path, data: object) -> None:
    import json

    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def test_adding_a_language_is_one_catalogue_file(tmp_path: Path) -> None:
    import json

    from service.core.languages import catalogue_dir, catalogues, language_names, read_catalogues

    english = json.loads((catalogue_dir() / "en.json").read_text(encoding="utf-8"))
    _write_json(tmp_path / "en.json", english)
    german = {**english, "_language": "Deutsch", "answer.rank_family": "Familie",
              "answer.coarse": "{rank} {name}: die Art braucht einen Fachmann."}
    _write_json(tmp_path / "de.json", german)
    found = read_catalogues(tmp_path)
    assert list(found) == ["en", "de"]  # English first, then the new file
    assert found["de"]["answer.rank_family"] == "Familie"
    # The installation's own catalogues: the pages' switch and the service speak the same languages.
    assert set(catalogues()) >= {"en", "fr"}
    assert language_names()["fr"] == "Français"
    assert pick_language("fr-CH") == "fr"


def test_a_half_made_or_broken_catalogue_is_left_out(tmp_path: Path) -> None:
    import json

    from service.core.languages import catalogue_dir, read_catalogues

    english = json.loads((catalogue_dir() / "en.json").read_text(encoding="utf-8"))
    _write_json(tmp_path / "en.json", english)
    _write_json(tmp_path / "it.json", {"_language": "Italiano"})  # no answer sentences yet
    (tmp_path / "nl.json").write_text("{not json", encoding="utf-8")
    _write_json(tmp_path / "not-a-code.json", english)
    assert list(read_catalogues(tmp_path)) == ["en"]
    (tmp_path / "en.json").unlink()
    with pytest.raises(RuntimeError, match="English catalogue"):
        read_catalogues(tmp_path)


def test_the_service_and_the_pages_say_the_same_answer():
    from service.core.languages import catalogues

    french = catalogues()["fr"]
    assert answer_sentence("taxon", "family", "Vespidae", None, "fr") == \
        french["answer.coarse"].replace("{rank}", "Famille").replace("{name}", "Vespidae")
    assert answer_sentence("no_insect", "none", None, None, "fr") == french["answer.no_insect"]
