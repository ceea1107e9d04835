"""Attention-head scores (``--prune heads``): statistics of every head's output over the calibration images, and the
head criteria (registry ``vitprune.criteria.HEAD_CRITERIA``) that turn them into one score per head per block.

A head's output is its ``head_dim`` channels of the input of the attention's ``proj`` (the site's unit vector),
o_h (tokens x head_dim). With F the softmax probability of the true label (the path objective) and m steps:

- ``ig``: integrated gradients of F along every head's output of every block scaled together by alpha_k = k/m
  (k = 0..m-1, the left Riemann sum of the path discovery), each clamped to alpha_k times its clean value:
  IG_h = sum_k <dF/do_h(alpha_k), o_h> / m; the score is the mean over images of |IG_h|. It is the dense MLP
  importance's own term (``jas --jas-aggregation ig``) for heads, on all blocks at once: m passes per image.
- ``taylor``: mean over images of |<dCE/do_h, o_h>| (first order, one pass; CE = cross-entropy of the true label).
- ``magnitude``: mean over tokens of ||o_h||_2; ``weight``: the L2 norm of the head's q, k, v rows and proj columns
  (torch-pruning's group norm); ``random``: uniform, seeded.
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model.adapter import ViTAdapter
from ..model.hooks import frozen_parameters, site_input_hooks
from ..model.sites import Site
from ..precision import at_least_fp32, precision_context
from ..progress import progress_bar
from . import HEAD_CRITERIA

HEAD_STEPS = 20  # integrated-gradient steps of 'ig': the discovery's reference m


@dataclass
class HeadStats:
    """Per block, one value per head (fp64, CPU)."""

    images: int
    magnitude: list[torch.Tensor]
    taylor: list[torch.Tensor]
    ig: list[torch.Tensor] | None  # None when not collected (steps = 0)


def _per_head(x: torch.Tensor, site: Site) -> torch.Tensor:
    """(B, N, heads*d) -> (B, N, heads, d)."""
    return x.reshape(*x.shape[:2], site.width, -1)


def collect_head_stats(model: nn.Module, batches: Iterable[tuple[list[str], torch.Tensor, torch.Tensor]], *, steps: int = HEAD_STEPS,
                       total: int | None = None, quiet: bool = False, dist=None, precision: str = "fp32") -> HeadStats:
    """Head statistics over the calibration batches: 1 + ``steps`` forward+backward passes per image."""
    adapter = ViTAdapter(model)
    sites = adapter.sites("heads")
    device = next(model.parameters()).device
    mag = [torch.zeros(s.width, dtype=torch.float64, device=device) for s in sites]
    tay, ig = [torch.zeros_like(t) for t in mag], [torch.zeros_like(t) for t in mag]
    n_img = 0
    with frozen_parameters(model), progress_bar(total=total, desc="head statistics", unit="img", disable=quiet) as bar:
        for _, images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            clean = _taylor_pass(model, sites, images, labels, precision, mag, tay)
            if steps:
                for b, per_image in enumerate(head_integrated_gradients(model, sites, images, labels, clean, steps, precision)):
                    ig[b] += per_image.abs().sum(0)
            n_img += len(images)
            bar.update(len(images))
    if dist is not None and dist.world > 1:
        parts = dist.gather({"mag": [t.cpu() for t in mag], "tay": [t.cpu() for t in tay], "ig": [t.cpu() for t in ig], "n": n_img})
        mag, tay, ig = ([sum(p[key][b] for p in parts) for b in range(len(sites))] for key in ("mag", "tay", "ig"))
        n_img = sum(p["n"] for p in parts)
    n = max(n_img, 1)
    return HeadStats(n_img, [(t / n).cpu() for t in mag], [(t / n).cpu() for t in tay], [(t / n).cpu() for t in ig] if steps else None)


def _taylor_pass(model, sites, images, labels, precision, mag, tay) -> list[torch.Tensor]:
    """One forward+backward: output norms and first-order terms; returns the clean head outputs per block."""
    taps: dict[int, torch.Tensor] = {}

    def tap(b: int, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        taps[b] = x
        return x

    with ExitStack() as stack:
        stack.enter_context(torch.enable_grad())
        stack.enter_context(site_input_hooks(sites, tap))
        stack.enter_context(precision_context(precision, images.device))
        logits = model(images)
        grads = torch.autograd.grad(F.cross_entropy(logits.float(), labels, reduction="sum"), [taps[b] for b in range(len(sites))])
    clean = []
    for b, (site, g) in enumerate(zip(sites, grads)):
        o = _per_head(at_least_fp32(taps[b].detach()).double(), site)
        mag[b] += o.norm(dim=-1).mean(1).sum(0)
        tay[b] += (o * _per_head(g.double(), site)).sum((1, 3)).abs().sum(0)
        clean.append(taps[b].detach())
    return clean


def head_integrated_gradients(model: nn.Module, sites: list[Site], images: torch.Tensor, labels: torch.Tensor,
                              clean: list[torch.Tensor], steps: int, precision: str = "fp32") -> list[torch.Tensor]:
    """Per block, the signed IG_h of every image (B, heads): ``steps`` passes, every block's head outputs clamped to
    alpha_k times their clean value ``clean[b]`` (B, N, heads*d), F = the softmax probability of ``labels``."""
    acc = [torch.zeros(len(images), s.width, dtype=torch.float64, device=images.device) for s in sites]
    for k in range(steps):
        alpha = k / steps
        leaves = [(c * alpha).requires_grad_(True) for c in clean]
        with ExitStack() as stack:
            stack.enter_context(torch.enable_grad())
            stack.enter_context(site_input_hooks(sites, lambda b, x: leaves[b].to(x.dtype)))
            stack.enter_context(precision_context(precision, images.device))
            probs = at_least_fp32(model(images)).softmax(-1)
            grads = torch.autograd.grad(probs.gather(1, labels[:, None]).sum(), leaves)
        for b, (site, g) in enumerate(zip(sites, grads)):
            acc[b] += (_per_head(g.double(), site) * _per_head(clean[b].double(), site)).sum((1, 3))
    return [a / steps for a in acc]


# ------------------------------------------------------------------------------- criteria
def ig(stats: HeadStats, sites: list[Site], seed: int) -> list[torch.Tensor]:
    if stats.ig is None:
        raise ValueError("head criterion ig needs the integrated-gradient passes (steps > 0)")
    return [t.clone() for t in stats.ig]


def taylor(stats: HeadStats, sites: list[Site], seed: int) -> list[torch.Tensor]:
    return [t.clone() for t in stats.taylor]


def magnitude(stats: HeadStats, sites: list[Site], seed: int) -> list[torch.Tensor]:
    return [t.clone() for t in stats.magnitude]


def weight(stats: HeadStats, sites: list[Site], seed: int) -> list[torch.Tensor]:
    return [site.unit_sq_norms().sqrt() for site in sites]


def random(stats: HeadStats, sites: list[Site], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(site.width, generator=generator, dtype=torch.float64) for site in sites]


def head_scores(name: str, stats: HeadStats | None, sites: list[Site], seed: int = 0) -> list[torch.Tensor]:
    """The scores head criterion ``name`` gives every head (one fp64 tensor per block)."""
    fn = HEAD_CRITERIA.load(name)
    scores = fn(stats, sites, seed)
    out = []
    for site, s in zip(sites, scores):
        t = torch.as_tensor(s).detach().double().cpu().reshape(-1)
        if t.numel() != site.width or not torch.isfinite(t).all():
            raise ValueError(f"head criterion '{name}' gave {t.numel()} scores (finite: {bool(torch.isfinite(t).all())}) "
                             f"for {site.name}, which has {site.width} heads")
        out.append(t)
    return out


__all__ = ["HeadStats", "collect_head_stats", "head_integrated_gradients", "head_scores", "HEAD_STEPS"]
