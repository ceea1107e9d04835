"""Masks: which units of every site survive, one ``SiteMask`` per site kind (``vitprune.model.SITE_KINDS``), built
from per-class keep sets or from one budget spent over every kind a point prunes (``from_budget``)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from ..errors import UserError
from ..options import MASK_SCOPES as SCOPES, Budget, check_choice

PRIMARY = "mlp"  # the kind every mask has, and the one a mask's own fields read (the MLP hidden units)


@dataclass(frozen=True)
class SiteMask:
    """Kept unit indices (sorted) of every site of one kind (one site per block), out of the original widths."""

    widths: tuple[int, ...]
    kept: tuple[tuple[int, ...], ...]
    criterion: str = ""

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.kept):
            raise ValueError("one kept set per site")
        for b, (w, k) in enumerate(zip(self.widths, self.kept)):
            if list(k) != sorted(set(k)) or (k and not 0 <= k[0] <= k[-1] < w):
                raise ValueError(f"site {b}: kept indices must be sorted, unique and < {w}")

    @property
    def kept_counts(self) -> list[int]:
        return [len(k) for k in self.kept]

    @property
    def sparsity(self) -> float:
        """Fraction of all units of this kind removed."""
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
    def from_json(cls, obj: dict) -> "SiteMask":
        return cls(tuple(obj["widths"]), tuple(tuple(k) for k in obj["kept"]), obj.get("criterion", ""))


@dataclass(frozen=True)
class Mask:
    """One ``SiteMask`` per site kind the point prunes (``mlp`` always). The mask's own fields (``widths``, ``kept``,
    ``sparsity`` ...) are the MLP kind's, as a mask read before site kinds existed."""

    sites: Mapping[str, SiteMask] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if PRIMARY not in self.sites:
            raise ValueError("a mask always holds the MLP units")
        depth = len(self.sites[PRIMARY].widths)
        for kind, site in self.sites.items():
            if len(site.widths) != depth:
                raise ValueError(f"one kept set per block for {kind}")
            if kind != PRIMARY and any(not k for k in site.kept):
                raise ValueError(f"every block keeps at least one of its {kind}")
        object.__setattr__(self, "sites", MappingProxyType(dict(self.sites)))

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.sites)

    def get(self, kind: str) -> SiteMask | None:
        return self.sites.get(kind)

    @property
    def heads(self) -> SiteMask | None:
        return self.sites.get("heads")

    # the MLP kind's fields
    @property
    def widths(self) -> tuple[int, ...]:
        return self.sites[PRIMARY].widths

    @property
    def kept(self) -> tuple[tuple[int, ...], ...]:
        return self.sites[PRIMARY].kept

    @property
    def criterion(self) -> str:
        return self.sites[PRIMARY].criterion

    @property
    def kept_counts(self) -> list[int]:
        return self.sites[PRIMARY].kept_counts

    @property
    def sparsity(self) -> float:
        """Fraction of all MLP hidden units removed."""
        return self.sites[PRIMARY].sparsity

    @property
    def block_sparsity(self) -> list[float]:
        return self.sites[PRIMARY].block_sparsity

    def removed(self, b: int) -> list[int]:
        return self.sites[PRIMARY].removed(b)

    def to_json(self) -> dict:
        """The MLP kind's fields at the top (as mask.json always had them), every other kind under its name."""
        return {**self.sites[PRIMARY].to_json(), **{kind: site.to_json() for kind, site in self.sites.items() if kind != PRIMARY}}

    @classmethod
    def from_json(cls, obj: dict) -> "Mask":
        from ..model import SITE_KINDS

        others = {kind: SiteMask.from_json(obj[kind]) for kind in SITE_KINDS.names() if kind != PRIMARY and obj.get(kind)}
        return cls({PRIMARY: SiteMask.from_json(obj), **others})


def NeuronMask(widths, kept, criterion: str = "", heads: SiteMask | Mask | None = None) -> Mask:  # noqa: N802 (0.1's name)
    """A mask of MLP units (and, given ``heads``, of attention heads): the constructor of vitprune 0.1's NeuronMask."""
    sites = {PRIMARY: SiteMask(tuple(widths), tuple(tuple(k) for k in kept), criterion)}
    if heads is not None:
        sites["heads"] = heads.sites[PRIMARY] if isinstance(heads, Mask) else heads
    return Mask(sites)


NeuronMask.from_json = Mask.from_json  # vitprune 0.1's NeuronMask.from_json(mask.json) reads a Mask


def keep_label(criterion: str, k: int) -> str:
    """How a mask of per-class keep sets names its criterion: ``jas-freq-keep-top5``."""
    return f"{criterion}-keep-top{k}"


def from_keep_sets(widths: list[int], keep: list[list[int]], criterion: str) -> Mask:
    """Mask of the MLP units from explicit keep sets (e.g. the union of per-class critical units)."""
    for b, k in enumerate(keep):
        if not k:
            raise UserError(f"block {b} would keep no units; lower the sparsity, raise --keep-topk or set --min-keep")
    return NeuronMask(tuple(widths), tuple(tuple(sorted(set(k))) for k in keep), criterion)


# ----------------------------------------------------------------------------------- allocation
@dataclass(frozen=True)
class Allocation:
    """How a budget is spread (``--scope``), and each kind's floor and rounding: the MLP kind keeps ``min_keep``
    units per block rounded to ``round_to``; every other kind keeps its ``SiteKind.min_units``, unrounded."""

    scope: str = "per-block"
    min_keep: int = 1
    round_to: int = 1

    def floor(self, kind: str) -> int:
        from ..model import SITE_KINDS

        return self.min_keep if kind == PRIMARY else SITE_KINDS.load(kind).min_units

    def rounding(self, kind: str) -> int:
        return self.round_to if kind == PRIMARY else 1


def from_budget(scores: Mapping[str, list[torch.Tensor]], budget: Budget, allocation: Allocation = Allocation(), *,
                costs: Mapping[str, list[float]] | None = None, total_macs: float | None = None,
                criteria: Mapping[str, str] | None = None) -> Mask:
    """Keep the highest-scoring units of every kind in ``scores`` for one budget.

    ``budget.sparsity`` removes that fraction of every kind's units (per kind: per-block = the same fraction in every
    block, rounded; global = one ranking over all blocks of scores divided by their block mean; global-raw = of the raw
    scores). ``budget.target_macs`` keeps ``target_macs x total_macs`` MACs, a unit of kind k in block b costing
    ``costs[k][b]``: per-block spends one kept fraction on every kind but the MLPs, which spend the rest; global is one
    ranking of every unit of every kind by score per MAC, each site's scores first scaled so that its mean score per
    MAC is 1 (with one kind: its block-mean-normalised score per MAC); global-raw trusts the raw score per MAC. Ties
    keep the lower index."""
    _check_allocation(allocation)
    criteria = dict(criteria or {})
    kinds = [k for k in scores if k != PRIMARY] + [PRIMARY]  # the MLPs spend what the other kinds leave (per-block)
    widths = {k: [int(s.numel()) for s in scores[k]] for k in kinds}
    if budget.target_macs is None:
        counts = {k: _counts_for_fraction(k, scores[k], 1.0 - budget.sparsity, allocation) for k in kinds}
    else:
        counts = _counts_for_macs(kinds, scores, widths, costs, macs_budget(budget.target_macs, total_macs, costs, widths),
                                  allocation)
    return Mask({k: _top_units(scores[k], counts[k], criteria.get(k, "")) for k in [PRIMARY, *kinds[:-1]]})


def macs_budget(target: float, total: float, costs: Mapping[str, list[float]], widths: Mapping[str, list[int]]) -> float:
    """The MACs a ``target`` fraction of a model's ``total`` leaves to its prunable units: prunable - (1 - target) x total."""
    prunable = sum(c * w for k in costs for c, w in zip(costs[k], widths[k]))
    return prunable - (1.0 - target) * total


def macs_floor(total: float, costs: Mapping[str, list[float]], widths: Mapping[str, list[int]], allocation: Allocation) -> float:
    """The lowest fraction of ``total`` MACs pruning can reach: every site at its floor."""
    prunable = sum(c * w for k in costs for c, w in zip(costs[k], widths[k]))
    floor = sum(c * min(allocation.floor(k), w) for k in costs for c, w in zip(costs[k], widths[k]))
    return (total - prunable + floor) / total


def _counts_for_fraction(kind: str, scores: list[torch.Tensor], keep: float, allocation: Allocation) -> list[int]:
    widths = [int(s.numel()) for s in scores]
    floor, round_to = allocation.floor(kind), allocation.rounding(kind)
    if kind == PRIMARY:
        check_sparsity(widths, 1.0 - keep, scope=allocation.scope, min_keep=floor, round_to=round_to)
    if allocation.scope == "per-block":
        counts = [_rounded(w * keep, w, floor, round_to) for w in widths]
    else:
        counts = _global_counts(scores, [1.0] * len(widths), round(sum(widths) * keep), allocation.scope, floor, round_to)
    if kind == PRIMARY:
        _check_achieved(widths, counts, keep, floor, round_to)
    return counts


def _counts_for_macs(kinds: list[str], scores: Mapping[str, list[torch.Tensor]], widths: Mapping[str, list[int]],
                     costs: Mapping[str, list[float]], budget: float, allocation: Allocation) -> dict[str, list[int]]:
    floor = sum(c * min(allocation.floor(k), w) for k in kinds for c, w in zip(costs[k], widths[k]))
    if budget < floor:
        raise UserError("the MAC target leaves less than --min-keep units per block" + (" and one head per block" if len(kinds) > 1
                        else "") + "; raise --target-macs or lower --min-keep")
    whole = sum(c * w for k in kinds for c, w in zip(costs[k], widths[k]))
    frac = min(1.0, budget / whole)
    counts: dict[str, list[int]] = {}
    if allocation.scope == "per-block":  # every kind but the MLPs at one fraction, rounded; the MLPs spend the rest
        left = budget
        for k in kinds[:-1]:
            counts[k] = [_rounded(n * frac, n, allocation.floor(k), 1) for n in widths[k]]
            left -= sum(c * n for c, n in zip(costs[k], counts[k]))
        mlp_frac = min(1.0, max(0.0, left / sum(c * w for c, w in zip(costs[PRIMARY], widths[PRIMARY]))))
        counts[PRIMARY] = [_rounded(w * mlp_frac, w, allocation.min_keep, allocation.round_to) for w in widths[PRIMARY]]
        if len(kinds) == 1:
            _check_achieved(widths[PRIMARY], counts[PRIMARY], frac, allocation.min_keep, allocation.round_to)
        return counts
    if len(kinds) == 1:
        counts[PRIMARY] = _global_counts(scores[PRIMARY], list(costs[PRIMARY]), budget, allocation.scope, allocation.min_keep,
                                         allocation.round_to)
        return counts
    order = [PRIMARY, *kinds[:-1]]  # one ranking over every site, the MLPs' first (ties keep the earlier site)
    flat = [s for k in order for s in scores[k]]
    cost = [c for k in order for c in costs[k]]
    if allocation.scope == "global":
        flat = [s.double() / (s.double().abs().mean() + 1e-12) * c for s, c in zip(flat, cost)]
    floors = [allocation.floor(k) for k in order for _ in widths[k]]
    both = _ranked_counts(flat, cost, budget, floors, fill=True)  # meets the budget within one unit
    start = 0
    for k in order:
        counts[k] = both[start:start + len(widths[k])]
        start += len(widths[k])
    if allocation.round_to > 1:
        counts[PRIMARY] = [_rounded(c, w, allocation.min_keep, allocation.round_to) for c, w in zip(counts[PRIMARY], widths[PRIMARY])]
    return counts


def _rounded(n: float, width: int, min_keep: int, round_to: int) -> int:
    n = int(round(n / round_to)) * round_to if round_to > 1 else int(round(n))
    return max(min(n, width), min(min_keep, width))


def check_sparsity(widths: list[int], sparsity: float, *, scope: str = "per-block", min_keep: int = 1, round_to: int = 1) -> None:
    """Refuse (one line, with the number it would give) a sparsity budget that --min-keep or --round-to would override;
    needs only the widths, so it runs before any expensive work."""
    if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
        raise UserError(f"--sparsity must be in [0, 1) (got {sparsity})")
    _check_allocation(Allocation(scope, min_keep, round_to))
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


def _check_allocation(allocation: Allocation) -> None:
    if allocation.min_keep < 1:
        raise UserError(f"--min-keep must be >= 1 (got {allocation.min_keep})")
    if allocation.round_to < 1:
        raise UserError(f"--round-to must be >= 1 (got {allocation.round_to})")
    check_choice("--scope", allocation.scope, SCOPES)


def _top_units(scores: list[torch.Tensor], counts: list[int], criterion: str) -> SiteMask:
    """Each site's ``counts[b]`` highest-scoring units (ties keep the lower index), in index order."""
    top = [sorted(torch.sort(s.double(), descending=True, stable=True).indices[:n].tolist()) for s, n in zip(scores, counts)]
    return SiteMask(tuple(int(s.numel()) for s in scores), tuple(tuple(t) for t in top), criterion)


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


__all__ = ["Mask", "SiteMask", "NeuronMask", "Allocation", "from_budget", "from_keep_sets", "macs_budget", "macs_floor",
           "check_sparsity", "keep_label", "SCOPES", "PRIMARY"]
