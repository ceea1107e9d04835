"""timm ``VisionTransformerRelPos`` (the ``vit_relpos_*`` / ``vit_srelpos_*`` models): ViT blocks whose attention adds a
relative position bias (per block, or one shared table the blocks receive as ``shared_rel_pos``).

Heads are not prunable here: timm's ``RelPosAttention`` reshapes its heads' output to the model width, so it cannot
run with fewer heads. MLP units are.
"""
from __future__ import annotations

import torch
from torch import nn

from ..adapter import FamilyAdapter


class RelPosAdapter(FamilyAdapter):
    """timm VisionTransformerRelPos: ``RelPosBlock`` (pre-norm, LayerScale modules ``ls1`` / ``ls2``) or
    ``ResPostRelPosBlock``."""

    name = "relpos"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        from timm.models.vision_transformer_relpos import VisionTransformerRelPos

        return isinstance(model, VisionTransformerRelPos)

    def run_block(self, b: int, x: torch.Tensor) -> torch.Tensor:
        shared = getattr(self.model, "shared_rel_pos", None)
        return self.blocks[b](x, shared_rel_pos=shared.get_bias() if shared is not None else None)

    def branch_scale(self, b: int, branch: str) -> torch.Tensor | None:
        return getattr(getattr(self.blocks[b], "ls1" if branch == "attn" else "ls2", None), "gamma", None)

    def heads_refusal(self, b: int) -> str | None:
        return "timm's RelPosAttention reshapes its heads' output to the model width, so it cannot run with fewer heads"


__all__ = ["RelPosAdapter"]
