"""timm ``Beit``: BEiT and BEiT v2 — relative position bias (per block, or one shared table), ``q_bias`` / ``v_bias``,
LayerScale as ``gamma_1`` / ``gamma_2``, a CLS token, average pooling with ``fc_norm`` or the CLS readout.

Heads are not prunable here: timm's Beit ``Attention`` reshapes its heads' output to the model width (``reshape(B,
N, C)``), so it cannot run with fewer heads, and no stock timm module computes the same attention with its relative
position bias. MLP units are (every MLP layout, every criterion and compensation).
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

    def branch_scale(self, b: int, branch: str) -> torch.Tensor | None:
        return getattr(self.blocks[b], "gamma_1" if branch == "attn" else "gamma_2", None)

    def heads_refusal(self, b: int) -> str | None:
        return ("timm's Beit Attention reshapes its heads' output to the model width, so it cannot run with fewer heads "
                "(no stock timm module computes it with its relative position bias)")


__all__ = ["BeitAdapter"]
