"""NeuronMask: which hidden units of each block survive; built from keep sets or from a budget."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..options import MASK_SCOPES as SCOPES, check_choice


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


def keep_label(criterion: str, k: int) -> str:
    """How a mask of per-class keep sets names its criterion: ``jas-freq-keep-top5``."""
    return f"{criterion}-keep-top{k}"


def from_keep_sets(widths: list[int], keep: list[list[int]], criterion: str) -> NeuronMask:
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
    global-raw: one ranking over all blocks of the raw scores.
    Ties keep the lower index.
    """
    widths = [int(s.numel()) for s in scores]
    check_sparsity(widths, sparsity, scope=scope, min_keep=min_keep, round_to=round_to)
    if scope == "per-block":
        counts = [_rounded(w * (1.0 - sparsity), w, min_keep, round_to) for w in widths]
    else:
        counts = _global_counts(scores, [1.0] * len(widths), round(sum(widths) * (1.0 - sparsity)), scope, min_keep, round_to)
    _check_achieved(widths, counts, 1.0 - sparsity, min_keep, round_to)
    return _top_units(scores, counts, criterion)


def check_sparsity(widths: list[int], sparsity: float, *, scope: str = "per-block", min_keep: int = 1, round_to: int = 1) -> None:
    """Refuse (one line, with the number it would give) a sparsity budget that --min-keep or --round-to would override;
    needs only the widths, so it runs before any expensive work."""
    if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
        raise UserError(f"--sparsity must be in [0, 1) (got {sparsity})")
    _check_allocation(scope, min_keep, round_to)
    keep = 1.0 - sparsity
    if scope == "per-block":
        _check_achieved(widths, [_rounded(w * keep, w, min_keep, round_to) for w in widths], keep, min_keep, round_to)
    elif sum(min(min_keep, w) for w in widths) > round(sum(widths) * keep) + 0.5 * round_to * len(widths):
        floor = sum(min(min_keep, w) for w in widths)
        raise UserError(f"--min-keep {min_keep} keeps {floor} units in all, more than --sparsity {sparsity:g} leaves "
                        f"({round(sum(widths) * keep)}); lower --min-keep or the sparsity")


def _check_achieved(widths: list[int], counts: list[int], keep: float, min_keep: int, round_to: int) -> None:
    """Kept counts may differ from the asked fraction by rounding only (to a whole unit, or half of --round-to)."""
    asked, got, total = sum(w * keep for w in widths), sum(counts), sum(widths)
    if round_to > 1 and any(round_to > w * keep + 1e-9 for w in widths):
        raise UserError(f"--round-to {round_to} is more than the {min(w * keep for w in widths):.0f} units a block keeps at "
                        f"{1 - keep:.2%} sparsity (it would keep {got} of {total} units, {1 - got / total:.2%}); lower --round-to")
    if abs(got - asked) > sum(max(0.5, round_to / 2) for _ in widths) + 1e-9:
        raise UserError(f"--min-keep {min_keep} and --round-to {round_to} keep {got} of {total} units ({1 - got / total:.2%} "
                        f"sparsity) where {1 - keep:.2%} was asked; lower --min-keep / --round-to")


def _check_allocation(scope: str, min_keep: int, round_to: int) -> None:
    if min_keep < 1:
        raise UserError(f"--min-keep must be >= 1 (got {min_keep})")
    if round_to < 1:
        raise UserError(f"--round-to must be >= 1 (got {round_to})")
    check_choice("--scope", scope, SCOPES)


def _top_units(scores: list[torch.Tensor], counts: list[int], criterion: str) -> NeuronMask:
    """Each block's ``counts[b]`` highest-scoring units (ties keep the lower index), in index order."""
    top = [sorted(torch.sort(s.double(), descending=True, stable=True).indices[:n].tolist()) for s, n in zip(scores, counts)]
    return NeuronMask(tuple(int(s.numel()) for s in scores), tuple(tuple(t) for t in top), criterion)


def _global_counts(scores: list[torch.Tensor], cost: list[float], budget: float, scope: str, min_keep: int, round_to: int
                   ) -> list[int]:
    """Kept units per block of one ranking over all blocks: units are taken by score per unit of cost until
    ``budget`` (in cost units) is spent, after ``min_keep`` per block. ``global`` divides each block's scores
    by their mean magnitude first (comparable across blocks whatever the scale); ``global-raw`` trusts the
    raw scores (criteria that estimate the same quantity in every block)."""
    widths = [int(s.numel()) for s in scores]
    if scope == "global":
        scores = [s.double() / (s.double().abs().mean() + 1e-12) for s in scores]
    counts = [min(min_keep, w) for w in widths]
    spent = sum(c * k for c, k in zip(cost, counts))
    flat = torch.cat([torch.sort(s.double(), descending=True, stable=True).values[c:] / k for s, c, k in zip(scores, counts, cost)])
    owner = torch.cat([torch.full((w - c,), b) for b, (w, c) in enumerate(zip(widths, counts))])
    for b in owner[torch.sort(flat, descending=True, stable=True).indices].tolist():
        if spent + cost[b] > budget + 1e-9:
            break
        counts[b] += 1
        spent += cost[b]
    if round_to > 1:
        counts = [_rounded(c, w, min_keep, round_to) for c, w in zip(counts, widths)]
    return counts


def from_macs(
    scores: list[torch.Tensor],
    unit_macs: list[float],
    budget: float,
    *,
    scope: str = "per-block",
    min_keep: int = 1,
    round_to: int = 1,
    criterion: str = "",
) -> NeuronMask:
    """Keep the highest-scoring units within ``budget`` MLP MACs, block b's units costing ``unit_macs[b]`` each.

    per-block: the same kept fraction in every block; global / global-raw: one ranking by score per MAC.
    """
    _check_allocation(scope, min_keep, round_to)
    widths = [int(s.numel()) for s in scores]
    floor = sum(c * min(min_keep, w) for c, w in zip(unit_macs, widths))
    if budget < floor:
        raise UserError("the MAC target leaves less than --min-keep units per block; raise --target-macs or lower --min-keep")
    frac = min(1.0, budget / sum(c * w for c, w in zip(unit_macs, widths)))
    if scope == "per-block":
        counts = [_rounded(w * frac, w, min_keep, round_to) for w in widths]
        _check_achieved(widths, counts, frac, min_keep, round_to)
    else:
        counts = _global_counts(scores, list(unit_macs), budget, scope, min_keep, round_to)
    return _top_units(scores, counts, criterion)


__all__ = ["NeuronMask", "from_keep_sets", "from_scores", "from_macs", "check_sparsity", "keep_label", "SCOPES"]
