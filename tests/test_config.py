"""--config recipes: flags override the file, the resolved options are written, bad recipes are one line."""
from __future__ import annotations

import json

import pytest
import yaml

from vitprune.app.cli import main

from .helpers import last_line

BASE = {"data": "demo", "per-class": 2, "eval_per_class": 2, "sparsity": 0.5, "criterion": "magnitude", "compensate": "none",
        "no-export": True, "quiet": True}


def _recipe(tmp_path, **over):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**BASE, **over}))
    return str(path)


def test_flags_override_the_recipe_and_the_resolved_config_repeats_the_run(model_dir, tmp_path, fashion_dir):
    out = tmp_path / "c"
    assert main(["compress", "--config", _recipe(tmp_path, model=model_dir), "--sparsity", "0.75", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["mask"]["sparsity"] == 0.75 and report["options"]["criterion"] == "magnitude"
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["sparsity"] == 0.75 and resolved["model"] == model_dir and resolved["per-class"] == 2
    again = tmp_path / "again"
    assert main(["compress", "--config", str(out / "config.yaml"), "--out", str(again), "--quiet"]) == 0
    assert json.loads((again / "report.json").read_text())["mask"] == report["mask"]


def test_list_values_may_be_yaml_lists(model_dir, tmp_path, fashion_dir):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"model": model_dir, "data": "demo", "per-class": 2, "eval-per-class": 2, "sparsities": [0.5],
                                    "criteria": ["magnitude", "random"], "seeds": [0], "compensate": ["none"], "quiet": True}))
    out = tmp_path / "s"
    assert main(["evaluate", "--config", str(path), "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["points"]
    assert [r["criterion"] for r in rows] == ["dense", "magnitude", "random"]


@pytest.mark.parametrize("make,fragment", [
    (lambda t: str(t / "missing.yaml"), "does not exist"),
    (lambda t: _recipe(t, sparsityy=0.5), "unknown key 'sparsityy'"),
    (lambda t: _recipe(t, sparsity="half"), "not a valid --sparsity value"),
    (lambda t: _recipe(t, sparsity=1.5), "[0, 1)"),
    (lambda t: _recipe(t, compensate="maybe"), "must be one of none, mean, lsq"),
    (lambda t: _recipe(t, quiet="yes"), "true or false"),
    (lambda t: (t / "bad.yaml").write_text("a: [unclosed") and str(t / "bad.yaml"), "cannot read recipe"),
    (lambda t: (t / "list.yaml").write_text("- 1\n- 2\n") and str(t / "list.yaml"), "YAML mapping"),
])
def test_bad_recipes_are_one_line(model_dir, tmp_path, capsys, fashion_dir, make, fragment):
    assert main(["compress", "--config", make(tmp_path), "--model", model_dir, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert fragment in last_line(err)
    assert not (tmp_path / "c").exists()
