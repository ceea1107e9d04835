"""MACs and parameters (torch-pruning's counter), the cost of one unit per site, and masks for a MAC budget."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..model.adapter import ViTAdapter
from ..model.load import resize_heads, resize_mlps
from .masks import NeuronMask, from_macs


def count_macs_params(model: nn.Module) -> tuple[int, int]:
    """(MACs per image, parameters) with torch-pruning's counter (attention matmuls included).

    Its hook for timm attention counts the output projection as attn_dim x attn_dim (tokens * attn_dim * (attn_dim + 1)),
    true only while no head is removed; for attention with pruned heads the projection's real cost, tokens *
    (attn_dim * dim + dim), is put in its place (nothing changes for unpruned attention)."""
    import torch_pruning as tp

    adapter = ViTAdapter(model)
    p = next(model.parameters())
    example = torch.zeros(1, *adapter.input_size, device=p.device, dtype=p.dtype)
    macs, params = tp.utils.count_ops_and_params(model, example)
    tokens = adapter.layout.num_prefix + model.patch_embed.num_patches
    for block in adapter.blocks:
        proj = getattr(getattr(block, "attn", None), "proj", None)
        if isinstance(proj, nn.Linear) and proj.in_features != proj.out_features:
            macs += tokens * (proj.out_features - proj.in_features) * (proj.in_features + 1)
    return int(macs), int(params)


def mlp_unit_macs(model: nn.Module) -> tuple[list[float], int]:
    """(MACs per image of one MLP hidden unit of each block, MACs of the whole model), by torch-pruning's
    counter: the model's MACs are affine in the hidden widths, so a copy whose block b is 2 units wide
    against one where it is 1 unit wide gives the cost of a unit there (once per block shape)."""
    sites = ViTAdapter(model).sites("mlp")
    total, _ = count_macs_params(model)
    shape = [(site.out_proj.out_features, type(site.module), site.layout) for site in sites]
    return _marginal_costs(model, shape, resize_mlps), total


def _marginal_costs(model: nn.Module, shape: list[tuple], resize) -> list[float]:
    """Per site, the MACs of its second unit: a copy resized (``resize(copy, counts)``) to one unit per site against
    one where site b has two, measured once per distinct ``shape[b]``."""
    probe = copy.deepcopy(model)
    cost: dict[tuple, float] = {}
    for b, key in enumerate(shape):
        if key not in cost:
            counts = [1] * len(shape)
            macs = []
            for n in (1, 2):
                counts[b] = n
                resize(probe, counts)
                macs.append(count_macs_params(probe)[0])
            cost[key] = float(macs[1] - macs[0])
    return [cost[k] for k in shape]


def head_unit_macs(model: nn.Module) -> list[float]:
    """MACs per image of one attention head of each block (q, k, v rows, proj columns and the head's attention
    matmuls), by torch-pruning's counter: a copy whose block b has 2 heads against one with 1 (once per block shape)."""
    sites = ViTAdapter(model).sites("heads")
    return _marginal_costs(model, [(site.module.head_dim, site.out_proj.out_features, site.module.qkv.in_features)
                                   for site in sites], resize_heads)


def mask_for_macs(model: nn.Module, scores: list[torch.Tensor], target: float, **kw) -> NeuronMask:
    """``from_macs`` for a model at ``target`` x its dense MACs (unit costs from torch-pruning's counter)."""
    cost, total = mlp_unit_macs(model)
    mlp = sum(c * int(s.numel()) for c, s in zip(cost, scores))
    return from_macs(scores, cost, mlp - (1.0 - target) * total, **kw)


__all__ = ["count_macs_params", "mlp_unit_macs", "head_unit_macs", "mask_for_macs"]
