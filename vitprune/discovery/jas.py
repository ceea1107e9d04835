"""Joint Attribution Score (JAS) paths, as the NeuronPath reference computes them (method ``jas``).

At greedy step t, block t's units are all scaled by alpha_k, each earlier block l is clamped to
a_l except its path units, which are scaled by alpha_k (whole-row clamp), and

    S_t(j) = sum_tau [sum_k (G_t^k[tau,j] + sum_{l<t} sum_{u in P_l} g_{l,u}^k[tau])]
                     * [(a_t[tau,j] + sum_{l<t} sum_{u in P_l} a_l[tau,u]) / m]

with P_t = the K best j (notation: ``engine``). For |T| = 1 (CLS) this is the reference formula;
for patch tokens it is the reference MAE formula (product per token, summed over tokens). The
greedy step scores every unit of block t; these dense scores S_t (B, H_t) and their own term
I_t(j) = sum_tau G_t[tau, j] a_t[tau, j] / m come back beside the path, at no extra pass, for the
dense path importance (``importance``).

Differences from the reference code, on purpose: top-K counts all K units of every earlier layer
(the reference counts only the last-listed one, a bug), any batch size works, and each pass over
the m*B scaled rows has ONE backward for all clamped blocks. Work the reference repeats is done
once: greedy steps t and t+1 clamp blocks < t alike, so the residual stream entering block t is
kept from step t on and later steps and the path score run only the blocks after it (schedule
``kept``: with its graph; ``tangent``: values only, plus the tangent of the earlier path units carried
one block per step, written out in ``vitprune.model.tangent``, by forward-mode AD for blocks it does
not know). The records equal recomputing every pass (``recompute``; tests compare all three and the
literal formulas).
"""
from __future__ import annotations

import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
import torch.autograd.forward_ad as fwAD
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..model.hooks import capture_block_input, override_ffn
from ..model.tangent import block_output, block_tangent, primal_capture
from ..precision import precision_context
from .engine import Goal, PassEngine, gather_units, stable_topk
from .method import DiscoveryMethod, MethodPaths


@dataclass
class _Greedy:
    """The greedy path so far: the chosen units per block, the dense step scores S_t and their own
    term, and the running sum of the clean activations at the chosen units (per image and token)."""

    a_path: torch.Tensor  # (B, T), fp64
    path: list[torch.Tensor] = field(default_factory=list)
    step_scores: list[torch.Tensor] = field(default_factory=list)
    step_own: list[torch.Tensor] = field(default_factory=list)

    def choose(self, g_t: torch.Tensor, g_path: torch.Tensor, a_t: torch.Tensor, steps: int, topk: int) -> None:
        """Score every unit of the next block from its summed gradients g_t (B, T, H) and those of the
        path so far g_path (B, T), and take the K best."""
        a_t = a_t.double()
        scores = ((g_t + g_path[..., None]) * (a_t + self.a_path[..., None])).sum(dim=1) / steps
        self.path.append(stable_topk(scores, topk))
        self.step_scores.append(scores)
        self.step_own.append((g_t * a_t).sum(dim=1) / steps)
        self.a_path += gather_units(a_t, self.path[-1])

    def path_score(self, g_sum: torch.Tensor, steps: int) -> torch.Tensor:
        """JAS of the whole path from the summed path-unit gradients (B, T) of the all-clamped pass."""
        return (g_sum * self.a_path).sum(dim=1) / steps / g_sum.shape[1]

    def result(self, score: torch.Tensor | None = None) -> MethodPaths:
        return MethodPaths(self.path, score, self.step_scores, self.step_own)


class JointAttribution(DiscoveryMethod):
    """Greedy layer-progressive top-K JAS paths, with the dense greedy scores of every unit."""

    dense_importance = True

    def paths(self, engine: PassEngine, images: torch.Tensor, goal: Goal, acts: list[torch.Tensor]) -> MethodPaths:
        groups = engine.image_groups(len(images))
        if groups is None:
            return self._recompute(engine, images, goal, acts)
        greedy = self._tangent if engine.resolved_schedule() == "tangent" else self._kept
        parts = [greedy(engine, images[g], goal.rows(g), [a[g] for a in acts]) for g in groups]
        path, scores, own = ([torch.cat(layer) for layer in zip(*kind)] for kind in
                             zip(*((p.path, p.step_scores, p.step_own) for p in parts)))
        return MethodPaths(path, torch.cat([p.score for p in parts]), scores, own)

    @staticmethod
    def _recompute(engine: PassEngine, images: torch.Tensor, goal: Goal, acts: list[torch.Tensor]) -> MethodPaths:
        """The greedy steps, every pass from the images over chunks of rows (schedule 'recompute')."""
        batch, device, cfg = len(images), images.device, engine.settings
        greedy = _Greedy(torch.zeros(batch, acts[0].shape[1], dtype=torch.float64, device=device))
        path = greedy.path
        for t in range(engine.depth):
            g_t = torch.zeros(acts[t].shape, dtype=torch.float64, device=device)
            g_path = torch.zeros_like(greedy.a_path)
            for img, alpha in engine.row_chunks(batch):
                img, alpha = img.to(device), alpha.to(device)
                clamps = {l: engine.path_clamp(acts[l], path[l], img, alpha) for l in range(t)}
                clamps[t] = (acts[t][img] * alpha[:, None, None].to(acts[t])).requires_grad_(True)
                with torch.enable_grad(), override_ffn(engine.adapter, clamps, engine.tokens):
                    out = engine.objective_sum(images[img], goal.rows(img))
                    grads = engine.grad(out, [clamps[l] for l in range(t + 1)], len(img), engine.depth)
                g_t.index_add_(0, img, grads[t].double())
                for l in range(t):
                    g_path.index_add_(0, img, gather_units(grads[l].double(), path[l][img]))
            greedy.choose(g_t, g_path, acts[t], cfg.steps, cfg.topk)
        return greedy.result()

    @staticmethod
    def _kept(engine: PassEngine, images: torch.Tensor, goal: Goal, acts: list[torch.Tensor]) -> MethodPaths:
        """The greedy steps and the path score of images whose m*b rows fit one pass, reusing the prefix.

        Steps t and t+1 clamp blocks < t alike, so the residual stream entering block t, computed at
        step t, is the same at step t+1, at every later step and in the path score. It is kept with
        its autograd graph (backward passes retain it): step t+1 runs blocks t.. only, the path score
        block L-1 only, and each still has ONE backward to every clamped block. Forward block-rows
        per image: m * (L + sum_{t=1}^{L-1} (L - t + 1) + 1) instead of m * L * (L + 1).
        """
        cfg, batch, device, depth = engine.settings, len(images), images.device, engine.depth
        img, alpha = engine.scaled_rows(batch, device)
        x, goal = images[img], goal.rows(img)
        greedy = _Greedy(torch.zeros(batch, acts[0].shape[1], dtype=torch.float64, device=device))
        path = greedy.path
        leaves: list[torch.Tensor] = []  # the path clamp of each chosen block, in the kept graph
        for t in range(depth + 1):  # t = depth: the path score
            clamps = {}
            if t > 0:
                leaves.append(engine.path_clamp(acts[t - 1], path[t - 1], img, alpha))
                clamps[t - 1] = leaves[t - 1]
            if t < depth:
                clamps[t] = (acts[t][img] * alpha[:, None, None].to(acts[t])).requires_grad_(True)
            # the backward reaches block 0 and retains the graph: the kept prefix stays reachable from x
            grads, x = engine.step_pass(x, goal, clamps, leaves + ([clamps[t]] if t < depth else []), t, depth,
                                        retain=t < depth)
            g_path = torch.zeros_like(greedy.a_path)
            for l in range(t):
                g_path.index_add_(0, img, gather_units(grads[l].double(), path[l][img]))
            if t == depth:
                return greedy.result(greedy.path_score(g_path, cfg.steps))
            g_t = torch.zeros(acts[t].shape, dtype=torch.float64, device=device).index_add_(0, img, grads[t].double())
            greedy.choose(g_t, g_path, acts[t], cfg.steps, cfg.topk)
        raise AssertionError("unreachable: the loop returns at t = depth")

    @classmethod
    def _tangent(cls, engine: PassEngine, images: torch.Tensor, goal: Goal, acts: list[torch.Tensor]) -> MethodPaths:
        """The greedy steps and the path score with no backward below the block being scored.

        At step t >= 1 the path units of blocks < t act on F only through the residual stream B_t entering
        block t, so the sum of their gradients is <dF/dB_t, tau_t>, tau_t the derivative of B_t along those
        units (one tangent per scope token). Step t runs blocks t.. from B_t (values only) and back-propagates
        to B_t and to block t's clamp. Once it has chosen block t's path units, B_{t+1} (block t with its path
        clamp: only the clamped rows of its MLP output differ from the pass's) and tau_{t+1} (one tangent pass
        of block t, the written-out JVP) come from the intermediates that pass computed through block t. The
        path score runs block L-1 from B_{L-1}. Per image: forward and backward block-rows
        m * (L + sum_{t=1}^{L-1} (L - t) + 1) instead of m * L * (L + 1), plus (L-1)*T one-block tangent passes.
        """
        cfg, batch, device, depth = engine.settings, len(images), images.device, engine.depth
        img, alpha = engine.scaled_rows(batch, device)
        x, goal = images[img], goal.rows(img)
        greedy = _Greedy(torch.zeros(batch, acts[0].shape[1], dtype=torch.float64, device=device))
        path = greedy.path
        tangent: torch.Tensor | None = None  # (T, R, N, D): d B_t / d (path units at scope token j of the blocks before t)
        for t in range(depth + 1):  # t = depth: the path score
            last = t == depth
            block = depth - 1 if last else t
            if last:
                clamp = engine.path_clamp(acts[block], path[block], img, alpha)
            else:
                clamp = (acts[t][img] * alpha[:, None, None].to(acts[t])).requires_grad_(True)
            inputs = [clamp]
            if tangent is not None:
                x = x.detach().requires_grad_(True)
                inputs.insert(0, x)
            carry = t < depth - 1
            with ExitStack() as stack:
                stack.enter_context(torch.enable_grad())
                # before the clamp's hook: a block with hooks is not one the capture knows
                primal = stack.enter_context(primal_capture(engine.adapter.blocks[block])) if carry else None
                stack.enter_context(override_ffn(engine.adapter, {block: clamp}, engine.tokens))
                entering = stack.enter_context(capture_block_input(engine.adapter, 0)) if t == 0 else None
                out = engine.objective_sum(x, goal, None if t == 0 else block)
                grads = list(engine.grad(out, inputs, len(x), depth - block))  # down to block's input only
            if t == 0:
                x = entering[0].detach()
            g_path = torch.zeros_like(greedy.a_path)
            if tangent is not None:
                through = torch.einsum("rnd,jrnd->rj", grads.pop(0).double(), tangent.double())
                g_path.index_add_(0, img, through)
            if last:
                g_path.index_add_(0, img, gather_units(grads[0].double(), path[block][img]))
                return greedy.result(greedy.path_score(g_path, cfg.steps))
            g_t = torch.zeros(acts[t].shape, dtype=torch.float64, device=device).index_add_(0, img, grads[0].double())
            greedy.choose(g_t, g_path, acts[t], cfg.steps, cfg.topk)
            if carry:
                path_clamp = engine.path_clamp(acts[t], path[t], img, alpha).detach()
                tangent = cls._carry_tangent(engine, t, x.detach(), tangent, path_clamp, path[t][img], primal)
                x = cls._next_stream(engine, t, x.detach(), path_clamp, primal)
        raise AssertionError("unreachable: the loop returns at t = depth")

    @staticmethod
    @torch.no_grad()
    def _next_stream(engine: PassEngine, block: int, x: torch.Tensor, clamp: torch.Tensor,
                     primal: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """The residual stream leaving ``block`` (input x) with its path clamp: from the step pass's ``primal``
        (only the clamped rows of the MLP output change), else by running the block."""
        with precision_context(engine.settings.precision, x.device):
            out = block_output(engine.adapter.blocks[block], primal, clamp, engine.tokens)
            if out is None:
                with override_ffn(engine.adapter, {block: clamp}, engine.tokens):
                    out = engine.adapter.run_block(block, x)
                engine.stats.add("forward", len(x), 1)
        return out

    @staticmethod
    @torch.no_grad()
    def _carry_tangent(engine: PassEngine, block: int, x: torch.Tensor, tangent: torch.Tensor | None, clamp: torch.Tensor,
                       units: torch.Tensor, primal: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The tangent of the residual stream leaving ``block`` (entering block+1), one per scope token j:
        the incoming tangent[j] carried through the block plus the block's own path units at token j.
        Written out (``block_tangent``, from the step pass's ``primal`` when kept) where the block is the
        stock one, else by forward-mode AD."""
        scope = clamp.shape[1]
        direction = clamp.new_zeros((scope, *clamp.shape))
        for j in range(scope):
            direction[j, :, j].scatter_(1, units, 1.0)
        with precision_context(engine.settings.precision, x.device):
            carried = block_tangent(engine.adapter.blocks[block], x, tangent, clamp, direction, engine.tokens, primal)
        if carried is None:
            carried = torch.stack([_forward_mode_tangent(engine, block, x, None if tangent is None else tangent[j], clamp,
                                                         direction[j]) for j in range(scope)])
        engine.stats.add("tangent", len(x) * scope, 1)
        return carried


def _forward_mode_tangent(engine: PassEngine, block: int, x: torch.Tensor, tangent: torch.Tensor | None, clamp: torch.Tensor,
                          direction: torch.Tensor) -> torch.Tensor:
    """The block's output tangent along x's ``tangent`` and the clamp's ``direction`` by torch's forward-mode AD
    (any block the hooks can clamp)."""
    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        # torch's first make_dual scripts its forward-mode decompositions and warns that jit.script is deprecated
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
        stack.enter_context(fwAD.dual_level())
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))  # the fused kernels have no forward-mode rule
        stack.enter_context(precision_context(engine.settings.precision, x.device))
        stack.enter_context(override_ffn(engine.adapter, {block: fwAD.make_dual(clamp, direction)}, engine.tokens))
        x_in = x if tangent is None else fwAD.make_dual(x, tangent.to(x.dtype))
        return fwAD.unpack_dual(engine.adapter.run_block(block, x_in)).tangent


__all__ = ["JointAttribution"]
