"""`vitprune evaluate`: one row per point, budgets honoured, valid PNG, point-by-point resume."""
from __future__ import annotations

import json

import pytest

from vitprune.records import read_jsonl
from vitprune.sweep import POINTS, SweepOptions, points_of, run_sweep



def _opts(model_dir, **kw):
    base = dict(model=model_dir, sparsities=(0.3, 0.8), criteria=("jas", "jas-freq", "magnitude", "random"), compensate=("none", "lsq"),
                keep_topk=(1, 2), seeds=(0, 1, 2), per_class=2, eval_per_class=3, selection_per_class=2, steps=3)
    return SweepOptions(**{**base, **kw})


def test_sweep_rows_budgets_plot_and_resume(model_dir, tmp_path, fashion_dir, monkeypatch):
    opts = _opts(model_dir)
    out = tmp_path / "sweep"
    rows = run_sweep(opts, out, quiet=True)
    pts = points_of(opts)
    # dense + 2 compensations x (jas and jas-freq at 2 sparsities and 2 K, magnitude at 2, random at 2 x 3 seeds)
    assert len(rows) == len(pts) == 1 + 2 * (2 * (2 + 2) + 2 + 2 * 3)
    assert len(list(out.glob("paths-*"))) == 3  # one discovery run per K, shared by jas and jas-freq points
    for r in rows:
        if r["target"]:
            # achieved sparsity equals the asked one within one unit per block
            assert all(abs(k - 64 * (1 - r["target"])) <= 1 for k in r["kept"])
    assert all(0 <= r["top1_selection"] <= 1 for r in rows)  # scored on held-out calibration-pool images too
    assert {r["compensate"] for r in rows if r["criterion"] != "dense"} == {"none", "lsq"}
    assert all(len(r["ridges"]) == 3 for r in rows if r["compensate"] == "lsq")
    seeds = {r["seed"] for r in rows if r["criterion"] == "random"}
    assert seeds == {0, 1, 2}
    png = (out / "accuracy_vs_sparsity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == len(rows) + 1
    assert json.loads((out / "results.json").read_text())["points"] == rows

    # interrupt: keep only the first 5 points, then resume -> only the missing points are computed
    lines = (out / POINTS).read_text().splitlines(keepends=True)
    (out / POINTS).write_text("".join(lines[:5]) + lines[5][:10])
    import vitprune.sweep as sweep

    computed = []
    real = sweep._run_points
    monkeypatch.setattr(sweep, "_run_points", lambda o, todo, *a, **k: computed.extend(todo) or real(o, todo, *a, **k))
    again = run_sweep(opts, out, quiet=True)
    assert len(computed) == len(pts) - 5
    assert [r["top1"] for r in again] == [r["top1"] for r in rows]  # deterministic seeds: same numbers
    assert len(read_jsonl(out / POINTS)) == len(pts)


def test_sweep_refuses_other_settings(model_dir, tmp_path, fashion_dir):
    from vitprune.errors import UserError

    out = tmp_path / "s"
    run_sweep(_opts(model_dir, criteria=("magnitude",), compensate=("none",), keep_topk=()), out, quiet=True)
    with pytest.raises(UserError, match="different settings"):
        run_sweep(_opts(model_dir, criteria=("activation",), compensate=("none",), keep_topk=()), out, quiet=True)
    with pytest.raises(UserError, match="--sparsities"):
        run_sweep(_opts(model_dir, sparsities=(1.5,)), tmp_path / "t", quiet=True)
    with pytest.raises(UserError, match="--compensate"):
        run_sweep(_opts(model_dir, compensate=("mean", "yes")), tmp_path / "u", quiet=True)
    with pytest.raises(UserError, match="--objectives"):
        run_sweep(_opts(model_dir, objectives=("entropy",)), tmp_path / "v", quiet=True)
    with pytest.raises(UserError, match="path criterion"):
        run_sweep(_opts(model_dir, criteria=("magnitude",)), tmp_path / "w", quiet=True)
