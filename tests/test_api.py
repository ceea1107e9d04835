"""The Python API: compress / evaluate / discover on spec strings, in-memory timm models and torch Datasets; results that
save and load back; registries that take criteria and compensations from outside the package."""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from torch.utils.data import TensorDataset

import vitprune
from vitprune.criteria import CRITERIA
from vitprune.errors import UserError
from vitprune.model.adapter import adapter_for
from vitprune.prune import COMPENSATIONS
from vitprune.reports import CompressReport


def _user_model():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48, depth=2,
                             num_heads=3, num_classes=4).eval()


def _user_data(n_cal=24, n_eval=12, size=32):
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(n_cal + n_eval, 3, size, size, generator=gen)
    labels = torch.arange(n_cal + n_eval) % 4
    return TensorDataset(images[:n_cal], labels[:n_cal]), TensorDataset(images[n_cal:], labels[n_cal:])


@pytest.mark.slow
def test_compress_a_user_model_on_tensor_datasets_saves_and_loads_back(tmp_path):
    model = _user_model()
    result = vitprune.compress(model, _user_data(), sparsity=0.5, criterion="wanda", compensate="lsq", per_class=6, quiet=True)
    assert result.mask.kept_counts == [96, 96] and result.report.data.calibration_images == 24
    assert result.report.accuracy["pruned"].n == 12 and result.report.output is None
    assert [site.width for site in adapter_for(result.model).sites()] == [96, 96]
    folder = result.save(tmp_path / "ckpt")
    loaded = vitprune.load_model(str(folder))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
    assert json.loads((folder / "mask.json").read_text()) == result.mask.to_json()
    info = result.export_onnx(tmp_path / "m.onnx")
    assert info["onnx"]["parity_max_abs"] <= 1e-4 and (tmp_path / "m.onnx").is_file()
    assert result.save(folder) == folder  # the same result again: vitprune's own files are replaced
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="did not write"):
        result.save(folder, force=True)


@pytest.mark.slow
def test_compress_a_spec_model_in_memory_writes_nothing(model_dir, tmp_path, monkeypatch, fashion_dir):
    monkeypatch.chdir(tmp_path)
    result = vitprune.compress(vitprune.load_model(model_dir), "demo", sparsity=0.5, criterion="magnitude", compensate="none",
                               per_class=2, eval_per_class=3, quiet=True)
    assert result.report.mask.sparsity == 0.5 and result.report.data.evaluation_images == 30
    assert list(tmp_path.iterdir()) == []
    report = CompressReport.from_json(json.loads(json.dumps(result.report.to_json())))
    assert report.to_json() == result.report.to_json()


def test_report_of_version_1_loads():
    v1 = {"vitprune_version": "0.1.0", "options": {}, "output": "x", "model": {"spec": "demo"},
          "data": {"spec": "demo", "classes": ["a"], "calibration_images": 1, "evaluation_images": 1, "overlap": 0},
          "mask": {"criterion": "c", "kept_counts": [1], "widths": [2], "sparsity": 0.5, "block_sparsity": [0.5]},
          "critical_units": None, "compensation": {"mode": "none", "reconstruction": None},
          "params": {"dense": 2, "pruned": 1, "ratio": 0.5}, "macs": {"dense": 2, "pruned": 1, "ratio": 0.5, "target": None},
          "accuracy": {"dense": {"n": 1, "top1": 1.0, "mean_true_prob": 0.9, "per_class": []}},
          "finetune": None, "onnx": None, "int8": None, "latency": None, "timings": {}}
    report = CompressReport.from_json(v1)
    assert report.format == "vitprune.compress-report/1" and report.accuracy["dense"].top1 == 1.0
    assert {k: v for k, v in report.to_json().items() if k not in ("format", "discovery")} == v1


def test_evaluate_and_discover_in_memory(model_dir, fashion_dir):
    sweep = vitprune.evaluate(model_dir, "demo", criterion=("magnitude", "random"), compensate=("none",), sparsity=(0.5,),
                              seed=(0,), per_class=2, eval_per_class=3, quiet=True)
    assert [(p.criterion, p.target) for p in sweep.points] == [("dense", 0.0), ("magnitude", 0.5), ("random", 0.5)]
    run = vitprune.discover(model_dir, "demo", per_class=1, classes=(0, 1), topk=2, steps=2, quiet=True)
    assert [r.label for r in run.records] == [0, 1] and run.header.discovery.topk == 2 and run.importance.images == 2
    assert run.header.data.spec == "demo" and run.folder is None


def test_a_criterion_registered_outside_the_package(model_dir, fashion_dir):
    @vitprune.register_criterion("test-out-norm", needs=("stats",), help="activation norm times output weight norm")
    def out_norm(inputs):
        return [inputs.stats.sq_norm[b].sqrt() * s.out_proj.weight.detach().double().norm(dim=0) for b, s in enumerate(inputs.sites)]

    try:
        assert "test-out-norm" in CRITERIA.names()
        mine = vitprune.compress(model_dir, "demo", sparsity=0.5, criterion="test-out-norm", compensate="none", per_class=2,
                                 eval_per_class=2, quiet=True)
        wanda = vitprune.compress(model_dir, "demo", sparsity=0.5, criterion="wanda", compensate="none", per_class=2,
                                  eval_per_class=2, quiet=True)
        assert mine.mask.kept == wanda.mask.kept  # the same formula as the built-in wanda
        with pytest.raises(ValueError, match="already registered"):
            vitprune.register_criterion("test-out-norm")(out_norm)
    finally:
        CRITERIA.remove("test-out-norm")


def test_a_compensation_registered_outside_the_package(model_dir, fashion_dir):
    from vitprune.prune.compensate import Pruned
    from vitprune.prune.slicing import slice_sites

    seen = {}

    @vitprune.register_compensation("test-zero-bias", needs=("calibration",))
    def zero_bias(dense, mask, inputs):
        seen["calibration"] = len(inputs.calibration)
        model = slice_sites(dense, mask, out_bias=True)
        return Pruned(model)

    try:
        result = vitprune.compress(model_dir, "demo", sparsity=0.25, criterion="magnitude", compensate="test-zero-bias",
                                   per_class=2, eval_per_class=2, quiet=True)
        assert seen == {"calibration": 20} and result.report.compensation["mode"] == "test-zero-bias"
    finally:
        COMPENSATIONS.remove("test-zero-bias")


def test_bad_calls_are_clear():
    with pytest.raises(TypeError, match="unknown option"):
        vitprune.compress("demo", "demo", sparsity=0.5, sparsities=(0.5,))
    with pytest.raises(UserError, match="exactly one"):
        vitprune.compress("demo", "demo")
    with pytest.raises(UserError, match="data must be"):
        vitprune.compress(_user_model(), 42, sparsity=0.5, criterion="magnitude", compensate="none")
    with pytest.raises(UserError, match="shape"):
        vitprune.compress(_user_model(), _user_data(size=16), sparsity=0.5, criterion="magnitude", compensate="none")
    with pytest.raises(UserError, match="labels outside 0..3"):
        cal, ev = _user_data()
        vitprune.compress(_user_model(), (TensorDataset(cal.tensors[0], cal.tensors[1] + 3), ev), sparsity=0.5,
                          criterion="magnitude", compensate="none")
    with pytest.raises(UserError, match="unsupported architecture"):
        vitprune.compress(torch.nn.Linear(2, 2), _user_data(), sparsity=0.5)


def test_public_names():
    for name in ("compress", "evaluate", "discover", "load_model", "load_data", "find_paths", "register_criterion",
                 "register_compensation", "register_discovery_method", "register_mlp_layout", "UserError"):
        assert callable(getattr(vitprune, name)), name
    assert np.all([n in dir(vitprune) for n in ("compress", "CompressResult")])
