"""The criterion contract: ``CriterionInputs`` in, one score tensor per pruning site out."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..discovery.records import PathRun
from ..errors import UserError
from ..model.adapter import FamilyAdapter, adapter_for
from ..model.sites import Site
from . import CRITERIA
from .stats import ActivationStats


@dataclass
class CriterionInputs:
    """What a criterion may read. A field is filled when the criterion declared it in ``needs``:
    ``stats`` for 'stats' / 'gradients' (Taylor terms only with 'gradients'), ``paths`` for 'paths' /
    'importance' (``paths.importance`` with 'importance'). ``sites`` are the model's MLP sites in block
    order; a criterion returns one 1-D fp64 tensor of ``site.width`` scores per site."""

    model: nn.Module
    adapter: FamilyAdapter
    sites: list[Site]
    stats: ActivationStats | None = None
    paths: PathRun | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # e.g. {"aggregation": "ig"} for jas

    def require(self, what: str, value: Any) -> Any:
        if value is None:
            raise ValueError(f"this criterion needs {what}; declare it in needs=")
        return value


class Criterion:
    """A criterion: ``scores`` for a budget; per-class criteria also ``class_units`` for --keep-topk."""

    def scores(self, inputs: CriterionInputs) -> list[torch.Tensor]:
        raise NotImplementedError

    def class_units(self, inputs: CriterionInputs, k: int) -> dict[int, list[list[int]]]:
        """Per class and site, the ``k`` units of that class (the union over classes is kept)."""
        raise NotImplementedError


class FunctionCriterion(Criterion):
    """A criterion given as a function ``scores(inputs)``."""

    def __init__(self, fn: Callable[[CriterionInputs], list[torch.Tensor]]) -> None:
        self.fn = fn

    def scores(self, inputs: CriterionInputs) -> list[torch.Tensor]:
        return self.fn(inputs)


def load_criterion(name: str) -> Criterion:
    target = CRITERIA.load(name)
    if inspect.isclass(target) and issubclass(target, Criterion):
        return target()
    if isinstance(target, Criterion):
        return target
    if callable(target):
        return FunctionCriterion(target)
    raise TypeError(f"criterion '{name}' is neither a Criterion nor a function")


def checked_scores(name: str, scores: Any, sites: list[Site]) -> list[torch.Tensor]:
    """The scores of criterion ``name`` as fp64 CPU tensors, or one error saying what it returned wrong."""
    if not isinstance(scores, (list, tuple)) or len(scores) != len(sites):
        raise UserError(f"criterion '{name}' returned {type(scores).__name__} of length "
                        f"{len(scores) if hasattr(scores, '__len__') else '?'}; it must return one score tensor per site "
                        f"({len(sites)})")
    out = []
    for site, s in zip(sites, scores):
        t = torch.as_tensor(s).detach().double().cpu().reshape(-1)
        if t.numel() != site.width:
            raise UserError(f"criterion '{name}' gave {t.numel()} scores for {site.name}, which has {site.width} units")
        if not torch.isfinite(t).all():
            raise UserError(f"criterion '{name}' gave non-finite scores for {site.name}")
        out.append(t)
    return out


def unit_scores(name: str, model: nn.Module, *, stats: ActivationStats | None = None, paths: PathRun | None = None, seed: int = 0,
                aggregation: str = "mean") -> list[torch.Tensor]:
    """The scores criterion ``name`` gives every MLP unit of ``model`` from the inputs given (one tensor per block)."""
    adapter = adapter_for(model)
    inputs = CriterionInputs(model, adapter, adapter.sites("mlp"), stats, paths, seed, {"aggregation": aggregation})
    return checked_scores(name, load_criterion(name).scores(inputs), inputs.sites)


__all__ = ["CriterionInputs", "Criterion", "FunctionCriterion", "load_criterion", "checked_scores", "unit_scores"]
