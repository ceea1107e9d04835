"""timm ``Eva``: EVA-02, DINOv3, Perception Encoder and the rotary-embedding ViTs (``vit_*_rope_*``).

What differs from a plain ViT: every block takes the model's rotary embedding (``rope=``, one table for all blocks, or
one per block for ``rope_type='mixed'``), LayerScale is a pair of parameters (``gamma_1`` / ``gamma_2``), attention is
``EvaAttention`` (fused qkv with ``q_bias`` / ``v_bias`` and no k bias, or separate q/k/v projections) or
``AttentionRope``, and MLPs are timm's Mlp, GluMlp (packed SwiGLU) or SwiGLU, with or without a hidden norm
(``scale_mlp``). Pruned heads of an ``EvaAttention`` become the equivalent ``AttentionRope`` (``model.heads``).
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import UserError
from ..adapter import FamilyAdapter


class EvaAdapter(FamilyAdapter):
    """timm Eva: blocks ``EvaBlock`` (pre-norm) or ``EvaBlockPostNorm``; the rotary table from ``model.rope``."""

    name = "eva"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        from timm.models.eva import Eva

        return isinstance(model, Eva)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._rot: tuple[torch.device, torch.Tensor] | None = None

    def _rope(self, b: int) -> torch.Tensor | None:
        """The rotary embedding block b gets in the model's own forward (the grid of its configured image size)."""
        model = self.model
        if getattr(model, "rope", None) is None:
            return None
        device = next(model.parameters()).device
        if self._rot is None or self._rot[0] != device:
            dynamic = getattr(model, "dynamic_img_size", False) or not hasattr(model.rope, "feat_shape")
            rot = model.rope.get_embed(shape=model.patch_embed.grid_size) if dynamic else model.rope.get_embed()
            self._rot = (device, rot)
        rot = self._rot[1]
        return rot[b] if getattr(model, "rope_mixed", False) else rot

    @property
    def pool_reads_prefix(self) -> bool:
        return self.layout.pool == "map"  # Eva's attention pool reads every token; its average skips the prefix

    def run_block(self, b: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[b](x, rope=self._rope(b))

    def branch_scale(self, b: int, branch: str) -> torch.Tensor | None:
        return getattr(self.blocks[b], "gamma_1" if branch == "attn" else "gamma_2", None)

    def _pre_norm(self, b: int) -> nn.Module:
        from timm.models.eva import EvaBlock

        block = self.blocks[b]
        if type(block) is not EvaBlock:
            raise UserError(f"block {b} ({type(block).__name__}) is a post-norm block, which cannot be run branch by branch; "
                            "prune its MLPs only (--prune mlp)")
        return block

    def attention_half(self, b: int, x: torch.Tensor) -> torch.Tensor:
        block = self._pre_norm(b)
        out = block.attn(block.norm1(x), rope=self._rope(b))
        return x + block.drop_path1(out if block.gamma_1 is None else block.gamma_1 * out)

    def mlp_half(self, b: int, x: torch.Tensor) -> torch.Tensor:
        block = self._pre_norm(b)
        out = block.mlp(block.norm2(x))
        return x + block.drop_path2(out if block.gamma_2 is None else block.gamma_2 * out)

    def heads_refusal(self, b: int) -> str | None:
        from timm.models.eva import EvaBlock

        block = self.blocks[b]
        if type(block) is not EvaBlock:
            return f"block {b} is a {type(block).__name__} (post-norm), which least squares cannot refit branch by branch"
        if getattr(self.model, "rope_mixed", False):
            return "rope_type='mixed' gives every head its own rotary table, which the blocks receive whole"
        if getattr(block.attn, "num_kv_groups", 1) > 1:
            return "grouped-query attention shares key/value heads between query heads"
        return None


__all__ = ["EvaAdapter"]
