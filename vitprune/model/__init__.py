"""The model layer: loading timm ViTs, the adapter that knows timm's names, hooks, MLP layouts and pruning sites.

Two registries live here (torch-free, so the command line lists them without importing torch):

- ``MLP_LAYOUTS``: how a timm MLP class maps to prunable units (``vitprune.model.layouts.MlpLayout``).
  The adapter picks, for every block, the first registered layout whose ``matches(mlp)`` is true.
- ``SITE_KINDS``: named kinds of pruning sites (``vitprune.model.sites.SiteKind``): ``mlp`` = the hidden
  units of every block's MLP, site ``blocks.N.mlp``; ``heads`` = the heads of every block's attention,
  site ``blocks.N.attn``.
"""
from __future__ import annotations

from ..registry import Registry

MLP_LAYOUTS = Registry("MLP layout", "MLP layout")
MLP_LAYOUTS.add("mlp", "vitprune.model.layouts:PlainMlp",
                help="timm Mlp (fc1 -> act -> fc2): unit j = fc1 row j = fc2 column j")
MLP_LAYOUTS.add("mlp-norm", "vitprune.model.layouts:NormedMlp",
                help="timm Mlp with a norm over its hidden vector (scale_mlp_norm): the norm then runs over the kept units")
MLP_LAYOUTS.add("glu", "vitprune.model.layouts:PackedGluMlp",
                help="timm GluMlp / SwiGLUPacked: value and gate rows j and j+H of fc1 together, fc2 column j")
MLP_LAYOUTS.add("swiglu", "vitprune.model.layouts:SplitGluMlp",
                help="timm SwiGLU: rows j of fc1_g and fc1_x together, fc2 column j")

SITE_KINDS = Registry("pruning site", "--prune")
SITE_KINDS.add("mlp", "vitprune.model.sites:MlpSites", help="the hidden units of every block's MLP (sites blocks.N.mlp)")
SITE_KINDS.add("heads", "vitprune.model.sites:HeadSites", help="the heads of every block's attention (sites blocks.N.attn)")


def register_mlp_layout(name: str, *, help: str = "", replace: bool = False):
    """Register an ``MlpLayout`` subclass for a timm MLP class: ``@register_mlp_layout("glu")`` above it."""
    return MLP_LAYOUTS.register(name, help=help, replace=replace)


__all__ = ["MLP_LAYOUTS", "SITE_KINDS", "register_mlp_layout"]
