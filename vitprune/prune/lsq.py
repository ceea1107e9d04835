"""Least-squares reconstruction of each block's fc2 after slicing (CORP / SlimGPT family).

Block b keeps the hidden units K. Its refit fc2, theta = [W', c'] over the kept units plus the
bias, minimises over the calibration tokens (weights w_tau)

    E(theta) + lam * ||theta - theta0||^2,   E(theta) = sum_tau w_tau || theta z_K - (P z + d) ||^2 / sum_tau w_tau

where z = [a; 1] are block b's hidden units (every unit) on the residual stream of the model whose
earlier blocks are already pruned and refit, P = [W, c] is the dense fc2, theta0 = [W[:, K], c]
is the plain slice, and d is the target's correction:

- ``local``: d = 0, i.e. reproduce the dense fc2 on these inputs;
- ``output``: d = (dense model's block output - this block's dense output on the pruned stream) /
  layer scale, i.e. make the block output match the dense model's, which also undoes the drift
  the earlier blocks left in the residual stream.

Tokens weigh the same (``uniform``), or the tokens a CLS-pooled head reads carry as much weight
as all other tokens together (``readout``). The fit is closed-form from moments:

    (M_KK + lam I) theta^T = M_KF P^T + C_K + lam theta0^T,   M = E_w[z z^T],  C = E_w[z d^T].

lam -> infinity gives back the plain slice; lam is chosen per block from a grid (relative to the
mean eigenvalue of M_KK, plus the plain slice itself) by the error on held-out calibration
images, then the block is refit on all calibration images with it. In directions M_KK does not
see (fewer tokens than kept units), the solution stays at the plain slice.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..defaults import LSQ_DEFAULT
from ..errors import UserError
from ..model.adapter import FamilyAdapter, adapter_for
from ..model.hooks import block_input, site_input_hooks
from ..options import LSQ_TARGETS, TOKEN_WEIGHTINGS, check_choice
from ..precision import precision_context
from ..progress import progress_bar
from .masks import PRIMARY, Mask
from .slicing import slice_sites

# lam = r * (mean eigenvalue of M_KK); inf = the plain slice
RIDGES: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, math.inf)
HELDOUT_EVERY = 5  # every 5th calibration image (4, 9, 14, ...) is held out to choose the ridge
_EIG_TOL = 1e-12


@dataclass(frozen=True)
class BlockFit:
    """What the reconstruction of one block found (errors per token, summed over fc2 outputs)."""

    block: int
    kept: int  # kept input channels of the refit projection (units; head_dim per head)
    tokens: int
    heldout_tokens: int
    ridge: float | None  # chosen r (lam = r * mean eigenvalue); None = the plain slice won
    heldout_error: dict[str, float]  # slice / mean / lsq at the chosen ridge, on held-out tokens (fit excludes them)
    calibration_error: dict[str, float]  # slice / mean / lsq on every calibration token (the final fit)
    target_energy: float  # mean ||P z + d||^2: the scale the errors are relative to
    site: str = "mlp"  # the site kind whose output projection was refit (mlp: fc2; heads: the attention's proj)


@dataclass
class Reconstruction:
    target: str
    weighting: str
    blocks: list[BlockFit]
    seconds: float
    weights: list[tuple[torch.Tensor, torch.Tensor]] = field(repr=False, default_factory=list)  # (W' (out, k), c' (out,))

    @property
    def underdetermined(self) -> list[int]:
        """Blocks with fewer calibration tokens than kept units + 1 (the ridge keeps them near the slice)."""
        return [f.block for f in self.blocks if f.tokens < f.kept + 1]

    def to_json(self) -> dict:
        return {"target": self.target, "weighting": self.weighting, "seconds": self.seconds,
                "blocks": [asdict(f) for f in self.blocks], "underdetermined": self.underdetermined}


def heldout_positions(n: int) -> torch.Tensor:
    """Bool mask over n calibration images: every HELDOUT_EVERY-th, or the last one when that is none."""
    if n < 2:
        raise UserError(f"--compensate lsq needs at least 2 calibration images (got {n}); raise --per-class")
    held = torch.arange(n) % HELDOUT_EVERY == HELDOUT_EVERY - 1
    if not held.any():
        held[-1] = True
    return held


@dataclass
class _Sums:
    """Weighted token sums: z z^T, z d^T, |d|^2, the weight and the token count."""

    zz: torch.Tensor
    zd: torch.Tensor
    dd: float = 0.0
    w: float = 0.0
    n: int = 0

    def add(self, z: torch.Tensor, d: torch.Tensor | None, w: torch.Tensor) -> None:
        """z (R, H+1), d (R, out) or None, w (R,) for R tokens."""
        zw = z * w[:, None]
        self.zz += zw.T @ z
        if d is not None:
            self.zd += zw.T @ d
            self.dd += float((w[:, None] * d * d).sum())
        self.w += float(w.sum())
        self.n += z.shape[0]

    def __iadd__(self, other: "_Sums") -> "_Sums":
        self.zz += other.zz.to(self.zz.device)
        self.zd += other.zd.to(self.zd.device)
        self.dd, self.w, self.n = self.dd + other.dd, self.w + other.w, self.n + other.n
        return self

    def moments(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(M, C, e) = the weighted means E_w[z z^T], E_w[z d^T], E_w[|d|^2]."""
        w = self.w or 1.0
        return self.zz / w, self.zd / w, self.dd / w


def _zero_sums(width: int, out: int, device: torch.device) -> _Sums:
    return _Sums(torch.zeros(width + 1, width + 1, dtype=torch.float64, device=device),
                 torch.zeros(width + 1, out, dtype=torch.float64, device=device))


class _Moments:
    """The sums of the fit images and of the held-out images of one block."""

    def __init__(self, width: int, out: int, device: torch.device) -> None:
        self.fit, self.held = _zero_sums(width, out, device), _zero_sums(width, out, device)

    def add(self, hidden: torch.Tensor, drift: torch.Tensor | None, held: torch.Tensor, weights: torch.Tensor) -> None:
        """hidden (B, T, H), drift (B, T, out) or None, held (B,) bool, weights (T,) per token position."""
        z = hidden.double()
        z = torch.cat([z, torch.ones_like(z[..., :1])], dim=-1)
        w = weights.to(z).expand(z.shape[0], -1)
        for sel, sums in ((~held, self.fit), (held, self.held)):
            if sel.any():
                d = drift[sel].double().reshape(-1, drift.shape[-1]) if drift is not None else None
                sums.add(z[sel].reshape(-1, z.shape[-1]), d, w[sel].reshape(-1))

    def gathered(self, dist) -> "_Moments":
        if dist is None or dist.world == 1:
            return self
        parts = dist.gather({"fit": _cpu(self.fit), "held": _cpu(self.held)})
        out = _Moments(self.fit.zz.shape[0] - 1, self.fit.zd.shape[1], self.fit.zz.device)
        for part in parts:  # rank order: every rank sums identically and solves to the same weights
            out.fit += part["fit"]
            out.held += part["held"]
        return out


def _cpu(s: _Sums) -> _Sums:
    return _Sums(s.zz.cpu(), s.zd.cpu(), s.dd, s.w, s.n)


class _Problem:
    """E(theta) and its ridge solutions for one block, from the moments (M, C, e)."""

    def __init__(self, moments: tuple[torch.Tensor, torch.Tensor, float], p: torch.Tensor, kk: torch.Tensor) -> None:
        m, c, e = moments
        self.m_kk = m[kk][:, kk]
        self.rhs = m[kk] @ p.T + c[kk]  # (k+1, out)
        self.const = float((p @ m * p).sum() + 2 * (p * c.T).sum() + e)  # E||P z + d||^2

    def error(self, theta: torch.Tensor) -> float:
        return float((theta @ self.m_kk * theta).sum() - 2 * (theta * self.rhs.T).sum() + self.const)

    def solver(self, theta0: torch.Tensor):
        """theta(r) for any relative ridge r, from one eigendecomposition of M_KK."""
        evals, q = torch.linalg.eigh(self.m_kk)
        evals = evals.clamp_min(0.0)
        scale = float(evals.mean()) or 1.0
        qb, qt0 = q.T @ self.rhs, q.T @ theta0.T
        top = max(float(evals.max()), 1e-300)

        def solve(r: float) -> torch.Tensor:
            if math.isinf(r):
                return theta0.clone()
            lam = r * scale
            denom = (evals + lam)[:, None]
            ok = denom > _EIG_TOL * top
            coef = torch.where(ok, (qb + lam * qt0) / torch.where(ok, denom, torch.ones_like(denom)), qt0)
            return (q @ coef).T

        return solve


def _fit_block(mom: _Moments, w2: torch.Tensor, b2: torch.Tensor, kept: list[int], ridges: tuple[float, ...]
               ) -> tuple[torch.Tensor, float | None, dict, dict, float]:
    """(theta, chosen r, held-out errors, calibration errors, target energy) for one block."""
    width = w2.shape[1]
    p = torch.cat([w2.double(), b2.double()[:, None]], dim=1)  # (out, H+1)
    kk = torch.as_tensor([*kept, width], dtype=torch.long, device=p.device)
    removed = torch.as_tensor(sorted(set(range(width)) - set(kept)), dtype=torch.long, device=p.device)
    theta0 = p[:, kk]

    def errors(problem: _Problem, m: torch.Tensor, theta: torch.Tensor) -> dict:
        shifted = theta0.clone()
        if len(removed):
            shifted[:, -1] += p[:, removed] @ m[removed, width]  # VBP mean-shift: c + W_R E[a_R]
        return {"slice": problem.error(theta0), "mean": problem.error(shifted), "lsq": problem.error(theta)}

    total = mom.fit
    total = _Sums(total.zz + mom.held.zz, total.zd + mom.held.zd, total.dd + mom.held.dd, total.w + mom.held.w,
                  total.n + mom.held.n)
    held_err: dict = {}
    if mom.held.n and mom.fit.n:
        fit, held = _Problem(mom.fit.moments(), p, kk), _Problem(mom.held.moments(), p, kk)
        solve = fit.solver(theta0)
        scored = [(held.error(solve(r)), i) for i, r in enumerate(ridges)]
        best = ridges[min(scored)[1]]  # ties: the smaller ridge
        held_err = errors(held, mom.held.moments()[0], solve(best))
    else:
        best = next((r for r in ridges if 0 < r < math.inf), 1e-2)
    problem = _Problem(total.moments(), p, kk)
    theta = problem.solver(theta0)(best)
    return theta, None if math.isinf(best) else best, held_err, errors(problem, total.moments()[0], theta), problem.const


def _target_residual(dense: torch.Tensor, pruned: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kept: list[int],
                     drift: torch.Tensor | None) -> torch.Tensor:
    """What the plain slice (W_K, c) misses on the pruned units z_K, as the correction d of the fit's target:
    (W z + c + drift) - (W_K z_K + c), so that fitting theta z_K ~ W_K z_K + c + d fits the dense target itself."""
    w = weight.double()
    target = dense.double() @ w.T
    if drift is not None:
        target = target + drift.double()
    return target - pruned.double() @ w[:, kept].T


BRANCHES = ("attn", "mlp")  # a block's branches in forward order: least squares refits their sites in this order


def _stages(src: FamilyAdapter, dst: FamilyAdapter, mask: Mask, b: int) -> list[tuple]:
    """The fits of block b in forward order: (site kind, kept units, the dense and the pruned model's step over the
    residual stream). The MLP site is refit in every block; a site of another kind (heads) where it lost units. With
    the MLP alone, one fit over the whole block; else one per branch, each on the stream the branch before it left
    (the attention's proj first, then fc2)."""
    from ..model import SITE_KINDS

    refit = [k for k in mask.kinds if k == PRIMARY or len(mask.sites[k].kept[b]) < mask.sites[k].widths[b]]
    if refit == [PRIMARY]:
        return [(PRIMARY, list(mask.kept[b]), lambda x: src.run_block(b, x), lambda x: dst.run_block(b, x))]
    halves = {"attn": (src.attention_half, dst.attention_half), "mlp": (src.mlp_half, dst.mlp_half)}
    stages = []
    for kind in sorted(refit, key=lambda k: BRANCHES.index(SITE_KINDS.load(k).branch)):
        run_src, run_dst = halves[SITE_KINDS.load(kind).branch]
        stages.append((kind, list(mask.sites[kind].kept[b]), functools.partial(run_src, b), functools.partial(run_dst, b)))
    return stages


def _fit_site(src: FamilyAdapter, site, out, kind: str, b: int, kept_units: list[int], run_src, run_dst, xs, xd, chunks, weights,
              ridges, dist, device):
    """Refit ``out.out_proj`` (the pruned model's) from the moments of ``site``'s unit vector on the pruned stream ``xs``;
    returns the refit projection, its BlockFit and both streams moved past this step."""
    proj_src = site.out_proj
    bias = proj_src.bias if proj_src.bias is not None else torch.zeros(proj_src.out_features, device=device)
    kept = site.channels(kept_units).tolist()
    subset = site.subset
    mom = _Moments(proj_src.in_features if subset else len(kept), proj_src.out_features, device)
    branch = "attn" if kind == "heads" else "mlp"
    for i, (x, (_, held)) in enumerate(zip(xs, chunks)):
        taps: dict[int, torch.Tensor] = {}
        with site_input_hooks([site], lambda _i, hidden: taps.__setitem__(0, hidden)):
            out_here = run_src(x)
        drift = None
        if xd is not None:
            out_dense = run_src(xd[i])
            drift = src.residual_scale_inverse(b, out_dense - out_here, branch)
            xd[i] = out_dense
        if subset:  # the kept units' values are the dense ones at those channels
            mom.add(taps[0], drift, held, weights)
        else:  # a norm over the unit vector: the pruned site's own units, fitted to the dense target
            own: dict[int, torch.Tensor] = {}
            with site_input_hooks([out], lambda _i, hidden: own.__setitem__(0, hidden)):
                run_dst(x)
            mom.add(own[0], _target_residual(taps[0], own[0], proj_src.weight, bias, kept, drift), held, weights)
    mom = mom.gathered(dist)
    weight = proj_src.weight if subset else proj_src.weight[:, kept]
    theta, ridge, held_err, calib_err, energy = _fit_block(mom, weight, bias, kept if subset else list(range(len(kept))), ridges)
    proj = out.out_proj
    proj.weight.copy_(theta[:, :-1].to(proj.weight))
    proj.bias.copy_(theta[:, -1].to(proj.bias))
    fit = BlockFit(b, len(kept), mom.fit.n + mom.held.n, mom.held.n, ridge, held_err, calib_err, energy, kind)
    return proj, fit, [run_dst(x) for x in xs], xd


def token_weights(adapter: FamilyAdapter, tokens: int, weighting: str) -> torch.Tensor:
    """Per token position: 1, or for ``readout`` on a CLS-pooled model, the read tokens together as heavy as the rest."""
    check_choice("--lsq-weighting", weighting, TOKEN_WEIGHTINGS)
    w = torch.ones(tokens, dtype=torch.float64)
    if weighting == "readout" and adapter.layout.pool == "token":
        read = adapter.token_slice("cls")
        n_read = len(range(tokens)[read])
        w[read] = (tokens - n_read) / n_read
    return w


@torch.no_grad()
def reconstruct(
    dense: nn.Module,
    mask: Mask,
    images: torch.Tensor,
    heldout: torch.Tensor,
    *,
    target: str = LSQ_DEFAULT["target"],
    weighting: str = LSQ_DEFAULT["weighting"],
    ridges: tuple[float, ...] = RIDGES,
    chunk: int = 64,
    dist=None,
    precision: str = "fp32",
    quiet: bool = True,
) -> tuple[nn.Module, Reconstruction]:
    """The sliced model with every block's fc2 (and, where heads were removed, the attention's proj) refit by least
    squares, and what each fit found.

    ``images``: this process's calibration images (preprocessed), ``heldout`` marks the ones that
    choose the ridge. Under several processes the moments are summed over ranks, so every rank
    computes the same weights.
    """
    check_choice("--lsq-target", target, LSQ_TARGETS)
    start = time.time()
    if len(images) != len(heldout):
        raise ValueError("one held-out flag per calibration image")
    pruned = slice_sites(dense, mask, out_bias=True)
    src, dst = adapter_for(dense), adapter_for(pruned)
    device = next(pruned.parameters()).device
    with precision_context(precision, device):
        chunks = [(images[s : s + chunk].to(device), heldout[s : s + chunk].to(device)) for s in range(0, len(images), chunk)]
        xs = [block_input(dst, x) for x, _ in chunks]  # the pruned model's residual stream
        xd = [x.clone() for x in xs] if target == "output" else None  # the dense model's
        weights = token_weights(src, xs[0].shape[1], weighting).to(device) if xs else None
        fits, refit = [], []
        sites = {kind: (src.sites(kind), dst.sites(kind)) for kind in mask.kinds}
        with progress_bar(total=src.depth, desc="least squares", unit="block", disable=quiet) as bar:
            for b in range(src.depth):
                for kind, kept_units, run_src, run_dst in _stages(src, dst, mask, b):
                    site, out = sites[kind][0][b], sites[kind][1][b]
                    proj, fit, xs, xd = _fit_site(src, site, out, kind, b, kept_units, run_src, run_dst, xs, xd, chunks, weights,
                                                  ridges, dist, device)
                    refit.append((proj.weight.detach().clone(), proj.bias.detach().clone()))
                    fits.append(fit)
                bar.update(1)
    return pruned, Reconstruction(target, weighting, fits, time.time() - start, refit)


__all__ = ["reconstruct", "Reconstruction", "BlockFit", "heldout_positions", "token_weights", "RIDGES", "LSQ_TARGETS",
           "TOKEN_WEIGHTINGS"]
