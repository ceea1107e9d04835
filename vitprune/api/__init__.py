"""The Python API: ``compress``, ``evaluate`` and ``discover`` on any timm ViT, and what they return.

Every function takes the command line's options as keyword arguments, with the same names and defaults
(``vitprune.options``; lists as sequences or the command line's comma text), and a model (a spec string, or an
in-memory timm ViT, never modified) and data (a spec string, ``load_data(spec)``, or a ``(calibration, evaluation)``
pair of torch Datasets yielding ``(image_tensor, int_label)`` preprocessed for the model). Without ``out`` nothing is
written: results come back in memory, and ``CompressResult.save`` / ``.export_onnx`` and ``EvaluateResult.save`` write
them on request, under the same rules as the command line (``vitprune.outdir``). The command line is a thin layer
over these modules: ``_compress``, ``_evaluate``, ``_discover``, ``_export`` (with convert), and ``shipping`` (the
ONNX export, int8 and latency, written once).
"""
from __future__ import annotations

from .common import COMPRESS_SETTINGS, POINTS, SWEEP_SETTINGS, Plan, checkpoint_meta, onnx_metadata
from ._compress import CompressResult, compress, default_output
from ._discover import discover
from ._evaluate import EvaluateResult, evaluate, run_folder
from ._export import convert_run, export_checkpoint

__all__ = ["compress", "evaluate", "discover", "export_checkpoint", "convert_run", "CompressResult", "EvaluateResult", "Plan",
           "default_output", "checkpoint_meta", "onnx_metadata", "run_folder", "COMPRESS_SETTINGS", "SWEEP_SETTINGS", "POINTS"]
