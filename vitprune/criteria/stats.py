"""Per-unit activation statistics over calibration images, one pass per batch (forward, or forward+backward).

Statistics are over every token, because physical pruning removes a unit at every token:
mean, mean |a|, variance (for VBP), squared L2 norm (Wanda), and, with ``gradients``,
|sum_tau a*dL/da| per image (first-order Taylor estimate of the loss change of removing the unit).
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model.adapter import FamilyAdapter, adapter_for
from ..model.hooks import ffn_hooks, frozen_parameters
from ..precision import precision_context
from ..progress import progress_bar


@dataclass
class ActivationStats:
    count_tokens: int
    count_images: int
    mean: list[torch.Tensor]  # per block (H,), fp64
    mean_abs: list[torch.Tensor]
    var: list[torch.Tensor]
    sq_norm: list[torch.Tensor]  # sum of a^2 over images and tokens
    taylor: list[torch.Tensor] | None  # mean over images of |sum_tau a * dCE/da|; None without the gradient pass


def collect_stats(model: nn.Module, batches: Iterable[tuple[list[str], torch.Tensor, torch.Tensor]], *, gradients: bool = True,
                  total: int | None = None, quiet: bool = False, dist=None, precision: str = "fp32") -> ActivationStats:
    """Statistics of every block's hidden units; with ``dist``, each rank passes its shard and the sums are gathered."""
    adapter = adapter_for(model)
    device = next(model.parameters()).device
    widths = adapter.hidden_widths
    s1 = [torch.zeros(w, dtype=torch.float64, device=device) for w in widths]
    s_abs = [torch.zeros_like(t) for t in s1]
    s2 = [torch.zeros_like(t) for t in s1]
    tay = [torch.zeros_like(t) for t in s1]
    n_tok = n_img = 0
    with frozen_parameters(model), progress_bar(total=total, desc="statistics", unit="img", disable=quiet) as bar:
        for _, images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            taps: dict[int, torch.Tensor] = {}

            def tap(b: int, hidden: torch.Tensor) -> torch.Tensor:
                hidden = hidden.detach().requires_grad_(gradients)
                taps[b] = hidden
                return hidden

            with ExitStack() as stack:
                stack.enter_context(torch.enable_grad() if gradients else torch.no_grad())
                stack.enter_context(ffn_hooks(adapter, tap))
                stack.enter_context(precision_context(precision, device))
                logits = model(images)
                grads = (torch.autograd.grad(F.cross_entropy(logits.float(), labels, reduction="sum"),
                                             [taps[b] for b in range(adapter.depth)]) if gradients else [None] * adapter.depth)
            for b, g in enumerate(grads):
                a = taps[b].detach().double()
                s1[b] += a.sum((0, 1))
                s_abs[b] += a.abs().sum((0, 1))
                s2[b] += (a * a).sum((0, 1))
                if g is not None:
                    tay[b] += (a * g.double()).sum(1).abs().sum(0)
            n_tok += images.shape[0] * taps[0].shape[1]
            n_img += images.shape[0]
            bar.update(images.shape[0])
    if dist is not None and dist.world > 1:
        parts = dist.gather({"s1": [t.cpu() for t in s1], "s_abs": [t.cpu() for t in s_abs], "s2": [t.cpu() for t in s2],
                             "tay": [t.cpu() for t in tay], "n_tok": n_tok, "n_img": n_img})
        s1, s_abs, s2, tay = ([sum(p[key][b] for p in parts) for b in range(len(widths))] for key in ("s1", "s_abs", "s2", "tay"))
        n_tok, n_img = sum(p["n_tok"] for p in parts), sum(p["n_img"] for p in parts)
    mean = [t / n_tok for t in s1]
    return ActivationStats(
        count_tokens=n_tok, count_images=n_img,
        mean=[t.cpu() for t in mean],
        mean_abs=[(t / n_tok).cpu() for t in s_abs],
        var=[(s2[b] / n_tok - mean[b] ** 2).clamp_min(0).cpu() for b in range(len(widths))],
        sq_norm=[t.cpu() for t in s2],
        taylor=[(t / n_img).cpu() for t in tay] if gradients else None,
    )


__all__ = ["ActivationStats", "collect_stats"]
