"""`vitprune compress` / `export`: consistent reports, ONNX parity, overwrite protection, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vitprune.app.cli import main
from vitprune.errors import ExportError
from vitprune.export.onnx import export_onnx, read_metadata
from vitprune.model.load import load_model

from .helpers import tiny_images, tiny_vit, last_line

FAST = ["--data", "demo", "--per-class", "2", "--steps", "3", "--eval-per-class", "5", "--quiet"]


@pytest.fixture(scope="module")
def compressed(model_dir, tmp_path_factory, fashion_dir):
    out = tmp_path_factory.mktemp("c") / "out"
    assert main(["compress", "--model", model_dir, "--keep-topk", "2", *FAST, "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_report_is_consistent(compressed):
    r = json.loads((compressed / "report.json").read_text())
    mask = json.loads((compressed / "mask.json").read_text())
    assert r["mask"]["kept_counts"] == mask["kept_counts"] == [len(k) for k in mask["kept"]]
    crit = r["critical_units"]
    assert len(crit) == 10 and all(len(layer) == 2 for units in crit.values() for layer in units)
    assert [sorted({u for c in crit.values() for u in c[b]}) for b in range(3)] == mask["kept"]
    widths = mask["widths"]
    assert r["mask"]["sparsity"] == pytest.approx(1 - sum(mask["kept_counts"]) / sum(widths))
    assert r["macs"]["pruned"] < r["macs"]["dense"] and r["params"]["pruned"] < r["params"]["dense"]
    assert r["data"]["evaluation_images"] == 50 and r["accuracy"]["dense"]["n"] == 50
    assert set(r["latency"]["batch1"]) == {"dense", "pruned"}
    assert "| top-1 |" in (compressed / "report.md").read_text()


@pytest.mark.slow
def test_pruned_checkpoint_and_onnx_agree(compressed):
    import onnxruntime as ort

    model = load_model(str(compressed))
    mask = json.loads((compressed / "mask.json").read_text())
    assert [blk.mlp.fc1.out_features for blk in model.blocks] == mask["kept_counts"]
    x = tiny_images(5, size=28, chans=1)
    sess = ort.InferenceSession(str(compressed / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"pixel_values": x.numpy()})[0]  # batch 5: the batch axis is dynamic
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() <= 1e-4
    meta = read_metadata(compressed / "model.onnx")
    assert json.loads(meta["vitprune.kept_units"]) == mask["kept_counts"]
    assert {"vitprune.source_model", "vitprune.criterion", "vitprune.sparsity", "vitprune.vitprune_version"} <= set(meta)


@pytest.mark.slow
def test_rerun_needs_force_for_a_different_result(compressed, model_dir, capsys):
    before = (compressed / "model.safetensors").read_bytes()
    assert main(["compress", "--model", model_dir, "--keep-topk", "3", *FAST, "--out", str(compressed)]) == 2
    assert "keep_topk" in capsys.readouterr().err
    assert (compressed / "model.safetensors").read_bytes() == before


@pytest.mark.slow
def test_export_command(compressed, tmp_path, capsys):
    out = tmp_path / "again.onnx"
    assert main(["export", "--model", str(compressed), "--out", str(out)]) == 0
    assert out.is_file()
    before = out.stat().st_mtime_ns
    assert main(["export", str(compressed), "--out", str(out)]) == 0  # vitprune 0.1's positional form; the same weights
    assert "up to date" in capsys.readouterr().out and out.stat().st_mtime_ns == before
    assert main(["export", "--model", str(compressed), "--out", str(out), "--force"]) == 0
    assert out.stat().st_mtime_ns != before


@pytest.mark.slow
def test_failed_parity_leaves_no_file(tmp_path, monkeypatch):
    import onnxruntime as ort

    real = ort.InferenceSession.run
    monkeypatch.setattr(ort.InferenceSession, "run", lambda self, *a, **k: [o + 1.0 for o in real(self, *a, **k)])
    target = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="differ"):
        export_onnx(tiny_vit(), target, metadata={}, parity_images=tiny_images(2))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--keep-topk", "2", "--sparsity", "0.5"], "exactly one"),
        ([], "exactly one"),
        (["--sparsity", "1.0"], "[0, 1)"),
        (["--sparsity", "-0.1"], "[0, 1)"),
        (["--keep-topk", "64"], "keeps every unit"),
        (["--sparsity", "0.5", "--criterion", "nope"], "--criterion"),
        (["--sparsity", "0.5", "--min-keep", "0"], "--min-keep"),
        (["--sparsity", "0.5", "--compensate", "bogus"], "--compensate"),
        (["--keep-topk", "2", "--criterion", "taylor"], "--criterion must be jas or jas-freq"),
        (["--sparsity", "0.5", "--compensate", "lsq", "--per-class", "1", "--classes", "3"], "at least 2 calibration images"),
    ],
)
def test_bad_input(model_dir, tmp_path, capsys, extra, fragment, fashion_dir):
    code = main(["compress", "--model", model_dir, *FAST, *extra, "--out", str(tmp_path / "o"), "--no-export"])
    err = capsys.readouterr().err
    assert code == 2 and fragment in last_line(err)


def test_unsupported_block_is_refused(tmp_path, capsys):
    # timm's ParallelThingsBlock runs attention and MLP side by side: no MLP site to prune
    code = main(["compress", "--model", "random:vit_small_patch16_18x2_224", "--model-args", "depth=2", "--sparsity", "0.5", *FAST,
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "parallel/fused blocks are not supported" in last_line(err)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("criterion,compensate", [("variance", "mean"), ("random", "lsq")])
def test_sparsity_budget_with_compensation(model_dir, tmp_path, criterion, compensate, fashion_dir):
    out = tmp_path / "s"
    assert main(["compress", "--model", model_dir, "--sparsity", "0.5", "--criterion", criterion, "--compensate", compensate,
                 *FAST, "--no-export", "--out", str(out)]) == 0
    r = json.loads((out / "report.json").read_text())
    assert r["mask"]["kept_counts"] == [32, 32, 32] and r["mask"]["sparsity"] == 0.5
    assert r["compensation"]["mode"] == compensate
    assert (r["compensation"]["reconstruction"] is not None) == (compensate == "lsq")
    assert not (out / "paths").exists()  # no discovery for a non-path criterion


@pytest.mark.slow
def test_lsq_refit_checkpoint_and_onnx_are_exact(model_dir, tmp_path, fashion_dir):
    """The refitted weights survive the checkpoint round trip and the ONNX export bit for bit / within 1e-4."""
    import onnxruntime as ort

    out = tmp_path / "lsq"
    assert main(["compress", "--model", model_dir, "--sparsity", "0.75", "--criterion", "activation", "--compensate", "lsq",
                 *FAST, "--out", str(out)]) == 0
    r = json.loads((out / "report.json").read_text())
    blocks = r["compensation"]["reconstruction"]["blocks"]
    assert len(blocks) == 3 and all(b["calibration_error"]["lsq"] <= b["calibration_error"]["slice"] for b in blocks)
    model = load_model(str(out))
    dense = load_model(model_dir)
    assert not torch.equal(model.blocks[0].mlp.fc2.bias, dense.blocks[0].mlp.fc2.bias)  # refit, not a plain slice
    x = tiny_images(4, size=28, chans=1)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert np.abs(sess.run(None, {"pixel_values": x.numpy()})[0] - model(x).numpy()).max() <= 1e-4


def test_underdetermined_fit_is_said_and_solved(model_dir, tmp_path, capsys, fashion_dir):
    """2 calibration images (34 tokens) for 48 kept units: the ridge solves it; one note says so."""
    out = tmp_path / "u"
    rc = main(["compress", "--model", model_dir, "--data", "demo", "--per-class", "1", "--classes", "0,1", "--sparsity", "0.25",
               "--criterion", "magnitude", "--compensate", "lsq", "--eval-per-class", "3", "--no-export", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0 and "fewer calibration tokens than kept units" in err
    r = json.loads((out / "report.json").read_text())
    assert r["compensation"]["reconstruction"]["underdetermined"] == [0, 1, 2]
