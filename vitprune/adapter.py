"""ViTAdapter: the one module that knows timm's attribute names.

It resolves the blocks, their MLPs (``fc1`` -> act -> ``fc2``), the token layout (CLS,
distillation and register tokens, patches) and the pooling, and refuses what vitprune cannot
handle with one clear line. A *neuron* is hidden unit j of block b's MLP, read at the input
of ``blocks[b].mlp.fc2`` (post-activation): zeroing it there is exactly slicing fc1 row j and
fc2 column j.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError
from .options import TOKEN_SCOPES, check_choice


@dataclass(frozen=True)
class TokenLayout:
    num_prefix: int  # CLS + distillation + register tokens, all before the patches
    has_class_token: bool
    has_dist_token: bool
    pool: str  # 'token' (head reads the CLS/DIST tokens) or 'avg' (head reads the mean patch token)


class ViTAdapter:
    """Read-only view of a timm VisionTransformer for neuron-level work."""

    def __init__(self, model: nn.Module) -> None:
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer):
            raise UserError(
                f"unsupported architecture {type(model).__name__}: vitprune handles timm VisionTransformer models "
                "(ViT, DeiT, MAE fine-tuned, ...)"
            )
        self.model = model
        self.blocks = list(model.blocks)
        for b, block in enumerate(self.blocks):
            self._check_mlp(b, block)
        pool = getattr(model, "global_pool", "token")
        if pool not in ("token", "avg"):
            raise UserError(
                f"unsupported pooling global_pool='{pool}': vitprune needs a linear readout of the CLS token "
                "('token') or of the mean patch token ('avg')"
            )
        if getattr(model, "head", None) is None or isinstance(model.head, nn.Identity):
            raise UserError("the model has no classification head (num_classes=0); load it with its classifier")
        self.layout = TokenLayout(
            num_prefix=int(model.num_prefix_tokens),
            has_class_token=model.cls_token is not None,
            has_dist_token=getattr(model, "dist_token", None) is not None,
            pool=pool,
        )

    @staticmethod
    def _check_mlp(b: int, block: nn.Module) -> None:
        from timm.layers import Mlp

        mlp = getattr(block, "mlp", None)
        if mlp is None:
            raise UserError(f"block {b} ({type(block).__name__}) has no separate MLP; parallel/fused blocks are not supported")
        if not isinstance(mlp, Mlp) or not hasattr(mlp, "fc1") or not hasattr(mlp, "fc2"):
            raise UserError(
                f"block {b} uses {type(mlp).__name__}: gated MLPs (GLU/SwiGLU) are not supported; "
                "vitprune handles timm's plain Mlp (fc1 -> act -> fc2)"
            )
        if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
            raise UserError(
                f"block {b} normalises its MLP hidden vector (scale_mlp_norm); zeroing a unit there is not "
                "the same as removing it, so it is not supported"
            )

    # ---------------------------------------------------------------------------- structure
    @property
    def depth(self) -> int:
        return len(self.blocks)

    def mlp(self, b: int) -> nn.Module:
        return self.blocks[b].mlp

    def fc1(self, b: int) -> nn.Linear:
        return self.blocks[b].mlp.fc1

    def fc2(self, b: int) -> nn.Linear:
        return self.blocks[b].mlp.fc2

    def residual_scale_inverse(self, b: int, delta: "torch.Tensor") -> "torch.Tensor":
        """Map a change of block b's output back to fc2's output space: undo the MLP branch's layer scale
        (timm ``ls2``, identity in most ViTs; channels whose scale is zero get no correction)."""
        gamma = getattr(getattr(self.blocks[b], "ls2", None), "gamma", None)
        if gamma is None:
            return delta
        safe = gamma.abs() > 1e-12
        return torch.where(safe, delta / torch.where(safe, gamma, torch.ones_like(gamma)), torch.zeros_like(delta))

    def forward_from(self, block: int, x: torch.Tensor) -> torch.Tensor:
        """Logits from the residual stream entering ``blocks[block]``: the rest of timm's own forward
        (``forward_features`` after the blocks is the final norm, then ``forward_head``), stock modules only."""
        for blk in self.blocks[block:]:
            x = blk(x)
        return self.model.forward_head(self.model.norm(x))

    @property
    def head_tokens(self) -> slice | None:
        """Token positions the head reads when it reads tokens (CLS, and DIST for distilled models);
        None for average-pooled models, whose head reads every patch."""
        if self.layout.pool != "token":
            return None
        return slice(0, 2 if self.layout.has_dist_token else 1)

    @property
    def hidden_widths(self) -> list[int]:
        return [self.fc2(b).in_features for b in range(self.depth)]

    @property
    def head(self) -> nn.Module:
        return self.model.head

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    # ------------------------------------------------------------------------------ tokens
    def resolve_scope(self, scope: str) -> str:
        """'auto' -> the tokens the head reads: 'cls' for CLS-pooled, 'patches' for average-pooled models."""
        check_choice("--token-scope", scope, TOKEN_SCOPES)
        if scope == "auto":
            return "cls" if self.layout.pool == "token" else "patches"
        if scope == "cls" and (self.layout.pool != "token" or not self.layout.has_class_token):
            raise UserError(
                "--token-scope cls needs a model whose head reads the CLS token; this one average-pools the "
                "patch tokens: use --token-scope patches (or all)"
            )
        return scope

    def token_slice(self, scope: str) -> slice:
        """Token positions of a resolved scope. 'cls' covers CLS (+ DIST, which the distilled head also reads)."""
        scope = self.resolve_scope(scope)
        if scope == "cls":
            return self.head_tokens
        if scope == "patches":
            return slice(self.layout.num_prefix, None)
        return slice(None)
