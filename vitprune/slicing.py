"""Physical slicing of MLP hidden units: fc1 rows and fc2 columns, per-block widths may differ.

Zeroing unit j at the fc2 input (every token) and slicing fc1 row j + fc2 column j give the
same logits; ``masked_edits`` is that zeroing, so tests and evaluations can compare both.
Optional mean-shift compensation (VBP/FLAP) folds the removed units' mean activation, times
their fc2 columns, into fc2's bias.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .adapter import ViTAdapter
from .errors import UserError
from .masks import NeuronMask


def _new_linear(src: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=src.bias is not None, device=src.weight.device, dtype=src.weight.dtype)


def resize_mlps(model: nn.Module, widths: list[int]) -> None:
    """Give each block's MLP the hidden width ``widths[b]`` (fresh weights; load a state dict next)."""
    adapter = ViTAdapter(model)
    if len(widths) != adapter.depth:
        raise UserError(f"checkpoint lists {len(widths)} MLP widths for a {adapter.depth}-block model; re-create it")
    for b, w in enumerate(widths):
        mlp = adapter.mlp(b)
        fc1, fc2 = mlp.fc1, mlp.fc2
        mlp.fc1 = _new_linear(fc1, fc1.in_features, w)
        mlp.fc2 = _new_linear(fc2, w, fc2.out_features)


def compensation_shift(model: nn.Module, mask: NeuronMask, means: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per block: fc2.weight[:, removed] @ mean_activation[removed], the bias change of mean-shift compensation."""
    adapter = ViTAdapter(model)
    out = []
    for b in range(adapter.depth):
        removed = torch.as_tensor(mask.removed(b), dtype=torch.long)
        w2 = adapter.fc2(b).weight.detach()
        out.append(w2[:, removed].double() @ means[b].to(w2.device).double()[removed])
    return out


@torch.no_grad()
def slice_mlps(model: nn.Module, mask: NeuronMask, *, bias_shift: list[torch.Tensor] | None = None,
               fc2_bias: bool = False) -> nn.Module:
    """A copy of ``model`` whose block-b MLP keeps only ``mask.kept[b]`` (plus optional bias shift).

    ``fc2_bias`` gives every sliced fc2 a bias (zero where the original had none), as compensation needs.
    """
    adapter = ViTAdapter(model)
    if tuple(adapter.hidden_widths) != mask.widths:
        raise UserError(f"mask widths {list(mask.widths)} do not match the model's MLP widths {adapter.hidden_widths}")
    if any(len(k) == 0 for k in mask.kept):
        raise UserError("a block would be left with zero units; lower the sparsity or raise --min-keep")
    pruned = copy.deepcopy(model)
    target = ViTAdapter(pruned)
    for b, kept in enumerate(mask.kept):
        idx = torch.as_tensor(kept, dtype=torch.long, device=target.fc1(b).weight.device)
        mlp = target.mlp(b)
        fc1, fc2 = mlp.fc1, mlp.fc2
        new1 = _new_linear(fc1, fc1.in_features, len(kept))
        new1.weight.copy_(fc1.weight[idx])
        if fc1.bias is not None:
            new1.bias.copy_(fc1.bias[idx])
        new2 = _new_linear(fc2, len(kept), fc2.out_features)
        if (bias_shift is not None or fc2_bias) and new2.bias is None:
            new2 = nn.Linear(len(kept), fc2.out_features, bias=True, device=fc2.weight.device, dtype=fc2.weight.dtype)
            new2.bias.zero_()
        new2.weight.copy_(fc2.weight[:, idx])
        if fc2.bias is not None:
            new2.bias.copy_(fc2.bias)
        if bias_shift is not None:
            new2.bias.add_(bias_shift[b].to(new2.bias))
        mlp.fc1, mlp.fc2 = new1, new2
    return pruned


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


def count_macs_params(model: nn.Module) -> tuple[int, int]:
    """(MACs per image, parameters) with torch-pruning's counter (attention matmuls included)."""
    import torch_pruning as tp

    p = next(model.parameters())
    chans = model.patch_embed.proj.in_channels
    example = torch.zeros(1, chans, *model.patch_embed.img_size, device=p.device, dtype=p.dtype)
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def mlp_unit_macs(model: nn.Module) -> tuple[list[float], int]:
    """(MACs per image of one MLP hidden unit of each block, MACs of the whole model), by torch-pruning's
    counter: the model's MACs are affine in the hidden widths, so a copy whose block b is 2 units wide
    against one where it is 1 unit wide gives the cost of a unit there (once per block shape)."""
    adapter = ViTAdapter(model)
    total, _ = count_macs_params(model)
    probe = copy.deepcopy(model)
    shape = [(adapter.fc1(b).in_features, adapter.fc2(b).out_features) for b in range(adapter.depth)]
    cost: dict[tuple[int, int], float] = {}
    for b, key in enumerate(shape):
        if key not in cost:
            widths = [1] * adapter.depth
            counts = []
            for w in (1, 2):
                widths[b] = w
                resize_mlps(probe, widths)
                counts.append(count_macs_params(probe)[0])
            cost[key] = float(counts[1] - counts[0])
    return [cost[k] for k in shape], total
