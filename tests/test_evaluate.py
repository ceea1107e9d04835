"""`vitprune evaluate` / `vitprune.evaluate`: one row per point, budgets honoured, valid PNG, point-by-point resume."""
from __future__ import annotations

import json

import pytest

import vitprune
from vitprune.api import POINTS
from vitprune.errors import UserError
from vitprune.files import read_jsonl
from vitprune.options import EvaluateOptions
from vitprune.reports import SweepPoint, read_results

OPTS = dict(sparsity=(0.3, 0.8), criterion=("jas", "jas-freq", "magnitude", "random"), compensate=("none", "lsq"), keep_topk=(1, 2),
            seed=(0, 1, 2), per_class=2, eval_per_class=3, selection_per_class=2, steps=3)


def _evaluate(model_dir, out, **kw):
    return vitprune.evaluate(model_dir, "demo", out=out, quiet=True, **{**OPTS, **kw})


@pytest.mark.slow
def test_sweep_rows_budgets_plot_and_resume(model_dir, tmp_path, fashion_dir, monkeypatch):
    out = tmp_path / "sweep"
    rows = _evaluate(model_dir, out).points
    pts = EvaluateOptions(model=model_dir, **OPTS).resolve().points()
    # dense + 2 compensations x (jas and jas-freq at 2 sparsities and 2 K, magnitude at 2, random at 2 x 3 seeds)
    assert len(rows) == len(pts) == 1 + 2 * (2 * (2 + 2) + 2 + 2 * 3)
    assert len(list(out.glob("paths-*"))) == 3  # one discovery run per K, shared by jas and jas-freq points
    for r in rows:
        if r.target:
            # achieved sparsity equals the asked one within one unit per block
            assert all(abs(k - 64 * (1 - r.target)) <= 1 for k in r.kept)
    assert all(0 <= r.top1_selection <= 1 for r in rows)  # scored on held-out calibration-pool images too
    assert {r.compensate for r in rows if r.criterion != "dense"} == {"none", "lsq"}
    assert all(len(r.ridges) == 3 for r in rows if r.compensate == "lsq")
    assert {r.seed for r in rows if r.criterion == "random"} == {0, 1, 2}
    png = (out / "accuracy_vs_sparsity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == len(rows) + 1
    settings, points = read_results(out / "results.json")
    assert points == rows and settings["format"] == "vitprune.sweep/2"

    # interrupt: keep only the first 5 points, then resume -> only the missing points are computed
    lines = (out / POINTS).read_text().splitlines(keepends=True)
    (out / POINTS).write_text("".join(lines[:5]) + lines[5][:10])
    import vitprune.pipeline as pipeline

    computed = []
    real = pipeline.Pipeline.compress
    monkeypatch.setattr(pipeline.Pipeline, "compress", lambda self, point, *a, **k: computed.append(point) or real(self, point, *a, **k))
    again = _evaluate(model_dir, out).points
    assert len(computed) == len(pts) - 5
    assert [r.top1 for r in again] == [r.top1 for r in rows]  # deterministic seeds: same numbers
    assert len(read_jsonl(out / POINTS)) == len(pts)


def test_sweep_in_memory_equals_the_folder_run(model_dir, tmp_path, fashion_dir):
    kw = dict(criterion=("magnitude", "jas-freq"), compensate=("none",), keep_topk=(), sparsity=(0.5,), selection_per_class=None)
    memory = vitprune.evaluate(model_dir, "demo", quiet=True, **{**OPTS, **kw})
    folder = _evaluate(model_dir, tmp_path / "s", **kw)
    assert [p.to_json() | {"compensation_s": 0} for p in memory.points] == [p.to_json() | {"compensation_s": 0} for p in folder.points]
    assert "| magnitude | none | 0.50 |" in memory.table()


def test_sweep_refuses_other_settings(model_dir, tmp_path, fashion_dir):
    out = tmp_path / "s"
    _evaluate(model_dir, out, criterion=("magnitude",), compensate=("none",), keep_topk=(), selection_per_class=None)
    with pytest.raises(UserError, match="different settings"):
        _evaluate(model_dir, out, criterion=("activation",), compensate=("none",), keep_topk=(), selection_per_class=None)
    with pytest.raises(UserError, match="--sparsity"):
        _evaluate(model_dir, tmp_path / "t", sparsity=(1.5,))
    with pytest.raises(UserError, match="--compensate"):
        _evaluate(model_dir, tmp_path / "u", compensate=("mean", "yes"))
    with pytest.raises(UserError, match="--objective"):
        _evaluate(model_dir, tmp_path / "v", objective=("entropy",))
    with pytest.raises(UserError, match="path criterion"):
        _evaluate(model_dir, tmp_path / "w", criterion=("magnitude",))
    with pytest.raises(TypeError, match="unknown option"):
        _evaluate(model_dir, tmp_path / "x", sparsityy=0.5)
    with pytest.raises(UserError, match="old name of 'sparsity'"):
        _evaluate(model_dir, tmp_path / "x", sparsities=(0.5,))  # OPTS names sparsity already


def test_sweep_points_of_version_1_still_load():
    v1 = {"aggregation": None, "compensate": "none", "compensation_s": 0.0, "criterion": "dense", "keep_topk": None,
          "kept": [384], "macs": 36445618, "macs_ratio": 1.0, "mean_true_prob": 0.745, "objective": None, "params": 678730,
          "params_ratio": 1.0, "seed": 0, "sparsity": 0.0, "target": 0.0, "token_scope": None, "top1": 0.8719, "top1_selection": 0.8722}
    point = SweepPoint.from_json(v1)
    assert point.to_json() == v1 and point.top1_selection == 0.8722
    assert json.loads(json.dumps(point.to_json())) == v1
