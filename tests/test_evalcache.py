"""The dense model's evaluation is computed once per (weights, preprocessing, images, precision) and reused; any change
of those is another entry, never a stale one."""
from __future__ import annotations

import json

import pytest
import torch

import vitprune
from vitprune import evalcache

FAST = dict(sparsity=0.5, criterion="magnitude", compensate="none", per_class=2, eval_per_class=6, quiet=True)


def _entries(cache) -> list:
    folder = cache / evalcache.FOLDER
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _plant(path, top1: float) -> None:
    """Overwrite a cached result's top-1: a later run that reports it has read the cache."""
    stored = json.loads(path.read_text())
    stored["result"]["top1"] = top1
    path.write_text(json.dumps(stored))


@pytest.mark.slow
def test_the_dense_evaluation_is_reused_and_invalidated(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VITPRUNE_CACHE", str(tmp_path / "cache"))  # this test's own cache: it counts the entries
    model = vitprune.load_model(model_dir)
    before = set(_entries(tmp_path / "cache"))
    first = vitprune.compress(model, "demo", **FAST).report.accuracy["dense"]
    new = sorted(set(_entries(tmp_path / "cache")) - before)
    assert len(new) == 1
    _plant(new[0], 0.123)
    again = vitprune.compress(model, "demo", **{**FAST, "sparsity": 0.25}).report.accuracy["dense"]
    assert again.top1 == 0.123 and again.n == first.n  # reused: same weights, images, preprocessing, precision
    other = vitprune.load_model(model_dir)
    with torch.no_grad():
        other.head.weight.mul_(1.5)  # other weights: another fingerprint
    changed = vitprune.compress(other, "demo", **FAST).report.accuracy["dense"]
    assert changed.top1 != 0.123
    fewer = vitprune.compress(model, "demo", **{**FAST, "eval_per_class": 5}).report.accuracy["dense"]
    assert fewer.top1 != 0.123 and fewer.n == 50  # other images
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": [0.5]}
    recoloured = vitprune.compress(model, "demo", **FAST).report.accuracy["dense"]
    assert recoloured.top1 != 0.123  # other preprocessing
    assert len(set(_entries(tmp_path / "cache")) - before) == 4


def test_an_evaluate_sweep_and_compress_share_the_dense_result(model_dir, tmp_path_factory):
    model = vitprune.load_model(model_dir)
    sweep = vitprune.evaluate(model, "demo", criterion=("magnitude",), compensate=("none",), sparsity=(0.5,), per_class=2,
                              eval_per_class=7, quiet=True)
    dense = next(p for p in sweep.points if p.criterion == "dense")
    result = vitprune.compress(model, "demo", **{**FAST, "eval_per_class": 7}).report.accuracy["dense"]
    assert result.top1 == dense.top1 and result.mean_true_prob == dense.mean_true_prob


@pytest.mark.slow
def test_an_unwritable_cache_is_skipped(model_dir, monkeypatch, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("VITPRUNE_CACHE", str(blocked))
    result = vitprune.compress(vitprune.load_model(model_dir), "demo", **FAST)
    assert result.report.accuracy["dense"].n == 60
