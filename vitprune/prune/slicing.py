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
from ..model.adapter import adapter_for
from .masks import PRIMARY, Mask, SiteMask


def compensation_shift(model: nn.Module, mask: Mask, means: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per site: out_proj.weight[:, removed] @ mean_activation[removed], the bias change of mean-shift compensation."""
    out = []
    for b, site in enumerate(adapter_for(model).sites("mlp")):
        removed = torch.as_tensor(mask.removed(b), dtype=torch.long)
        w2 = site.out_proj.weight.detach()
        out.append(w2[:, removed].double() @ means[b].to(w2.device).double()[removed])
    return out


@torch.no_grad()
def slice_sites(model: nn.Module, mask: Mask, *, bias_shift: list[torch.Tensor] | None = None, out_bias: bool = False
                ) -> nn.Module:
    """A copy of ``model`` whose sites of every kind in ``mask`` keep only their kept units: the MLPs always (plus the
    optional mean-shift ``bias_shift`` of their output projections), the sites of other kinds (heads) where they lose
    units. ``out_bias`` gives every sliced output projection a bias (zero where the original had none), as
    compensation needs."""
    adapter = adapter_for(model)
    for kind in mask.kinds:
        widths = [site.width for site in adapter.sites(kind)]
        if tuple(widths) != mask.sites[kind].widths:
            raise UserError(f"the mask's {kind} widths {list(mask.sites[kind].widths)} do not match the model's {widths}")
    if any(len(k) == 0 for k in mask.kept):
        raise UserError("a block would be left with zero units; lower the sparsity or raise --min-keep")
    pruned = copy.deepcopy(model)
    out = adapter_for(pruned)
    for kind in mask.kinds:
        primary = kind == PRIMARY
        for b, site in enumerate(out.sites(kind)):
            kept = mask.sites[kind].kept[b]
            if primary or len(kept) < site.width:
                site.slice(torch.as_tensor(kept, dtype=torch.long), out_bias=out_bias or (primary and bias_shift is not None))
            if primary and bias_shift is not None:
                site.out_proj.bias.add_(bias_shift[b].to(site.out_proj.bias))
    return pruned


def masked_sites(model: nn.Module, mask: SiteMask, kind: str) -> list:
    """Hooks on ``model`` that zero the removed units of ``kind``'s sites (what slicing them computes); remove them after."""
    return [hook for site, kept in zip(adapter_for(model).sites(kind), mask.kept)
            for hook in site.layout.masked(site.module, torch.as_tensor(kept, dtype=torch.long))]


def masked_edits(mask: Mask) -> dict:
    """Edits for ``hooks.edit_ffn`` that zero every removed unit at every token (the masked model)."""
    removed = {b: torch.as_tensor(mask.removed(b), dtype=torch.long) for b in range(len(mask.widths))}

    def make(idx: torch.Tensor):
        def edit(hidden: torch.Tensor) -> torch.Tensor:
            out = hidden.clone()
            out[..., idx.to(hidden.device)] = 0
            return out

        return edit

    return {b: make(idx) for b, idx in removed.items() if len(idx)}


__all__ = ["slice_sites", "masked_edits", "masked_sites", "compensation_shift"]
