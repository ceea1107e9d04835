"""int8 ONNX from a parity-checked fp32 export, gated by accuracy.

``static`` (default): onnxruntime's QDQ quantization, activations uint8 and weights int8 per
output channel, calibrated (min-max) on preprocessed calibration images; only the matrix
products (MatMul, Gemm, Conv) are quantized, normalisations and softmax stay fp32. ``dynamic``:
weights int8, activation scales computed at run time (no calibration data). Both run
``quant_pre_process`` (shape inference, graph clean-up) first, which the dynamo exporter's
graphs need.

The gate is accuracy, not logit parity: the int8 model's top-1 on the evaluation images (run in
onnxruntime) may fall at most ``max_drop`` below the fp32 model's, else nothing is written.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader

from ..options import INT8_MODES
from . import INT8_FILE
MAX_DROP_DEFAULT = 1.0  # points of top-1


@dataclass(frozen=True)
class Int8Result:
    written: bool
    mode: str
    top1_fp32: float
    top1_int8: float
    images: int
    bytes: int | None
    reason: str | None = None
    speed: dict | None = None  # median ms of fp32 and int8 at batch 1 and 8, and whether int8 was faster at both

    def refused(self, reason: str, speed: dict) -> "Int8Result":
        """The same result, not kept (the speed gate): the file is removed by the caller."""
        return Int8Result(False, self.mode, self.top1_fp32, self.top1_int8, self.images, None, reason, speed)

    def with_speed(self, speed: dict) -> "Int8Result":
        return Int8Result(self.written, self.mode, self.top1_fp32, self.top1_int8, self.images, self.bytes, self.reason, speed)

    @property
    def drop_points(self) -> float:
        return 100 * (self.top1_fp32 - self.top1_int8)

    def to_json(self) -> dict:
        return {"written": self.written, "mode": self.mode, "top1_fp32": self.top1_fp32, "top1_int8": self.top1_int8,
                "drop_points": self.drop_points, "images": self.images, "bytes": self.bytes, "reason": self.reason,
                **({"speed": self.speed} if self.speed is not None else {})}


class _Reader(CalibrationDataReader):
    """onnxruntime's calibration reader over preprocessed images, in batches."""

    def __init__(self, images: torch.Tensor, batch: int = 16) -> None:
        from .onnx import INPUT

        self._batches = iter([{INPUT: images[s : s + batch].float().numpy()} for s in range(0, len(images), batch)])

    def get_next(self):
        return next(self._batches, None)


def onnx_top1(path: Path, images: torch.Tensor, labels: torch.Tensor, batch: int = 256,
              provider: str = "CPUExecutionProvider") -> float:
    """Top-1 of an ONNX classifier on preprocessed images, in onnxruntime (all threads)."""
    from .onnx import INPUT, OUTPUT, session as ort_session

    session = ort_session(path, threads=os.cpu_count() or 1, provider=provider)
    hits = 0
    for s in range(0, len(images), batch):
        logits = session.run([OUTPUT], {INPUT: images[s : s + batch].float().numpy()})[0]
        hits += int((logits.argmax(1) == labels[s : s + batch].numpy()).sum())
    return hits / max(len(images), 1)


def quantize(fp32: Path, out: Path, *, mode: str, calibration: torch.Tensor | None, metadata: dict) -> None:
    """Write the int8 model of ``fp32`` to ``out`` (no gate here), with vitprune metadata."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    from ..options import check_choice
    from .onnx import set_metadata

    check_choice("--int8-mode", mode, INT8_MODES)
    with tempfile.TemporaryDirectory() as tmp:
        pre, raw = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(pre))
        if mode == "static":
            if calibration is None or not len(calibration):
                raise ValueError("static int8 quantization needs calibration images")
            quantize_static(str(pre), str(raw), _Reader(calibration), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm", "Conv"])
        else:
            quantize_dynamic(str(pre), str(raw), weight_type=QuantType.QInt8)
        proto = onnx.load(str(raw))
        set_metadata(proto, {**metadata, "int8_mode": mode})
        onnx.save(proto, str(out))


def quantize_gated(fp32: Path, out: Path, *, mode: str, calibration: torch.Tensor | None, images: torch.Tensor,
                   labels: torch.Tensor, metadata: dict, max_drop: float = MAX_DROP_DEFAULT,
                   provider: str = "CPUExecutionProvider") -> Int8Result:
    """Quantize ``fp32`` to ``out`` only if int8 top-1 on ``images`` is within ``max_drop`` points of fp32's (the
    accuracy gate; the speed gate is the caller's, which times it beside the other models)."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        quantize(fp32, tmp, mode=mode, calibration=calibration, metadata=metadata)
        top_fp32, top_int8 = onnx_top1(fp32, images, labels, provider=provider), onnx_top1(tmp, images, labels, provider=provider)
        drop = 100 * (top_fp32 - top_int8)
        if not np.isfinite(drop) or drop > max_drop:
            return Int8Result(False, mode, top_fp32, top_int8, len(images), None,
                              f"int8 top-1 {100 * top_int8:.2f}% is {drop:.2f} points below fp32's {100 * top_fp32:.2f}% "
                              f"(> --max-int8-drop {max_drop:g}); {out.name} was not written")
        os.replace(tmp, out)
        return Int8Result(True, mode, top_fp32, top_int8, len(images), out.stat().st_size)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["quantize", "quantize_gated", "onnx_top1", "Int8Result", "INT8_MODES", "INT8_FILE", "MAX_DROP_DEFAULT"]
