"""Attention heads as prunable units: how timm's attention modules map to heads, and how they are sliced (registry
``vitprune.model.HEAD_LAYOUTS``).

A head is ``head_dim`` channels of q, k and v (and of the optional ``gate``) and ``head_dim`` input columns of
``proj`` (the site's unit vector: the heads' concatenated outputs). ``q_norm`` / ``k_norm`` run over one head's
channels, shared by every head: unchanged by removing heads; a ``norm`` over the concatenated heads (``scale_norm``)
then runs over the kept heads' channels only. Removing a head removes its rows and columns, and nothing else changes
for the heads that stay.

- ``AttentionHeads``: timm ``Attention`` (fused ``qkv``; ``num_heads`` / ``attn_dim`` drive its forward).
- ``RopeAttentionHeads``: timm ``AttentionRope`` (fused ``qkv`` or separate ``q_proj`` / ``k_proj`` / ``v_proj``).
- ``EvaAttentionHeads``: timm ``EvaAttention``. Its forward reshapes the heads' output to the input width, so it
  cannot run with fewer heads: the slice is the equivalent ``AttentionRope`` (same projections, biases — ``q_bias``,
  a zero k bias, ``v_bias`` — norms, gate and rotary embedding) of the kept heads, which replaces it.
- ``BeitAttentionHeads``: timm's BEiT ``Attention`` (relative position bias per block or shared, ``q_bias`` /
  ``v_bias``), likewise sliced into timm's ``Attention`` with the kept heads' relative position bias added to its
  scores (``BiasedAttention``).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .layouts import SiteLayout, column_sq, is_identity, new_linear, resized_norm, sliced_norm, sliced_out_proj, sliced_rows


def head_channels(head_dim: int, heads: torch.Tensor) -> torch.Tensor:
    """The channels of ``heads`` within one of q, k, v (or the proj input)."""
    heads = torch.as_tensor(heads, dtype=torch.long).reshape(-1)
    return (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def _row_sq(fc: nn.Linear | None, extra_bias: torch.Tensor | None = None) -> torch.Tensor:
    rows = fc.weight.detach().double().pow(2).sum(1)
    if fc.bias is not None:
        rows = rows + fc.bias.detach().double().pow(2)
    if extra_bias is not None:
        rows = rows + extra_bias.detach().double().pow(2)
    return rows


class _Heads(SiteLayout):
    """What every head layout shares: a unit is one head, ``head_dim`` channels of ``proj``'s input."""

    @staticmethod
    def width(attn: nn.Module) -> int:
        return int(attn.num_heads)

    @staticmethod
    def out_proj(attn: nn.Module) -> nn.Linear:
        return attn.proj

    @staticmethod
    def channels(attn: nn.Module, heads: torch.Tensor) -> torch.Tensor:
        """The proj input channels (and q/k/v row offsets within each third of qkv) of ``heads``."""
        return head_channels(int(attn.head_dim), heads)

    @staticmethod
    def unit_norm(attn: nn.Module) -> nn.Module | None:
        """``scale_norm``: the norm over the concatenated heads."""
        norm = getattr(attn, "norm", None)
        return None if is_identity(norm) else norm

    @staticmethod
    def unit_key(attn: nn.Module) -> tuple:
        """What one head's cost depends on (the MAC probe measures each distinct key once)."""
        return (type(attn).__name__, int(attn.head_dim), attn.proj.out_features, attn.proj.in_features // int(attn.num_heads))


class AttentionHeads(_Heads):
    """The heads of a timm ``Attention`` module (fused qkv: rows all q channels, then k, then v)."""

    @staticmethod
    def matches(attn: nn.Module) -> bool:
        from timm.layers import Attention

        return (type(attn) is Attention and isinstance(attn.qkv, nn.Linear) and isinstance(attn.proj, nn.Linear)
                and attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim)

    @classmethod
    def unit_sq_norms(cls, attn: nn.Module) -> torch.Tensor:
        d, heads = int(attn.head_dim), int(attn.num_heads)
        per_channel = _row_sq(attn.qkv).reshape(3, heads * d).sum(0) + column_sq(attn.proj).to(attn.qkv.weight.device)
        return per_channel.reshape(heads, d).sum(1).cpu()

    @classmethod
    def slice(cls, attn: nn.Module, kept: torch.Tensor, *, out_bias: bool = False) -> None:
        """Keep only the heads ``kept`` (sorted indices), in place."""
        width = int(attn.attn_dim)
        idx = cls.channels(attn, kept.cpu()).to(attn.qkv.weight.device)
        attn.qkv = sliced_rows(attn.qkv, torch.cat([idx, idx + width, idx + 2 * width]))
        _slice_common(attn, idx, out_bias)
        attn.num_heads = len(kept)
        attn.attn_dim = len(kept) * int(attn.head_dim)

    @staticmethod
    def resize(attn: nn.Module, heads: int) -> None:
        """Give the attention ``heads`` heads with fresh weights (a state dict is loaded next)."""
        width = heads * int(attn.head_dim)
        attn.qkv = new_linear(attn.qkv, attn.qkv.in_features, 3 * width)
        _resize_common(attn, width)
        attn.num_heads, attn.attn_dim = heads, width


def _slice_common(attn: nn.Module, idx: torch.Tensor, out_bias: bool) -> None:
    """The gate rows, the scale norm's channels and the proj columns of the kept channels ``idx``."""
    if getattr(attn, "gate", None) is not None:
        attn.gate = sliced_rows(attn.gate, idx)
    if not is_identity(getattr(attn, "norm", None)):
        attn.norm = sliced_norm(attn.norm, idx)
    attn.proj = sliced_out_proj(attn.proj, idx, bias=out_bias)


def _resize_common(attn: nn.Module, width: int) -> None:
    if getattr(attn, "gate", None) is not None:
        attn.gate = new_linear(attn.gate, attn.gate.in_features, width)
    if not is_identity(getattr(attn, "norm", None)):
        attn.norm = resized_norm(attn.norm, width)
    attn.proj = new_linear(attn.proj, width, attn.proj.out_features)


class RopeAttentionHeads(_Heads):
    """The heads of a timm ``AttentionRope`` (fused qkv, or separate q/k/v projections; one key/value head per query
    head)."""

    @staticmethod
    def matches(attn: nn.Module) -> bool:
        from timm.layers.attention import AttentionRope

        return type(attn) is AttentionRope and getattr(attn, "num_kv_groups", 1) == 1

    @classmethod
    def unit_sq_norms(cls, attn: nn.Module) -> torch.Tensor:
        d, heads = int(attn.head_dim), int(attn.num_heads)
        if attn.qkv is not None:
            qkv = _row_sq(attn.qkv).reshape(3, heads * d).sum(0)
        else:
            qkv = sum(_row_sq(fc) for fc in (attn.q_proj, attn.k_proj, attn.v_proj))
        per_channel = qkv + column_sq(attn.proj).to(qkv.device)
        return per_channel.reshape(heads, d).sum(1).cpu()

    @classmethod
    def slice(cls, attn: nn.Module, kept: torch.Tensor, *, out_bias: bool = False) -> None:
        width = int(attn.attn_dim)
        device = attn.proj.weight.device
        idx = cls.channels(attn, kept.cpu()).to(device)
        if attn.qkv is not None:
            attn.qkv = sliced_rows(attn.qkv, torch.cat([idx, idx + width, idx + 2 * width]))
        else:
            attn.q_proj, attn.k_proj, attn.v_proj = (sliced_rows(fc, idx) for fc in (attn.q_proj, attn.k_proj, attn.v_proj))
        _slice_common(attn, idx, out_bias)
        attn.num_heads = attn.num_kv_heads = len(kept)
        attn.attn_dim = attn.kv_dim = len(kept) * int(attn.head_dim)

    @staticmethod
    def resize(attn: nn.Module, heads: int) -> None:
        width = heads * int(attn.head_dim)
        if attn.qkv is not None:
            attn.qkv = new_linear(attn.qkv, attn.qkv.in_features, 3 * width)
        else:
            attn.q_proj, attn.k_proj, attn.v_proj = (new_linear(fc, fc.in_features, width)
                                                      for fc in (attn.q_proj, attn.k_proj, attn.v_proj))
        _resize_common(attn, width)
        attn.num_heads = attn.num_kv_heads = heads
        attn.attn_dim = attn.kv_dim = width


class _ConvertedHeads(_Heads):
    """A layout whose module cannot run with fewer heads: slicing (and resizing a checkpoint's block) gives the
    equivalent module of another layout (``target``) made by ``convert(attn, kept)``, which replaces it."""

    target: type[_Heads]

    @staticmethod
    def convert(attn: nn.Module, kept: torch.Tensor) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def unit_sq_norms(cls, attn: nn.Module) -> torch.Tensor:
        return cls.target.unit_sq_norms(cls.convert(attn, torch.arange(int(attn.num_heads))))

    @classmethod
    def slice(cls, attn: nn.Module, kept: torch.Tensor, *, out_bias: bool = False) -> nn.Module:
        out = cls.convert(attn, kept.cpu())
        if out_bias and out.proj.bias is None:
            out.proj = sliced_out_proj(out.proj, torch.arange(out.proj.in_features), bias=True)
        return out

    @classmethod
    def resize(cls, attn: nn.Module, heads: int) -> nn.Module:
        """The converted module with ``heads`` heads and fresh weights (a state dict is loaded next)."""
        out = cls.convert(attn, torch.arange(int(attn.num_heads)))
        cls.target.resize(out, heads)
        return out


class EvaAttentionHeads(_ConvertedHeads):
    """The heads of a timm ``EvaAttention``; slicing (and resizing a checkpoint's block) gives the equivalent
    ``AttentionRope``, which replaces it."""

    target = RopeAttentionHeads

    @staticmethod
    def matches(attn: nn.Module) -> bool:
        from timm.models.eva import EvaAttention

        return type(attn) is EvaAttention

    @staticmethod
    def convert(attn: nn.Module, kept: torch.Tensor) -> nn.Module:
        return _as_rope(attn, kept)


@torch.no_grad()
def _as_rope(attn: nn.Module, kept: torch.Tensor) -> nn.Module:
    """The timm ``AttentionRope`` computing what ``attn`` (an ``EvaAttention``) computes for the heads ``kept``."""
    from timm.layers.attention import AttentionRope

    d = int(attn.head_dim)
    dim = attn.proj.out_features
    fused = attn.qkv is not None
    idx = head_channels(d, kept).to(attn.proj.weight.device)
    width = int(attn.num_heads) * d
    bias = attn.q_bias is not None if fused else attn.q_proj.bias is not None
    rope = AttentionRope(dim, num_heads=len(kept), qkv_bias=bias, qkv_fused=fused, num_prefix_tokens=attn.num_prefix_tokens,
                         attn_head_dim=d, proj_bias=attn.proj.bias is not None, rotate_half=attn.rotate_half,
                         gated=attn.gate is not None, device=attn.proj.weight.device, dtype=attn.proj.weight.dtype)
    rope.fused_attn = attn.fused_attn
    rope.attn_drop, rope.proj_drop = copy.deepcopy(attn.attn_drop), copy.deepcopy(attn.proj_drop)
    rope.q_norm, rope.k_norm = copy.deepcopy(attn.q_norm), copy.deepcopy(attn.k_norm)
    if fused:
        rope.qkv = sliced_rows(attn.qkv, torch.cat([idx, idx + width, idx + 2 * width]))
        if bias:
            rope.qkv = sliced_out_proj(rope.qkv, torch.arange(rope.qkv.in_features), bias=True)  # the same weights, a bias
            zeros = torch.zeros_like(attn.q_bias[idx])
            rope.qkv.bias.copy_(torch.cat([attn.q_bias[idx], zeros, attn.v_bias[idx]]))
    else:
        rope.q_proj, rope.k_proj, rope.v_proj = (sliced_rows(fc, idx) for fc in (attn.q_proj, attn.k_proj, attn.v_proj))
    rope.norm = copy.deepcopy(attn.norm) if is_identity(attn.norm) else sliced_norm(attn.norm, idx)
    if attn.gate is not None:
        rope.gate = sliced_rows(attn.gate, idx)
    rope.proj = sliced_out_proj(attn.proj, idx)
    rope.train(attn.training)
    return rope


def _beit_head_dim(attn: nn.Module) -> int:
    return attn.qkv.out_features // (3 * int(attn.num_heads))


def _biased_attention_class():
    """``BiasedAttention``: timm's ``Attention`` plus a per-head relative position bias added to its scores — what a
    BEiT attention computes, for any number of heads. Made on first use (it subclasses a timm class)."""
    global _BIASED
    if _BIASED is None:
        from timm.layers import Attention

        class BiasedAttention(Attention):
            """timm ``Attention`` whose scores get the relative position bias of its heads (``relative_position_bias_table``
            indexed by ``relative_position_index``, as BEiT's) and the kept heads' share of a model-wide shared bias: the
            attention of a BEiT block with some heads removed (``BeitAttentionHeads``)."""

            def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
                bias = None
                if self.relative_position_bias_table is not None:
                    n = self.relative_position_index.shape[0]
                    bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
                    bias = bias.permute(2, 0, 1).unsqueeze(0)
                if shared_rel_pos_bias is not None:
                    shared = shared_rel_pos_bias.index_select(-3, self.kept_heads)
                    bias = shared if bias is None else bias + shared
                return super().forward(x, attn_mask=bias.to(x.dtype) if bias is not None else None)

        _BIASED = BiasedAttention
    return _BIASED


_BIASED = None


@torch.no_grad()
def _as_biased(attn: nn.Module, kept: torch.Tensor) -> nn.Module:
    """The ``BiasedAttention`` computing what ``attn`` (a BEiT ``Attention``, or a ``BiasedAttention``) computes for the
    heads ``kept``: q/k/v rows and ``q_bias`` / ``v_bias`` (a zero k bias) as one qkv bias, the kept columns of the
    relative position bias table, the proj columns."""
    cls = _biased_attention_class()
    device, dtype = attn.proj.weight.device, attn.proj.weight.dtype
    kept = torch.as_tensor(kept, dtype=torch.long).cpu()
    if isinstance(attn, cls):
        d, width = int(attn.head_dim), int(attn.attn_dim)
        bias = attn.qkv.bias
        table = attn.relative_position_bias_table
        shared = attn.kept_heads.cpu()[kept]
    else:
        d = _beit_head_dim(attn)
        width = int(attn.num_heads) * d
        bias = torch.cat([attn.q_bias, attn.k_bias, attn.v_bias]) if attn.q_bias is not None else None
        table = attn.relative_position_bias_table
        shared = kept
    idx = head_channels(d, kept).to(device)
    out = cls(attn.proj.out_features, num_heads=len(kept), qkv_bias=bias is not None, attn_head_dim=d,
              proj_bias=attn.proj.bias is not None, device=device, dtype=dtype)
    out.fused_attn = attn.fused_attn
    out.attn_drop, out.proj_drop = copy.deepcopy(attn.attn_drop), copy.deepcopy(attn.proj_drop)
    rows = torch.cat([idx, idx + width, idx + 2 * width])
    out.qkv.weight.copy_(attn.qkv.weight[rows])
    if bias is not None:
        out.qkv.bias.copy_(bias[rows])
    out.proj = sliced_out_proj(attn.proj, idx)
    if table is not None:
        out.relative_position_bias_table = nn.Parameter(table[:, kept.to(table.device)].clone())
        out.register_buffer("relative_position_index", attn.relative_position_index.clone(), persistent=False)
    else:
        out.relative_position_bias_table = None
        out.relative_position_index = None
    out.register_buffer("kept_heads", shared.to(device))  # which heads of a model-wide shared bias are this block's
    out.train(attn.training)
    return out


class BeitAttentionHeads(_ConvertedHeads):
    """The heads of timm's BEiT ``Attention`` (and of the ``BiasedAttention`` it is sliced into). Its forward reshapes
    the heads' output to the input width, so it cannot run with fewer heads: the slice is the equivalent timm
    ``Attention`` with the kept heads' relative position bias as the additive mask of its scores."""

    target = AttentionHeads

    @staticmethod
    def matches(attn: nn.Module) -> bool:
        from timm.models.beit import Attention as BeitAttention

        return type(attn) is BeitAttention or type(attn) is _biased_attention_class()

    @staticmethod
    def channels(attn: nn.Module, heads: torch.Tensor) -> torch.Tensor:
        return head_channels(_beit_head_dim(attn), heads)

    @staticmethod
    def unit_key(attn: nn.Module) -> tuple:
        d = _beit_head_dim(attn)
        return ("BeitAttention", d, attn.proj.out_features, attn.relative_position_bias_table is not None)

    @staticmethod
    def convert(attn: nn.Module, kept: torch.Tensor) -> nn.Module:
        return _as_biased(attn, kept)

    @classmethod
    def resize(cls, attn: nn.Module, heads: int) -> nn.Module:
        """A ``BiasedAttention`` of ``heads`` heads with fresh weights and bias table (a state dict is loaded next)."""
        out = super().resize(attn, heads)
        table = out.relative_position_bias_table
        if table is not None:
            out.relative_position_bias_table = nn.Parameter(table.new_zeros(table.shape[0], heads))
        out.kept_heads = torch.arange(heads, device=out.kept_heads.device)
        return out


def refusal(b: int, attn: nn.Module) -> str:
    """Why block b's attention has no prunable heads, as one line."""
    from . import HEAD_LAYOUTS

    return (f"block {b} uses {type(attn).__name__} attention, which no head layout handles ({', '.join(HEAD_LAYOUTS.names())}); "
            "prune its MLPs only (--prune mlp)")


__all__ = ["AttentionHeads", "RopeAttentionHeads", "EvaAttentionHeads", "BeitAttentionHeads", "head_channels", "refusal"]
