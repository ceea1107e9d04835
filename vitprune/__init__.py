"""vitprune: influential-neuron-path discovery and structured FFN pruning for timm ViTs.

``vitprune.load_model`` and ``vitprune.find_paths`` are imported on first use, so that the
command line answers ``--help`` without loading torch.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "find_paths", "load_model", "UserError"]


def __getattr__(name: str) -> Any:
    if name == "find_paths":
        from .attribution import find_paths

        return find_paths
    if name == "load_model":
        from .models import load_model

        return load_model
    if name == "UserError":
        from .errors import UserError

        return UserError
    raise AttributeError(f"module 'vitprune' has no attribute '{name}'")
