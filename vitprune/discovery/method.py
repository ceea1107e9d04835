"""The contract of a discovery method (registry ``vitprune.discovery.DISCOVERY_METHODS``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .engine import Goal, PassEngine


@dataclass
class MethodPaths:
    """What a method found for one batch: ``path[l]`` (B, K) per block, best first; the JAS of each path
    when the method computed it on the way (else the engine scores it); and, for methods with
    ``dense_importance``, the greedy scores S_t (B, H_t) of every unit and their own term I_t."""

    path: list[torch.Tensor]
    score: torch.Tensor | None = None
    step_scores: list[torch.Tensor] | None = None
    step_own: list[torch.Tensor] | None = None


class DiscoveryMethod:
    """Finds one path per image from the clean activations ``acts`` (per block, (B, T, H) at the scope tokens),
    using the shared ``PassEngine`` for every model pass."""

    dense_importance: bool = False  # yields S_t of every unit (the dense path importance of criterion jas)

    def paths(self, engine: PassEngine, images: torch.Tensor, goal: Goal, acts: list[torch.Tensor]) -> MethodPaths:
        raise NotImplementedError


__all__ = ["DiscoveryMethod", "MethodPaths"]
