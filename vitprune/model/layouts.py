"""MLP layouts: how a timm MLP module maps to prunable units, and how it is sliced.

A layout answers, for one MLP module, every question the tool asks about its units:
how many there are (``width``), which linear layer reads them (``out_proj``: its input is the
unit vector, where hooks tap, clamp and zero units and where least squares refits), what removing
a unit removes (``slice``), the per-unit weight norm (``unit_sq_norms``, for magnitude pruning),
how to rebuild a pruned width (``resize``) and the masked module that equals the slice
(``masked``). A unit is one channel of ``out_proj``'s input: for a gated MLP the product of its
value and gate channels (both rows go together), for an MLP that normalises its hidden vector
(timm ``scale_mlp_norm``) the normalised channel, the norm then running over the kept channels only.
"""
from __future__ import annotations

import torch
from torch import nn


class SiteLayout:
    """The contract of a site layout: how one module's units map to weights (MLP layouts below; attention heads in
    ``heads.AttentionHeads``)."""

    @staticmethod
    def matches(module: nn.Module) -> bool:
        raise NotImplementedError

    @staticmethod
    def width(module: nn.Module) -> int:
        raise NotImplementedError

    @staticmethod
    def out_proj(module: nn.Module) -> nn.Linear:
        raise NotImplementedError

    @staticmethod
    def unit_sq_norms(module: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def slice(module: nn.Module, kept: torch.Tensor, *, out_bias: bool = False) -> nn.Module | None:
        """Keep only the units ``kept`` (sorted indices), in place; ``out_bias`` gives ``out_proj`` a bias (zero if it had
        none). A layout whose module cannot hold fewer units returns the module that replaces it."""
        raise NotImplementedError

    @staticmethod
    def resize(module: nn.Module, width: int) -> nn.Module | None:
        """Give the module ``width`` units with fresh weights (a state dict is loaded next); or return the module of
        that width that replaces it."""
        raise NotImplementedError

    @classmethod
    def unit_key(cls, module: nn.Module) -> tuple:
        """What one unit's cost depends on (the MAC probe measures each distinct key once)."""
        return (cls.__name__, type(module).__name__, cls.out_proj(module).out_features)

    @staticmethod
    def unit_norm(module: nn.Module) -> nn.Module | None:
        """The norm over the unit vector (it then runs over the kept channels only), or None."""
        return None

    @classmethod
    def subset(cls, module: nn.Module) -> bool:
        """Whether the kept units' values equal the dense model's at those channels (no norm over the unit vector):
        least squares then fits the dense values at the kept channels."""
        return cls.unit_norm(module) is None

    @staticmethod
    def channels(module: nn.Module, units: torch.Tensor) -> torch.Tensor:
        """The ``out_proj`` input channels of ``units``: a unit is one channel."""
        return torch.as_tensor(units, dtype=torch.long).reshape(-1)

    @classmethod
    def masked(cls, module: nn.Module, kept: torch.Tensor) -> list:
        """Hooks that make ``module`` compute what its slice to ``kept`` computes (zeroed elsewhere); remove them after."""
        channels = cls.channels(module, kept.cpu())
        removed = _removed(cls.out_proj(module).in_features, channels)
        norm = cls.unit_norm(module)

        def zero(_module, args):
            out = args[0].clone()
            out[..., removed.to(out.device)] = 0
            return (out, *args[1:])

        return ([] if norm is None else norm_masked(norm, channels)) + [cls.out_proj(module).register_forward_pre_hook(zero)]


class MlpLayout(SiteLayout):
    """A layout of one family of timm MLP modules; timm names their output projection ``fc2``."""

    @staticmethod
    def out_proj(mlp: nn.Module) -> nn.Linear:
        return mlp.fc2

    @classmethod
    def width(cls, mlp: nn.Module) -> int:
        return cls.out_proj(mlp).in_features


def _norm(module: nn.Module) -> nn.Module | None:
    """``module.norm`` unless it is absent or an identity."""
    norm = getattr(module, "norm", None)
    return None if is_identity(norm) else norm


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


def _removed(width: int, kept: torch.Tensor) -> torch.Tensor:
    keep = torch.zeros(width, dtype=torch.bool)
    keep[kept.cpu()] = True
    return torch.nonzero(~keep).flatten()


def is_identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


@torch.no_grad()
def sliced_norm(norm: nn.Module, idx: torch.Tensor) -> nn.Module:
    """A copy of a norm over the hidden vector (LayerNorm, RmsNorm ...) normalising only the channels ``idx``."""
    import copy

    width = next((p.shape[0] for p in norm.parameters()), None) or norm.normalized_shape[-1]
    new = copy.deepcopy(norm)
    for name, param in list(new.named_parameters(recurse=False)):
        if param.dim() == 1 and param.shape[0] == width:
            setattr(new, name, nn.Parameter(param.detach()[idx.to(param.device)].clone(), requires_grad=param.requires_grad))
    if hasattr(new, "normalized_shape"):
        new.normalized_shape = (len(idx),)
    return new


@torch.no_grad()
def resized_norm(norm: nn.Module, width: int) -> nn.Module:
    """The norm for a pruned width, whatever width it has now (its values are loaded from a state dict next)."""
    import copy

    current = next((p.shape[0] for p in norm.parameters()), None) or norm.normalized_shape[-1]
    new = copy.deepcopy(norm)
    for name, param in list(new.named_parameters(recurse=False)):
        if param.dim() == 1 and param.shape[0] == current:
            setattr(new, name, nn.Parameter(param.new_ones(width), requires_grad=param.requires_grad))
    if hasattr(new, "normalized_shape"):
        new.normalized_shape = (width,)
    return new


def norm_masked(norm: nn.Module, kept: torch.Tensor) -> list:
    """The norm over the kept channels only, the others zero: what the sliced norm computes."""
    small = sliced_norm(norm, kept)

    def hook(_module, args, out):
        result = torch.zeros_like(out)
        result[..., kept.to(out.device)] = small.to(out.device)(args[0][..., kept.to(out.device)])
        return result

    return [norm.register_forward_hook(hook)]


class PlainMlp(MlpLayout):
    """timm ``Mlp``: fc1 -> act -> fc2 (no norm on the hidden vector). Unit j = fc1 row j = fc2 column j."""

    @staticmethod
    def matches(mlp: nn.Module) -> bool:
        from timm.layers import Mlp

        return (isinstance(mlp, Mlp) and isinstance(getattr(mlp, "fc1", None), nn.Linear)
                and isinstance(getattr(mlp, "fc2", None), nn.Linear) and is_identity(getattr(mlp, "norm", None)))

    @staticmethod
    def unit_sq_norms(mlp: nn.Module) -> torch.Tensor:
        return row_sq(mlp.fc1) + column_sq(mlp.fc2)

    @staticmethod
    def slice(mlp: nn.Module, kept: torch.Tensor, *, out_bias: bool = False) -> None:
        idx = kept.to(mlp.fc1.weight.device)
        mlp.fc1, mlp.fc2 = sliced_rows(mlp.fc1, idx), sliced_out_proj(mlp.fc2, idx, bias=out_bias)

    @staticmethod
    def resize(mlp: nn.Module, width: int) -> None:
        mlp.fc1 = new_linear(mlp.fc1, mlp.fc1.in_features, width)
        mlp.fc2 = new_linear(mlp.fc2, width, mlp.fc2.out_features)


class NormedMlp(PlainMlp):
    """timm ``Mlp`` with a norm over its hidden vector (``scale_mlp_norm``): fc1 -> act -> norm -> fc2. A unit is one
    normalised channel; removing it removes fc1 row j, the norm's channel j (it then normalises the kept channels
    only) and fc2 column j."""

    @staticmethod
    def matches(mlp: nn.Module) -> bool:
        from timm.layers import Mlp

        return isinstance(mlp, Mlp) and isinstance(getattr(mlp, "fc1", None), nn.Linear) and not is_identity(getattr(mlp, "norm", None))

    unit_norm = staticmethod(_norm)

    @staticmethod
    def slice(mlp: nn.Module, kept: torch.Tensor, *, out_bias: bool = False) -> None:
        PlainMlp.slice(mlp, kept, out_bias=out_bias)
        mlp.norm = sliced_norm(mlp.norm, kept)

    @staticmethod
    def resize(mlp: nn.Module, width: int) -> None:
        PlainMlp.resize(mlp, width)
        mlp.norm = resized_norm(mlp.norm, width)



class PackedGluMlp(MlpLayout):
    """timm ``GluMlp`` (and ``SwiGLUPacked``): fc1 makes value and gate halves, their product (optionally normed) feeds
    fc2. Unit j = fc1 rows j and j + H (both halves together) = fc2 column j."""

    @staticmethod
    def matches(mlp: nn.Module) -> bool:
        from timm.layers import GluMlp

        return isinstance(mlp, GluMlp) and isinstance(mlp.fc1, nn.Linear) and mlp.chunk_dim == -1

    @staticmethod
    def unit_sq_norms(mlp: nn.Module) -> torch.Tensor:
        rows, width = row_sq(mlp.fc1), mlp.fc2.in_features
        return rows[:width] + rows[width:] + column_sq(mlp.fc2)

    @staticmethod
    def slice(mlp: nn.Module, kept: torch.Tensor, *, out_bias: bool = False) -> None:
        idx = kept.to(mlp.fc1.weight.device)
        width = mlp.fc2.in_features
        mlp.fc1 = sliced_rows(mlp.fc1, torch.cat([idx, idx + width]))  # the halves stay aligned: chunk(2) still pairs j with j
        if not is_identity(mlp.norm):
            mlp.norm = sliced_norm(mlp.norm, idx)
        mlp.fc2 = sliced_out_proj(mlp.fc2, idx, bias=out_bias)

    @staticmethod
    def resize(mlp: nn.Module, width: int) -> None:
        mlp.fc1 = new_linear(mlp.fc1, mlp.fc1.in_features, 2 * width)
        if not is_identity(mlp.norm):
            mlp.norm = resized_norm(mlp.norm, width)
        mlp.fc2 = new_linear(mlp.fc2, width, mlp.fc2.out_features)

    unit_norm = staticmethod(_norm)


class SplitGluMlp(MlpLayout):
    """timm ``SwiGLU``: separate gate and value projections (fc1_g, fc1_x), act(gate) * value (optionally normed) feeds
    fc2. Unit j = row j of both = fc2 column j."""

    @staticmethod
    def matches(mlp: nn.Module) -> bool:
        from timm.layers import SwiGLU

        return isinstance(mlp, SwiGLU)

    @staticmethod
    def unit_sq_norms(mlp: nn.Module) -> torch.Tensor:
        return row_sq(mlp.fc1_g) + row_sq(mlp.fc1_x) + column_sq(mlp.fc2)

    @staticmethod
    def slice(mlp: nn.Module, kept: torch.Tensor, *, out_bias: bool = False) -> None:
        idx = kept.to(mlp.fc2.weight.device)
        mlp.fc1_g, mlp.fc1_x = sliced_rows(mlp.fc1_g, idx), sliced_rows(mlp.fc1_x, idx)
        if not is_identity(mlp.norm):
            mlp.norm = sliced_norm(mlp.norm, idx)
        mlp.fc2 = sliced_out_proj(mlp.fc2, idx, bias=out_bias)

    @staticmethod
    def resize(mlp: nn.Module, width: int) -> None:
        mlp.fc1_g = new_linear(mlp.fc1_g, mlp.fc1_g.in_features, width)
        mlp.fc1_x = new_linear(mlp.fc1_x, mlp.fc1_x.in_features, width)
        if not is_identity(mlp.norm):
            mlp.norm = resized_norm(mlp.norm, width)
        mlp.fc2 = new_linear(mlp.fc2, width, mlp.fc2.out_features)

    unit_norm = staticmethod(_norm)


def row_sq(fc: nn.Linear) -> torch.Tensor:
    sq = fc.weight.detach().double().pow(2).sum(1)
    if fc.bias is not None:
        sq = sq + fc.bias.detach().double().pow(2)
    return sq.cpu()


def column_sq(fc: nn.Linear) -> torch.Tensor:
    return fc.weight.detach().double().pow(2).sum(0).cpu()


def refusal(b: int, mlp: nn.Module) -> str:
    """Why no layout handles block b's MLP, as one line naming the cause."""
    from . import MLP_LAYOUTS

    return (f"block {b} uses {type(mlp).__name__}, which no MLP layout handles ({', '.join(MLP_LAYOUTS.names())}: "
            "timm Mlp, GluMlp, SwiGLUPacked, SwiGLU, with or without a norm over the hidden vector); register one with "
            "vitprune.register_mlp_layout")


__all__ = ["SiteLayout", "MlpLayout", "PlainMlp", "NormedMlp", "PackedGluMlp", "SplitGluMlp", "new_linear", "sliced_out_proj", "sliced_rows",
           "sliced_norm", "resized_norm", "norm_masked", "is_identity", "row_sq", "column_sq", "refusal"]
