"""ViTAdapter: the one module (with the MLP layouts) that knows timm's attribute names.

It resolves the blocks, their MLPs (through the registered MLP layouts), the token layout (CLS,
distillation and register tokens, patches), the pooling and the readout, and refuses what vitprune
cannot handle with one clear line. A *unit* is one input channel group of a pruning site's output
projection: for the MLP sites, hidden unit j of block b's MLP, read at the input of its ``fc2``
(post-activation); zeroing it there is exactly slicing fc1 row j and fc2 column j.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..options import TOKEN_SCOPES, check_choice
from . import MLP_LAYOUTS, SITE_KINDS
from .layouts import MlpLayout, refusal
from .sites import Site


@dataclass(frozen=True)
class TokenLayout:
    num_prefix: int  # CLS + distillation + register tokens, all before the patches
    has_class_token: bool
    has_dist_token: bool
    pool: str  # 'token' (head reads the CLS/DIST tokens) or 'avg' (head reads the mean patch token)


@dataclass(frozen=True)
class Readout:
    """How the model turns a d-vector into logits: ``head(norm(x))``, plus its token layout (the lens reads every site this way)."""

    norm: nn.Module
    head: nn.Linear
    pool: str  # 'token' or 'avg'
    num_prefix: int
    has_cls: bool
    pool_uses_fc_norm: bool  # avg pool: norm after pooling (fc_norm) rather than per token (model.norm)
    pool_include_prefix: bool

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x))

    def pooled(self, resid: torch.Tensor) -> torch.Tensor:
        """The model's own avg-pool readout of a residual stream (B, N, d) -> (B, C)."""
        tokens = resid if self.pool_include_prefix else resid[:, self.num_prefix:]
        if self.pool_uses_fc_norm:
            return self.head(self.norm(tokens.mean(1)))
        return self.head(self.norm(tokens).mean(1))


DATA_CONFIG_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


def data_config(model: nn.Module) -> dict:
    """The preprocessing part of timm's ``pretrained_cfg`` (what ``timm.data.resolve_data_config`` reads), JSON-able."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if k in DATA_CONFIG_KEYS}


def pretrained_config(model: nn.Module) -> dict:
    """timm's ``pretrained_cfg`` of the model, the JSON-able part (architecture, tag, preprocessing, classifier ...)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    out = {}
    for key, value in cfg.items():
        value = list(value) if isinstance(value, tuple) else value
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        if key not in ("state_dict", "file", "hf_hub_id", "url", "source") or key in DATA_CONFIG_KEYS:
            out[key] = value
    return out


def set_data_config(model: nn.Module, cfg: dict) -> None:
    """Override the preprocessing of ``model``'s timm ``pretrained_cfg`` (mean, std, input size ...)."""
    cfg = {k: tuple(v) if k == "input_size" else v for k, v in cfg.items()}
    model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **cfg}


@torch.no_grad()
def set_position_embedding(model: nn.Module, pos: torch.Tensor) -> None:
    """Copy a position embedding of another grid into ``model``, resampled bilinearly with align_corners=True
    (= ``scipy.ndimage.zoom(order=1)``, what the NeuronPath reference uses for B/32 and L/32 at 224)."""
    import inspect

    from timm.layers import resample_abs_pos_embed

    if pos.shape[1] == model.pos_embed.shape[1]:
        return  # the same grid: timm's own loader already put it in place
    align = {"align_corners": True} if "align_corners" in inspect.signature(resample_abs_pos_embed).parameters else {}
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    model.pos_embed.copy_(resample_abs_pos_embed(pos.float(), new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix,
                                                 interpolation="bilinear", antialias=False, verbose=False, **align))


def state_dict_mismatch(sd: dict[str, torch.Tensor], model: nn.Module) -> str | None:
    """What in a timm-format state dict does not fit ``model`` that timm's loader would paper over (it resamples
    patch kernels and position grids), named with the ``--model-args`` that fixes it; None when nothing does."""
    mine = model.state_dict()
    stem = "patch_embed.backbone."
    if any(k.startswith(stem) for k in sd) != any(k.startswith(stem) for k in mine):
        has = "has" if any(k.startswith(stem) for k in sd) else "has no"
        return f"the checkpoint {has} a convolutional stem (hybrid ViT); pass the matching --arch (vit_*_r_*)"
    kernel, want = sd.get("patch_embed.proj.weight"), mine.get("patch_embed.proj.weight")
    if kernel is not None and want is not None and kernel.shape != want.shape:
        if kernel.shape[2:] != want.shape[2:]:
            return (f"its patches are {kernel.shape[2]}x{kernel.shape[3]}, the architecture's {want.shape[2]}x{want.shape[3]}; "
                    f"pass --model-args patch_size={kernel.shape[2]}")
        if kernel.shape[1] != want.shape[1]:
            return f"it takes {kernel.shape[1]}-channel images, the architecture {want.shape[1]}; pass --model-args in_chans={kernel.shape[1]}"
    depth, want_depth = ({int(k.split(".")[1]) for k in d if k.startswith("blocks.")} for d in (sd, mine))
    if depth and len(depth) != len(want_depth):
        return f"it has {len(depth)} blocks, the architecture {len(want_depth)}; pass --model-args depth={len(depth)}"
    for key in ("cls_token", "reg_token", "dist_token", "fc_norm.weight"):
        if (key in sd) == (key in mine):
            continue
        has = "has" if key in sd else "has no"
        if key == "cls_token":
            advice = f"pass --model-args class_token={str(key in sd).lower()}"
        elif key == "reg_token":
            advice = f"pass --model-args reg_tokens={sd[key].shape[1] if key in sd else 0}"
        elif key == "fc_norm.weight":
            advice = ("pass --model-args global_pool=avg (an average-pooled head with fc_norm, e.g. MAE fine-tuned)" if key in sd
                      else "pass --model-args global_pool=token")
        else:
            advice = "pass a distilled --arch (deit_*_distilled_*)"
        return f"the checkpoint {has} {key.split('.')[0]}; {advice}"
    if "reg_token" in sd and sd["reg_token"].shape != mine["reg_token"].shape:
        return f"it has {sd['reg_token'].shape[1]} register tokens; pass --model-args reg_tokens={sd['reg_token'].shape[1]}"
    pos, want_pos = sd.get("pos_embed"), mine.get("pos_embed")
    if pos is not None and want_pos is not None and pos.shape != want_pos.shape:
        grid = model.patch_embed.grid_size
        prefix = want_pos.shape[1] - grid[0] * grid[1]
        side = int(max(pos.shape[1] - prefix, 0) ** 0.5)
        hint = (f"pass --model-args img_size={side * model.patch_embed.patch_size[0]}" if side * side == pos.shape[1] - prefix
                else "pass the --model-args of the checkpoint's image size")
        return f"its position grid is {pos.shape[1] - prefix} patches, the architecture's {grid[0]}x{grid[1]}; {hint}"
    return None


def npz_mismatch(sd: dict[str, torch.Tensor], model: nn.Module) -> str | None:
    """The same for a Google .npz checkpoint (its position grid may differ: that one is resampled as the reference does)."""
    head = sd.get("head/kernel")
    if head is not None and head.shape[-1] != model.num_classes:
        return f"it has a {head.shape[-1]}-class head, the architecture {model.num_classes}; pass --model-args num_classes={head.shape[-1]}"
    kernel = sd.get("embedding/kernel")  # (patch, patch, in, width)
    want = model.patch_embed.proj.weight.shape
    if kernel is not None and tuple(kernel.shape[:2]) != tuple(want[2:]):
        return f"its patches are {kernel.shape[0]}x{kernel.shape[1]}, the architecture's {want[2]}x{want[3]}; pass --model-args patch_size={kernel.shape[0]}"
    return None


class ViTAdapter:
    """Read-only view of a timm VisionTransformer for unit-level work."""

    def __init__(self, model: nn.Module) -> None:
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer):
            raise UserError(
                f"unsupported architecture {type(model).__name__}: vitprune handles timm VisionTransformer models "
                "(ViT, DeiT, MAE fine-tuned, ...)"
            )
        self.model = model
        self.blocks = list(model.blocks)
        self._layouts = [self._find_layout(b, block) for b, block in enumerate(self.blocks)]
        pool = getattr(model, "global_pool", "token")
        if getattr(model, "attn_pool", None) is not None or pool == "map":
            raise UserError(f"unsupported pooling global_pool='{pool}': it reads the tokens through an attention-pool head, which "
                            "has no per-token linear readout; vitprune needs a readout of the CLS token ('token') or of the mean "
                            "patch token ('avg')")
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
    def _find_layout(b: int, block: nn.Module) -> type[MlpLayout]:
        mlp = getattr(block, "mlp", None)
        if mlp is None:
            raise UserError(f"block {b} ({type(block).__name__}) has no separate MLP; parallel/fused blocks are not supported")
        for entry in MLP_LAYOUTS:
            layout = entry.load()
            if layout.matches(mlp):
                return layout
        raise UserError(refusal(b, mlp))

    # ---------------------------------------------------------------------------- structure
    @property
    def depth(self) -> int:
        return len(self.blocks)

    def mlp(self, b: int) -> nn.Module:
        return self.blocks[b].mlp

    def mlp_layout(self, b: int) -> type[MlpLayout]:
        return self._layouts[b]

    def sites(self, kind: str = "mlp") -> list[Site]:
        """The pruning sites of one kind (``SITE_KINDS``), in block order."""
        return SITE_KINDS.load(kind).sites(self)

    def site(self, b: int) -> Site:
        """The MLP site of block b."""
        return Site(f"blocks.{b}.mlp", "mlp", b, self.mlp(b), self._layouts[b])

    def head_site(self, b: int) -> Site:
        """The attention-heads site of block b; refuses (one line) attention modules it cannot slice by head,
        and blocks that are not timm's pre-norm ``Block`` (the halves least squares refits one after the other)."""
        from .heads import AttentionHeads, refusal as head_refusal

        block = self.blocks[b]
        attn = getattr(block, "attn", None)
        if attn is None or not AttentionHeads.matches(attn):
            raise UserError(head_refusal(b, attn if attn is not None else block))
        from timm.models.vision_transformer import Block

        if type(block) is not Block:
            raise UserError(f"block {b} ({type(block).__name__}) is not a pre-norm timm Block; --prune heads needs one "
                            "(prune its MLPs only: --prune mlp)")
        return Site(f"blocks.{b}.attn", "heads", b, attn, AttentionHeads)

    @property
    def head_counts(self) -> list[int]:
        return [int(block.attn.num_heads) for block in self.blocks]

    def attention_half(self, b: int, x: torch.Tensor) -> torch.Tensor:
        """The residual stream after block b's attention branch (timm Block's first line, in eval mode)."""
        block = self.blocks[b]
        return x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))

    def mlp_half(self, b: int, x: torch.Tensor) -> torch.Tensor:
        """The residual stream after block b's MLP branch, from the stream after its attention."""
        block = self.blocks[b]
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))

    def unit_input(self, b: int) -> nn.Linear:
        """The layer whose input is block b's MLP unit vector (hooks tap, clamp and zero units there)."""
        return self._layouts[b].out_proj(self.mlp(b))

    @property
    def hidden_widths(self) -> list[int]:
        return [self._layouts[b].width(self.mlp(b)) for b in range(self.depth)]

    def residual_scale_inverse(self, b: int, delta: torch.Tensor, branch: str = "mlp") -> torch.Tensor:
        """Map a change of block b's output back to its MLP (or ``branch="attn"``: attention) output space: undo the
        branch's layer scale (timm ``ls2`` / ``ls1``, identity in most ViTs; channels whose scale is zero get no correction)."""
        gamma = getattr(getattr(self.blocks[b], "ls2" if branch == "mlp" else "ls1", None), "gamma", None)
        if gamma is None:
            return delta
        safe = gamma.abs() > 1e-12
        return torch.where(safe, delta / torch.where(safe, gamma, torch.ones_like(gamma)), torch.zeros_like(delta))

    def mlp_value_vectors(self, b: int) -> torch.Tensor:
        """(D, H): column m is what unit m writes into the residual stream (out-projection column times layer scale)."""
        values = self.unit_input(b).weight.detach().float()
        gamma = getattr(getattr(self.blocks[b], "ls2", None), "gamma", None)
        return values * gamma.detach().float()[:, None] if gamma is not None else values

    def sublayer_outputs(self, b: int) -> dict[str, nn.Module]:
        """Modules whose outputs are what block b's attention and MLP add to the residual stream (after layer scale)."""
        block = self.blocks[b]
        if not (hasattr(block, "ls1") and hasattr(block, "ls2")):
            raise UserError(f"block {b} ({type(block).__name__}) is not a pre-norm timm Block with ls1/ls2; "
                            "post-norm and parallel blocks are not supported by the lens")
        return {"attn": block.ls1, "mlp": block.ls2}

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
    def head(self) -> nn.Module:
        return self.model.head

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the model takes: the stem's first convolution and the patch grid."""
        embed = self.model.patch_embed
        stem = next((m for m in embed.modules() if isinstance(m, nn.Conv2d)), None)
        chans = stem.in_channels if stem is not None else 3
        return (int(chans), *(int(s) for s in embed.img_size))

    @property
    def architecture(self) -> str | None:
        """The timm architecture name the model was created as (timm's ``pretrained_cfg``)."""
        return (getattr(self.model, "pretrained_cfg", None) or {}).get("architecture")

    def structure(self) -> dict:
        """The ``timm.create_model`` keyword arguments this model's structure implies (what an in-memory model is saved as)."""
        model, attn = self.model, self.blocks[0].attn
        return {
            "img_size": list(model.patch_embed.img_size), "patch_size": list(model.patch_embed.patch_size),
            "in_chans": self.input_size[0], "num_classes": self.num_classes, "global_pool": self.layout.pool,
            "embed_dim": int(model.embed_dim), "depth": self.depth, "num_heads": int(attn.num_heads),
            "qkv_bias": attn.qkv.bias is not None, "class_token": self.layout.has_class_token,
            "reg_tokens": int(getattr(model, "num_reg_tokens", 0)), "no_embed_class": bool(getattr(model, "no_embed_class", False)),
            "fc_norm": not isinstance(getattr(model, "fc_norm", nn.Identity()), nn.Identity),
            "init_values": 1.0 if hasattr(self.blocks[0].ls1, "gamma") else None,
            "mlp_ratio": self.hidden_widths[0] / float(model.embed_dim),
        }

    def readout(self) -> Readout:
        """The final norm + head, refusing models whose output is not one linear readout of the stream."""
        model = self.model
        if self.layout.has_dist_token or hasattr(model, "head_dist"):
            raise UserError("distilled models (DeiT distillation token + head_dist) average two heads; the class-embedding "
                            "lens supports single-head ViTs: use the non-distilled model")
        if not isinstance(model.head, nn.Linear):
            raise UserError(f"the head is {type(model.head).__name__}, not a linear classifier; the lens needs one")
        fc_norm = getattr(model, "fc_norm", nn.Identity())
        uses_fc_norm = self.layout.pool == "avg" and not isinstance(fc_norm, nn.Identity)
        return Readout(norm=fc_norm if uses_fc_norm else model.norm, head=model.head, pool=self.layout.pool,
                       num_prefix=self.layout.num_prefix, has_cls=self.layout.has_class_token,
                       pool_uses_fc_norm=uses_fc_norm, pool_include_prefix=bool(getattr(model, "pool_include_prefix", False)))

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


__all__ = ["ViTAdapter", "TokenLayout", "Readout", "state_dict_mismatch", "npz_mismatch", "data_config", "pretrained_config", "set_data_config", "set_position_embedding", "DATA_CONFIG_KEYS"]
