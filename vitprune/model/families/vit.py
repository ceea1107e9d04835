"""timm ``VisionTransformer``: ViT, DeiT (distilled too), MAE fine-tuned, register tokens, hybrid ResNet stems,
average-pooled ViTs without a class token, SigLIP's attention-pool readout (``global_pool='map'``: the pool's own
attention and MLP are kept, and counted in the MACs)."""
from __future__ import annotations

import torch
from torch import nn

from ...errors import UserError
from ..adapter import FamilyAdapter
from ..layouts import is_identity


class ViTAdapter(FamilyAdapter):
    """timm VisionTransformer: blocks ``model.blocks`` of ``Block`` (pre-norm: ``norm1 -> attn -> ls1``, ``norm2 -> mlp ->
    ls2``; LayerScale modules ``ls1`` / ``ls2``)."""

    name = "vit"
    default_architecture = "vit_base_patch16_224"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        from timm.models.vision_transformer import VisionTransformer

        return isinstance(model, VisionTransformer)

    def branch_scale(self, b: int, branch: str) -> torch.Tensor | None:
        return getattr(getattr(self.blocks[b], "ls1" if branch == "attn" else "ls2", None), "gamma", None)

    def _pre_norm(self, b: int) -> nn.Module:
        from timm.models.vision_transformer import Block

        block = self.blocks[b]
        if type(block) is not Block:
            raise UserError(f"block {b} ({type(block).__name__}) is not a pre-norm timm Block, so it cannot be run branch by "
                            "branch; prune its MLPs only (--prune mlp)")
        return block

    def attention_half(self, b: int, x: torch.Tensor) -> torch.Tensor:
        block = self._pre_norm(b)
        return x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))

    def mlp_half(self, b: int, x: torch.Tensor) -> torch.Tensor:
        block = self._pre_norm(b)
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))

    def heads_refusal(self, b: int) -> str | None:
        from timm.models.vision_transformer import Block

        if type(self.blocks[b]) is not Block:
            return f"block {b} is a {type(self.blocks[b]).__name__}, not timm's pre-norm Block (least squares refits a head's block branch by branch)"
        return None

    def structure(self) -> dict:
        """The ``timm.create_model`` keyword arguments this model's structure implies (what an in-memory model is saved as)."""
        model, attn = self.model, self.blocks[0].attn
        return {
            "img_size": list(model.patch_embed.img_size), "patch_size": list(model.patch_embed.patch_size),
            "in_chans": self.input_size[0], "num_classes": self.num_classes, "global_pool": self.layout.pool,
            "embed_dim": int(model.embed_dim), "depth": self.depth, "num_heads": int(attn.num_heads),
            "qkv_bias": attn.qkv.bias is not None, "class_token": self.layout.has_class_token,
            "reg_tokens": int(getattr(model, "num_reg_tokens", 0)), "no_embed_class": bool(getattr(model, "no_embed_class", False)),
            "fc_norm": not is_identity(getattr(model, "fc_norm", None)),
            "init_values": 1.0 if hasattr(self.blocks[0].ls1, "gamma") else None,
            "mlp_ratio": self.hidden_widths[0] / float(model.embed_dim),
        }


__all__ = ["ViTAdapter"]
