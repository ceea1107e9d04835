"""NeuronMask: which hidden units (and, with ``--prune heads``, which attention heads) of each block survive;
built from keep sets or from a budget."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..options import MASK_SCOPES as SCOPES, check_choice


@dataclass(frozen=True)
class NeuronMask:
    """Kept hidden-unit indices (sorted) per block, out of the original widths; ``heads``, when attention heads are
    pruned too, is the same for the heads (widths = the heads per block)."""

    widths: tuple[int, ...]
    kept: tuple[tuple[int, ...], ...]
    criterion: str = ""
    heads: "NeuronMask | None" = None

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.kept):
            raise ValueError("one kept set per block")
        if self.heads is not None:
            if len(self.heads.widths) != len(self.widths):
                raise ValueError("one kept head set per block")
            if any(not k for k in self.heads.kept):
                raise ValueError("every block keeps at least one head")
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

    def with_heads(self, heads: "NeuronMask | None") -> "NeuronMask":
        return NeuronMask(self.widths, self.kept, self.criterion, heads)

    def to_json(self) -> dict:
        out = {"criterion": self.criterion, "widths": list(self.widths), "kept": [list(k) for k in self.kept],
               "kept_counts": self.kept_counts, "sparsity": self.sparsity, "block_sparsity": self.block_sparsity}
        if self.heads is not None:
            out["heads"] = self.heads.to_json()
        return out

    @classmethod
    def from_json(cls, obj: dict) -> "NeuronMask":
        heads = cls.from_json(obj["heads"]) if obj.get("heads") else None
        return cls(tuple(obj["widths"]), tuple(tuple(k) for k in obj["kept"]), obj.get("criterion", ""), heads)


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
    counts = _ranked_counts(scores, cost, budget, [min_keep] * len(scores), fill=False)
    if round_to > 1:
        counts = [_rounded(c, w, min_keep, round_to) for c, w in zip(counts, widths)]
    return counts


def _ranked_counts(scores: list[torch.Tensor], cost: list[float], budget: float, floors: list[int], *, fill: bool) -> list[int]:
    """Kept units per site of one ranking by score per unit of cost, after ``floors[i]`` per site, until ``budget``:
    the ranking stops at the first unit that does not fit, or (``fill``) skips it for cheaper units further down."""
    widths = [int(s.numel()) for s in scores]
    counts = [min(f, w) for f, w in zip(floors, widths)]
    spent = sum(c * k for c, k in zip(cost, counts))
    flat = torch.cat([torch.sort(s.double(), descending=True, stable=True).values[c:] / k for s, c, k in zip(scores, counts, cost)])
    owner = torch.cat([torch.full((w - c,), i) for i, (w, c) in enumerate(zip(widths, counts))])
    for i in owner[torch.sort(flat, descending=True, stable=True).indices].tolist():
        if spent + cost[i] > budget + 1e-9:
            if fill:
                continue
            break
        counts[i] += 1
        spent += cost[i]
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


def heads_from_scores(scores: list[torch.Tensor], sparsity: float, *, scope: str = "per-block", criterion: str = "") -> NeuronMask:
    """The head mask of a ``sparsity`` budget: the same fraction of heads removed per block (``per-block``, rounded,
    at least one head kept) or one ranking over all blocks (``global``: scores over each block's mean; ``global-raw``)."""
    widths = [int(s.numel()) for s in scores]
    if scope == "per-block":
        counts = [_rounded(w * (1.0 - sparsity), w, 1, 1) for w in widths]
    else:
        counts = _global_counts(scores, [1.0] * len(widths), round(sum(widths) * (1.0 - sparsity)), scope, 1, 1)
    return _top_units(scores, counts, criterion)


def joint_from_macs(mlp_scores: list[torch.Tensor], mlp_cost: list[float], head_scores: list[torch.Tensor], head_cost: list[float],
                    budget: float, *, scope: str = "per-block", min_keep: int = 1, round_to: int = 1, criterion: str = "",
                    head_criterion: str = "") -> NeuronMask:
    """MLP units and heads within ``budget`` MACs (of the prunable ones), block b's units costing ``mlp_cost[b]`` and
    its heads ``head_cost[b]`` each; at least ``min_keep`` units and one head per block.

    per-block: one kept fraction for every attention (rounded to whole heads) and one for every MLP, which spends the
    rest of the budget. global: one ranking of units and heads together by
    score per MAC, each site's scores first scaled so that its mean score per MAC is 1 (a site is worth what it costs
    on average; within a site, units differ by their scores), so the criteria's scales never decide between MLPs
    and heads. global-raw: the raw score per MAC (criteria that estimate one quantity at every site)."""
    _check_allocation(scope, min_keep, round_to)
    widths, heads = [int(s.numel()) for s in mlp_scores], [int(s.numel()) for s in head_scores]
    floor = sum(c * min(min_keep, w) for c, w in zip(mlp_cost, widths)) + sum(head_cost)
    if budget < floor:
        raise UserError("the MAC target leaves less than --min-keep units and one head per block; raise --target-macs "
                        "or lower --min-keep")
    whole = sum(c * w for c, w in zip(mlp_cost, widths)) + sum(c * n for c, n in zip(head_cost, heads))
    frac = min(1.0, budget / whole)
    if scope == "per-block":  # heads rounded first, then the MLPs' one fraction spends what the heads left
        head_counts = [_rounded(n * frac, n, 1, 1) for n in heads]
        left = budget - sum(c * n for c, n in zip(head_cost, head_counts))
        mlp_frac = min(1.0, max(0.0, left / sum(c * w for c, w in zip(mlp_cost, widths))))
        counts = [_rounded(w * mlp_frac, w, min_keep, round_to) for w in widths]
    else:
        scores, cost = [*mlp_scores, *head_scores], [*mlp_cost, *head_cost]
        if scope == "global":
            scores = [s.double() / (s.double().abs().mean() + 1e-12) * c for s, c in zip(scores, cost)]
        floors = [min_keep] * len(widths) + [1] * len(heads)
        both = _ranked_counts(scores, cost, budget, floors, fill=True)  # meets the budget within one unit
        counts = both[: len(widths)]
        if round_to > 1:
            counts = [_rounded(c, w, min_keep, round_to) for c, w in zip(counts, widths)]
        head_counts = both[len(widths):]
    heads_mask = _top_units(head_scores, head_counts, head_criterion)
    return _top_units(mlp_scores, counts, criterion).with_heads(heads_mask)


__all__ = ["NeuronMask", "from_keep_sets", "from_scores", "from_macs", "heads_from_scores", "joint_from_macs", "check_sparsity",
           "keep_label", "SCOPES"]
