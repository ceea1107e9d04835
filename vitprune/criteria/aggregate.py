"""Path records -> per-class / per-layer unit counts and scores -> kept sets and importances."""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

import torch

from ..discovery.records import PathRecord
from ..errors import UserError


def unit_counts(records: Iterable[PathRecord], depth: int) -> dict[int, list[Counter]]:
    """{class: [Counter(unit -> number of that class's paths using it) per layer]} (by target label)."""
    counts: dict[int, list[Counter]] = defaultdict(lambda: [Counter() for _ in range(depth)])
    for rec in records:
        if len(rec.path) != depth:
            raise UserError(f"path records have {len(rec.path)} layers but the model has {depth}; use paths of this model")
        for layer, units in enumerate(rec.path):
            counts[rec.target][layer].update(units)
    return dict(counts)


def unit_score_sums(records: Iterable[PathRecord], depth: int) -> dict[int, list[Counter]]:
    """{class: [Counter(unit -> summed path score of that class's paths using it) per layer]}."""
    sums: dict[int, list[Counter]] = defaultdict(lambda: [Counter() for _ in range(depth)])
    for rec in records:
        for layer, units in enumerate(rec.path):
            for u in units:
                sums[rec.target][layer][u] += float(rec.score or 0.0)
    return dict(sums)


def class_critical_units(records: list[PathRecord], depth: int, keep_topk: int) -> dict[int, list[list[int]]]:
    """Per class and layer, the class's ``keep_topk`` most frequent path units (ties: larger summed score, then lower index)."""
    if keep_topk < 1:
        raise UserError(f"--keep-topk must be >= 1 (got {keep_topk})")
    counts, sums = unit_counts(records, depth), unit_score_sums(records, depth)
    out: dict[int, list[list[int]]] = {}
    for cls, layers in sorted(counts.items()):
        out[cls] = [
            sorted(layers[l], key=lambda u: (-layers[l][u], -sums[cls][l][u], u))[:keep_topk] for l in range(depth)
        ]
    return out


def union_keep_sets(critical: dict[int, list[list[int]]], depth: int) -> list[list[int]]:
    """Kept units per layer = union over classes of their critical units (sorted)."""
    return [sorted({u for units in critical.values() for u in units[l]}) for l in range(depth)]


def path_importance(records: list[PathRecord], widths: list[int]) -> list[torch.Tensor]:
    """Path frequency per block over all records, ties broken by summed path score (units on no path score 0)."""
    freq = [torch.zeros(w, dtype=torch.float64) for w in widths]
    score = [torch.zeros(w, dtype=torch.float64) for w in widths]
    for rec in records:
        for layer, units in enumerate(rec.path):
            idx = torch.as_tensor(units, dtype=torch.long)
            freq[layer][idx] += 1.0
            score[layer][idx] += float(rec.score or 0.0)
    out = []
    for f, s in zip(freq, score):
        tie = (s - s.min()) / (s.max() - s.min() + 1e-12) if s.numel() else s  # in [0, 1): never outranks a count
        out.append(f + 0.5 * tie * (f > 0))
    return out


__all__ = ["unit_counts", "unit_score_sums", "class_critical_units", "union_keep_sets", "path_importance"]
