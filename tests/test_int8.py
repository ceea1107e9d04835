"""int8 ONNX: written next to the fp32 model with its metadata, loadable by onnxruntime, gated by accuracy."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vitprune.app.cli import main
from vitprune.export.onnx import read_metadata

from .helpers import tiny_images, last_line

FAST = ["--data", "demo", "--per-class", "2", "--eval-per-class", "5", "--sparsity", "0.5", "--criterion", "magnitude",
        "--compensate", "none", "--quiet"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_compress_writes_a_gated_int8_model(model_dir, tmp_path, fashion_dir, mode):
    import onnxruntime as ort

    out = tmp_path / "c"
    assert main(["compress", "--model", model_dir, *FAST, "--quantize", "int8", "--int8-mode", mode, "--max-int8-drop", "100",
                 "--keep-slower-int8", "--out", str(out)]) == 0
    r = json.loads((out / "report.json").read_text())
    q = r["int8"]
    assert q["written"] and q["mode"] == mode and q["images"] == 50 and q["bytes"] == (out / "model.int8.onnx").stat().st_size
    assert q["bytes"] < r["onnx"]["bytes"]  # int8 weights
    assert set(r["latency"]["batch1"]) == set(r["latency"]["batch8"]) == {"dense", "pruned", "pruned_int8"}
    meta = read_metadata(out / "model.int8.onnx")
    assert json.loads(meta["vitprune.int8_mode"]) == mode and json.loads(meta["vitprune.kept_units"]) == r["mask"]["kept_counts"]
    assert set(q["speed"]) == {"batch1", "batch8", "faster"}  # measured either way; kept here on request
    sess = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"pixel_values": tiny_images(3, size=28, chans=1).numpy()})[0]
    assert logits.shape == (3, 10) and np.isfinite(logits).all()
    assert "int8" in (out / "report.md").read_text()


@pytest.mark.slow
def test_a_failed_gate_leaves_no_int8_file(model_dir, tmp_path, fashion_dir, monkeypatch, capsys):
    import vitprune.export.quantize as q

    real = q.onnx_top1
    monkeypatch.setattr(q, "onnx_top1", lambda path, *a, **k: real(path, *a, **k) - (0.05 if ".tmp-" in str(path) else 0.0))
    out = tmp_path / "c"
    assert main(["compress", "--model", model_dir, *FAST, "--quantize", "int8", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    err = last_line(err)
    assert "5.00 points below" in err and "--max-int8-drop 1" in err
    assert not (out / "model.int8.onnx").exists() and not list(out.glob(".model.int8.onnx*"))
    r = json.loads((out / "report.json").read_text())
    assert r["int8"]["written"] is False and (out / "model.onnx").is_file()  # everything else stands


@pytest.mark.slow
def test_export_command_quantizes_too(model_dir, tmp_path, fashion_dir):
    ckpt = tmp_path / "c"
    assert main(["compress", "--model", model_dir, *FAST, "--no-export", "--out", str(ckpt)]) == 0
    assert main(["export", str(ckpt), "--quantize", "int8", "--per-class", "2", "--eval-per-class", "3", "--max-int8-drop", "100",
                 "--keep-slower-int8"]) == 0
    assert (ckpt / "model.onnx").is_file() and (ckpt / "model.int8.onnx").is_file()
    assert main(["export", str(ckpt), "--quantize", "int8"]) == 2  # both exist: --force


@pytest.mark.parametrize("extra,fragment", [(["--quantize", "int8", "--no-export"], "drop --no-export"),
                                            (["--quantize", "int8", "--max-int8-drop", "-1"], "--max-int8-drop"),
                                            (["--quantize", "int8", "--int8-mode", "half"], "--int8-mode"),
                                            (["--quantize", "int4"], "--quantize")])
def test_bad_int8_options(model_dir, tmp_path, fashion_dir, capsys, extra, fragment):
    assert main(["compress", "--model", model_dir, *FAST, *extra, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert fragment in last_line(err)
    assert not (tmp_path / "c").exists()


def _latency(fp32: tuple[float, float], int8: tuple[float, float]) -> dict:
    return {"provider": "CPUExecutionProvider", "threads": 1,
            **{key: {"pruned": {"median_ms": a}, "pruned_int8": {"median_ms": b}} for key, a, b in zip(("batch1", "batch8"), fp32, int8)}}


def test_the_speed_gate_keeps_int8_only_when_faster_at_batch_1_and_8():
    from vitprune.api.shipping import _speed_gate
    from vitprune.export.quantize import Int8Result

    passed = Int8Result(True, "static", 0.9, 0.89, 100, 1000)
    assert _speed_gate(passed, _latency((2.0, 8.0), (1.0, 4.0)), keep_slower=False).written
    slower = _speed_gate(passed, _latency((2.0, 4.47), (1.0, 8.60)), keep_slower=False)
    assert not slower.written and "batch 8: int8 8.600 ms vs fp32 4.470 ms" in slower.reason and "--keep-slower-int8" in slower.reason
    assert slower.speed["faster"] is False and slower.bytes is None
    kept = _speed_gate(passed, _latency((2.0, 4.47), (1.0, 8.60)), keep_slower=True)
    assert kept.written and kept.speed["faster"] is False


@pytest.mark.slow
def test_a_slower_int8_model_is_not_kept_unless_asked(model_dir, tmp_path, fashion_dir, capsys):
    out = tmp_path / "c"
    code = main(["compress", "--model", model_dir, *FAST, "--quantize", "int8", "--max-int8-drop", "100", "--out", str(out)])
    q = json.loads((out / "report.json").read_text())["int8"]
    faster = all(q["speed"][k]["int8_ms"] < q["speed"][k]["fp32_ms"] for k in ("batch1", "batch8"))
    assert q["speed"]["faster"] is faster and q["written"] is faster and (out / "model.int8.onnx").exists() is faster
    assert code == (0 if faster else 1)
    if not faster:
        assert "not faster than fp32" in last_line(capsys.readouterr().err)
