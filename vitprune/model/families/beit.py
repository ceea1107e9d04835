"""timm ``Beit``: BEiT and BEiT v2 — relative position bias (per block, or one shared table), ``q_bias`` / ``v_bias``,
LayerScale as ``gamma_1`` / ``gamma_2``, a CLS token, average pooling with ``fc_norm`` or the CLS readout.

Heads are prunable through the ``beit-attention`` head layout: timm's Beit ``Attention`` reshapes its heads' output to
the model width, so a block that loses heads gets the equivalent timm ``Attention`` with the kept heads' relative
position bias (its own table's columns, and its share of a shared table) added to its scores.
"""
from __future__ import annotations

import torch
from torch import nn

from ..adapter import FamilyAdapter


class BeitAdapter(FamilyAdapter):
    """timm Beit: blocks take the shared relative position bias (``model.rel_pos_bias``) when the model has one."""

    name = "beit"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        from timm.models.beit import Beit

        return isinstance(model, Beit)

    def _shared_bias(self) -> torch.Tensor | None:
        table = getattr(self.model, "rel_pos_bias", None)
        return table() if table is not None else None

    def run_block(self, b: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[b](x, shared_rel_pos_bias=self._shared_bias())

    def attention_half(self, b: int, x: torch.Tensor) -> torch.Tensor:
        block = self.blocks[b]
        out = block.attn(block.norm1(x), shared_rel_pos_bias=self._shared_bias())
        return x + block.drop_path1(out if block.gamma_1 is None else block.gamma_1 * out)

    def mlp_half(self, b: int, x: torch.Tensor) -> torch.Tensor:
        block = self.blocks[b]
        out = block.mlp(block.norm2(x))
        return x + block.drop_path2(out if block.gamma_2 is None else block.gamma_2 * out)

    def branch_scale(self, b: int, branch: str) -> torch.Tensor | None:
        return getattr(self.blocks[b], "gamma_1" if branch == "attn" else "gamma_2", None)


__all__ = ["BeitAdapter"]
