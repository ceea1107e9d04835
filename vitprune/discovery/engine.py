"""The pass engine every discovery method runs on: scaled rows, clamps, one backward per pass.

Notation (spec ``neuronpath_reference.md`` §3): a_l = clean hidden units of block l at the scope
tokens T, m steps, alpha_k = k/m (k = 0..m-1, left Riemann sum), F = softmax probability of the
target label (or, by ``objective``, its log, or ``kl``: sum_c p_c log p_c(x) with p the clean
model's softmax, i.e. minus the KL divergence from the dense output up to a constant). A pass runs
the m*B scaled rows r = k*B + i (k-major, as the reference) with some blocks' hidden units clamped
(whole-row clamp at the scope tokens) and returns the gradients of F for the clamps with ONE backward.

The engine owns what every method shares: the clean forward, the model forwards (precision, the
pass counts, and the last block's MLP run on the head tokens only when the scope is what the head
reads), the path clamps, the JAS of a path (``path_score``), the row chunks a pass may hold in
memory (measured on the first batch) and the schedule of the greedy steps.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from ..model.adapter import FamilyAdapter, adapter_for
from ..model.hooks import capture_block_input, ffn_hooks, head_tokens_only, override_ffn
from ..model.tangent import written_out
from ..precision import at_least_fp32, precision_context
from .memory import DEFAULT_FRACTION, PassMemory, PassMeter, fit_linear, free_bytes
from .settings import DiscoverySettings

# A one-block tangent pass costs about this many one-block backwards (fp32 CPU, one thread, the m rows
# of one image; eval/bench_discovery.py, results/discovery_benchmark.md, a shared machine). Written out
# (vitprune.model.tangent, from the intermediates the step's pass kept): 1.09 on the demo, 0.95 on
# ViT-B/32; the larger, rounded up. By torch's forward-mode AD, the fallback for blocks the JVP does
# not know (it recomputes the block; its linear also multiplies by a zero weight tangent): 3.28 and
# 2.44 in the same runs (3.4 and 3.0 on a quiet machine before).
TANGENT_COST = 1.1
FORWARD_AD_TANGENT_COST = 3.4
SCHEDULES = ("auto", "tangent", "kept", "recompute")


@dataclass
class PassStats:
    """Work done, counted in model forward/backward calls and the rows they carried."""

    forward_calls: int = 0
    forward_rows: int = 0
    block_rows: int = 0  # rows times the blocks they went through: a forward from a cached prefix runs fewer
    backward_calls: int = 0
    backward_rows: int = 0
    backward_block_rows: int = 0  # rows times the blocks a backward runs through (down to its lowest input)
    tangent_block_rows: int = 0  # rows times blocks of tangent passes, one per scope token (schedule 'tangent')
    images: int = 0

    def flops(self, macs_per_forward: int, depth: int) -> float:
        """FLOP count of the counted work (eval/bench_discovery.py): a forward and a backward (input gradients only)
        each cost about one block's MACs per block-row (2 * MACs / L FLOP), a tangent block twice that (forward-mode AD
        recomputes the block; the written-out JVP from the step's kept primal runs about one: an upper bound there)."""
        return 2.0 * macs_per_forward / depth * (self.block_rows + self.backward_block_rows + 2 * self.tangent_block_rows)

    def add(self, kind: str, rows: int, blocks: int = 0) -> None:
        if kind == "forward":
            self.forward_calls += 1
            self.forward_rows += rows
            self.block_rows += rows * blocks
        elif kind == "tangent":
            self.tangent_block_rows += rows * blocks
        else:
            self.backward_calls += 1
            self.backward_rows += rows
            self.backward_block_rows += rows * blocks


@dataclass(frozen=True)
class Goal:
    """What F is taken for, per image: the target class and the clean softmax (for kl)."""

    target: torch.Tensor  # (B,)
    clean: torch.Tensor  # (B, classes)

    def rows(self, img: torch.Tensor) -> "Goal":
        return Goal(self.target[img], self.clean[img])


def auto_schedule(depth: int, scope_tokens: int, written_out: bool = True) -> str:
    """The schedule 'auto' picks for a model of ``depth`` blocks and a scope of ``scope_tokens`` tokens;
    ``written_out``: whether every block's tangent is the hand-written one (else forward-mode AD's, dearer)."""
    cost = TANGENT_COST if written_out else FORWARD_AD_TANGENT_COST
    return "tangent" if scope_tokens <= 2 and depth > 2 * scope_tokens * cost else "kept"


def stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries per row, ties broken by the lower index (like argmax)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def scale_units(base: torch.Tensor, units: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """base (R, T, H) with the units (R, K) of each row scaled by that row's alpha (R,), the others as they are."""
    mask = torch.zeros(len(base), base.shape[-1], dtype=torch.bool, device=base.device)
    mask.scatter_(1, units, True)
    scale = torch.where(mask, alpha[:, None].to(base), torch.ones((), dtype=base.dtype, device=base.device))
    return base * scale[:, None, :]


def gather_units(x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Sum over the K path units of x (R, T, H) -> (R, T); units (R, K)."""
    return x.gather(2, units[:, None, :].expand(-1, x.shape[1], -1)).sum(-1)


class PassEngine:
    """The passes of discovery on one model, at one token scope, with one pass counter."""

    def __init__(self, model: nn.Module, settings: DiscoverySettings, adapter: FamilyAdapter | None = None) -> None:
        self.model = model
        self.adapter = adapter or adapter_for(model)
        self.settings = settings
        self.scope = self.adapter.resolve_scope(settings.token_scope)
        self.tokens = self.adapter.token_slice(self.scope)
        # the head reads only the scope tokens: the last block's MLP need not run on the others
        self.head_only = self.tokens == self.adapter.head_tokens
        self.stats = PassStats()
        self.memory: PassMemory | None = None  # measured on the first batch when max_rows is None
        # how the greedy steps share work (see SCHEDULES); "auto" picks by the measured costs
        self.schedule = "auto"

    @property
    def depth(self) -> int:
        return self.adapter.depth

    @property
    def steps(self) -> int:
        return self.settings.steps

    # ------------------------------------------------------------------------------- forwards
    def forward(self, x: torch.Tensor, start: int | None = None) -> torch.Tensor:
        """Every model forward goes through here: precision, the pass count, and where it starts:
        ``start=None`` from images, else from the residual stream ``x`` entering ``blocks[start]``."""
        with ExitStack() as stack:
            stack.enter_context(precision_context(self.settings.precision, x.device))
            if self.head_only:
                stack.enter_context(head_tokens_only(self.adapter))
            logits = self.model(x) if start is None else self.adapter.forward_from(start, x)
        self.stats.add("forward", len(x), self.depth - (start or 0))
        return logits

    @torch.no_grad()
    def clean_forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The clean hidden units of every block at the scope tokens, and the logits."""
        store: dict[int, torch.Tensor] = {}

        def record(b: int, hidden: torch.Tensor) -> None:
            store[b] = at_least_fp32(hidden[:, self.tokens].detach())

        with ffn_hooks(self.adapter, record):
            logits = self.forward(images)
        return [store[b] for b in range(self.depth)], logits

    def objective_sum(self, x: torch.Tensor, goal: Goal, start: int | None = None) -> torch.Tensor:
        """Sum over rows of F: the target's probability, its log, or sum_c p_c log p_c(x) (kl)."""
        logits = at_least_fp32(self.forward(x, start))
        if self.settings.objective == "prob":
            return logits.softmax(-1).gather(1, goal.target[:, None]).sum()
        logp = logits.log_softmax(-1)
        if self.settings.objective == "logprob":
            return logp.gather(1, goal.target[:, None]).sum()
        return (goal.clean.to(logp) * logp).sum()

    def grad(self, output: torch.Tensor, inputs: Sequence[torch.Tensor], rows: int, blocks: int, retain: bool = False
             ) -> tuple[torch.Tensor, ...]:
        """Gradients of ``output``; ``blocks`` is how many blocks the backward runs through (for the counts)."""
        grads = torch.autograd.grad(output, list(inputs), retain_graph=retain)
        self.stats.add("backward", rows, blocks)
        return grads

    def step_pass(self, x: torch.Tensor, goal: Goal, clamps: dict[int, torch.Tensor], inputs: list[torch.Tensor],
                  t: int, blocks: int, retain: bool = False) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """One pass of greedy step t (t = depth: the path score) from ``x``: the images at t = 0, else the
        residual stream entering block t-1. Returns the gradients of F for ``inputs`` and the residual
        stream entering block t (None at t = depth), where the next step starts."""
        with ExitStack() as stack:
            stack.enter_context(torch.enable_grad())
            stack.enter_context(override_ffn(self.adapter, clamps, self.tokens))
            entering = stack.enter_context(capture_block_input(self.adapter, t)) if t < self.depth else [None]
            out = self.objective_sum(x, goal, None if t == 0 else t - 1)
            grads = list(self.grad(out, inputs, len(x), blocks, retain=retain))
        return grads, entering[0]

    # ----------------------------------------------------------------------------------- rows
    def scaled_rows(self, batch: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(image index, alpha) per row for the m*B rows r = k*B + i (k-major, as the reference)."""
        m = self.steps
        rows = torch.arange(m * batch, device=device)
        return rows % batch, (rows // batch).double() / m

    def row_chunks(self, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The scaled rows' (image index, alpha), chunked to the rows a pass may hold."""
        img, alpha = self.scaled_rows(batch)
        size = self.settings.max_rows or (self.memory.rows(len(img)) if self.memory else len(img))
        return [(img[s : s + size], alpha[s : s + size]) for s in range(0, len(img), size)]

    def image_groups(self, batch: int) -> list[torch.Tensor] | None:
        """Images whose m rows each go in one pass together, in equal groups; None when a pass
        cannot hold the m rows of even one image (then every pass is chunked by rows, uncached)."""
        if self.schedule == "recompute":
            return None
        m = self.steps
        size = self.settings.max_rows or (self.memory.rows(m * batch) if self.memory else m * batch)
        per_group = size // m
        if per_group < 1:
            return None
        return list(torch.arange(batch).tensor_split(math.ceil(batch / per_group)))

    def resolved_schedule(self) -> str:
        """'tangent' when carrying tangents costs less than back-propagating through the prefix at every
        step: (L-1)*T one-block tangent passes against L(L-1)/2 block backwards, i.e. L > 2*T*TANGENT_COST
        (FORWARD_AD_TANGENT_COST where a block's tangent is not written out), and only for scopes of a few
        tokens (CLS, CLS+DIST); else 'kept'."""
        if self.schedule != "auto":
            return self.schedule
        written = all(written_out(block) for block in self.adapter.blocks)
        return auto_schedule(self.depth, len(range(*self.tokens.indices(10**9))), written)

    # --------------------------------------------------------------------------------- clamps
    def path_clamp(self, a: torch.Tensor, units: torch.Tensor, img: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Leaf (R, T, H): the clean row a[img] with the path units scaled by alpha."""
        return scale_units(a[img], units[img], alpha).requires_grad_(True)

    def path_score(self, images: torch.Tensor, goal: Goal, acts: list[torch.Tensor], path: list[torch.Tensor]) -> torch.Tensor:
        """JAS(P) = (1/|T|) sum_tau [sum_k sum_l sum_{u in P_l} g_{l,u}^k[tau]] * [sum_l sum_{u in P_l} a_l[tau,u]] / m."""
        batch, device, depth = len(images), images.device, self.depth
        g_sum = torch.zeros(batch, acts[0].shape[1], dtype=torch.float64, device=device)
        for img, alpha in self.row_chunks(batch):
            img, alpha = img.to(device), alpha.to(device)
            clamps = {l: self.path_clamp(acts[l], path[l], img, alpha) for l in range(depth)}
            with torch.enable_grad(), override_ffn(self.adapter, clamps, self.tokens):
                out = self.objective_sum(images[img], goal.rows(img))
                grads = self.grad(out, [clamps[l] for l in range(depth)], len(img), depth)
            for l in range(depth):
                g_sum.index_add_(0, img, gather_units(grads[l].double(), path[l][img]))
        a_sum = sum(gather_units(acts[l].double(), path[l]) for l in range(depth))
        return (g_sum * a_sum).sum(dim=1) / self.steps / g_sum.shape[1]

    # --------------------------------------------------------------------------------- memory
    def measure_memory(self, image: torch.Tensor, label: torch.Tensor, rows: tuple[int, int] = (2, 6)) -> PassMemory:
        """Bytes of a pass as fixed + per-row, from two probe passes of the costliest kind
        (every block clamped, one backward), so every later pass fits. Not counted in ``stats``."""
        device, depth = image.device, self.depth
        stats, self.stats = self.stats, PassStats()
        meter = PassMeter(device, exclude=[*self.model.parameters(), *self.model.buffers()])
        measured = []
        try:
            acts, logits = self.clean_forward(image)
            goal = Goal(label, at_least_fp32(logits).softmax(-1))
            units = [stable_topk(a.sum(dim=1), self.settings.topk) for a in acts]
            for r in rows:
                img = torch.zeros(r, dtype=torch.long, device=device)
                alpha = torch.linspace(0, 1, r, dtype=torch.float64, device=device)
                clamps = {l: self.path_clamp(acts[l], units[l], img, alpha) for l in range(depth)}
                with meter.measure(clamps.values()), torch.enable_grad(), override_ffn(self.adapter, clamps, self.tokens):
                    out = self.objective_sum(image[img], goal.rows(img))
                    if device.type == "cuda":
                        torch.autograd.grad(out, list(clamps.values()))
                measured.append(meter.bytes)
                del clamps, out
        finally:
            self.stats = stats
        return fit_linear(rows, (measured[0], measured[1]), int(DEFAULT_FRACTION * free_bytes(device)))


__all__ = ["PassEngine", "PassStats", "Goal", "stable_topk", "gather_units", "scale_units", "auto_schedule", "TANGENT_COST",
           "FORWARD_AD_TANGENT_COST", "SCHEDULES"]
