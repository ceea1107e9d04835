"""The shipped defaults are the zoo evaluation's winners (eval/zoo.py -> eval/results/zoo/summary.json)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vitprune import defaults

SUMMARY = Path(__file__).resolve().parents[1] / "eval" / "results" / "zoo" / "summary.json"


@pytest.fixture(scope="module")
def summary() -> dict:
    return json.loads(SUMMARY.read_text())


def test_sparsity_default_is_the_zoo_winner(summary):
    best = summary["defaults"]["sparsity"]
    assert defaults.SPARSITY_DEFAULT == {"criterion": best["criterion"], "compensate": best["compensate"]}
    if best["criterion"] in ("jas", "jas-freq"):  # the winner's discovery variant is the one compress runs
        assert {k: defaults.JAS_DEFAULT[k] for k in best["variant"]} == best["variant"]


def test_path_variant_default_is_the_best_jas_variant(summary):
    assert defaults.JAS_DEFAULT == summary["defaults"]["jas"]


def test_keep_topk_default_is_the_zoo_winner(summary):
    assert defaults.KEEP_DEFAULT == summary["keep_default"]


def test_lsq_and_calibration_defaults(summary):
    assert defaults.LSQ_DEFAULT == summary["lsq_default"]
    assert defaults.PER_CLASS_DEFAULT == summary["calibration_default"]["per_class"]


def _eval_zoo():
    """eval/zoo.py's module (a script, not a package member): its model lists are the declaration."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_zoo", SUMMARY.parents[2] / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_zoo_model_was_evaluated_or_declared_held_out(summary):
    from vitprune.model.load import zoo_models

    zoo = _eval_zoo()
    assert sorted(summary["models"]) == sorted(zoo.MODELS)
    assert len(summary["models"]) >= 3
    bundled = {f"zoo:{n}" for n in zoo_models()}
    chose_defaults = {m for m in zoo.MODELS if m.startswith("zoo:")}
    assert not chose_defaults & set(zoo.HELD_OUT)
    assert bundled == chose_defaults | set(zoo.HELD_OUT), "a bundled zoo model is neither evaluated nor held out"


def test_head_criterion_default_is_the_heads_study_winner():
    heads = json.loads((SUMMARY.parents[1] / "heads" / "summary.json").read_text())
    assert defaults.HEAD_DEFAULT == heads["head_default"]
    assert len(heads["complete"]) >= 3


COST = SUMMARY.parents[1] / "cost_quality" / "summary.json"


def test_discovery_default_is_the_cost_quality_winner():
    """compress / evaluate discover at the cost-quality study's knee (eval/cost_quality.py); --faithful-discovery is
    the study's reference row, today's setting before it."""
    study = json.loads(COST.read_text())
    winner = study["winner"]
    assert defaults.DISCOVERY_DEFAULT == {"steps": winner["steps"], "per_class": winner["per_class"]}
    assert winner["precision"] == "fp32"  # the default --precision
    assert defaults.FAITHFUL_DISCOVERY == {k: study["reference"][k] for k in ("steps", "per_class")}
    assert study["reference"]["precision"] == "fp32"
    rows = {r["name"]: r for r in study["rows"]}
    ref = rows["m{steps}-pc{per_class}-fp32".format(**study["reference"])]
    won = rows["m{steps}-pc{per_class}-fp32".format(**winner)]
    for key in ("selection_sparsity", "selection_keep"):  # within the tolerance on the selection images
        assert won[key] >= ref[key] - study["tolerance"] - 1e-12
    assert all(r["zoo_mean_flop_per_class"] >= won["zoo_mean_flop_per_class"] for r in rows.values()
               if r["selection_sparsity"] >= ref["selection_sparsity"] - study["tolerance"] - 1e-12
               and r["selection_keep"] >= ref["selection_keep"] - study["tolerance"] - 1e-12)


RECOVERY = SUMMARY.parents[1] / "recovery" / "summary.json"


def test_recovery_default_is_the_recovery_studys_choice():
    """The learning rate and block-output distillation weight of --finetune-* are the setting with the best mean
    selection top-1 over every zoo model in eval/recovery.py's tune stage; the library's RecoverySettings agree."""
    from vitprune.recovery import RecoverySettings

    study = json.loads(RECOVERY.read_text())
    assert len(study["models"]) >= 4
    complete = [v for v in study["tune"].values() if len(v["per_model"]) == len(study["models"])]
    best = max(complete, key=lambda v: v["mean_selection"])
    assert study["chosen"] == {"lr": best["lr"], "features": best["features"]}
    assert {k: defaults.RECOVERY_DEFAULT[k] for k in ("lr", "features")} == study["chosen"]
    assert (RecoverySettings().lr, RecoverySettings().features) == (study["chosen"]["lr"], study["chosen"]["features"])
