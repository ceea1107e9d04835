"""Attention-head scores (``--prune heads``): statistics of every head's output over the calibration images, and the
head criteria (registry ``vitprune.criteria.HEAD_CRITERIA``) that turn them into one score per head per block.

A head's output is its ``head_dim`` channels of the input of the attention's ``proj`` (the site's unit vector),
o_h (tokens x head_dim). With F the softmax probability of the true label (the path objective) and m steps:

- ``ig``: integrated gradients of F along every head's output of every block scaled together by alpha_k = k/m
  (k = 0..m-1, the left Riemann sum of the path discovery), each clamped to alpha_k times its clean value:
  IG_h = sum_k <dF/do_h(alpha_k), o_h> / m; the score is the mean over images of |IG_h|. It is the dense MLP
  importance's own term (``jas --jas-aggregation ig``) for heads, on all blocks at once: m passes per image.
- ``path``: the same integrated gradients conditioned on the image's discovery path (the path units' integrated-
  gradient term, as the dense MLP importance takes it): in every pass the MLP hidden units at discovery's token scope
  are clamped to their clean values except the K path units of every block, which are scaled by alpha_k with the
  heads; the heads' and the path's terms add up to F(clean) - F(no heads, no path units). m passes per image.
- ``taylor``: mean over images of |<dCE/do_h, o_h>| (first order, one pass; CE = cross-entropy of the true label).
- ``magnitude``: mean over tokens of ||o_h||_2; ``weight``: the L2 norm of the head's q, k, v rows and proj columns
  (torch-pruning's group norm); ``random``: uniform, seeded.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model.adapter import FamilyAdapter, adapter_for
from ..discovery.engine import gather_units, scale_units
from ..discovery.records import PathRun
from ..model.hooks import ffn_hooks, frozen_parameters, override_ffn, site_input_hooks
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
    ig: list[torch.Tensor] | None  # None when not collected
    path_ig: list[torch.Tensor] | None = None  # conditioned on the discovery paths; None when not collected


@dataclass(frozen=True)
class PathCondition:
    """What the ``path`` head criterion conditions on: a discovery run's K path units of every block per image id,
    the class each path was found for, and the token positions discovery clamped."""

    units: Mapping[str, Sequence[Sequence[int]]]
    targets: Mapping[str, int]
    tokens: slice

    @classmethod
    def of(cls, run: PathRun, adapter: FamilyAdapter) -> "PathCondition":
        return cls({r.id: r.path for r in run.records}, {r.id: r.target for r in run.records}, adapter.token_slice(run.token_scope))

    def missing(self, ids: Iterable[str]) -> list[str]:
        """The images among ``ids`` that have no path here (sorted)."""
        return sorted(set(ids) - self.units.keys())

    def rows(self, ids: Sequence[str], device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per block the (B, K) path units of these images, and their (B,) targets."""
        missing = self.missing(ids)
        if missing:
            raise ValueError(f"no discovery path for calibration images {missing[:3]}: the head passes need the run of these images")
        depth = len(self.units[ids[0]])
        units = [torch.tensor([self.units[i][b] for i in ids], dtype=torch.long, device=device) for b in range(depth)]
        return units, torch.tensor([self.targets[i] for i in ids], dtype=torch.long, device=device)


@dataclass(frozen=True)
class PathClamp:
    """The MLP hidden units held during the head passes of one batch: clean ``acts[b]`` (B, T, H) at ``tokens``, with
    the path units ``units[b]`` (B, K) scaled by alpha together with the heads."""

    acts: list[torch.Tensor]
    units: list[torch.Tensor]
    tokens: slice

    def at(self, alpha: float) -> dict[int, torch.Tensor]:
        scale = torch.full((len(self.acts[0]),), alpha, dtype=torch.float64, device=self.acts[0].device)
        return {b: scale_units(a, u, scale).requires_grad_(True) for b, (a, u) in enumerate(zip(self.acts, self.units))}


@dataclass
class HeadIG:
    """Signed integrated gradients per image: per block (B, heads), and (conditioned passes) the path units' (B,)."""

    heads: list[torch.Tensor]
    path: torch.Tensor | None = None


def _per_head(x: torch.Tensor, site: Site) -> torch.Tensor:
    """(B, N, heads*d) -> (B, N, heads, d)."""
    return x.reshape(*x.shape[:2], site.width, -1)


def collect_head_stats(model: nn.Module, batches: Iterable[tuple[list[str], torch.Tensor, torch.Tensor]], *, ig: bool = False,
                       condition: PathCondition | None = None, steps: int = HEAD_STEPS, total: int | None = None,
                       quiet: bool = False, dist=None, precision: str = "fp32") -> HeadStats:
    """Head statistics over the calibration batches: one forward+backward per image, plus ``steps`` passes for the
    plain integrated gradients (``ig``) and ``steps`` more for those conditioned on the paths (``condition``)."""
    adapter = adapter_for(model)
    sites = adapter.sites("heads")
    device = next(model.parameters()).device
    zeros = [torch.zeros(s.width, dtype=torch.float64, device=device) for s in sites]
    sums = {key: [t.clone() for t in zeros] for key in ("mag", "tay", "ig", "path_ig")}
    n_img = 0
    with frozen_parameters(model), progress_bar(total=total, desc="head statistics", unit="img", disable=quiet) as bar:
        for ids, images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            clean, acts = _taylor_pass(model, sites, images, labels, precision, sums["mag"], sums["tay"],
                                       condition.tokens if condition is not None else None)
            if ig:
                for b, per_image in enumerate(head_integrated_gradients(model, sites, images, labels, clean, steps, precision).heads):
                    sums["ig"][b] += per_image.abs().sum(0)
            if condition is not None:
                units, targets = condition.rows(list(ids), device)
                held = PathClamp(acts, units, condition.tokens)
                result = head_integrated_gradients(model, sites, images, targets, clean, steps, precision, held)
                for b, per_image in enumerate(result.heads):
                    sums["path_ig"][b] += per_image.abs().sum(0)
            n_img += len(images)
            bar.update(len(images))
    if dist is not None and dist.world > 1:
        parts = dist.gather({"sums": {k: [t.cpu() for t in v] for k, v in sums.items()}, "n": n_img})
        sums = {k: [sum(p["sums"][k][b] for p in parts) for b in range(len(sites))] for k in sums}
        n_img = sum(p["n"] for p in parts)
    n = max(n_img, 1)
    mean = {k: [(t / n).cpu() for t in v] for k, v in sums.items()}
    return HeadStats(n_img, mean["mag"], mean["tay"], mean["ig"] if ig else None, mean["path_ig"] if condition is not None else None)


def _taylor_pass(model, sites, images, labels, precision, mag, tay, tokens: slice | None
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One forward+backward: output norms and first-order terms; returns the clean head outputs per block and (when
    ``tokens``) the clean MLP hidden units at those tokens."""
    taps: dict[int, torch.Tensor] = {}
    hidden: dict[int, torch.Tensor] = {}

    def tap(b: int, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        taps[b] = x
        return x

    def record(b: int, x: torch.Tensor) -> None:
        hidden[b] = at_least_fp32(x[:, tokens].detach())

    with ExitStack() as stack:
        stack.enter_context(torch.enable_grad())
        stack.enter_context(site_input_hooks(sites, tap))
        if tokens is not None:
            stack.enter_context(ffn_hooks(adapter_for(model), record))
        stack.enter_context(precision_context(precision, images.device))
        logits = model(images)
        grads = torch.autograd.grad(F.cross_entropy(logits.float(), labels, reduction="sum"), [taps[b] for b in range(len(sites))])
    clean = []
    for b, (site, g) in enumerate(zip(sites, grads)):
        o = _per_head(at_least_fp32(taps[b].detach()).double(), site)
        mag[b] += o.norm(dim=-1).mean(1).sum(0)
        tay[b] += (o * _per_head(g.double(), site)).sum((1, 3)).abs().sum(0)
        clean.append(taps[b].detach())
    return clean, [hidden[b] for b in range(len(hidden))]


def head_integrated_gradients(model: nn.Module, sites: list[Site], images: torch.Tensor, labels: torch.Tensor,
                              clean: list[torch.Tensor], steps: int, precision: str = "fp32", held: PathClamp | None = None
                              ) -> HeadIG:
    """The signed IG_h of every image: ``steps`` passes, every block's head outputs clamped to alpha_k times their
    clean value ``clean[b]`` (B, N, heads*d), F = the softmax probability of ``labels``. With ``held``, the MLP hidden
    units at its tokens are clamped too (clean, the path units scaled by alpha_k) and the path units' IG comes back."""
    adapter = adapter_for(model) if held is not None else None
    acc = [torch.zeros(len(images), s.width, dtype=torch.float64, device=images.device) for s in sites]
    path = torch.zeros(len(images), dtype=torch.float64, device=images.device) if held is not None else None
    for k in range(steps):
        alpha = k / steps
        leaves = [(c * alpha).requires_grad_(True) for c in clean]
        clamps = held.at(alpha) if held is not None else {}
        with ExitStack() as stack:
            stack.enter_context(torch.enable_grad())
            stack.enter_context(site_input_hooks(sites, lambda b, x: leaves[b].to(x.dtype)))
            if held is not None:
                stack.enter_context(override_ffn(adapter, clamps, held.tokens))
            stack.enter_context(precision_context(precision, images.device))
            probs = at_least_fp32(model(images)).softmax(-1)
            grads = torch.autograd.grad(probs.gather(1, labels[:, None]).sum(), [*leaves, *clamps.values()])
        for b, (site, g) in enumerate(zip(sites, grads)):
            acc[b] += (_per_head(g.double(), site) * _per_head(clean[b].double(), site)).sum((1, 3))
        if held is not None:
            for b, g in enumerate(grads[len(sites):]):
                path += gather_units(g.double() * held.acts[b].double(), held.units[b]).sum(1)
    return HeadIG([a / steps for a in acc], path / steps if path is not None else None)


# ------------------------------------------------------------------------------- criteria
# A head criterion is a criterion (``CriterionInputs`` in, one score tensor per site out) over the head sites, whose
# ``inputs.stats`` is the ``HeadStats`` it declared it needs; ``weight`` and ``random`` are the MLP criteria
# ``magnitude`` and ``random`` themselves (registered under the head names in ``vitprune.criteria``).
def _stats(inputs, what: str) -> HeadStats:
    stats = inputs.stats
    if not isinstance(stats, HeadStats):
        raise ValueError(f"this head criterion needs the head statistics ({what}); declare them in needs=")
    return stats


def ig(inputs) -> list[torch.Tensor]:
    stats = _stats(inputs, "head_ig")
    if stats.ig is None:
        raise ValueError("head criterion ig needs the integrated-gradient passes (needs head_ig)")
    return [t.clone() for t in stats.ig]


def path(inputs) -> list[torch.Tensor]:
    stats = _stats(inputs, "head_path_ig")
    if stats.path_ig is None:
        raise ValueError("head criterion path needs the path-conditioned passes (needs head_path_ig)")
    return [t.clone() for t in stats.path_ig]


def taylor(inputs) -> list[torch.Tensor]:
    return [t.clone() for t in _stats(inputs, "head_stats").taylor]


def magnitude(inputs) -> list[torch.Tensor]:
    return [t.clone() for t in _stats(inputs, "head_stats").magnitude]


def head_scores(name: str, stats: HeadStats | None, sites: list[Site], seed: int = 0, *, model: nn.Module | None = None,
                adapter=None) -> list[torch.Tensor]:
    """The scores head criterion ``name`` gives every head (one fp64 tensor per block), checked like every criterion's.
    A head criterion registered with vitprune 0.1's signature ``fn(stats, sites, seed)`` is called so."""
    import inspect

    from .base import CriterionInputs, checked_scores

    fn = HEAD_CRITERIA.load(name)
    if len(inspect.signature(fn).parameters) == 3:
        scores = fn(stats, sites, seed)
    else:
        scores = fn(CriterionInputs(model, adapter, sites, stats=stats, seed=seed))
    return checked_scores(name, scores, sites)


__all__ = ["HeadStats", "HeadIG", "PathCondition", "PathClamp", "collect_head_stats", "head_integrated_gradients", "head_scores", "HEAD_STEPS"]
