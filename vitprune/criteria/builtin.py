"""The built-in criteria (registered by name in ``vitprune.criteria``): one fp64 score per unit, per site."""
from __future__ import annotations

import torch

from .aggregate import class_critical_units, path_importance
from .base import Criterion, CriterionInputs


class _Jas(Criterion):
    """Dense path importance: the greedy step's score of every unit, class-balanced mean of S ('mean'),
    |S| ('abs'), S normalised per image ('norm') or the unit's own integrated gradient |I| ('ig')."""

    def scores(self, inputs: CriterionInputs) -> list[torch.Tensor]:
        importance = inputs.require("the dense path importance", inputs.paths).require_importance("criterion jas")
        return [t.clone() for t in importance.class_balanced(inputs.options.get("aggregation", "mean"))]

    def class_units(self, inputs: CriterionInputs, k: int) -> dict[int, list[list[int]]]:
        importance = inputs.require("the dense path importance", inputs.paths).require_importance("criterion jas")
        return importance.class_topk(k, inputs.options.get("aggregation", "mean"))


class _JasFreq(Criterion):
    """Path frequency (ties: summed path score); units on no path rank after all path units, by mean |activation|."""

    def scores(self, inputs: CriterionInputs) -> list[torch.Tensor]:
        records = inputs.require("path records", inputs.paths).records
        stats = inputs.require("activation statistics", inputs.stats)
        out = []
        for imp, act in zip(path_importance(records, [s.width for s in inputs.sites]), stats.mean_abs):
            fallback = 0.5 * act / (act.max() + 1e-12)  # in [0, 0.5): below every unit on a path (>= 1)
            out.append(torch.where(imp > 0, imp, fallback))
        return out

    def class_units(self, inputs: CriterionInputs, k: int) -> dict[int, list[list[int]]]:
        return class_critical_units(inputs.require("path records", inputs.paths).records, len(inputs.sites), k)


jas = _Jas
jas_freq = _JasFreq


def random(inputs: CriterionInputs) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(inputs.seed)
    return [torch.rand(s.width, generator=gen, dtype=torch.float64) for s in inputs.sites]


def magnitude(inputs: CriterionInputs) -> list[torch.Tensor]:
    return [s.unit_sq_norms().sqrt() for s in inputs.sites]


def activation(inputs: CriterionInputs) -> list[torch.Tensor]:
    return [t.clone() for t in inputs.require("activation statistics", inputs.stats).mean_abs]


def taylor(inputs: CriterionInputs) -> list[torch.Tensor]:
    stats = inputs.require("activation statistics with gradients", inputs.stats)
    if stats.taylor is None:
        raise ValueError("criterion taylor needs the gradient pass (needs=('gradients',))")
    return [t.clone() for t in stats.taylor]


def variance(inputs: CriterionInputs) -> list[torch.Tensor]:
    return [t.clone() for t in inputs.require("activation statistics", inputs.stats).var]


def wanda(inputs: CriterionInputs) -> list[torch.Tensor]:
    stats = inputs.require("activation statistics", inputs.stats)
    return [stats.sq_norm[b].sqrt() * s.out_proj.weight.detach().double().norm(dim=0).cpu() for b, s in enumerate(inputs.sites)]


__all__ = ["jas", "jas_freq", "random", "magnitude", "activation", "taylor", "variance", "wanda"]
