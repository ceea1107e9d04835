"""MLP layouts: how a timm MLP module maps to prunable units, and how it is sliced.

A layout answers, for one MLP module, every question the tool asks about its units:
how many there are (``width``), which linear layer reads them (``out_proj``: its input is the
unit vector, where hooks tap, clamp and zero units and where least squares refits), what removing
a unit removes (``slice``), the per-unit weight norm (``unit_sq_norms``, for magnitude pruning) and
how to rebuild a pruned width (``resize``). Zeroing unit j at ``out_proj``'s input is exactly
``slice`` without unit j: the invariant every test of the tool rests on.
"""
from __future__ import annotations

import torch
from torch import nn


class MlpLayout:
    """The contract of a layout; subclasses implement it for one family of timm MLP modules."""

    @staticmethod
    def matches(mlp: nn.Module) -> bool:
        raise NotImplementedError

    @staticmethod
    def width(mlp: nn.Module) -> int:
        raise NotImplementedError

    @staticmethod
    def out_proj(mlp: nn.Module) -> nn.Linear:
        raise NotImplementedError

    @staticmethod
    def unit_sq_norms(mlp: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def slice(mlp: nn.Module, kept: torch.Tensor, *, out_bias: bool = False) -> None:
        """Keep only the units ``kept`` (sorted indices), in place; ``out_bias`` gives ``out_proj`` a bias (zero if it had none)."""
        raise NotImplementedError

    @staticmethod
    def resize(mlp: nn.Module, width: int) -> None:
        """Give the MLP ``width`` units with fresh weights (a state dict is loaded next)."""
        raise NotImplementedError


def new_linear(src: nn.Linear, in_features: int, out_features: int, *, bias: bool | None = None) -> nn.Linear:
    """An ``nn.Linear`` like ``src`` (device, dtype, bias unless told) with other sizes."""
    return nn.Linear(in_features, out_features, bias=src.bias is not None if bias is None else bias,
                     device=src.weight.device, dtype=src.weight.dtype)


@torch.no_grad()
def sliced_out_proj(fc: nn.Linear, idx: torch.Tensor, *, bias: bool = False) -> nn.Linear:
    """``fc`` reading only the input columns ``idx`` (with a zero bias added when ``bias`` and it had none)."""
    new = new_linear(fc, len(idx), fc.out_features, bias=fc.bias is not None or bias)
    new.weight.copy_(fc.weight[:, idx])
    if new.bias is not None:
        new.bias.copy_(fc.bias) if fc.bias is not None else new.bias.zero_()
    return new


@torch.no_grad()
def sliced_rows(fc: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    """``fc`` producing only the output rows ``idx``."""
    new = new_linear(fc, fc.in_features, len(idx))
    new.weight.copy_(fc.weight[idx])
    if fc.bias is not None:
        new.bias.copy_(fc.bias[idx])
    return new


class PlainMlp(MlpLayout):
    """timm ``Mlp``: fc1 -> act -> fc2 (no norm on the hidden vector). Unit j = fc1 row j = fc2 column j."""

    @staticmethod
    def matches(mlp: nn.Module) -> bool:
        from timm.layers import Mlp

        return (isinstance(mlp, Mlp) and isinstance(getattr(mlp, "fc1", None), nn.Linear)
                and isinstance(getattr(mlp, "fc2", None), nn.Linear) and isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity))

    @staticmethod
    def width(mlp: nn.Module) -> int:
        return mlp.fc2.in_features

    @staticmethod
    def out_proj(mlp: nn.Module) -> nn.Linear:
        return mlp.fc2

    @staticmethod
    def unit_sq_norms(mlp: nn.Module) -> torch.Tensor:
        sq = mlp.fc1.weight.detach().double().pow(2).sum(1) + mlp.fc2.weight.detach().double().pow(2).sum(0)
        if mlp.fc1.bias is not None:
            sq = sq + mlp.fc1.bias.detach().double().pow(2)
        return sq.cpu()

    @staticmethod
    def slice(mlp: nn.Module, kept: torch.Tensor, *, out_bias: bool = False) -> None:
        idx = kept.to(mlp.fc1.weight.device)
        mlp.fc1, mlp.fc2 = sliced_rows(mlp.fc1, idx), sliced_out_proj(mlp.fc2, idx, bias=out_bias)

    @staticmethod
    def resize(mlp: nn.Module, width: int) -> None:
        mlp.fc1 = new_linear(mlp.fc1, mlp.fc1.in_features, width)
        mlp.fc2 = new_linear(mlp.fc2, width, mlp.fc2.out_features)


def refusal(b: int, mlp: nn.Module) -> str:
    """Why no layout handles block b's MLP, as one line naming the cause."""
    from timm.layers import Mlp

    if isinstance(mlp, Mlp) and not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        return (f"block {b} normalises its MLP hidden vector (scale_mlp_norm); zeroing a unit there is not "
                "the same as removing it, so it is not supported")
    return (f"block {b} uses {type(mlp).__name__}: gated MLPs (GLU/SwiGLU) and other MLP modules are not supported; "
            "vitprune handles timm's plain Mlp (fc1 -> act -> fc2)")


__all__ = ["MlpLayout", "PlainMlp", "new_linear", "sliced_out_proj", "sliced_rows", "refusal"]
