"""Progress bars for long work: images/s and ETA, on the main process only."""
from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(**kwargs) -> tqdm:
    """A tqdm bar showing rate and ETA; ``disable=True`` for quiet runs and non-main ranks."""
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("smoothing", 0.1)
    return tqdm(**kwargs)
