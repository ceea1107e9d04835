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

from ..errors import UserError
from ..export import ONNX_FILE
from ..options import check_choice, check_int8
from ..outdir import OutputFolder, read_manifest
from ..progress import stage

PARITY_IMAGES = 16  # held-out images the onnxruntime parity check runs on
FINGERPRINT_KEY = "weights_fingerprint"  # ONNX metadata: the PyTorch weights it was exported from


@dataclass
class Shipped:
    """What was exported: the ONNX file's facts, the int8 gate's result (``Int8Result.to_json``), the latency."""

    onnx: dict[str, Any]
    int8: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    int8_path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {"onnx": self.onnx, "int8": self.int8, "latency": self.latency,
                "int8_path": str(self.int8_path) if self.int8_path else None}


def int8_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.int8.onnx")


def check_quantize(quantize: Any, int8_mode: Any, max_int8_drop: Any) -> None:
    """Every int8 option checked before anything is written."""
    if quantize is not None:
        check_choice("quantize", quantize, ("int8",))
    check_int8(int8_mode, max_int8_drop)


def ship(model: nn.Module, path: Path, *, metadata: dict[str, Any], parity_images: torch.Tensor,
         dense: nn.Module | None = None, quantize: str | None = None, int8_mode: str = "static", max_int8_drop: float = 1.0,
         evaluation: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None,
         calibration: Callable[[], torch.Tensor] | None = None, latency_rounds: int = 0, quiet: bool = False) -> Shipped:
    """``model`` as ONNX at ``path`` (parity within 1e-4 on ``parity_images``, else nothing is written); with ``quantize``
    the int8 model beside it, kept if its top-1 on ``evaluation()`` is within ``max_int8_drop`` points; with
    ``latency_rounds`` and ``dense``, onnxruntime latency of the dense and the shipped models at batch 1 and 8."""
    from ..export.onnx import export_onnx, ort_latency
    from ..export.quantize import quantize_gated

    device = next(model.parameters()).device
    with stage(f"exporting ONNX and checking onnxruntime parity on {len(parity_images)} held-out images", quiet=quiet):
        info = export_onnx(model, path, metadata=metadata, parity_images=parity_images)
    model.to(device)
    shipped = Shipped(info)
    if quantize:
        images, labels = evaluation()
        target = int8_path(path)
        with stage(f"int8 ({int8_mode}) quantization, kept if its top-1 on {len(images)} evaluation images is within "
                   f"{max_int8_drop:g} points", quiet=quiet):
            result = quantize_gated(path, target, mode=int8_mode, calibration=calibration() if int8_mode == "static" else None,
                                    images=images, labels=labels, metadata=metadata, max_drop=max_int8_drop)
        if not result.written:
            target.unlink(missing_ok=True)  # never a stale int8 model beside a new fp32 one
        shipped.int8 = result.to_json()
        shipped.int8_path = target if result.written else None
    if latency_rounds and dense is not None:
        dense_onnx = path.with_name(f".dense-{os.getpid()}.onnx")  # beside the export, never published: only for timing
        try:
            dense_device = next(dense.parameters()).device
            with stage(f"onnxruntime latency: dense vs pruned, batch 1 and 8, {latency_rounds} rounds", quiet=quiet):
                export_onnx(dense, dense_onnx, metadata={"source_model": metadata.get("source_model", "")},
                            parity_images=parity_images)
                dense.to(dense_device)
                timed = {"dense": dense_onnx, "pruned": path, **({"pruned_int8": shipped.int8_path} if shipped.int8_path else {})}
                shipped.latency = ort_latency(timed, tuple(parity_images.shape[1:]), rounds=latency_rounds)
        finally:
            dense_onnx.unlink(missing_ok=True)
    return shipped


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
