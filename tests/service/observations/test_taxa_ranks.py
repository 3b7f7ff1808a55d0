"""Issue 11: the taxa table with labels at any rank under class Insecta, and ``no_insect`` (not a taxon).

Runs on SQLite and PostgreSQL (``env``). The CSV mirrors ``insects-extra/taxonomy.csv``: a genus label
(``bombus``), family labels, order labels, a leaf inside a leaf (``coccinellidae`` inside ``coleoptera``, listed
first on purpose) and ``no_insect`` (rank ``none``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.cli.main import main
from service.core.modelcard import LabelTaxon
from service.observations.taxa import (
    UnknownTaxon,
    ancestors,
    import_taxonomy_csv,
    labels_to_taxa,
    resolve_taxon,
    subtree_condition,
    sync_taxa,
    sync_taxa_from_card,
    taxon_for_label,
)
from service.settings import get_settings
from service.store.tables import Observation, Taxon, TaxonLabel
from tests.helpers import tiny_card
from tests.service.observation_support import Env, env  # noqa: F401

MIXED = """label,source_label,common_name,scientific_name,rank,genus,family,order,group
coccinellidae,Ladybird,Ladybird,Coccinellidae,family,,Coccinellidae,Coleoptera,beetle
bombus,Bombus (BeeSpotter),Bumblebee,Bombus,genus,Bombus,Apidae,Hymenoptera,bee
apis_mellifera,Apis (BeeSpotter),Western honey bee,Apis mellifera,species,Apis,Apidae,Hymenoptera,bee
vespidae,wasp,Wasp,Vespidae,family,,Vespidae,Hymenoptera,wasp
coleoptera,beetle,Beetle (other than ladybirds),Coleoptera,order,,,Coleoptera,beetle
odonata,Dragonfly,Dragonfly or damselfly,Odonata,order,,,Odonata,not a pollinator
no_insect,flowers,No insect (flower or plant only),,none,,,,no insect
"""
OLD = """label,scientific_name,common_name,genus,family,order
bombus_terrestris,Bombus terrestris,Buff-tailed bumblebee,Bombus,Apidae,Hymenoptera
"""


def _write(tmp_path: Path, text: str, name: str = "taxonomy.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _lineage(session, taxon: Taxon) -> list[tuple[str, str]]:
    return [(t.rank, t.scientific_name) for t in [*ancestors(session, taxon), taxon]]


def _taxon(session, rank: str, name: str) -> Taxon:
    rows = list(session.scalars(select(Taxon).where(Taxon.rank == rank, Taxon.scientific_name == name)))
    assert len(rows) == 1, (rank, name, rows)
    return rows[0]


def test_mixed_ranks_build_one_tree_under_insecta(env: Env, tmp_path: Path) -> None:  # noqa: F811
    with env.session() as s:
        import_taxonomy_csv(s, _write(tmp_path, MIXED))
        s.commit()
        roots = list(s.scalars(select(Taxon).where(Taxon.parent_id.is_(None))))
        assert [(t.rank, t.scientific_name, t.common_name) for t in roots] == [("class", "Insecta", "Insect")]
        assert roots[0].group is None  # shared by every group
        # A label above species is its taxon's row itself.
        bombus = taxon_for_label(s, "bombus")
        assert bombus is not None and (bombus.rank, bombus.scientific_name) == ("genus", "Bombus")
        assert bombus.common_name == "Bumblebee" and bombus.group == "bee"
        assert _lineage(s, bombus) == [("class", "Insecta"), ("order", "Hymenoptera"), ("family", "Apidae"),
                                       ("genus", "Bombus")]
        apis = taxon_for_label(s, "apis_mellifera")
        assert _lineage(s, apis)[-3:] == [("family", "Apidae"), ("genus", "Apis"), ("species", "Apis mellifera")]
        assert taxon_for_label(s, "vespidae") == _taxon(s, "family", "Vespidae")
        # A leaf inside a leaf: one order Coleoptera row (the label's), the family below it.
        coleoptera = taxon_for_label(s, "coleoptera")
        assert coleoptera == _taxon(s, "order", "Coleoptera")
        assert coleoptera.common_name == "Beetle (other than ladybirds)"
        lady = taxon_for_label(s, "coccinellidae")
        assert lady == _taxon(s, "family", "Coccinellidae") and lady.parent_id == coleoptera.id
        assert _lineage(s, lady) == [("class", "Insecta"), ("order", "Coleoptera"), ("family", "Coccinellidae")]
        beetles = set(s.scalars(select(Taxon.scientific_name).where(subtree_condition(Taxon.id, coleoptera))))
        assert beetles == {"Coleoptera", "Coccinellidae"}
        # The tiny model's butterflies now hang under Insecta too.
        red = taxon_for_label(s, "red_admiral")
        assert _lineage(s, red)[:2] == [("class", "Insecta"), ("order", "Lepidoptera")]
        every = set(s.scalars(select(Taxon.id)))
        insecta = roots[0]
        assert set(s.scalars(select(Taxon.id).where(subtree_condition(Taxon.id, insecta)))) == every


def test_no_insect_is_not_a_taxon(env: Env, tmp_path: Path) -> None:  # noqa: F811
    with env.session() as s:
        before = s.scalar(select(func.count()).select_from(Taxon))
        result = sync_taxa(s, {"no_insect": LabelTaxon(rank="none", common_name="No insect")})
        s.commit()
        assert (result.created, result.labels) == (0, 0)
        assert s.scalar(select(func.count()).select_from(Taxon)) == before
        assert s.get(TaxonLabel, "no_insect") is None
        assert taxon_for_label(s, "no_insect") is None
        assert labels_to_taxa(s, ["no_insect", "red_admiral"]).keys() == {"red_admiral"}
        with pytest.raises(UnknownTaxon):
            resolve_taxon(s, "no_insect")
        # The row and mapping an older sync made of it (rank "none" read as a rank): the mapping is removed,
        # the row (observations may point at it) is never found as a taxon.
        stale = Taxon(rank="none", scientific_name="no_insect", path="", parent_id=None)
        s.add(stale)
        s.flush()
        s.add(TaxonLabel(label="no_insect", taxon_id=stale.id))
        s.commit()
        assert labels_to_taxa(s, ["no_insect"]) == {} and taxon_for_label(s, "no_insect") is None
        sync_taxa(s, {"no_insect": LabelTaxon(rank="none")})
        s.commit()
        assert s.get(TaxonLabel, "no_insect") is None and taxon_for_label(s, "no_insect") is None
        with pytest.raises(UnknownTaxon):
            resolve_taxon(s, "no_insect")
        with pytest.raises(UnknownTaxon):
            resolve_taxon(s, stale.id)
    # Through the API: searching for it finds nothing, naming it in an identification is a 4xx.
    for q in ("no insect", "no_insect"):
        r = env.client.get("/api/v1/taxa", params={"q": q})
        assert r.status_code == 200 and r.json()["data"] == []
    assert env.client.get(f"/api/v1/taxa/{stale.id}").status_code == 404
    oid = env.post_obs().json()["id"]
    r = env.identify("exp", oid, "propose", taxon="no_insect")
    assert r.status_code in (400, 404, 422) and "error" in r.json()


def test_a_card_with_no_insect_and_coarse_labels_syncs(env: Env) -> None:  # noqa: F811
    card = tiny_card(labels=["red_admiral"])
    card.labels = ["red_admiral", "bombus", "no_insect"]
    card.taxonomy["bombus"] = LabelTaxon(scientific_name="Bombus", rank="genus", genus="Bombus", family="Apidae",
                                         order="Hymenoptera", common_name="Bumblebee")
    card.taxonomy["no_insect"] = LabelTaxon(rank="none", common_name="No insect")
    with env.session() as s:
        sync_taxa_from_card(s, card)
        s.commit()
        assert taxon_for_label(s, "bombus").rank == "genus"
        assert taxon_for_label(s, "no_insect") is None


def test_old_csv_without_rank_gives_species(env: Env, tmp_path: Path) -> None:  # noqa: F811
    with env.session() as s:
        import_taxonomy_csv(s, _write(tmp_path, OLD))
        s.commit()
        bt = taxon_for_label(s, "bombus_terrestris")
        assert _lineage(s, bt) == [("class", "Insecta"), ("order", "Hymenoptera"), ("family", "Apidae"),
                                   ("genus", "Bombus"), ("species", "Bombus terrestris")]
        # A later, less detailed lineage (genus only) does not lift the genus out of its family.
        sync_taxa(s, {"bombus_pascuorum": LabelTaxon(scientific_name="Bombus pascuorum", genus="Bombus")})
        s.commit()
        bp = taxon_for_label(s, "bombus_pascuorum")
        assert _lineage(s, bp)[:3] == [("class", "Insecta"), ("order", "Hymenoptera"), ("family", "Apidae")]


def test_an_older_tree_rooted_at_orders_moves_under_insecta(env: Env) -> None:  # noqa: F811
    with env.session() as s:
        # As an older sync left it: the order was a root.
        lep = _taxon(s, "order", "Lepidoptera")
        lep.parent_id = None
        s.commit()
        sync_taxa_from_card(s, tiny_card())
        s.commit()
        s.refresh(lep)
        assert _lineage(s, lep) == [("class", "Insecta"), ("order", "Lepidoptera")]
        red = taxon_for_label(s, "red_admiral")
        assert red.path.startswith(_taxon(s, "class", "Insecta").path)


def test_import_cli_with_and_without_rank_and_a_bad_rank(env: Env, tmp_path: Path,  # noqa: F811
                                                          monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("POLLINID_DATABASE_URL", env.settings.resolved_database_url)
    monkeypatch.setenv("POLLINID_DATA_DIR", str(env.settings.data_dir))
    get_settings.cache_clear()
    try:
        assert main(["import", "taxonomy", str(_write(tmp_path, MIXED))]) == 0
        assert main(["import", "taxonomy", str(_write(tmp_path, OLD, "old.csv"))]) == 0
        capsys.readouterr()
        bad = _write(tmp_path, MIXED.replace(",genus,Bombus,", ",genera,Bombus,"), "bad.csv")
        assert main(["import", "taxonomy", str(bad)]) == 2
        err = capsys.readouterr().err
        assert "bad.csv:3" in err and "genera" in err and "Traceback" not in err
        latin1 = tmp_path / "latin1.csv"
        latin1.write_bytes("label,scientific_name\nx,Bomb\xe9\n".encode("latin-1"))
        assert main(["import", "taxonomy", str(latin1)]) == 2
    finally:
        get_settings.cache_clear()
    with env.session() as s:
        assert taxon_for_label(s, "bombus").rank == "genus"
        assert taxon_for_label(s, "bombus_terrestris").parent_id == taxon_for_label(s, "bombus").id
        assert s.scalar(select(func.count()).select_from(Taxon).where(Taxon.rank == "none")) == 0
        assert s.scalar(select(func.count()).select_from(Observation)) == 0
