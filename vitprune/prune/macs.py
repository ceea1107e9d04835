"""MACs and parameters of a model, and the MAC cost of one unit of each site kind.

The count is torch-pruning's (``tp.utils.count_ops_and_params``: linear layers, norms, activations and its own rule
for timm's ``Attention``), with two corrections where that counter is blind:

- attention modules it has no rule for (Eva's, AttentionRope, DiffAttention, attention pools ...) run functional ops
  it cannot see — the attention matmuls, and projections called as ``F.linear`` (Eva's fused qkv with ``q_bias``). Their
  MACs are measured by torch's own FLOP counter on the module's real inputs (matrix products, attention through the
  math kernel), in place of what torch-pruning attributed to them;
- its rule for timm ``Attention`` counts the output projection as ``attn_dim x attn_dim``, true only while no head is
  removed; with pruned heads the projection's real cost is put in its place.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..model import SITE_KINDS
from ..model.adapter import adapter_for
from ..model.hooks import frozen_parameters


def _tp_rules() -> set[type]:
    from torch_pruning.utils.op_counter import MODULES_MAPPING

    return set(MODULES_MAPPING)


@torch.no_grad()
def _measured_macs(model: nn.Module, modules: list[nn.Module], example: torch.Tensor) -> dict[nn.Module, float]:
    """MACs of each module's own forward on the inputs the model gives it (torch's FLOP counter / 2)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    if not modules:
        return {}
    calls: dict[nn.Module, tuple] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, kwargs: calls.setdefault(mod, (args, kwargs)), with_kwargs=True)
               for m in modules]
    try:
        model(example)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    with frozen_parameters(model):  # no tensor needs a gradient: the counter tracks none
        for module, (args, kwargs) in calls.items():
            with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
                module(*args, **kwargs)
            out[module] = counter.get_total_flops() / 2
    return out


def count_macs_params(model: nn.Module) -> tuple[int, int]:
    """(MACs per image, parameters): torch-pruning's counter, corrected where it is blind (module docstring)."""
    import torch_pruning as tp

    adapter = adapter_for(model)
    p = next(model.parameters())
    example = torch.zeros(1, *adapter.input_size, device=p.device, dtype=p.dtype)
    macs, params, layer_macs, _ = tp.utils.count_ops_and_params(model, example, layer_wise=True)
    known = _tp_rules()
    attention = adapter.attention_modules()
    blind = [m for m in attention if type(m) not in known]
    for module, exact in _measured_macs(model, blind, example).items():
        counted = sum(layer_macs.get(m) or 0 for m in module.modules() if not list(m.children()))
        macs += exact - counted
    tokens = adapter.tokens
    for attn in attention:
        proj = getattr(attn, "proj", None)
        if type(attn) in known and isinstance(proj, nn.Linear) and proj.in_features != proj.out_features:
            macs += tokens * (proj.out_features - proj.in_features) * (proj.in_features + 1)
    return int(macs), int(params)


def unit_macs(model: nn.Module, kind: str) -> list[float]:
    """MACs per image of one unit of each site of ``kind`` (SITE_KINDS): the model's MACs are affine in every site's
    unit count, so a copy whose site b has 2 units against one where it has 1 gives the cost of a unit there, measured
    once per distinct unit shape (``Site.unit_key``)."""
    site_kind = SITE_KINDS.load(kind)
    keys = [site.unit_key() for site in site_kind.sites(adapter_for(model))]
    probe = copy.deepcopy(model)
    cost: dict[tuple, float] = {}
    for b, key in enumerate(keys):
        if key not in cost:
            counts = [1] * len(keys)
            macs = []
            for n in (1, 2):
                counts[b] = n
                site_kind.resize(adapter_for(probe), counts)
                macs.append(count_macs_params(probe)[0])
            cost[key] = float(macs[1] - macs[0])
    return [cost[k] for k in keys]


def mlp_unit_macs(model: nn.Module) -> tuple[list[float], int]:
    """(MACs per image of one MLP hidden unit of each block, MACs of the whole model)."""
    return unit_macs(model, "mlp"), count_macs_params(model)[0]


def head_unit_macs(model: nn.Module) -> list[float]:
    """MACs per image of one attention head of each block (q, k, v rows, proj columns and its attention matmuls)."""
    return unit_macs(model, "heads")


__all__ = ["count_macs_params", "unit_macs", "mlp_unit_macs", "head_unit_macs"]
