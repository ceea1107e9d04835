"""MAC budgets: the unit costs follow torch-pruning's counter exactly, and --target-macs lands within one unit per block."""
from __future__ import annotations

import json

import pytest
import torch

from vitprune.model.adapter import adapter_for
from vitprune.app.cli import main
from vitprune.prune.macs import count_macs_params, mlp_unit_macs
from vitprune.prune.masks import from_keep_sets
from vitprune.prune.slicing import slice_sites

from .helpers import tiny_vit, last_line, mask_for_macs


def test_unit_costs_predict_the_counter_exactly():
    model = tiny_vit(depth=3, mlp_ratio=3.0)
    cost, total = mlp_unit_macs(model)
    widths = adapter_for(model).hidden_widths
    mask = from_keep_sets(widths, [list(range(5)), list(range(40)), list(range(widths[2]))], "test")
    got, _ = count_macs_params(slice_sites(model, mask))
    assert got == total - sum(c * (w - k) for c, w, k in zip(cost, widths, mask.kept_counts))


@pytest.mark.parametrize("scope", ["per-block", "global", "global-raw"])
@pytest.mark.parametrize("target", [0.5, 0.8])
def test_target_macs_within_one_unit_per_block(scope, target):
    model = tiny_vit(depth=4, mlp_ratio=8.0)  # the MLPs hold most of the MACs, so 50% is reachable
    gen = torch.Generator().manual_seed(1)
    scores = [torch.rand(w, generator=gen) * (b + 1) for b, w in enumerate(adapter_for(model).hidden_widths)]
    mask = mask_for_macs(model, scores, target, scope=scope)
    cost, total = mlp_unit_macs(model)
    got, _ = count_macs_params(slice_sites(model, mask))
    assert abs(got - target * total) <= sum(cost)  # one unit per block
    if scope == "global-raw":  # raw scores grow with the block index: later blocks keep more
        assert mask.kept_counts[-1] > mask.kept_counts[0]


def test_compress_target_macs_reports_the_achieved_ratio(model_dir, tmp_path, fashion_dir):
    out = tmp_path / "m"
    assert main(["compress", "--model", model_dir, "--data", "demo", "--per-class", "2", "--eval-per-class", "2", "--target-macs",
                 "0.6", "--criterion", "magnitude", "--compensate", "none", "--scope", "global", "--no-export", "--quiet",
                 "--out", str(out)]) == 0
    r = json.loads((out / "report.json").read_text())
    assert r["macs"]["target"] == 0.6 and abs(r["macs"]["ratio"] - 0.6) <= 0.01
    assert "MAC target 0.600" in (out / "report.md").read_text()


@pytest.mark.parametrize("extra,fragment", [(["--target-macs", "1.5"], "(0, 1)"), (["--target-macs", "nan"], "(0, 1)"),
                                            (["--target-macs", "0.5", "--sparsity", "0.5"], "exactly one"),
                                            (["--target-macs", "0.05"], "--min-keep")])
def test_bad_mac_targets(model_dir, tmp_path, fashion_dir, capsys, extra, fragment):
    rc = main(["compress", "--model", model_dir, "--data", "demo", "--per-class", "2", "--criterion", "magnitude", "--compensate",
               "none", "--no-export", "--quiet", *extra, "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in last_line(err)


def test_sweep_takes_mac_budgets(model_dir, tmp_path, fashion_dir):
    import vitprune

    rows = vitprune.evaluate(model_dir, "demo", sparsity=(), target_macs=(0.6, 0.8), criterion=("magnitude",), compensate=("none",),
                             per_class=2, eval_per_class=2, scope="global", out=tmp_path / "s", quiet=True).points
    assert [r.target_macs for r in rows] == [None, 0.6, 0.8]
    assert all(abs(r.macs_ratio - r.target_macs) <= 0.01 for r in rows[1:])
