"""The model layer: loading timm models, one adapter per model family, hooks, site layouts and pruning sites.

Registries live here (torch-free, so the command line lists them without importing torch):

- ``FAMILIES``: timm model families (``vitprune.model.adapter.FamilyAdapter`` subclasses). ``adapter_for(model)``
  takes the first whose ``matches(model)`` is true.
- ``MLP_LAYOUTS``: how a timm MLP class maps to prunable units (``vitprune.model.layouts.MlpLayout``). An adapter
  picks, for every block, the first registered layout whose ``matches(mlp)`` is true.
- ``HEAD_LAYOUTS``: how a timm attention class maps to prunable heads (``vitprune.model.heads``).
- ``SITE_KINDS``: named kinds of pruning sites (``vitprune.model.sites.SiteKind``): ``mlp`` = the hidden units of
  every block's MLP, site ``blocks.N.mlp``; ``heads`` = the heads of every block's attention, site ``blocks.N.attn``.
"""
from __future__ import annotations

from ..registry import Registry

FAMILIES = Registry("model family", "--model")
FAMILIES.add("vit", "vitprune.model.families.vit:ViTAdapter",
             help="timm VisionTransformer: ViT, DeiT, MAE, registers, hybrid stems, SigLIP's attention-pool readout")
FAMILIES.add("eva", "vitprune.model.families.eva:EvaAdapter",
             help="timm Eva: EVA-02, DINOv3, Perception Encoder, the rotary-embedding ViTs")
FAMILIES.add("beit", "vitprune.model.families.beit:BeitAdapter", help="timm Beit: BEiT, BEiT v2 (relative position bias)")
FAMILIES.add("relpos", "vitprune.model.families.relpos:RelPosAdapter",
             help="timm VisionTransformerRelPos: the vit_relpos / vit_srelpos models (relative position bias)")

MLP_LAYOUTS = Registry("MLP layout", "MLP layout")
MLP_LAYOUTS.add("mlp", "vitprune.model.layouts:PlainMlp",
                help="timm Mlp (fc1 -> act -> fc2): unit j = fc1 row j = fc2 column j")
MLP_LAYOUTS.add("mlp-norm", "vitprune.model.layouts:NormedMlp",
                help="timm Mlp with a norm over its hidden vector (scale_mlp_norm): the norm then runs over the kept units")
MLP_LAYOUTS.add("glu", "vitprune.model.layouts:PackedGluMlp",
                help="timm GluMlp / SwiGLUPacked: value and gate rows j and j+H of fc1 together, fc2 column j")
MLP_LAYOUTS.add("swiglu", "vitprune.model.layouts:SplitGluMlp",
                help="timm SwiGLU: rows j of fc1_g and fc1_x together, fc2 column j")

HEAD_LAYOUTS = Registry("head layout", "head layout")
HEAD_LAYOUTS.add("attention", "vitprune.model.heads:AttentionHeads",
                 help="timm Attention (fused qkv; qk_norm, scale_norm, gate)")
HEAD_LAYOUTS.add("rope-attention", "vitprune.model.heads:RopeAttentionHeads",
                 help="timm AttentionRope (fused or separate q/k/v, rotary embeddings)")
HEAD_LAYOUTS.add("eva-attention", "vitprune.model.heads:EvaAttentionHeads",
                 help="timm EvaAttention (q_bias/v_bias, rotary embeddings); sliced into the equivalent AttentionRope")
HEAD_LAYOUTS.add("beit-attention", "vitprune.model.heads:BeitAttentionHeads",
                 help="timm BEiT Attention (relative position bias, q_bias/v_bias); sliced into timm Attention with the bias")

SITE_KINDS = Registry("pruning site", "--prune")
SITE_KINDS.add("mlp", "vitprune.model.sites:MlpSites", help="the hidden units of every block's MLP (sites blocks.N.mlp)")
SITE_KINDS.add("heads", "vitprune.model.sites:HeadSites", help="the heads of every block's attention (sites blocks.N.attn)")


def register_family(name: str, *, help: str = "", replace: bool = False):
    """Register a ``FamilyAdapter`` subclass for a timm model family: ``@register_family("mine")`` above it. Families
    registered later are asked after the built-in ones."""
    return FAMILIES.register(name, help=help, replace=replace)


def register_mlp_layout(name: str, *, help: str = "", replace: bool = False):
    """Register an ``MlpLayout`` subclass for a timm MLP class: ``@register_mlp_layout("glu")`` above it."""
    return MLP_LAYOUTS.register(name, help=help, replace=replace)


def register_head_layout(name: str, *, help: str = "", replace: bool = False):
    """Register a ``SiteLayout`` of attention heads for a timm attention class."""
    return HEAD_LAYOUTS.register(name, help=help, replace=replace)


__all__ = ["FAMILIES", "MLP_LAYOUTS", "HEAD_LAYOUTS", "SITE_KINDS", "register_family", "register_mlp_layout",
           "register_head_layout"]
