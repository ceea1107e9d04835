"""Shipping a model, written once: the ONNX export with its parity check, the gated int8 model, and the onnxruntime
latency of dense vs pruned — for ``compress``, ``CompressResult.export_onnx`` and ``vitprune export`` alike — and the
rules for writing one file where the user says (``--out FILE.onnx``): never over a file vitprune did not write,
never through a symbolic link, registered in the manifest of the vitprune folder it lands in."""
from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ExportError, UserError
from ..export import INT8_FILE, ONNX_FILE
from ..export.onnx import FP16_ATOL, Runtime
from ..options import check_choice, check_int8
from ..outdir import OutputFolder, read_manifest
from ..progress import stage

PARITY_IMAGES = 16  # held-out images the onnxruntime parity check runs on
INT8_GATE_ROUNDS = 20  # interleaved timing rounds of the int8 speed gate when no latency is asked for
FINGERPRINT_KEY = "weights_fingerprint"  # ONNX metadata: the PyTorch weights it was exported from


@dataclass
class Shipped:
    """What was exported: the ONNX file's facts, the fp16 model's, the int8 gates' result (``Int8Result.to_json``), the
    latency."""

    onnx: dict[str, Any]
    int8: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    int8_path: Path | None = None
    fp16: dict[str, Any] | None = None
    fp16_path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {"onnx": self.onnx, "int8": self.int8, "latency": self.latency, "fp16": self.fp16,
                "int8_path": str(self.int8_path) if self.int8_path else None,
                "fp16_path": str(self.fp16_path) if self.fp16_path else None}


def int8_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.int8.onnx")


def fp16_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.fp16.onnx")


def check_quantize(quantize: Any, int8_mode: Any, max_int8_drop: Any) -> None:
    """Every int8 option checked before anything is written."""
    if quantize is not None:
        check_choice("quantize", quantize, ("int8",))
    check_int8(int8_mode, max_int8_drop)


def ship(model: nn.Module, path: Path, *, metadata: dict[str, Any], parity_images: torch.Tensor,
         dense: nn.Module | None = None, quantize: str | None = None, int8_mode: str = "static", max_int8_drop: float = 1.0,
         evaluation: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None,
         calibration: Callable[[], torch.Tensor] | None = None, latency_rounds: int = 0, quiet: bool = False,
         runtime: Runtime | None = None, fp16: bool = False, keep_slower_int8: bool = False) -> Shipped:
    """``model`` as ONNX at ``path`` (parity within 1e-4 on ``parity_images``, else nothing is written), checked and timed
    on ``runtime``'s provider and threads; with ``fp16`` a half-precision model beside it (logits within 0.05); with
    ``quantize`` the int8 model beside it, kept if its top-1 on ``evaluation()`` is within ``max_int8_drop`` points
    **and** it is faster than fp32 at batch 1 and 8 (``keep_slower_int8`` keeps a slower one); with ``latency_rounds``
    and ``dense``, onnxruntime latency of the dense and the shipped models at batch 1 and 8."""
    from ..export.onnx import export_onnx, ort_latency

    runtime = (runtime or Runtime()).check()
    device = next(model.parameters()).device
    with stage(f"exporting ONNX (opset {runtime.opset}) and checking onnxruntime parity on {len(parity_images)} held-out images "
               f"({runtime.provider})", quiet=quiet):
        info = export_onnx(model, path, metadata=metadata, parity_images=parity_images, runtime=runtime)
    shipped = Shipped(info)
    if fp16:
        target = fp16_path(path)
        with stage(f"fp16 export, checked on the same images (logits within {FP16_ATOL:g})", quiet=quiet):
            try:
                shipped.fp16 = export_onnx(model, target, metadata=metadata, parity_images=parity_images, runtime=runtime, half=True)
                shipped.fp16_path = target
            except ExportError as exc:  # the fp32 model still ships; the report says why there is no fp16 one
                shipped.fp16 = {"written": False, "reason": str(exc)}
    model.to(device)
    int8 = None
    if quantize:
        int8 = _quantize(path, metadata, int8_mode, max_int8_drop, evaluation, calibration, runtime, quiet)
        shipped.int8_path = int8_path(path) if int8.written else None
    timed: dict[str, Path] = {}
    dense_onnx = path.with_name(f".dense-{os.getpid()}.onnx")  # beside the export, never published: only for timing
    try:
        if latency_rounds and dense is not None:
            dense_onnx = _dense_onnx(dense, dense_onnx, metadata, parity_images, runtime, quiet)
            timed = {"dense": dense_onnx, "pruned": path, **({"pruned_fp16": shipped.fp16_path} if shipped.fp16_path else {})}
        if shipped.int8_path is not None:
            timed = {**timed, "pruned": path, "pruned_int8": shipped.int8_path}
        if len(timed) > 1:
            rounds = max(latency_rounds, INT8_GATE_ROUNDS if shipped.int8_path else 0)
            with stage(f"onnxruntime latency: {', '.join(timed)}, batch 1 and 8, up to {rounds} rounds", quiet=quiet):
                latency = ort_latency(timed, tuple(parity_images.shape[1:]), rounds=rounds, threads=runtime.threads,
                                      provider=runtime.provider)
            shipped.latency = latency if latency_rounds and dense is not None else None
            if int8 is not None and int8.written:
                int8 = _speed_gate(int8, latency, keep_slower_int8)
                if not int8.written:
                    shipped.int8_path.unlink(missing_ok=True)
                    shipped.int8_path = None
    finally:
        if dense_onnx.name.startswith(".dense-"):
            dense_onnx.unlink(missing_ok=True)
    if int8 is not None:
        shipped.int8 = int8.to_json()
    return shipped


def _dense_onnx(dense: nn.Module, beside: Path, metadata: dict[str, Any], parity_images: torch.Tensor, runtime: Runtime,
                quiet: bool) -> Path:
    """The dense model's ONNX for the latency comparison: exported once per (weights, opset, exporter versions) into the
    user cache and reused by every later compress of the same model (or, where the cache cannot be written, beside
    ``beside`` and removed after)."""
    import hashlib

    import onnx

    from .. import __version__
    from ..data import cache_dir
    from ..export.onnx import export_onnx
    from ..model.load import model_fingerprint

    key = hashlib.sha256(f"{model_fingerprint(dense)}:{runtime.opset}:{torch.__version__}:{onnx.__version__}:{__version__}:"
                         f"{tuple(parity_images.shape[1:])}".encode()).hexdigest()
    cached = cache_dir() / "onnx" / f"dense-{key}.onnx"
    if cached.is_file():
        return cached
    device = next(dense.parameters()).device
    with stage("exporting the dense model for the latency comparison (once per model: kept in the cache)", quiet=quiet):
        for target in (cached, beside):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                export_onnx(dense, target, metadata={"source_model": metadata.get("source_model", "")},
                            parity_images=parity_images, runtime=runtime)
                break
            except OSError:
                if target == beside:
                    raise
    dense.to(device)
    return target


def _quantize(path: Path, metadata: dict[str, Any], mode: str, max_drop: float, evaluation, calibration, runtime: Runtime,
              quiet: bool):
    """The accuracy gate of the int8 model (``quantize_gated``); a refused model leaves no file."""
    from ..export.quantize import quantize_gated

    images, labels = evaluation()
    target = int8_path(path)
    with stage(f"int8 ({mode}) quantization, kept if its top-1 on {len(images)} evaluation images is within {max_drop:g} points "
               "and it is faster than fp32", quiet=quiet):
        result = quantize_gated(path, target, mode=mode, calibration=calibration() if mode == "static" else None,
                                images=images, labels=labels, metadata=metadata, max_drop=max_drop, provider=runtime.provider)
    if not result.written:
        target.unlink(missing_ok=True)  # never a stale int8 model beside a new fp32 one
    return result


def _speed_gate(result, latency: dict[str, Any], keep_slower: bool):
    """Keep the int8 model only if it is faster than the fp32 one at batch 1 and at batch 8 (median of interleaved
    rounds), unless ``keep_slower``; the measured medians go into the result either way."""
    speed = {key: {"fp32_ms": latency[key]["pruned"]["median_ms"], "int8_ms": latency[key]["pruned_int8"]["median_ms"]}
             for key in ("batch1", "batch8")}
    slower = [key for key, v in speed.items() if v["int8_ms"] >= v["fp32_ms"]]
    speed["faster"] = not slower
    if not slower or keep_slower:
        return result.with_speed(speed)
    where = "; ".join(f"{key.replace('batch', 'batch ')}: int8 {speed[key]['int8_ms']:.3f} ms vs fp32 {speed[key]['fp32_ms']:.3f} ms"
                      for key in slower)
    return result.refused(f"int8 is not faster than fp32 ({where}, {latency['provider']}, {latency['threads']} thread(s)); "
                          f"{INT8_FILE} was not written (--keep-slower-int8 keeps it)", speed)


def vitprune_onnx(path: Path) -> bool:
    """Whether ``path`` is an ONNX model vitprune wrote (its producer name)."""
    try:
        import onnx

        return path.is_file() and onnx.load(str(path), load_external_data=False).producer_name == "vitprune"
    except Exception:
        return False


def file_target(path: str | Path, *, force: bool, reads: tuple[Path, ...] = (), result: dict | None = None) -> tuple[Path, Any]:
    """Check a single-file ONNX output and open what guards it: (the path, a context manager). The file must be
    ``.onnx``, not a symbolic link, not a file the export reads; an existing one is replaced only with ``force`` and
    only if vitprune wrote it, or without ``force`` when it belongs to the very result being exported (its folder's
    settings file equals ``result``: a rerun). Its parent folder is created; a vitprune folder there (a compress
    result) is locked and records the new file in its manifest (``guard.own``); another command's folder is refused."""
    path = Path(path)
    if str(path).strip() == "" or path.suffix.lower() != ".onnx":
        raise UserError(f"{path} must name an .onnx file (e.g. model.onnx)")
    if path.is_dir():
        raise UserError(f"{path} is a folder; name an .onnx file")
    for read in reads:
        if path.resolve() == read.resolve() or int8_path(path).resolve() == read.resolve():
            raise UserError(f"{path} would overwrite {read}, which the export reads; choose another file")
    parent = path.parent
    manifest = read_manifest(parent) if parent.is_dir() else None
    if manifest is not None and manifest.get("command") not in (None, "compress"):
        raise UserError(f"{parent} holds a vitprune {manifest['command']} result; an ONNX model goes into a compress result "
                        "folder or a folder of your own: choose another file")
    for target in (path, int8_path(path)):
        if target.is_symlink():
            raise UserError(f"{target} is a symbolic link; vitprune never writes through one: remove it or choose another file")
        if not target.exists():
            continue
        owned = manifest is not None and target.name in manifest["files"]
        if not owned and not vitprune_onnx(target):
            raise UserError(f"{target} exists and is not an ONNX model vitprune wrote; it is never replaced, even with "
                            "force: choose another file")
        if not force and not (owned and result is not None and _same_result(parent, result)):
            raise UserError(f"{target} exists; pass --force (force=True) to replace it")
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise UserError(f"cannot create {parent} ({exc.strerror}); choose a writable place") from exc
    guard = OutputFolder(parent, "compress") if manifest is not None else nullcontext(None)
    return path, guard


def _same_result(folder: Path, settings: dict) -> bool:
    """Whether ``folder`` holds the compress result of these settings (its own files may be written again)."""
    from ..files import read_json
    from ..options import CompressOptions
    from ..outdir import differing
    from .common import COMPRESS_SETTINGS, with_defaults

    file = folder / COMPRESS_SETTINGS
    try:
        return file.is_file() and not differing(with_defaults(CompressOptions)(read_json(file)), settings)
    except UserError:
        return False


def default_onnx(folder: Path) -> Path:
    return Path(folder) / ONNX_FILE


__all__ = ["ship", "Shipped", "file_target", "check_quantize", "int8_path", "vitprune_onnx", "PARITY_IMAGES", "FINGERPRINT_KEY",
           "default_onnx"]
