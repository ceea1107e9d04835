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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ExportError

INPUT, OUTPUT = "pixel_values", "logits"
PARITY_ATOL = 1e-4
FP16_ATOL = 5e-2  # half precision: logits within this of the fp32 model's, and the same predictions
OPSETS = range(18, 24)  # what torch's exporter writes


@dataclass(frozen=True)
class Runtime:
    """The opset exported models are written with, and the onnxruntime execution provider and threads their parity
    check, int8 gate and latency run on (``--opset``, ``--provider``, ``--threads``)."""

    opset: int = 18
    provider: str = "CPUExecutionProvider"
    threads: int = 1

    def check(self) -> "Runtime":
        """One line naming the fix for an opset torch cannot write or a provider this onnxruntime lacks."""
        import onnxruntime as ort

        from ..errors import UserError

        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or self.opset not in OPSETS:
            raise UserError(f"--opset must be one of {OPSETS.start}..{OPSETS.stop - 1} (what torch's exporter writes; got {self.opset})")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise UserError(f"--threads must be a whole number >= 1 (got {self.threads})")
        available = ort.get_available_providers()
        if self.provider not in available:
            hint = " (pip install onnxruntime-gpu for CUDAExecutionProvider)" if "CUDA" in str(self.provider) else ""
            raise UserError(f"--provider {self.provider} is not available in this onnxruntime{hint}; available: {', '.join(available)}")
        return self


def session(path: Path, threads: int = 1, provider: str = "CPUExecutionProvider"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    return ort.InferenceSession(str(path), opts, providers=providers)


def input_dtype(sess) -> type:
    """numpy dtype of a session's input (float16 for a half-precision export)."""
    return np.float16 if sess.get_inputs()[0].type == "tensor(float16)" else np.float32


def set_metadata(proto, metadata: dict) -> None:
    """vitprune's metadata on an ONNX model (the one place it is written): ``vitprune.<key>`` = the value as JSON (a
    string too), so that every value reads back with one ``json.loads``; the producer is vitprune, at its version."""
    import onnx

    from .. import __version__

    onnx.helper.set_model_props(proto, {f"vitprune.{k}": json.dumps(v) for k, v in metadata.items()})
    proto.producer_name = "vitprune"
    proto.producer_version = __version__


def metadata_value(props: dict[str, str], key: str):
    """A ``vitprune.<key>`` value of an ONNX model's metadata, read back (JSON; a bare string of older exports as it is)."""
    raw = props.get(f"vitprune.{key}")
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def export_onnx(model: nn.Module, path: Path, *, metadata: dict, parity_images: torch.Tensor, atol: float | None = None,
                runtime: Runtime = Runtime(), half: bool = False) -> dict:
    """Export ``model`` to ``path`` (in half precision with ``half``), checked in onnxruntime against the fp32 model on
    ``parity_images``; returns {'parity_max_abs', 'opset', 'bytes', ...}. Raises ExportError on mismatch, leaving
    nothing at ``path``."""
    import onnx

    path = Path(path)
    atol = atol if atol is not None else (FP16_ATOL if half else PARITY_ATOL)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    model = model.eval().cpu().float()
    with torch.no_grad():
        want = model(parity_images.float()).numpy()
    exported = model.half() if half else model
    example = parity_images[:2].to(torch.float16 if half else torch.float32)  # a batch of 2: a size-1 dimension is specialised
    try:
        exporter = _export(exported, example, tmp, runtime.opset)
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto, full_check=True)
        set_metadata(proto, {**metadata, "precision": "fp16" if half else "fp32"})
        onnx.save(proto, str(tmp))
        sess = session(tmp, runtime.threads, runtime.provider)
        got = sess.run([OUTPUT], {INPUT: parity_images.numpy().astype(input_dtype(sess))})[0].astype(np.float32)
        diff = float(np.abs(got - want).max())
        if not diff <= atol or not np.array_equal(got.argmax(1), want.argmax(1)):
            raise ExportError(f"onnxruntime logits{' (fp16)' if half else ''} differ from PyTorch's by {diff:.2e} (> {atol:g}); "
                              f"nothing was written to {path}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        model.float()
    return {"parity_max_abs": diff, "parity_images": int(len(parity_images)), "opset": runtime.opset, "bytes": path.stat().st_size,
            "exporter": exporter, "provider": runtime.provider, "threads": runtime.threads, "precision": "fp16" if half else "fp32"}


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
    """The raw ``vitprune.*`` metadata strings of an ONNX model (``metadata_value`` reads one back)."""
    return dict(session(path).get_modelmeta().custom_metadata_map)


STABLE_REL = 0.02  # adaptive timing stops once every model's median moved less than this over the last third of rounds
MIN_ROUNDS = 10


def _stable(times: dict[str, list[float]]) -> bool:
    """Every model's median over all rounds within STABLE_REL of its median two thirds of the way."""
    for t in times.values():
        early = statistics.median(t[: max(1, 2 * len(t) // 3)])
        if abs(statistics.median(t) - early) > STABLE_REL * early:
            return False
    return True


def ort_latency(models: dict[str, Path], input_shape: tuple[int, ...], *, batch_sizes=(1, 8), threads: int = 1,
                warmup: int = 5, rounds: int = 30, min_seconds: float = 0.0, provider: str = "CPUExecutionProvider",
                adaptive: bool = True) -> dict:
    """Median / p10 / p90 milliseconds per run for each model and batch size.

    Sessions are built once, warmed up, and timed in interleaved rounds (A, B, A, B, ...) so that
    machine-load drift hits every model alike; threads are pinned (``intra_op_num_threads``). ``adaptive``: stop
    before ``rounds`` once the medians are stable (at least MIN_ROUNDS; the rounds run are reported per batch size).
    """
    sessions = {name: session(p, threads, provider) for name, p in models.items()}
    out: dict = {"threads": threads, "rounds": rounds, "warmup": warmup, "provider": provider}
    rng = np.random.default_rng(0)
    for bs in batch_sizes:
        x32 = rng.standard_normal((bs, *input_shape)).astype(np.float32)
        feeds = {name: {INPUT: x32.astype(input_dtype(s))} for name, s in sessions.items()}
        for name, s in sessions.items():
            for _ in range(warmup):
                s.run([OUTPUT], feeds[name])
        times: dict[str, list[float]] = {n: [] for n in sessions}
        start = time.perf_counter()
        r = 0
        while r < rounds or time.perf_counter() - start < min_seconds:
            if adaptive and r >= MIN_ROUNDS and r % 5 == 0 and time.perf_counter() - start >= min_seconds and _stable(times):
                break
            order = list(sessions.items()) if r % 2 == 0 else list(reversed(sessions.items()))
            for name, s in order:
                t0 = time.perf_counter()
                s.run([OUTPUT], feeds[name])
                times[name].append((time.perf_counter() - t0) * 1e3)
            r += 1
        out[f"batch{bs}"] = {
            name: {"median_ms": statistics.median(t), "p10_ms": float(np.percentile(t, 10)), "p90_ms": float(np.percentile(t, 90)),
                   "rounds": len(t)}
            for name, t in times.items()
        }
    return out


__all__ = ["export_onnx", "set_metadata", "read_metadata", "metadata_value", "ort_latency", "session", "input_dtype", "Runtime",
           "INPUT", "OUTPUT", "PARITY_ATOL", "FP16_ATOL", "OPSETS"]
