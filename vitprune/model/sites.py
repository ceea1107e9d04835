"""Pruning sites: the named places of a model whose units can be scored, clamped, zeroed and sliced, and their kinds.

A site is one linear layer (``out_proj``) whose input vector is made of prunable units: the MLP hidden units of block
N (``blocks.N.mlp``, read at the input of its output projection; kind ``mlp``) or the heads of block N's attention
(``blocks.N.attn``, a head being ``head_dim`` input channels of its ``proj``; kind ``heads``). Everything downstream —
hooks, discovery clamps, criteria, masks, slicing, least squares, the MAC count — speaks of sites and unit indices,
never of timm attribute names.

A ``SiteKind`` (registry ``vitprune.model.SITE_KINDS``) is the unit of extension: it lists a model's sites of its kind
(through the family adapter), says which branch of a block they belong to (least squares refits a block's branches
in forward order), how few units a site may keep, how a checkpoint records their counts, and how a model is given
those counts again (``resize``). The MAC cost of a unit, the mask, slicing, least squares and the budget's
allocation all loop over the kinds a point prunes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import UserError
from .layouts import SiteLayout


@dataclass(frozen=True)
class Site:
    """Units of one module of one block: ``layout`` says how they map to weights; ``parent.attr`` is the module (a
    layout whose slice is another module replaces it there)."""

    name: str  # e.g. "blocks.3.mlp"
    kind: str  # the SITE_KINDS name, e.g. "mlp"
    block: int
    module: nn.Module
    layout: type[SiteLayout]  # an MlpLayout, or a head layout
    parent: nn.Module | None = None
    attr: str = ""

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

    def unit_key(self) -> tuple:
        """What one unit's MAC cost depends on."""
        return self.layout.unit_key(self.module)

    def _place(self, new: nn.Module | None) -> None:
        if new is not None:
            if self.parent is None:
                raise ValueError(f"{self.name}: its layout replaces the module, but the site does not know its parent")
            setattr(self.parent, self.attr, new)

    def slice(self, kept: torch.Tensor, *, out_bias: bool = False) -> None:
        """Keep only the units ``kept`` (sorted indices), in place in the model."""
        self._place(self.layout.slice(self.module, kept, out_bias=out_bias))

    def resize(self, width: int) -> None:
        """Give the site ``width`` units with fresh weights (a state dict is loaded next)."""
        self._place(self.layout.resize(self.module, width))


class SiteKind:
    """The contract of a site kind (registry ``SITE_KINDS``): its sites in a model, in block order, and what the
    rest of the tool needs to know of them."""

    name: ClassVar[str] = ""
    branch: ClassVar[str] = "mlp"  # the block branch the sites sit in: 'attn' (refit first) or 'mlp'
    checkpoint_key: ClassVar[str] = ""  # vitprune.json: the kept unit count of every site
    kept_key: ClassVar[str] = ""  # vitprune.json: the kept unit indices (of the dense model) of every site
    min_units: ClassVar[int] = 1  # units a site keeps at least (the MLP kind's floor is --min-keep)

    @staticmethod
    def sites(adapter) -> list[Site]:
        raise NotImplementedError

    @classmethod
    def resize(cls, adapter, counts: list[int]) -> None:
        """Give every site of the model ``counts[b]`` units (fresh weights; a state dict is loaded next)."""
        sites = cls.sites(adapter)
        if len(counts) != len(sites):
            raise UserError(f"the checkpoint lists {len(counts)} {cls.checkpoint_key} for a {len(sites)}-block model; re-create it")
        for site, count in zip(sites, counts):
            if int(count) != site.width:
                site.resize(int(count))


class MlpSites(SiteKind):
    """``blocks.N.mlp`` for every block N: the MLP hidden units, through the block's MLP layout."""

    name, branch, checkpoint_key, kept_key = "mlp", "mlp", "mlp_hidden", "kept"

    @staticmethod
    def sites(adapter) -> list[Site]:
        return [adapter.site(b) for b in range(adapter.depth)]


class HeadSites(SiteKind):
    """``blocks.N.attn`` for every block N: the heads of the block's attention."""

    name, branch, checkpoint_key, kept_key = "heads", "attn", "attn_heads", "kept_heads"

    @staticmethod
    def sites(adapter) -> list[Site]:
        return [adapter.head_site(b) for b in range(adapter.depth)]


__all__ = ["Site", "SiteKind", "MlpSites", "HeadSites"]
