"""MACs and parameters (torch-pruning's counter), the cost of one unit per site, and masks for a MAC budget."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..model.adapter import ViTAdapter
from ..model.load import resize_mlps
from .masks import NeuronMask, from_macs


def count_macs_params(model: nn.Module) -> tuple[int, int]:
    """(MACs per image, parameters) with torch-pruning's counter (attention matmuls included)."""
    import torch_pruning as tp

    p = next(model.parameters())
    example = torch.zeros(1, *ViTAdapter(model).input_size, device=p.device, dtype=p.dtype)
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def mlp_unit_macs(model: nn.Module) -> tuple[list[float], int]:
    """(MACs per image of one MLP hidden unit of each block, MACs of the whole model), by torch-pruning's
    counter: the model's MACs are affine in the hidden widths, so a copy whose block b is 2 units wide
    against one where it is 1 unit wide gives the cost of a unit there (once per block shape)."""
    sites = ViTAdapter(model).sites("mlp")
    total, _ = count_macs_params(model)
    probe = copy.deepcopy(model)
    shape = [(site.out_proj.out_features, type(site.module), site.layout) for site in sites]
    cost: dict[tuple, float] = {}
    for b, key in enumerate(shape):
        if key not in cost:
            widths = [1] * len(sites)
            counts = []
            for w in (1, 2):
                widths[b] = w
                resize_mlps(probe, widths)
                counts.append(count_macs_params(probe)[0])
            cost[key] = float(counts[1] - counts[0])
    return [cost[k] for k in shape], total


def mask_for_macs(model: nn.Module, scores: list[torch.Tensor], target: float, **kw) -> NeuronMask:
    """``from_macs`` for a model at ``target`` x its dense MACs (unit costs from torch-pruning's counter)."""
    cost, total = mlp_unit_macs(model)
    mlp = sum(c * int(s.numel()) for c, s in zip(cost, scores))
    return from_macs(scores, cost, mlp - (1.0 - target) * total, **kw)


__all__ = ["count_macs_params", "mlp_unit_macs", "mask_for_macs"]
