"""User-facing errors: one line that names the fix, exit code 2, never a traceback."""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (file, option, model/data pairing), not a bug.

    The CLI prints ``vitprune: error: <message>`` and exits with code 2.
    Messages are one line and say what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ExportError(RuntimeError):
    """The exported ONNX graph does not reproduce the PyTorch model (nothing was written)."""
