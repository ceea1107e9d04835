"""vitprune: influential-neuron-path discovery and structured FFN pruning for timm ViTs."""
from __future__ import annotations

__version__ = "0.1.0"

from .attribution import find_paths  # noqa: E402
from .errors import UserError  # noqa: E402
from .models import load_model  # noqa: E402

__all__ = ["__version__", "find_paths", "load_model", "UserError"]
