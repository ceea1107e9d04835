"""Model families: one adapter per timm model family, picked by ``adapter_for(model)``.

A ``FamilyAdapter`` is the only place that knows a family's attribute names: its blocks, the sites of each block
(MLP units through the registered MLP layouts, attention heads through the head layouts), how a block runs
(``run_block``, with the arguments the family's forward passes it, e.g. Eva's rotary embedding), what each branch adds
to the residual stream (``branch_scale``: LayerScale), the token layout and the readout (CLS token, average, attention
pool). Everything else in vitprune — hooks, discovery, criteria, least squares, slicing, the MAC count, the lens —
asks the adapter. A family subclass says what differs (``vitprune/model/families/``); the shared logic (tokens,
scopes, readout, refusals) lives here. Families are registered in ``vitprune.model.FAMILIES``
(``vitprune.register_family``); ``adapter_for`` asks each registered family, in order, whether it ``matches`` the
model (as einops' ``get_backend`` asks its backends).

A *unit* is one input channel group of a pruning site's output projection: for the MLP sites, hidden unit j of block
b's MLP, read at the input of its ``fc2`` (post-activation); zeroing it there is exactly slicing fc1 row j and fc2
column j.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import UserError
from ..options import TOKEN_SCOPES, check_choice
from . import FAMILIES, HEAD_LAYOUTS, MLP_LAYOUTS, SITE_KINDS
from .layouts import MlpLayout, refusal
from .sites import Site

POOLS = ("token", "avg", "map")


@dataclass(frozen=True)
class TokenLayout:
    num_prefix: int  # CLS + distillation + register tokens, all before the patches
    has_class_token: bool
    has_dist_token: bool
    pool: str  # 'token' (head reads the CLS/DIST tokens), 'avg' (the mean patch token) or 'map' (an attention pool)


@dataclass(frozen=True)
class Readout:
    """How the model turns its residual stream into logits: ``head(fc_norm(pool(norm(x))))``. ``project`` reads one
    token (or one direction) the same way: the token alone through the final norm, the pool and the head — for an
    attention pool, a sequence of that one token, so the latent query attends to it alone."""

    norm: nn.Module  # per token, before the pool (timm's final norm); for an avg pool with fc_norm, after it
    head: nn.Linear
    pool: str
    num_prefix: int
    has_cls: bool
    pool_uses_fc_norm: bool  # avg pool: norm after pooling (fc_norm) rather than per token (model.norm)
    pool_include_prefix: bool
    attn_pool: nn.Module | None = None  # pool 'map': the attention pool, then ``fc_norm``
    fc_norm: nn.Module | None = None

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., classes): each vector read by the model's readout on its own."""
        if self.pool != "map":
            return self.head(self.norm(x))
        flat = x.reshape(-1, 1, x.shape[-1])
        pooled = self.attn_pool(self.norm(flat))
        return self.head(self.fc_norm(pooled)).reshape(*x.shape[:-1], -1)

    def pooled(self, resid: torch.Tensor) -> torch.Tensor:
        """The model's own readout of a residual stream (B, N, d) -> (B, C)."""
        if self.pool == "token":
            return self.project(resid[:, 0])
        tokens = resid if self.pool_include_prefix else resid[:, self.num_prefix:]
        if self.pool == "map":
            return self.head(self.fc_norm(self.attn_pool(self.norm(tokens))))
        if self.pool_uses_fc_norm:
            return self.head(self.norm(tokens.mean(1)))
        return self.head(self.norm(tokens).mean(1))


DATA_CONFIG_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


def data_config(model: nn.Module) -> dict:
    """The preprocessing part of timm's ``pretrained_cfg`` (what ``timm.data.resolve_data_config`` reads), JSON-able."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if k in DATA_CONFIG_KEYS}


# pretrained_cfg keys that say where the *original* weights came from: not true of a model vitprune changed or rebuilt
WEIGHT_SOURCE_KEYS = ("url", "hf_hub_id", "hf_hub_filename", "file", "source", "state_dict", "tag", "custom_load", "label_offset")


def pretrained_config(model: nn.Module) -> dict:
    """timm's ``pretrained_cfg`` of the model, the JSON-able part that describes it (architecture, preprocessing,
    classifier, license; ``num_classes`` as the model has them), without where its original weights came from."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    out = {}
    for key, value in cfg.items():
        value = list(value) if isinstance(value, tuple) else value
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        if key not in WEIGHT_SOURCE_KEYS:
            out[key] = value
    if isinstance(getattr(model, "num_classes", None), int):
        out["num_classes"] = model.num_classes
    return out


def set_data_config(model: nn.Module, cfg: dict) -> None:
    """Override the preprocessing of ``model``'s timm ``pretrained_cfg`` (mean, std, input size ...)."""
    cfg = {k: tuple(v) if k == "input_size" else v for k, v in cfg.items()}
    model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **cfg}


class FamilyAdapter:
    """Read-only view of one timm model for unit-level work: the contract a family implements (``matches`` and the
    methods marked *family*), and what every family shares."""

    name: ClassVar[str] = ""  # the FAMILIES registry name
    default_architecture: ClassVar[str | None] = None  # what an in-memory model without a recorded architecture is saved as

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        """*family*: whether this family handles ``model`` (usually: an instance of its timm class)."""
        raise NotImplementedError

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.blocks = list(model.blocks)
        self._layouts = [self._find_layout(b) for b in range(len(self.blocks))]
        self.layout = self._token_layout()
        if self.layout.pool not in POOLS:
            raise UserError(f"unsupported pooling global_pool='{self.layout.pool}': vitprune reads the CLS token ('token'), the "
                            "mean patch token ('avg') or an attention pool ('map')")
        if getattr(model, "head", None) is None or isinstance(model.head, nn.Identity):
            raise UserError("the model has no classification head (num_classes=0); load it with its classifier")

    # ------------------------------------------------------------------------ what a family says
    def _token_layout(self) -> TokenLayout:
        """*family*: CLS, distillation and register tokens, and the pool."""
        model = self.model
        return TokenLayout(num_prefix=int(model.num_prefix_tokens), has_class_token=getattr(model, "cls_token", None) is not None,
                           has_dist_token=getattr(model, "dist_token", None) is not None,
                           pool="map" if getattr(model, "attn_pool", None) is not None else getattr(model, "global_pool", "token"))

    def mlp(self, b: int) -> nn.Module:
        """*family*: block b's MLP module."""
        return self.blocks[b].mlp

    def attention(self, b: int) -> nn.Module:
        """*family*: block b's attention module."""
        return self.blocks[b].attn

    def branch_scale(self, b: int, branch: str) -> torch.Tensor | None:
        """*family*: the LayerScale gamma of block b's ``attn`` or ``mlp`` branch (None: no layer scale)."""
        raise NotImplementedError

    def run_block(self, b: int, x: torch.Tensor) -> torch.Tensor:
        """*family*: block b on the residual stream x, with the arguments the model's own forward passes it."""
        return self.blocks[b](x)

    def attention_half(self, b: int, x: torch.Tensor) -> torch.Tensor:
        """*family*: the residual stream after block b's attention branch (eval mode)."""
        raise UserError(f"block {b} ({type(self.blocks[b]).__name__}) cannot be run branch by branch; prune its MLPs only "
                        "(--prune mlp)")

    def mlp_half(self, b: int, x: torch.Tensor) -> torch.Tensor:
        """*family*: the residual stream after block b's MLP branch, from the stream after its attention."""
        raise UserError(f"block {b} ({type(self.blocks[b]).__name__}) cannot be run branch by branch; prune its MLPs only "
                        "(--prune mlp)")

    def final_norm(self) -> nn.Module:
        """*family*: the norm every token passes after the blocks (identity when none)."""
        return self.model.norm

    def heads_refusal(self, b: int) -> str | None:
        """*family*: why block b's attention heads cannot be pruned (None: they can, through a head layout)."""
        return None

    def attention_modules(self) -> list[nn.Module]:
        """*family*: every attention module a forward runs (the blocks' and an attention pool's): the MAC count
        measures those torch-pruning's counter does not know."""
        pool = getattr(self.model, "attn_pool", None)
        return [self.attention(b) for b in range(self.depth)] + ([pool] if pool is not None else [])

    def structure(self) -> dict:
        """*family*: the ``timm.create_model`` keyword arguments an in-memory model's structure implies (used when
        timm did not record them)."""
        raise UserError(f"this {type(self.model).__name__} was not made by timm.create_model, so vitprune cannot record how to "
                        "rebuild it; create it with timm.create_model")

    # ----------------------------------------------------------------------------- structure
    def _find_layout(self, b: int) -> type[MlpLayout]:
        mlp = getattr(self.blocks[b], "mlp", None)
        if mlp is None:
            raise UserError(f"block {b} ({type(self.blocks[b]).__name__}) has no separate MLP; parallel/fused blocks are not "
                            "supported")
        for entry in MLP_LAYOUTS:
            layout = entry.load()
            if layout.matches(mlp):
                return layout
        raise UserError(refusal(b, mlp))

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def sites(self, kind: str = "mlp") -> list[Site]:
        """The pruning sites of one kind (``SITE_KINDS``), in block order."""
        return SITE_KINDS.load(kind).sites(self)

    def site(self, b: int) -> Site:
        """The MLP site of block b."""
        return Site(f"blocks.{b}.mlp", "mlp", b, self.mlp(b), self._layouts[b], self.blocks[b], "mlp")

    def head_site(self, b: int) -> Site:
        """The attention-heads site of block b; refuses (one line) attention it cannot slice by head."""
        attn = self.attention(b)
        reason = self.heads_refusal(b)
        if reason is None:
            layout = next((e.load() for e in HEAD_LAYOUTS if e.load().matches(attn)), None)
            if layout is not None:
                return Site(f"blocks.{b}.attn", "heads", b, attn, layout, self.blocks[b], "attn")
            reason = (f"it uses {type(attn).__name__} attention, which no head layout handles ({', '.join(HEAD_LAYOUTS.names())})")
        raise UserError(f"block {b}: --prune heads cannot remove heads here: {reason}; prune its MLPs only (--prune mlp)")

    @property
    def head_counts(self) -> list[int]:
        return [site.width for site in self.sites("heads")]

    def unit_input(self, b: int) -> nn.Linear:
        """The layer whose input is block b's MLP unit vector (hooks tap, clamp and zero units there)."""
        return self._layouts[b].out_proj(self.mlp(b))

    @property
    def hidden_widths(self) -> list[int]:
        return [self._layouts[b].width(self.mlp(b)) for b in range(self.depth)]

    def residual_scale_inverse(self, b: int, delta: torch.Tensor, branch: str = "mlp") -> torch.Tensor:
        """Map a change of block b's output back to its MLP (or ``branch="attn"``: attention) output space: undo the
        branch's layer scale (identity in most ViTs; channels whose scale is zero get no correction)."""
        gamma = self.branch_scale(b, branch)
        if gamma is None:
            return delta
        safe = gamma.abs() > 1e-12
        return torch.where(safe, delta / torch.where(safe, gamma, torch.ones_like(gamma)), torch.zeros_like(delta))

    def mlp_value_vectors(self, b: int) -> torch.Tensor:
        """(D, H): column m is what unit m writes into the residual stream (out-projection column times layer scale)."""
        values = self.unit_input(b).weight.detach().float()
        gamma = self.branch_scale(b, "mlp")
        return values * gamma.detach().float()[:, None] if gamma is not None else values

    def branch_modules(self, b: int) -> dict[str, nn.Module]:
        """Block b's attention and MLP modules: what each adds to the residual stream is its output times
        ``branch_scale`` (the lens reads it so)."""
        return {"attn": self.attention(b), "mlp": self.mlp(b)}

    def forward_from(self, block: int, x: torch.Tensor) -> torch.Tensor:
        """Logits from the residual stream entering ``blocks[block]``: the rest of timm's own forward (the blocks,
        the final norm, then ``forward_head``), stock modules only."""
        for b in range(block, self.depth):
            x = self.run_block(b, x)
        return self.model.forward_head(self.final_norm()(x))

    @property
    def head_tokens(self) -> slice | None:
        """Token positions the head reads when it reads tokens (CLS, and DIST for distilled models); None when it reads
        every patch (average) or every token (attention pool)."""
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
    def tokens(self) -> int:
        """Tokens the blocks see: prefix tokens plus patches."""
        return self.layout.num_prefix + int(self.model.patch_embed.num_patches)

    @property
    def architecture(self) -> str | None:
        """The timm architecture name the model was created as (timm's ``pretrained_cfg``)."""
        return (getattr(self.model, "pretrained_cfg", None) or {}).get("architecture")

    def readout(self) -> Readout:
        """The final norm, pool and head, refusing models whose output is not one readout of the stream."""
        model = self.model
        if self.layout.has_dist_token or hasattr(model, "head_dist"):
            raise UserError("distilled models (DeiT distillation token + head_dist) average two heads; the class-embedding "
                            "lens supports single-head ViTs: use the non-distilled model")
        if not isinstance(model.head, nn.Linear):
            raise UserError(f"the head is {type(model.head).__name__}, not a linear classifier; the lens needs one")
        fc_norm = getattr(model, "fc_norm", None)
        fc_norm = nn.Identity() if fc_norm is None else fc_norm
        pool = self.layout.pool
        uses_fc_norm = pool == "avg" and not isinstance(fc_norm, nn.Identity)
        return Readout(norm=fc_norm if uses_fc_norm else self.final_norm(), head=model.head, pool=pool,
                       num_prefix=self.layout.num_prefix, has_cls=self.layout.has_class_token, pool_uses_fc_norm=uses_fc_norm,
                       pool_include_prefix=self.pool_reads_prefix,
                       attn_pool=getattr(model, "attn_pool", None) if pool == "map" else None,
                       fc_norm=fc_norm if pool == "map" else None)

    @property
    def pool_reads_prefix(self) -> bool:
        """*family*: whether an average or attention pool reads the prefix tokens too (timm's ``pool_include_prefix``;
        Eva's attention pool reads every token)."""
        return bool(getattr(self.model, "pool_include_prefix", False))

    def restrict_classes(self, classes: tuple[int, ...]) -> nn.Module:
        """A copy of the model whose classifier keeps only the rows of ``classes`` (in that order): it outputs their
        logits, k of them (``--specialize``); timm's ``num_classes`` and the recorded model arguments say k."""
        import copy

        from .layouts import sliced_rows

        model = copy.deepcopy(self.model)
        idx = torch.as_tensor(classes, dtype=torch.long)
        for name in ("head", "head_dist"):
            head = getattr(model, name, None)
            if isinstance(head, nn.Linear):
                setattr(model, name, sliced_rows(head, idx.to(head.weight.device)))
        model.num_classes = len(classes)
        if getattr(model, "pretrained_cfg", None):
            model.pretrained_cfg = {**model.pretrained_cfg, "num_classes": len(classes)}
        source = getattr(model, "vitprune_source", None)
        if source is not None:
            model.vitprune_source = {**source, "model_args": {**(source.get("model_args") or {}), "num_classes": len(classes)},
                                     "specialized_from": {"spec": source.get("spec"), "classes": list(classes)}}
        if getattr(model, "_model_args", None):
            model._model_args = {**model._model_args, "num_classes": len(classes)}
        if hasattr(model, "vitprune_fingerprint"):
            del model.vitprune_fingerprint
        return model

    # ------------------------------------------------------------------------------ tokens
    def resolve_scope(self, scope: str) -> str:
        """'auto' -> the tokens the head reads: 'cls' for CLS-pooled models, the tokens an average or attention pool
        reads ('patches', or 'all' when it reads the prefix tokens too)."""
        check_choice("--token-scope", scope, TOKEN_SCOPES)
        if scope == "auto":
            if self.layout.pool == "token":
                return "cls"
            return "all" if self.layout.pool == "map" and self.pool_reads_prefix else "patches"
        if scope == "cls" and (self.layout.pool != "token" or not self.layout.has_class_token):
            raise UserError(
                f"--token-scope cls needs a model whose head reads the CLS token; this one reads "
                f"{'every token through an attention pool' if self.layout.pool == 'map' else 'the mean patch token'}: "
                "use --token-scope all (or patches)")
        return scope

    def token_slice(self, scope: str) -> slice:
        """Token positions of a resolved scope. 'cls' covers CLS (+ DIST, which the distilled head also reads)."""
        scope = self.resolve_scope(scope)
        if scope == "cls":
            return self.head_tokens
        if scope == "patches":
            return slice(self.layout.num_prefix, None)
        return slice(None)


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """The adapter of the first registered family (``vitprune.model.FAMILIES``) that matches ``model``; a model no
    family matches is one line naming the families and how to add one."""
    for entry in FAMILIES:
        family = entry.load()
        if family.matches(model):
            return family(model)
    raise UserError(f"unsupported architecture {type(model).__name__}: vitprune handles the timm families "
                    f"{', '.join(f'{e.name} ({e.help})' for e in FAMILIES)}; add one with vitprune.register_family")


__all__ = ["FamilyAdapter", "adapter_for", "TokenLayout", "Readout", "data_config", "pretrained_config", "set_data_config",
           "DATA_CONFIG_KEYS", "POOLS"]
