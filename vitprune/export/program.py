"""The pruned model as a PyTorch program that needs torch alone: ``torch.export`` with a dynamic batch axis, saved as
``model.pt2`` and checked like the ONNX export (the program, loaded back, against the model on held-out images).

    program = torch.export.load("model.pt2").module()
    logits = program(images)  # (N, C, H, W) preprocessed as config.json's pretrained_cfg says

An export whose reloaded program differs from the model leaves nothing at the target path.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ExportError
from . import PROGRAM_FILE

PROGRAM_ATOL = 1e-4
MAX_BATCH = 4096


def export_program(model: nn.Module, path: Path, *, parity_images: torch.Tensor, atol: float = PROGRAM_ATOL) -> dict:
    """Write ``model`` (eval, fp32, CPU) as a ``torch.export`` program at ``path``; returns {'parity_max_abs',
    'parity_images', 'bytes', 'max_batch'}. Raises ExportError when the reloaded program's logits differ by more than
    ``atol`` or its predictions differ."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")  # torch.export wants the .pt2 suffix
    device = next(model.parameters()).device
    model = model.eval().cpu().float()
    images = parity_images.float().cpu()
    example = images[:2] if len(images) >= 2 else images.expand(2, *images.shape[1:])  # a size-1 dimension is specialised
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, str(tmp))
            reloaded = torch.export.load(str(tmp)).module()
        with torch.no_grad():
            want, got = model(images), reloaded(images)
        diff = float((got - want).abs().max())
        if not diff <= atol or not torch.equal(got.argmax(1), want.argmax(1)):
            raise ExportError(f"the torch.export program's logits differ from the model's by {diff:.2e} (> {atol:g}); nothing "
                              f"was written to {path}")
        os.replace(tmp, path)
    except ExportError:
        raise
    except Exception as exc:  # torch.export cannot trace this model: the checkpoint and ONNX are still written
        raise ExportError(f"torch.export could not export this model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    finally:
        tmp.unlink(missing_ok=True)
        model.to(device)
    return {"file": path.name, "parity_max_abs": diff, "parity_images": int(len(images)), "bytes": path.stat().st_size,
            "max_batch": MAX_BATCH, "torch_version": torch.__version__}


__all__ = ["export_program", "PROGRAM_ATOL"]
