"""The dense model's evaluation, computed once and reused: every compress and every evaluate point on the same model
scores the same dense model on the same images, so its result (top-1, per class, per image) is kept in the user cache
(``$VITPRUNE_CACHE``, default ``~/.cache/vitprune``) under a key of everything it depends on — the weights' fingerprint,
the preprocessing, the images' digest and order, the precision, and vitprune's version. Another model, other images or
an edited preprocessing is another key: a stale result is never read. A cache that cannot be written is skipped.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .accuracy import EvalResult

FOLDER = "evaluations"


BATCH = 256  # the batch size of every cached evaluation (a batch's size can move the last bits of a logit)


def cache_key(fingerprint: str, images_digest: str, data_config: dict[str, Any], precision: str) -> str:
    """The key of one dense evaluation."""
    spec = json.dumps({"weights": fingerprint, "images": images_digest, "preprocessing": data_config, "precision": precision,
                       "batch": BATCH, "vitprune": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(spec.encode()).hexdigest()


def _path(key: str) -> Path:
    from .data import cache_dir

    return cache_dir() / FOLDER / f"{key}.json"


def load(key: str) -> EvalResult | None:
    """The stored result of ``key``, or None (absent, unreadable, or another key's)."""
    try:
        stored = json.loads(_path(key).read_text())
        if stored.get("key") != key:
            return None
        result = EvalResult.from_json(stored["result"])
        result.hits = torch.tensor([c == "1" for c in stored["hits"]], dtype=torch.bool)
        return result if len(result.hits) == result.n else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(key: str, result: EvalResult) -> None:
    """Keep ``result`` under ``key`` (atomically; silently skipped where the cache cannot be written)."""
    from .files import atomic_write_json

    if result.hits is None:
        return
    try:
        path = _path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"key": key, "result": result.to_json(),
                                 "hits": "".join("1" if h else "0" for h in result.hits.tolist())})
    except OSError:
        pass


__all__ = ["cache_key", "load", "store", "BATCH"]
