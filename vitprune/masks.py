"""NeuronMask: which hidden units of each block survive; built from keep sets or from a budget."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError
from .options import MASK_SCOPES as SCOPES, check_choice


@dataclass(frozen=True)
class NeuronMask:
    """Kept hidden-unit indices (sorted) per block, out of the original widths."""

    widths: tuple[int, ...]
    kept: tuple[tuple[int, ...], ...]
    criterion: str = ""

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.kept):
            raise ValueError("one kept set per block")
        for b, (w, k) in enumerate(zip(self.widths, self.kept)):
            if list(k) != sorted(set(k)) or (k and not 0 <= k[0] <= k[-1] < w):
                raise ValueError(f"block {b}: kept indices must be sorted, unique and < {w}")

    @property
    def kept_counts(self) -> list[int]:
        return [len(k) for k in self.kept]

    @property
    def sparsity(self) -> float:
        """Fraction of all MLP hidden units removed."""
        return 1.0 - sum(self.kept_counts) / sum(self.widths)

    @property
    def block_sparsity(self) -> list[float]:
        return [1.0 - len(k) / w for k, w in zip(self.kept, self.widths)]

    def removed(self, b: int) -> list[int]:
        keep = set(self.kept[b])
        return [u for u in range(self.widths[b]) if u not in keep]

    def to_json(self) -> dict:
        return {"criterion": self.criterion, "widths": list(self.widths), "kept": [list(k) for k in self.kept],
                "kept_counts": self.kept_counts, "sparsity": self.sparsity, "block_sparsity": self.block_sparsity}

    @classmethod
    def from_json(cls, obj: dict) -> "NeuronMask":
        return cls(tuple(obj["widths"]), tuple(tuple(k) for k in obj["kept"]), obj.get("criterion", ""))


def from_keep_sets(widths: list[int], keep: list[list[int]], criterion: str = "jas-topk") -> NeuronMask:
    """Mask from explicit keep sets (e.g. the union of per-class critical units)."""
    for b, k in enumerate(keep):
        if not k:
            raise UserError(f"block {b} would keep no units; lower the sparsity, raise --keep-topk or set --min-keep")
    return NeuronMask(tuple(widths), tuple(tuple(sorted(set(k))) for k in keep), criterion)


def _rounded(n: float, width: int, min_keep: int, round_to: int) -> int:
    n = int(round(n / round_to)) * round_to if round_to > 1 else int(round(n))
    return max(min(n, width), min(min_keep, width))


def from_scores(
    scores: list[torch.Tensor],
    sparsity: float,
    *,
    scope: str = "per-block",
    min_keep: int = 1,
    round_to: int = 1,
    criterion: str = "",
) -> NeuronMask:
    """Keep the highest-scoring units for a budget: ``sparsity`` = fraction of units removed.

    per-block: every block removes the same fraction (kept count rounded to ``round_to``).
    global:    one ranking over all blocks after dividing each block's scores by its mean
               (so blocks with larger raw scores do not win by scale), at least ``min_keep`` per block.
    Ties keep the lower index.
    """
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"--sparsity must be in [0, 1) (got {sparsity})")
    if min_keep < 1:
        raise UserError(f"--min-keep must be >= 1 (got {min_keep})")
    if round_to < 1:
        raise UserError(f"--round-to must be >= 1 (got {round_to})")
    check_choice("--scope", scope, SCOPES)
    widths = [int(s.numel()) for s in scores]

    def top(s: torch.Tensor, n: int) -> list[int]:
        order = torch.sort(s.double(), descending=True, stable=True).indices[:n]
        return sorted(order.tolist())

    if scope == "per-block":
        counts = [_rounded(w * (1.0 - sparsity), w, min_keep, round_to) for w in widths]
        return NeuronMask(tuple(widths), tuple(tuple(top(s, n)) for s, n in zip(scores, counts)), criterion)

    total_keep = int(round(sum(widths) * (1.0 - sparsity)))
    normed = [s.double() / (s.double().abs().mean() + 1e-12) for s in scores]
    counts = [min(min_keep, w) for w in widths]
    flat = torch.cat([torch.sort(s, descending=True, stable=True).values[c:] for s, c in zip(normed, counts)])
    owner = torch.cat([torch.full((w - c,), b) for b, (w, c) in enumerate(zip(widths, counts))])
    extra = max(0, total_keep - sum(counts))
    if extra:
        chosen = owner[torch.sort(flat, descending=True, stable=True).indices[:extra]]
        for b in range(len(widths)):
            counts[b] += int((chosen == b).sum())
    if round_to > 1:
        counts = [_rounded(c, w, min_keep, round_to) for c, w in zip(counts, widths)]
    return NeuronMask(tuple(widths), tuple(tuple(top(s, n)) for s, n in zip(scores, counts)), criterion)


__all__ = ["NeuronMask", "from_keep_sets", "from_scores", "SCOPES"]
