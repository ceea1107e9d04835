"""ONNX export with a dynamic batch axis, checker, metadata, onnxruntime parity, and ORT latency.

An export that fails the parity check (max |logit difference| > atol on held-out images)
leaves nothing at the target path: the file is written beside it and renamed only on success.
"""
from __future__ import annotations

import json
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ExportError

INPUT, OUTPUT = "pixel_values", "logits"
PARITY_ATOL = 1e-4


def session(path: Path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def set_metadata(proto, metadata: dict) -> None:
    """vitprune's metadata on an ONNX model (the one place it is written): ``vitprune.<key>`` = value (JSON unless a string)."""
    import onnx

    props = {f"vitprune.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = "vitprune"


def export_onnx(model: nn.Module, path: Path, *, metadata: dict, parity_images: torch.Tensor, atol: float = PARITY_ATOL,
                opset: int = 18) -> dict:
    """Export ``model`` to ``path``; returns {'parity_max_abs', 'opset', 'bytes'}. Raises ExportError on mismatch."""
    import onnx

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    model = model.eval().cpu().float()
    example = parity_images[:2].float()  # a batch of 2: torch.export specialises a size-1 dimension
    try:
        exporter = _export(model, example, tmp, opset)
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto, full_check=True)
        set_metadata(proto, metadata)
        onnx.save(proto, str(tmp))
        with torch.no_grad():
            want = model(parity_images.float()).numpy()
        got = session(tmp).run([OUTPUT], {INPUT: parity_images.float().numpy()})[0]
        diff = float(np.abs(got - want).max())
        if not diff <= atol or not np.array_equal(got.argmax(1), want.argmax(1)):
            raise ExportError(f"onnxruntime logits differ from PyTorch by {diff:.2e} (> {atol:g}); nothing was written to {path}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"parity_max_abs": diff, "parity_images": int(len(parity_images)), "opset": opset, "bytes": path.stat().st_size,
            "exporter": exporter}


def _export(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> str:
    """Write ``model`` as ONNX with a dynamic batch axis: torch's dynamo exporter, or, where it cannot convert a graph
    (timm's Beit attention reshapes a transposed view it fails to decompose), the TorchScript exporter. Returns which
    one wrote it; the parity check that follows holds either to the same bar."""
    import logging

    from torch.onnx._internal.exporter._errors import ConversionError

    chatty = logging.getLogger("onnxscript")  # its optimizer logs a warning per multi-output op it leaves unfolded
    level = chatty.level
    chatty.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (example,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), opset_version=opset,
                              dynamo=True, external_data=False, verbose=False)
            return "dynamo"
        except ConversionError:
            torch.onnx.export(model, (example,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=opset, dynamo=False)
            return "torchscript"
        finally:
            chatty.setLevel(level)


def read_metadata(path: Path) -> dict[str, str]:
    return dict(session(path).get_modelmeta().custom_metadata_map)


def ort_latency(models: dict[str, Path], input_shape: tuple[int, ...], *, batch_sizes=(1, 8), threads: int = 1,
                warmup: int = 5, rounds: int = 30, min_seconds: float = 0.0) -> dict:
    """Median / p10 / p90 milliseconds per run for each model and batch size.

    Sessions are built once, warmed up, and timed in interleaved rounds (A, B, A, B, ...) so that
    machine-load drift hits every model alike; threads are pinned (``intra_op_num_threads``).
    """
    sessions = {name: session(p, threads) for name, p in models.items()}
    out: dict = {"threads": threads, "rounds": rounds, "warmup": warmup}
    rng = np.random.default_rng(0)
    for bs in batch_sizes:
        x = rng.standard_normal((bs, *input_shape)).astype(np.float32)
        for s in sessions.values():
            for _ in range(warmup):
                s.run([OUTPUT], {INPUT: x})
        times: dict[str, list[float]] = {n: [] for n in sessions}
        start = time.perf_counter()
        r = 0
        while r < rounds or time.perf_counter() - start < min_seconds:
            order = list(sessions.items()) if r % 2 == 0 else list(reversed(sessions.items()))
            for name, s in order:
                t0 = time.perf_counter()
                s.run([OUTPUT], {INPUT: x})
                times[name].append((time.perf_counter() - t0) * 1e3)
            r += 1
        out[f"batch{bs}"] = {
            name: {"median_ms": statistics.median(t), "p10_ms": float(np.percentile(t, 10)), "p90_ms": float(np.percentile(t, 90))}
            for name, t in times.items()
        }
    return out


__all__ = ["export_onnx", "set_metadata", "read_metadata", "ort_latency", "session", "INPUT", "OUTPUT", "PARITY_ATOL"]
