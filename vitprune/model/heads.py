"""Attention heads as prunable units: how timm's ``Attention`` maps to heads, and how it is sliced.

The one place (with ``layouts`` and ``adapter``) that knows the attribute names of timm's attention:
``qkv`` (rows: all q channels, then k, then v, head h owning channels h*d .. h*d+d-1 of each), the
optional ``gate`` (rows per channel), ``q_norm``/``k_norm`` (over one head's channels, shared by every
head: unchanged by removing heads), ``norm`` (``scale_norm``: over the concatenated heads, it then runs
over the kept heads' channels only), ``proj`` (its input is the heads' concatenated outputs: a head is
``head_dim`` input columns), and ``num_heads`` / ``attn_dim``, which the forward reshapes by. A unit is
one head; removing it removes its q, k, v (and gate) rows and its proj columns, and nothing else
changes for the heads that stay.
"""
from __future__ import annotations

import torch
from torch import nn

from .layouts import SiteLayout, column_sq, is_identity, new_linear, resized_norm, sliced_norm, sliced_out_proj, sliced_rows


class AttentionHeads(SiteLayout):
    """The heads of a timm ``Attention`` module: a unit is one head, ``head_dim`` channels of ``proj``'s input."""

    @staticmethod
    def matches(attn: nn.Module) -> bool:
        from timm.layers import Attention

        return (type(attn) is Attention and isinstance(attn.qkv, nn.Linear) and isinstance(attn.proj, nn.Linear)
                and attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim)

    @staticmethod
    def width(attn: nn.Module) -> int:
        return int(attn.num_heads)

    @staticmethod
    def out_proj(attn: nn.Module) -> nn.Linear:
        return attn.proj

    @staticmethod
    def channels(attn: nn.Module, heads: torch.Tensor) -> torch.Tensor:
        """The proj input channels (and q/k/v row offsets within each third of qkv) of ``heads``."""
        d = int(attn.head_dim)
        heads = torch.as_tensor(heads, dtype=torch.long).reshape(-1)
        return (heads[:, None] * d + torch.arange(d)).reshape(-1)

    @classmethod
    def unit_sq_norms(cls, attn: nn.Module) -> torch.Tensor:
        d, heads = int(attn.head_dim), int(attn.num_heads)
        rows = attn.qkv.weight.detach().double().pow(2).sum(1)
        if attn.qkv.bias is not None:
            rows = rows + attn.qkv.bias.detach().double().pow(2)
        per_channel = rows.reshape(3, heads * d).sum(0) + column_sq(attn.proj).to(rows.device)
        return per_channel.reshape(heads, d).sum(1).cpu()

    @classmethod
    def slice(cls, attn: nn.Module, kept: torch.Tensor, *, out_bias: bool = False) -> None:
        """Keep only the heads ``kept`` (sorted indices), in place."""
        width = int(attn.attn_dim)
        idx = cls.channels(attn, kept.cpu()).to(attn.qkv.weight.device)
        attn.qkv = sliced_rows(attn.qkv, torch.cat([idx, idx + width, idx + 2 * width]))
        if getattr(attn, "gate", None) is not None:
            attn.gate = sliced_rows(attn.gate, idx)
        if not is_identity(attn.norm):
            attn.norm = sliced_norm(attn.norm, idx)
        attn.proj = sliced_out_proj(attn.proj, idx, bias=out_bias)
        attn.num_heads = len(kept)
        attn.attn_dim = len(kept) * int(attn.head_dim)

    @staticmethod
    def resize(attn: nn.Module, heads: int) -> None:
        """Give the attention ``heads`` heads with fresh weights (a state dict is loaded next)."""
        width = heads * int(attn.head_dim)
        attn.qkv = new_linear(attn.qkv, attn.qkv.in_features, 3 * width)
        if getattr(attn, "gate", None) is not None:
            attn.gate = new_linear(attn.gate, attn.gate.in_features, width)
        if not is_identity(attn.norm):
            attn.norm = resized_norm(attn.norm, width)
        attn.proj = new_linear(attn.proj, width, attn.proj.out_features)
        attn.num_heads, attn.attn_dim = heads, width

    @staticmethod
    def unit_norm(attn: nn.Module) -> nn.Module | None:
        """``scale_norm``: the norm over the concatenated heads."""
        return None if is_identity(attn.norm) else attn.norm


def refusal(b: int, attn: nn.Module) -> str:
    """Why block b's attention has no prunable heads, as one line."""
    return (f"block {b} uses {type(attn).__name__} attention; --prune heads handles timm's Attention (fused qkv, "
            "optional qk_norm / scale_norm / gate); prune its MLPs only (--prune mlp)")


__all__ = ["AttentionHeads", "refusal"]
