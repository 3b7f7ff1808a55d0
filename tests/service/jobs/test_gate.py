"""The non-regression gate: overall tolerance, per-class margin, classes too small to gate."""

from __future__ import annotations

from typing import Any

from service.jobs.gate import GateConfig, compare


def metrics(top1: float, recalls: dict[str, tuple[float, int]]) -> dict[str, Any]:
    return {"top1": top1, "top3": 1.0, "nll": 0.5, "macro_f1": top1, "ece": 0.05,
            "per_class": {c: {"recall": r, "f1": r, "precision": r, "support": n}
                          for c, (r, n) in recalls.items()}}


ACTIVE = metrics(0.80, {"a": (0.9, 10), "b": (0.7, 10), "c": (0.8, 2)})


def test_a_better_candidate_passes_with_per_class_differences() -> None:
    out = compare(metrics(0.85, {"a": (0.9, 10), "b": (0.8, 10), "c": (0.5, 2), "new": (1.0, 4)}), ACTIVE,
                  GateConfig(tolerance=0.01, class_margin=0.05, min_class_support=3))
    assert out["passed"] is True
    assert out["overall"]["top1"] == {"candidate": 0.85, "active": 0.80, "delta": 0.85 - 0.80}
    rows = {r["label"]: r for r in out["per_class"]}
    assert set(rows) == {"a", "b", "c"}  # "new" is not known to the active model
    assert abs(rows["b"]["delta"] - 0.1) < 1e-9 and not rows["b"]["regressed"]
    assert rows["c"]["checked"] is False and not rows["c"]["regressed"]  # 2 photos: not gated
    assert any("not gated" in r for r in out["reasons"])


def test_overall_regression_beyond_the_tolerance_fails() -> None:
    cand = metrics(0.78, {"a": (0.9, 10), "b": (0.7, 10)})
    assert compare(cand, ACTIVE, GateConfig(tolerance=0.03))["passed"] is True
    out = compare(cand, ACTIVE, GateConfig(tolerance=0.01))
    assert out["passed"] is False and "worse than the active model's" in out["reasons"][0]


def test_one_class_dropping_more_than_the_margin_fails_even_when_overall_improves() -> None:
    cand = metrics(0.90, {"a": (0.80, 10), "b": (1.0, 10)})
    out = compare(cand, ACTIVE, GateConfig(class_margin=0.05))
    assert out["passed"] is False
    assert [r["label"] for r in out["per_class"] if r["regressed"]] == ["a"]
    assert compare(cand, ACTIVE, GateConfig(class_margin=0.15))["passed"] is True


def test_no_active_model_passes() -> None:
    out = compare(metrics(0.3, {"a": (0.3, 10)}), None, GateConfig())
    assert out["passed"] is True and out["overall"]["top1"]["active"] is None


def test_new_classes_are_judged_on_their_own_held_out_photos() -> None:
    from service.jobs.gate import GateConfig, compare, wilson_upper

    same = {"top1": 0.9, "per_class": {"a": {"recall": 0.9, "support": 10}}}
    new = {"per_class": {"bombus": {"recall": 0.0, "support": 5}, "vespidae": {"recall": 0.9, "support": 10},
                         "syrphidae": {"recall": 0.0, "support": 2}}}
    out = compare(same, same, GateConfig(new_class_min_recall=0.5), new)
    assert out["passed"] is False
    rows = {r["label"]: r for r in out["new_classes"]}
    assert not rows["bombus"]["passed"] and rows["vespidae"]["passed"]  # 0 of 5 is confidently below 0.5
    assert not rows["syrphidae"]["checked"] and rows["syrphidae"]["passed"]  # too few photos: reported only
    assert out["new_classes_top1"] == 9 / 17
    assert any("['bombus']" in reason for reason in out["reasons"])
    assert any("syrphidae" in reason and "not gated" in reason for reason in out["reasons"])
    assert compare(same, same, GateConfig(new_class_min_recall=0.3), new)["passed"]
    assert not compare(same, None, GateConfig(new_class_min_recall=0.5), new)["passed"]  # no active model
    # Few photos: 1 of 3 right is not evidence of a bad class, 0 of 3 is; the pooled accuracy still counts.
    assert wilson_upper(1, 3) > 0.5 > wilson_upper(0, 3)
    few = {"per_class": {"x": {"recall": 1 / 3, "support": 3}, "y": {"recall": 1 / 3, "support": 3}}}
    out = compare(same, same, GateConfig(new_class_min_recall=0.5), few)
    assert all(r["passed"] for r in out["new_classes"]) and not out["passed"]
    assert any("together" in r or "top-1 on their own" in r for r in out["reasons"])
