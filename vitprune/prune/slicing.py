"""Physical slicing of pruning-site units (MLP sites: fc1 rows and fc2 columns; head sites: q/k/v rows and proj
columns); per-block widths and head counts may differ.

Zeroing unit j at a site's output-projection input (every token) and slicing it away give the
same logits; ``masked_edits`` is that zeroing, so tests and evaluations can compare both.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import UserError
from ..model.adapter import FamilyAdapter, adapter_for
from .masks import NeuronMask


def compensation_shift(model: nn.Module, mask: NeuronMask, means: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per site: out_proj.weight[:, removed] @ mean_activation[removed], the bias change of mean-shift compensation."""
    out = []
    for b, site in enumerate(adapter_for(model).sites("mlp")):
        removed = torch.as_tensor(mask.removed(b), dtype=torch.long)
        w2 = site.out_proj.weight.detach()
        out.append(w2[:, removed].double() @ means[b].to(w2.device).double()[removed])
    return out


@torch.no_grad()
def slice_mlps(model: nn.Module, mask: NeuronMask, *, bias_shift: list[torch.Tensor] | None = None,
               fc2_bias: bool = False) -> nn.Module:
    """A copy of ``model`` whose block-b MLP keeps only ``mask.kept[b]`` (plus optional bias shift) and, when the
    mask prunes heads, whose block-b attention keeps only ``mask.heads.kept[b]``.

    ``fc2_bias`` gives every sliced output projection a bias (zero where the original had none), as compensation needs.
    """
    adapter = adapter_for(model)
    if tuple(adapter.hidden_widths) != mask.widths:
        raise UserError(f"mask widths {list(mask.widths)} do not match the model's MLP widths {adapter.hidden_widths}")
    if any(len(k) == 0 for k in mask.kept):
        raise UserError("a block would be left with zero units; lower the sparsity or raise --min-keep")
    if mask.heads is not None and tuple(adapter.head_counts) != mask.heads.widths:
        raise UserError(f"mask head counts {list(mask.heads.widths)} do not match the model's heads {adapter.head_counts}")
    pruned = copy.deepcopy(model)
    out = adapter_for(pruned)
    for b, site in enumerate(out.sites("mlp")):
        site.slice(torch.as_tensor(mask.kept[b], dtype=torch.long), out_bias=bias_shift is not None or fc2_bias)
        if bias_shift is not None:
            site.out_proj.bias.add_(bias_shift[b].to(site.out_proj.bias))
    if mask.heads is not None:
        for b, site in enumerate(out.sites("heads")):
            if len(mask.heads.kept[b]) < site.width:
                site.slice(torch.as_tensor(mask.heads.kept[b], dtype=torch.long), out_bias=fc2_bias)
    return pruned


def masked_heads(model: nn.Module, heads: NeuronMask) -> list:
    """Hooks on ``model`` that zero the removed heads (what slicing them computes); remove them after."""
    return [hook for site, kept in zip(adapter_for(model).sites("heads"), heads.kept)
            for hook in site.layout.masked(site.module, torch.as_tensor(kept, dtype=torch.long))]


def masked_edits(mask: NeuronMask) -> dict:
    """Edits for ``hooks.edit_ffn`` that zero every removed unit at every token (the masked model)."""
    removed = {b: torch.as_tensor(mask.removed(b), dtype=torch.long) for b in range(len(mask.widths))}

    def make(idx: torch.Tensor):
        def edit(hidden: torch.Tensor) -> torch.Tensor:
            out = hidden.clone()
            out[..., idx.to(hidden.device)] = 0
            return out

        return edit

    return {b: make(idx) for b, idx in removed.items() if len(idx)}


__all__ = ["slice_mlps", "masked_edits", "masked_heads", "compensation_shift"]
