"""Influence Pattern (spec section 4.1), a baseline path method (``--method influence-pattern``).

Per layer, the units with the largest mean gradient of F over the m input-scaled copies
alpha_k * x (and over the scope tokens). The reference's clamps are value-preserving, so one
forward and one backward give every layer at once; the reference shares one path per batch,
here each image gets its own. The path is then scored by JAS (``PassEngine.path_score``).
"""
from __future__ import annotations

import torch

from ..model.hooks import ffn_hooks, replace_tokens
from .engine import Goal, PassEngine, stable_topk
from .method import DiscoveryMethod, MethodPaths


class InfluencePattern(DiscoveryMethod):
    def paths(self, engine: PassEngine, images: torch.Tensor, goal: Goal, acts: list[torch.Tensor]) -> MethodPaths:
        batch, device, depth = len(images), images.device, engine.depth
        grad_sum: list[torch.Tensor] | None = None
        for img, alpha in engine.row_chunks(batch):
            img, alpha = img.to(device), alpha.to(device)
            x = (images[img] * alpha[:, None, None, None].to(images)).requires_grad_(True)
            taps: dict[int, torch.Tensor] = {}

            def tap(b: int, hidden: torch.Tensor) -> torch.Tensor:
                taps[b] = hidden[:, engine.tokens]
                return replace_tokens(hidden, engine.tokens, taps[b])

            with torch.enable_grad(), ffn_hooks(engine.adapter, tap):
                out = engine.objective_sum(x, goal.rows(img))
                grads = engine.grad(out, [taps[l] for l in range(depth)], len(img), depth)
            if grad_sum is None:
                grad_sum = [torch.zeros(batch, g.shape[-1], dtype=torch.float64, device=device) for g in grads]
            for l in range(depth):
                grad_sum[l].index_add_(0, img, grads[l].double().sum(dim=1))
        return MethodPaths([stable_topk(g, engine.settings.topk) for g in grad_sum])


__all__ = ["InfluencePattern"]
