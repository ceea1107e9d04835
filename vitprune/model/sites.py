"""Pruning sites: the named places of a model whose units can be scored, clamped, zeroed and sliced.

A site is one linear layer (``out_proj``) whose input vector is made of prunable units: the MLP
hidden units of block N (``blocks.N.mlp``, read at the input of its output projection; kind ``mlp``)
or the heads of block N's attention (``blocks.N.attn``, a head being ``head_dim`` input channels of
its ``proj``; kind ``heads``). Everything
downstream — hooks, discovery clamps, criteria, masks, slicing, least squares, the MAC count — speaks
of sites and unit indices, never of timm attribute names. A ``SiteKind`` (registry
``vitprune.model.SITE_KINDS``) lists the sites of one kind in a model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layouts import SiteLayout



@dataclass(frozen=True)
class Site:
    """Units of one module of one block: ``layout`` says how they map to weights."""

    name: str  # e.g. "blocks.3.mlp"
    kind: str  # the SITE_KINDS name, e.g. "mlp"
    block: int
    module: nn.Module
    layout: type[SiteLayout]  # an MlpLayout, or heads.AttentionHeads

    @property
    def width(self) -> int:
        return self.layout.width(self.module)

    @property
    def out_proj(self) -> nn.Linear:
        """The linear layer whose input is this site's unit vector (fc2 for an MLP)."""
        return self.layout.out_proj(self.module)

    @property
    def subset(self) -> bool:
        """Whether the kept units' values equal the dense model's (no norm over the unit vector)."""
        return self.layout.subset(self.module)

    def channels(self, units) -> torch.Tensor:
        """The ``out_proj`` input channels of ``units`` (one per MLP unit, ``head_dim`` per head)."""
        return self.layout.channels(self.module, units)

    def unit_sq_norms(self) -> torch.Tensor:
        return self.layout.unit_sq_norms(self.module)

    def slice(self, kept: torch.Tensor, *, out_bias: bool = False) -> None:
        self.layout.slice(self.module, kept, out_bias=out_bias)

    def resize(self, width: int) -> None:
        self.layout.resize(self.module, width)


class SiteKind:
    """The contract of a site kind: the sites of this kind in a model, in block order."""

    @staticmethod
    def sites(adapter) -> list[Site]:
        raise NotImplementedError


class MlpSites(SiteKind):
    """``blocks.N.mlp`` for every block N: the MLP hidden units, through the block's MLP layout."""

    @staticmethod
    def sites(adapter) -> list[Site]:
        return [adapter.site(b) for b in range(adapter.depth)]


class HeadSites(SiteKind):
    """``blocks.N.attn`` for every block N: the heads of the block's attention."""

    @staticmethod
    def sites(adapter) -> list[Site]:
        return [adapter.head_site(b) for b in range(adapter.depth)]


__all__ = ["Site", "SiteKind", "MlpSites", "HeadSites"]
