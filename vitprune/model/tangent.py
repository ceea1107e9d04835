"""A hand-written forward tangent (JVP) of one timm pre-norm ``Block`` with its MLP hidden clamped at some tokens.

Discovery's ``tangent`` schedule carries d(residual stream)/d(path units) one block per greedy step.
torch's forward-mode AD does that at about three one-block backwards (it recomputes the block, its
linear also multiplies by the zero weight tangent, every op dispatches a dual). Written out, the
tangent reuses the primal the step's own pass computed through the block (``primal_capture``: its
qkv, the stream after attention, fc1's output; else it is computed once for all tangents) and
costs about one block forward per tangent:

    LayerNorm:  dy = w * rstd * (dx - mean(dx) - xhat * mean(xhat * dx))     (RmsNorm: without the means)
    Linear:     dy = W dx                                                   (no bias)
    attention:  dS = scale (dq k^T + q dk^T),  dP = P * (dS - rowsum(P * dS)),  do = dP v + P dv
    GELU:       dy = gelu'(a) * da (autograd's fused GELU backward);  LayerScale: dy = gamma * dx;  residuals add

The MLP hidden vector at the clamped tokens is REPLACED by the clamp, so its tangent there is the
clamp's direction, not what fc1/act derive from the input's tangent. The T tangents go as extra
leading rows, so one matmul serves them all. Blocks this does not know exactly (gated MLPs, other
attention or norm modules, hooks on any of its modules, training mode) return None: the caller
falls back to forward-mode AD.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def _is_identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _norm_supported(norm: nn.Module | None) -> bool:
    from timm.layers import LayerNorm, RmsNorm

    if _is_identity(norm):
        return True
    return type(norm) in (nn.LayerNorm, LayerNorm, RmsNorm) and len(norm.normalized_shape) == 1


def _act_approximation(act: nn.Module) -> str | None:
    """'none' or 'tanh' for the GELUs whose derivative is written here, else None."""
    from timm.layers.activations import GELU, GELUTanh

    if type(act) is nn.GELU:
        return act.approximate
    return {GELU: "none", GELUTanh: "tanh"}.get(type(act))


def _hooked(block: nn.Module) -> bool:
    """Whether a hook could change what any module of the block computes (then only running it is exact)."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in block.modules())


def written_out(block: nn.Module) -> bool:
    """Whether ``block_tangent`` knows this block's modules (stock timm pre-norm Block, Attention and Mlp with
    LayerNorm/RmsNorm, GELU and LayerScale), whatever hooks it carries now."""
    from timm.layers import DropPath, LayerScale, Mlp
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import Block

    if type(block) is not Block:
        return False
    attn, mlp = block.attn, block.mlp
    if type(attn) is not Attention or getattr(attn, "gate", None) is not None:
        return False
    if type(mlp) is not Mlp or any(type(fc) is not nn.Linear for fc in (attn.qkv, attn.proj, mlp.fc1, mlp.fc2)):
        return False
    if _act_approximation(mlp.act) is None:
        return False
    norms = (block.norm1, block.norm2, attn.q_norm, attn.k_norm, getattr(attn, "norm", None), mlp.norm)
    scales = (block.ls1, block.ls2)
    paths = (block.drop_path1, block.drop_path2)
    return (all(_norm_supported(n) for n in norms) and all(_is_identity(s) or type(s) is LayerScale for s in scales)
            and all(_is_identity(p) or type(p) is DropPath for p in paths))


def supports(block: nn.Module) -> bool:
    """Whether ``block_tangent`` computes this block's tangent exactly now: written out, in eval mode (no dropout,
    no drop path)
    and with no hook that could change what a module computes."""
    return written_out(block) and not any(m.training for m in block.modules()) and not _hooked(block)


def _norm(norm: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The norm's output, and xhat and rstd for its tangent (x itself and 1 for an identity)."""
    if _is_identity(norm):
        return x, x, torch.ones((), dtype=x.dtype, device=x.device)
    if isinstance(norm, nn.LayerNorm):
        centred = x - x.mean(-1, keepdim=True)
        rstd = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps)
    else:
        centred = x
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
    xhat = centred * rstd
    out = xhat if norm.weight is None else xhat * norm.weight
    if getattr(norm, "bias", None) is not None:
        out = out + norm.bias
    return out, xhat, rstd


def _norm_tangent(norm: nn.Module, xhat: torch.Tensor, rstd: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """The norm's tangent along dx (leading tangent dims broadcast over the primal's)."""
    if _is_identity(norm):
        return dx
    if isinstance(norm, nn.LayerNorm):
        dx = dx - dx.mean(-1, keepdim=True)
    out = (dx - xhat * (xhat * dx).mean(-1, keepdim=True)) * rstd
    return out if norm.weight is None else out * norm.weight


def _scale(layer_scale: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x if _is_identity(layer_scale) else x * layer_scale.gamma


@contextmanager
def primal_capture(block: nn.Module) -> Iterator[dict[str, torch.Tensor] | None]:
    """Keep what ``block_tangent`` and ``block_output`` need of the block's next forward (its qkv, the stream after
    attention, fc1's and fc2's outputs), so neither recomputes the block; None (no hooks) for a block it does not support."""
    if not supports(block):
        yield None
        return
    store: dict[str, torch.Tensor] = {}

    def keep(name: str, value: torch.Tensor) -> None:
        store[name] = value.detach()

    handles = [block.attn.qkv.register_forward_hook(lambda _m, _a, out: keep("qkv", out)),
               block.norm2.register_forward_pre_hook(lambda _m, args: keep("x1", args[0])),
               block.mlp.fc1.register_forward_hook(lambda _m, _a, out: keep("fc1", out)),
               block.mlp.fc2.register_forward_hook(lambda _m, _a, out: keep("fc2", out))]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def block_output(block: nn.Module, kept: dict[str, torch.Tensor] | None, clamp: torch.Tensor, tokens: slice
                 ) -> torch.Tensor | None:
    """The block's output on the input of the forward ``kept`` saw, with its MLP hidden vector at ``tokens`` set to
    ``clamp`` (R, S, H): only those rows of the MLP output differ, fc2 runs on them alone (as ``override_ffn`` runs
    it). None when ``kept`` does not hold that forward."""
    if kept is None or not {"x1", "fc2"} <= kept.keys():
        return None
    mlp = block.mlp
    out = kept["fc2"].clone()
    out[:, tokens] = F.linear(clamp.to(out.dtype), mlp.fc2.weight, mlp.fc2.bias)
    return kept["x1"] + _scale(block.ls2, out)


def _primal(block: nn.Module, x: torch.Tensor, kept: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The block's qkv, stream after attention and fc1 output on x: ``kept`` from ``primal_capture`` when it holds
    them for this x, else computed here."""
    rows, names = x.shape[:-1], ("qkv", "x1", "fc1")
    if kept is not None and all(name in kept and kept[name].shape[:-1] == rows for name in names):
        return kept
    attn, mlp = block.attn, block.mlp
    qkv = F.linear(_norm(block.norm1, x)[0], attn.qkv.weight, attn.qkv.bias)
    q, k, v = _split_heads(attn, qkv)
    q, k = _norm(attn.q_norm, q)[0] * attn.scale, _norm(attn.k_norm, k)[0]
    o = ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(-3, -2).flatten(-2)
    x1 = x + _scale(block.ls1, F.linear(_norm(getattr(attn, "norm", None), o)[0], attn.proj.weight, attn.proj.bias))
    return {"qkv": qkv, "x1": x1, "fc1": F.linear(_norm(block.norm2, x1)[0], mlp.fc1.weight, mlp.fc1.bias)}


def _split_heads(attn: nn.Module, qkv: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(..., N, 3A) -> q, k, v (..., heads, N, head_dim), as timm's Attention splits them."""
    return qkv.unflatten(-1, (3, attn.num_heads, attn.head_dim)).movedim(-3, 0).transpose(-3, -2).unbind(0)


@torch.no_grad()
def block_tangent(block: nn.Module, x: torch.Tensor, tangent: torch.Tensor | None, clamp: torch.Tensor,
                  direction: torch.Tensor, tokens: slice, kept: dict[str, torch.Tensor] | None = None
                  ) -> torch.Tensor | None:
    """Tangents (T, R, N, D) of the block's output, or None when ``supports(block)`` is false.

    x (R, N, D) is the block's input and tangent (T, R, N, D) its tangents (None: zero); the MLP
    hidden vector at ``tokens`` is clamp (R, S, H), with tangent direction (T, R, S, H). ``kept``:
    the block's intermediates on x (``primal_capture``; the clamp does not change them), else they are recomputed."""
    if not supports(block):
        return None
    attn, mlp = block.attn, block.mlp
    mlp_out = _scale(block.ls2, F.linear(direction, mlp.fc2.weight))  # the clamp's part, at the clamped tokens
    if tangent is None:  # nothing but the clamp moves
        out = mlp_out.new_zeros((*direction.shape[:2], x.shape[1], mlp_out.shape[-1]))
        out[:, :, tokens] = mlp_out
        return out.to(x.dtype)
    primal = _primal(block, x, kept)
    xhat1, rstd1 = _norm(block.norm1, x)[1:]
    q, k, v = _split_heads(attn, primal["qkv"])
    qn, qhat, q_rstd = _norm(attn.q_norm, q)
    kn, khat, k_rstd = _norm(attn.k_norm, k)
    qn = qn * attn.scale
    probs = (qn @ kn.transpose(-2, -1)).softmax(-1)
    attn_norm = getattr(attn, "norm", None)
    ohat, o_rstd = (None, None) if _is_identity(attn_norm) else _norm(attn_norm, (probs @ v).transpose(-3, -2).flatten(-2))[1:]
    xhat2, rstd2 = _norm(block.norm2, primal["x1"])[1:]
    a = primal["fc1"]
    hidden_hat, hidden_rstd = (None, None) if _is_identity(mlp.norm) else _norm(mlp.norm, mlp.act(a))[1:]

    dx = tangent.to(x.dtype)
    dq, dk, dv = _split_heads(attn, F.linear(_norm_tangent(block.norm1, xhat1, rstd1, dx), attn.qkv.weight))
    dq = _norm_tangent(attn.q_norm, qhat, q_rstd, dq) * attn.scale
    dk = _norm_tangent(attn.k_norm, khat, k_rstd, dk)
    ds = dq @ kn.transpose(-2, -1) + qn @ dk.transpose(-2, -1)
    ds = probs * (ds - (probs * ds).sum(-1, keepdim=True))
    do = (ds @ v + probs @ dv).transpose(-3, -2).flatten(-2)
    do = _norm_tangent(attn_norm, ohat, o_rstd, do)
    dx1 = dx + _scale(block.ls1, F.linear(do, attn.proj.weight))
    da = F.linear(_norm_tangent(block.norm2, xhat2, rstd2, dx1), mlp.fc1.weight)
    # gelu'(a) * da in one fused kernel (autograd's own GELU backward)
    dhidden = torch.ops.aten.gelu_backward(da, a.expand_as(da), approximate=_act_approximation(mlp.act))
    dhidden = _norm_tangent(mlp.norm, hidden_hat, hidden_rstd, dhidden)
    out = dx1 + _scale(block.ls2, F.linear(dhidden, mlp.fc2.weight))
    out[:, :, tokens] = dx1[:, :, tokens] + mlp_out  # there the hidden vector is the clamp, not fc1/act's
    return out.to(x.dtype)


__all__ = ["block_output", "block_tangent", "primal_capture", "supports", "written_out"]
