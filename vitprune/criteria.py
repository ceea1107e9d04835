"""Per-unit importance scores (higher = keep) for every pruning criterion, on one scale per block."""
from __future__ import annotations

import torch
from torch import nn

from .adapter import ViTAdapter
from .aggregate import path_importance
from .errors import UserError
from .importance import ImportanceSums
from .options import CRITERIA, check_choice
from .stats import ActivationStats

NEEDS_STATS = ("jas-freq", "activation", "taylor", "variance", "wanda")
NEEDS_RECORDS = ("jas-freq",)
NEEDS_IMPORTANCE = ("jas",)
PATH_CRITERIA = ("jas", "jas-freq")  # defined by discovery; the ones --keep-topk sets can be built by


def unit_scores(
    criterion: str,
    model: nn.Module,
    *,
    stats: ActivationStats | None = None,
    records: list[dict] | None = None,
    importance: ImportanceSums | None = None,
    aggregation: str = "mean",
    seed: int = 0,
) -> list[torch.Tensor]:
    """Scores per block (fp64, length = hidden width).

    jas        dense path importance: the greedy step's score of every unit, class-balanced mean of
               S (aggregation 'mean'), |S| ('abs') or S normalised per image ('norm')
    jas-freq   path frequency (ties: summed path score); units on no path rank after all path
               units, by mean |activation|
    random     uniform, seeded
    magnitude  L2 norm of the unit's weights: fc1 row + fc1 bias + fc2 column (torch-pruning's group norm)
    activation mean |a| over calibration images and tokens
    taylor     mean over images of |sum_tokens a * dCE/da| (first-order loss change of removing it)
    variance   Var(a) over images and tokens (VBP; pair it with --compensate)
    wanda      ||a||_2 * ||fc2 column||_2 (structured Wanda)
    """
    check_choice("--criterion", criterion, CRITERIA)
    adapter = ViTAdapter(model)
    widths = adapter.hidden_widths
    if criterion in NEEDS_STATS and stats is None:
        raise ValueError(f"criterion {criterion} needs activation statistics")
    if criterion == "random":
        gen = torch.Generator().manual_seed(seed)
        return [torch.rand(w, generator=gen, dtype=torch.float64) for w in widths]
    if criterion == "magnitude":
        out = []
        for b in range(adapter.depth):
            fc1, fc2 = adapter.fc1(b), adapter.fc2(b)
            sq = fc1.weight.detach().double().pow(2).sum(1) + fc2.weight.detach().double().pow(2).sum(0)
            if fc1.bias is not None:
                sq = sq + fc1.bias.detach().double().pow(2)
            out.append(sq.sqrt().cpu())
        return out
    if criterion == "activation":
        return [t.clone() for t in stats.mean_abs]
    if criterion == "taylor":
        return [t.clone() for t in stats.taylor]
    if criterion == "variance":
        return [t.clone() for t in stats.var]
    if criterion == "wanda":
        return [stats.sq_norm[b].sqrt() * adapter.fc2(b).weight.detach().double().norm(dim=0).cpu() for b in range(adapter.depth)]
    if criterion == "jas":
        if importance is None:
            raise ValueError("criterion jas needs the dense path importance of a discovery run")
        return [t.clone() for t in importance.class_balanced(aggregation)]
    if not records:
        raise UserError("criterion jas-freq needs path records: run discovery first or pass --paths")
    importance = path_importance(records, widths)
    out = []
    for imp, act in zip(importance, stats.mean_abs):
        fallback = 0.5 * act / (act.max() + 1e-12)  # in [0, 0.5): below every unit on a path (>= 1)
        out.append(torch.where(imp > 0, imp, fallback))
    return out
