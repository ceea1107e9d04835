"""Joint Attribution Score (JAS) neuron paths, as the NeuronPath reference computes them.

Notation (spec ``neuronpath_reference.md`` §3): a_l = clean hidden units of block l at the scope
tokens T, m steps, alpha_k = k/m (k = 0..m-1, left Riemann sum), F = softmax probability of the
target label. At greedy step t, block t's units are all scaled by alpha_k, each earlier block l
is clamped to a_l except its path units, which are scaled by alpha_k (whole-row clamp), and

    S_t(j) = sum_tau [sum_k (G_t^k[tau,j] + sum_{l<t} sum_{u in P_l} g_{l,u}^k[tau])]
                     * [(a_t[tau,j] + sum_{l<t} sum_{u in P_l} a_l[tau,u]) / m]

with P_t = the K best j. For |T| = 1 (CLS) this is the reference formula; for patch tokens it
is the reference MAE formula (product per token, summed over tokens). The greedy step scores
every unit of block t; ``PathFinder.find_batch`` returns these dense scores S_t (B, H_t) beside
the records, at no extra pass, for the dense path importance (``vitprune.importance``). The path score is

    JAS(P) = (1/|T|) sum_tau [sum_k sum_l sum_{u in P_l} g_{l,u}^k[tau]] * [sum_l sum_{u in P_l} a_l[tau,u]] / m

F is the reference's softmax probability of the target by default; ``objective`` may instead
take its log-probability, or ``kl``: sum_c p_c log p_c(x) with p the clean model's softmax, i.e.
minus the KL divergence from the dense output up to a constant (label-free; the attribution of
how far removing the units moves the whole output).

Differences from the reference code, on purpose: top-K counts all K units of every earlier
layer (the reference counts only the last-listed one, a bug), any batch size works, and each
forward over the m*B scaled rows has ONE backward for all clamped blocks (the reference calls
autograd.grad once per block). Work the reference repeats is done once: greedy steps t and t+1
clamp blocks < t alike, so the residual stream entering block t is kept (with its graph) from
step t on and later steps and the path score run only the blocks after it; when the scope is the
tokens the head reads (CLS), the last block's MLP runs on those tokens only. The records are the
same as recomputing every pass (tests compare both, and the literal formulas).
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
import math
import warnings

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..adapter import ViTAdapter
from ..errors import UserError
from ..hooks import capture_block_input, ffn_hooks, head_tokens_only, override_ffn, replace_tokens
from ..options import LABEL_SOURCES, METHODS, OBJECTIVES, PRECISIONS, check_choice
from ..memory import DEFAULT_FRACTION, PassMemory, PassMeter, fit_linear, free_bytes

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
# A one-block forward-mode tangent pass costs about this many one-block backwards (fp32 CPU, one
# thread; torch's forward-mode linear also multiplies by a zero weight tangent): 3.4 on the demo
# (96 wide), 3.0 on ViT-B/32 (768 wide), eval/results/discovery_benchmark.md. The larger one is kept:
# on 6 blocks the two schedules measure about even.
TANGENT_COST = 3.4
SCHEDULES = ("auto", "tangent", "kept", "recompute")
MAX_STEPS = 1000  # interpolation steps; far beyond any use (the reference: 20), far below a hang


@dataclass(frozen=True)
class DiscoveryConfig:
    """What a discovery run computes; everything that changes a record is here."""

    topk: int = 1
    steps: int = 20
    method: str = "jas"
    token_scope: str = "auto"
    label: str = "truth"
    max_rows: int | None = None  # rows (scaled copies) per forward/backward; None = as many as fit in memory
    precision: str = "fp32"  # model forwards in fp32, TF32 matmuls, or bf16/fp16 autocast; sums stay fp64
    objective: str = "prob"  # F: target probability (reference), its log, or kl (minus the divergence from the clean output)


@dataclass
class PathBatch:
    """One batch's records and, for method jas, the dense greedy scores S_t (B, H_t) of every block t."""

    records: list[dict]
    step_scores: list[torch.Tensor] | None
    step_own: list[torch.Tensor] | None = None  # the units' own term of S_t: sum_tau G_t[tau, j] a_t[tau, j] / m


@dataclass
class PassStats:
    """Work done, counted in model forward/backward calls and the rows they carried."""

    forward_calls: int = 0
    forward_rows: int = 0
    block_rows: int = 0  # rows times the blocks they went through: a forward from a cached prefix runs fewer
    backward_calls: int = 0
    backward_rows: int = 0
    backward_block_rows: int = 0  # rows times the blocks a backward runs through (down to its lowest input)
    tangent_block_rows: int = 0  # rows times blocks of forward-mode tangent passes (schedule 'tangent')
    images: int = 0
    per_call: list[tuple[str, int]] = field(default_factory=list, repr=False)

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


class _tf32:
    """Allow TF32 matmuls (Ampere+ GPUs) inside the block; restores the previous setting."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self) -> None:
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        if self.enabled:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    def __exit__(self, *exc) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Softmax in fp32 for half-precision logits; fp64 models keep fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def auto_schedule(depth: int, scope_tokens: int) -> str:
    """The schedule 'auto' picks for a model of ``depth`` blocks and a scope of ``scope_tokens`` tokens."""
    return "tangent" if scope_tokens <= 2 and depth > 2 * scope_tokens * TANGENT_COST else "kept"


def stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries per row, ties broken by the lower index (like argmax)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


class PathFinder:
    """Finds top-K JAS (or influence-pattern) paths for batches of preprocessed images."""

    def __init__(self, model: nn.Module, config: DiscoveryConfig = DiscoveryConfig()) -> None:
        self.model = model
        self.adapter = ViTAdapter(model)
        self.config = config
        self.scope = self.adapter.resolve_scope(config.token_scope)
        self.tokens = self.adapter.token_slice(self.scope)
        # the head reads only the scope tokens: the last block's MLP need not run on the others
        self.head_only = self.tokens == self.adapter.head_tokens
        self.stats = PassStats()
        self.memory: PassMemory | None = None  # measured on the first batch when max_rows is None
        # how the greedy steps share work (see SCHEDULES); "auto" picks by the measured costs
        self.schedule = "auto"
        self._validate()

    def _validate(self) -> None:
        cfg, widths = self.config, self.adapter.hidden_widths
        check_choice("--method", cfg.method, METHODS)
        check_choice("--label", cfg.label, LABEL_SOURCES)
        if not 1 <= cfg.topk <= min(widths):
            raise UserError(f"--topk must be between 1 and the narrowest MLP width {min(widths)} (got {cfg.topk})")
        if not 1 <= cfg.steps <= MAX_STEPS:
            raise UserError(f"--steps must be between 1 and {MAX_STEPS} (got {cfg.steps}; the reference uses 20)")
        if cfg.max_rows is not None and cfg.max_rows < 1:
            raise UserError(f"--max-rows must be >= 1 (got {cfg.max_rows})")
        check_choice("--precision", cfg.precision, PRECISIONS)
        check_choice("--objective", cfg.objective, OBJECTIVES)

    # ------------------------------------------------------------------------------- public
    def find(self, images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
        """One record per image: path [L][K], score, base_path, base_score, label, target, pred, prob."""
        return self.find_batch(images, labels).records

    def find_batch(self, images: torch.Tensor, labels: torch.Tensor) -> PathBatch:
        """The records of ``find`` plus the dense greedy scores of every unit (method jas)."""
        device = next(self.model.parameters()).device
        images, labels = images.to(device), labels.to(device)
        if self.config.max_rows is None and self.memory is None:
            self.memory = self.measure_memory(images[:1], labels[:1])
        requires = [p.requires_grad for p in self.model.parameters()]
        for p in self.model.parameters():
            p.requires_grad_(False)
        try:
            return self._find(images, labels)
        finally:
            for p, r in zip(self.model.parameters(), requires):
                p.requires_grad_(r)

    # ----------------------------------------------------------------------------- internals
    def _find(self, images: torch.Tensor, labels: torch.Tensor) -> PathBatch:
        cfg = self.config
        acts, logits = self._clean_forward(images)
        probs = _at_least_fp32(logits).softmax(-1)
        pred = probs.argmax(-1)
        target = labels if cfg.label == "truth" else pred
        if int(target.max()) >= probs.shape[-1] or int(target.min()) < 0:
            raise UserError(f"label {int(target.max())} is outside the model's {probs.shape[-1]} classes; use data that matches the model")
        goal = _Goal(target, probs.detach())
        base_path = [stable_topk(a.sum(dim=1), cfg.topk) for a in acts]
        step_scores = step_own = None
        groups = self._image_groups(len(images))
        if cfg.method == "jas" and groups is not None:
            greedy = self._greedy_path_tangent if self._schedule() == "tangent" else self._greedy_path_cached
            parts = [greedy(images[g], goal.rows(g), [a[g] for a in acts]) for g in groups]
            path, step_scores, step_own = ([torch.cat(layer) for layer in zip(*kind)] for kind in zip(*(p[:3] for p in parts)))
            score = torch.cat([p[3] for p in parts])
        else:
            if cfg.method == "jas":
                path, step_scores, step_own = self._greedy_path(images, goal, acts)
            else:
                path = self._influence_pattern_path(images, goal)
            score = self._path_score(images, goal, acts, path)
        base_score = self._path_score(images, goal, acts, base_path)
        self.stats.images += len(images)
        records = []
        for i in range(len(images)):
            records.append({
                "label": int(labels[i]),
                "target": int(target[i]),
                "pred": int(pred[i]),
                "prob": float(probs[i, target[i]]),
                "path": [p[i].tolist() for p in path],
                "score": float(score[i]),
                "base_path": [p[i].tolist() for p in base_path],
                "base_score": float(base_score[i]),
            })
        return PathBatch(records, step_scores, step_own)

    def measure_memory(self, image: torch.Tensor, label: torch.Tensor, rows: tuple[int, int] = (2, 6)) -> PassMemory:
        """Bytes of a pass as fixed + per-row, from two probe passes of the costliest kind
        (every block clamped, one backward), so every later pass fits. Not counted in ``stats``."""
        device, depth = image.device, self.adapter.depth
        stats, self.stats = self.stats, PassStats()
        meter = PassMeter(device, exclude=[*self.model.parameters(), *self.model.buffers()])
        measured = []
        try:
            acts, logits = self._clean_forward(image)
            goal = _Goal(label, _at_least_fp32(logits).softmax(-1))
            units = [stable_topk(a.sum(dim=1), self.config.topk) for a in acts]
            for r in rows:
                img = torch.zeros(r, dtype=torch.long, device=device)
                alpha = torch.linspace(0, 1, r, dtype=torch.float64, device=device)
                clamps = {l: self._path_clamp(acts[l], units[l], img, alpha) for l in range(depth)}
                with meter.measure(clamps.values()), torch.enable_grad(), override_ffn(self.adapter, clamps, self.tokens):
                    out = self._objective_sum(image[img], goal.rows(img))
                    if device.type == "cuda":
                        torch.autograd.grad(out, list(clamps.values()))
                measured.append(meter.bytes)
                del clamps, out
        finally:
            self.stats = stats
        return fit_linear(rows, (measured[0], measured[1]), int(DEFAULT_FRACTION * free_bytes(device)))

    def _forward(self, x: torch.Tensor, start: int | None = None) -> torch.Tensor:
        """Every model forward goes through here: precision, the pass count, and where it starts:
        ``start=None`` from images, else from the residual stream ``x`` entering ``blocks[start]``."""
        dtype = _AUTOCAST.get(self.config.precision)
        with ExitStack() as stack:
            stack.enter_context(torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None))
            stack.enter_context(_tf32(self.config.precision == "tf32"))
            if self.head_only:
                stack.enter_context(head_tokens_only(self.adapter))
            logits = self.model(x) if start is None else self.adapter.forward_from(start, x)
        self.stats.add("forward", len(x), self.adapter.depth - (start or 0))
        return logits

    @torch.no_grad()
    def _clean_forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        store: dict[int, torch.Tensor] = {}

        def record(b: int, hidden: torch.Tensor) -> None:
            store[b] = _at_least_fp32(hidden[:, self.tokens].detach())

        with ffn_hooks(self.adapter, record):
            logits = self._forward(images)
        return [store[b] for b in range(self.adapter.depth)], logits

    def _scaled_rows(self, batch: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(image index, alpha) per row for the m*B rows r = k*B + i (k-major, as the reference)."""
        m = self.config.steps
        rows = torch.arange(m * batch, device=device)
        return rows % batch, (rows // batch).double() / m

    def _row_chunks(self, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The scaled rows' (image index, alpha), chunked to the rows a pass may hold."""
        img, alpha = self._scaled_rows(batch)
        size = self.config.max_rows or (self.memory.rows(len(img)) if self.memory else len(img))
        return [(img[s : s + size], alpha[s : s + size]) for s in range(0, len(img), size)]

    def _step_pass(self, x: torch.Tensor, goal: "_Goal", clamps: dict[int, torch.Tensor], inputs: list[torch.Tensor],
                   t: int, blocks: int, retain: bool = False) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """One pass of greedy step t (t = depth: the path score) from ``x``: the images at t = 0, else the
        residual stream entering block t-1. Returns the gradients of F for ``inputs`` and the residual
        stream entering block t (None at t = depth), where the next step starts."""
        depth = self.adapter.depth
        with ExitStack() as stack:
            stack.enter_context(torch.enable_grad())
            stack.enter_context(override_ffn(self.adapter, clamps, self.tokens))
            entering = stack.enter_context(capture_block_input(self.adapter, t)) if t < depth else [None]
            out = self._objective_sum(x, goal, None if t == 0 else t - 1)
            grads = list(self._grad(out, inputs, len(x), blocks, retain=retain))
        return grads, entering[0]

    def _objective_sum(self, x: torch.Tensor, goal: "_Goal", start: int | None = None) -> torch.Tensor:
        """Sum over rows of F: the target's probability, its log, or sum_c p_c log p_c(x) (kl)."""
        logits = _at_least_fp32(self._forward(x, start))
        if self.config.objective == "prob":
            return logits.softmax(-1).gather(1, goal.target[:, None]).sum()
        logp = logits.log_softmax(-1)
        if self.config.objective == "logprob":
            return logp.gather(1, goal.target[:, None]).sum()
        return (goal.clean.to(logp) * logp).sum()

    def _grad(self, output: torch.Tensor, inputs: Sequence[torch.Tensor], rows: int, blocks: int, retain: bool = False
              ) -> tuple[torch.Tensor, ...]:
        """Gradients of ``output``; ``blocks`` is how many blocks the backward runs through (for the counts)."""
        grads = torch.autograd.grad(output, list(inputs), retain_graph=retain)
        self.stats.add("backward", rows, blocks)
        return grads

    def _path_clamp(self, a: torch.Tensor, units: torch.Tensor, img: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Leaf (R, T, H): the clean row a[img] with the path units scaled by alpha."""
        base = a[img]
        mask = torch.zeros(len(img), base.shape[-1], dtype=torch.bool, device=base.device)
        mask.scatter_(1, units[img], True)
        scale = torch.where(mask, alpha[:, None].to(base), torch.ones((), dtype=base.dtype, device=base.device))
        return (base * scale[:, None, :]).requires_grad_(True)

    @staticmethod
    def _gather_units(x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """Sum over the K path units of x (R, T, H) -> (R, T); units (R, K)."""
        return x.gather(2, units[:, None, :].expand(-1, x.shape[1], -1)).sum(-1)

    def _greedy_path(self, images: torch.Tensor, goal: "_Goal", acts: list[torch.Tensor]
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """The greedy steps, every pass from the images over chunks of rows (schedule 'recompute')."""
        batch, device = len(images), images.device
        greedy = _Greedy(torch.zeros(batch, acts[0].shape[1], dtype=torch.float64, device=device))
        path = greedy.path
        for t in range(self.adapter.depth):
            g_t = torch.zeros(acts[t].shape, dtype=torch.float64, device=device)
            g_path = torch.zeros_like(greedy.a_path)
            for img, alpha in self._row_chunks(batch):
                img, alpha = img.to(device), alpha.to(device)
                clamps = {l: self._path_clamp(acts[l], path[l], img, alpha) for l in range(t)}
                clamps[t] = (acts[t][img] * alpha[:, None, None].to(acts[t])).requires_grad_(True)
                with torch.enable_grad(), override_ffn(self.adapter, clamps, self.tokens):
                    out = self._objective_sum(images[img], goal.rows(img))
                    grads = self._grad(out, [clamps[l] for l in range(t + 1)], len(img), self.adapter.depth)
                g_t.index_add_(0, img, grads[t].double())
                for l in range(t):
                    g_path.index_add_(0, img, self._gather_units(grads[l].double(), path[l][img]))
            greedy.choose(g_t, g_path, acts[t], self.config)
        return greedy.path, greedy.step_scores, greedy.step_own

    def _schedule(self) -> str:
        """'tangent' when carrying tangents costs less than back-propagating through the prefix at every
        step: (L-1)*T one-block tangent passes against L(L-1)/2 block backwards, i.e. L > 2*T*TANGENT_COST,
        and only for scopes of a few tokens (CLS, CLS+DIST); else 'kept'."""
        if self.schedule != "auto":
            return self.schedule
        return auto_schedule(self.adapter.depth, len(range(*self.tokens.indices(10**9))))

    def _image_groups(self, batch: int) -> list[torch.Tensor] | None:
        """Images whose m rows each go in one pass together, in equal groups; None when a pass
        cannot hold the m rows of even one image (then every pass is chunked by rows, uncached)."""
        if self.schedule == "recompute":
            return None
        m = self.config.steps
        size = self.config.max_rows or (self.memory.rows(m * batch) if self.memory else m * batch)
        per_group = size // m
        if per_group < 1:
            return None
        return list(torch.arange(batch).tensor_split(math.ceil(batch / per_group)))

    def _greedy_path_cached(self, images: torch.Tensor, goal: "_Goal", acts: list[torch.Tensor]
                            ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """The greedy steps and the path score of images whose m*b rows fit one pass, reusing the prefix.

        Steps t and t+1 clamp blocks < t alike, so the residual stream entering block t, computed at
        step t, is the same at step t+1, at every later step and in the path score. It is kept with
        its autograd graph (backward passes retain it): step t+1 runs blocks t.. only, the path score
        block L-1 only, and each still has ONE backward to every clamped block. Forward block-rows
        per image: m * (L + sum_{t=1}^{L-1} (L - t + 1) + 1) instead of m * L * (L + 1).
        """
        cfg, batch, device, depth = self.config, len(images), images.device, self.adapter.depth
        img, alpha = self._scaled_rows(batch, device)
        x, goal = images[img], goal.rows(img)
        greedy = _Greedy(torch.zeros(batch, acts[0].shape[1], dtype=torch.float64, device=device))
        path = greedy.path
        leaves: list[torch.Tensor] = []  # the path clamp of each chosen block, in the kept graph
        for t in range(depth + 1):  # t = depth: the path score
            clamps = {}
            if t > 0:
                leaves.append(self._path_clamp(acts[t - 1], path[t - 1], img, alpha))
                clamps[t - 1] = leaves[t - 1]
            if t < depth:
                clamps[t] = (acts[t][img] * alpha[:, None, None].to(acts[t])).requires_grad_(True)
            # the backward reaches block 0 and retains the graph: the kept prefix stays reachable from x
            grads, x = self._step_pass(x, goal, clamps, leaves + ([clamps[t]] if t < depth else []), t, depth,
                                       retain=t < depth)
            g_path = torch.zeros_like(greedy.a_path)
            for l in range(t):
                g_path.index_add_(0, img, self._gather_units(grads[l].double(), path[l][img]))
            if t == depth:
                return greedy.path, greedy.step_scores, greedy.step_own, greedy.path_score(g_path, cfg.steps)
            g_t = torch.zeros(acts[t].shape, dtype=torch.float64, device=device).index_add_(0, img, grads[t].double())
            greedy.choose(g_t, g_path, acts[t], cfg)
        raise AssertionError("unreachable: the loop returns at t = depth")

    def _greedy_path_tangent(self, images: torch.Tensor, goal: "_Goal", acts: list[torch.Tensor]
                             ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """The greedy steps and the path score with no backward below the changed block.

        At step t the path units of blocks < t-1 act on F only through the residual stream B entering
        block t-1, so the sum of their gradients is <dF/dB, tau>, tau the derivative of B along those
        units (one tangent per scope token). Step t keeps B (values only), runs blocks t-1.. and
        back-propagates to B and to the clamps of blocks t-1 and t; then one forward-mode pass of
        block t-1 carries tau to the next boundary. Per image: backward block-rows
        m * (L + sum_{t=1}^{L-1} (L - t + 1) + 1) instead of m * L * (L + 1), plus (L-1)*T one-block
        tangent passes.
        """
        cfg, batch, device, depth = self.config, len(images), images.device, self.adapter.depth
        img, alpha = self._scaled_rows(batch, device)
        x, goal = images[img], goal.rows(img)
        greedy = _Greedy(torch.zeros(batch, acts[0].shape[1], dtype=torch.float64, device=device))
        path = greedy.path
        tangent: torch.Tensor | None = None  # (T, R, N, D): d B / d (path units at scope token j of the blocks before it)
        for t in range(depth + 1):  # t = depth: the path score
            clamps, inputs = {}, []
            if tangent is not None:
                x = x.detach().requires_grad_(True)
                inputs.append(x)
            if t > 0:
                clamps[t - 1] = self._path_clamp(acts[t - 1], path[t - 1], img, alpha)
                inputs.append(clamps[t - 1])
            if t < depth:
                clamps[t] = (acts[t][img] * alpha[:, None, None].to(acts[t])).requires_grad_(True)
                inputs.append(clamps[t])
            grads, entering = self._step_pass(x, goal, clamps, inputs, t, depth - max(t - 1, 0))  # down to x only
            g_path = torch.zeros_like(greedy.a_path)
            if tangent is not None:
                through = torch.einsum("rnd,jrnd->rj", grads.pop(0).double(), tangent.double())
                g_path.index_add_(0, img, through)
            if t > 0:
                g_path.index_add_(0, img, self._gather_units(grads.pop(0).double(), path[t - 1][img]))
                if t < depth:
                    tangent = self._carry_tangent(t - 1, x.detach(), tangent, clamps[t - 1].detach(), path[t - 1][img])
            if t == depth:
                return greedy.path, greedy.step_scores, greedy.step_own, greedy.path_score(g_path, cfg.steps)
            x = entering.detach()
            g_t = torch.zeros(acts[t].shape, dtype=torch.float64, device=device).index_add_(0, img, grads.pop(0).double())
            greedy.choose(g_t, g_path, acts[t], cfg)
        raise AssertionError("unreachable: the loop returns at t = depth")

    @torch.no_grad()
    def _carry_tangent(self, block: int, x: torch.Tensor, tangent: torch.Tensor | None, clamp: torch.Tensor,
                       units: torch.Tensor) -> torch.Tensor:
        """The tangent of the residual stream leaving ``block`` (entering block+1), one per scope token j:
        the incoming tangent[j] carried through the block plus the block's own path units at token j."""
        carried = []
        dtype = _AUTOCAST.get(self.config.precision)
        for j in range(clamp.shape[1]):
            direction = torch.zeros_like(clamp)
            direction[:, j].scatter_(1, units, 1.0)
            with ExitStack() as stack:
                stack.enter_context(warnings.catch_warnings())
                # torch's first make_dual scripts its forward-mode decompositions and warns that jit.script is deprecated
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
                stack.enter_context(fwAD.dual_level())
                stack.enter_context(sdpa_kernel([SDPBackend.MATH]))  # the fused kernels have no forward-mode rule
                stack.enter_context(torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None))
                stack.enter_context(_tf32(self.config.precision == "tf32"))
                stack.enter_context(override_ffn(self.adapter, {block: fwAD.make_dual(clamp, direction)}, self.tokens))
                x_in = x if tangent is None else fwAD.make_dual(x, tangent[j].to(x.dtype))
                carried.append(fwAD.unpack_dual(self.adapter.blocks[block](x_in)).tangent)
            self.stats.add("tangent", len(x), 1)
        return torch.stack(carried)

    def _path_score(
        self, images: torch.Tensor, goal: "_Goal", acts: list[torch.Tensor], path: list[torch.Tensor]
    ) -> torch.Tensor:
        batch, device, depth = len(images), images.device, self.adapter.depth
        g_sum = torch.zeros(batch, acts[0].shape[1], dtype=torch.float64, device=device)
        for img, alpha in self._row_chunks(batch):
            img, alpha = img.to(device), alpha.to(device)
            clamps = {l: self._path_clamp(acts[l], path[l], img, alpha) for l in range(depth)}
            with torch.enable_grad(), override_ffn(self.adapter, clamps, self.tokens):
                out = self._objective_sum(images[img], goal.rows(img))
                grads = self._grad(out, [clamps[l] for l in range(depth)], len(img), depth)
            for l in range(depth):
                g_sum.index_add_(0, img, self._gather_units(grads[l].double(), path[l][img]))
        a_sum = sum(self._gather_units(acts[l].double(), path[l]) for l in range(depth))
        return (g_sum * a_sum).sum(dim=1) / self.config.steps / g_sum.shape[1]

    def _influence_pattern_path(self, images: torch.Tensor, goal: "_Goal") -> list[torch.Tensor]:
        """Influence Pattern (spec §4.1): per layer, the units with the largest mean gradient of F
        over the m input-scaled copies alpha_k * x (and over the scope tokens). The reference's
        clamps are value-preserving, so one forward and one backward give every layer at once."""
        batch, device, depth = len(images), images.device, self.adapter.depth
        grad_sum: list[torch.Tensor] | None = None
        for img, alpha in self._row_chunks(batch):
            img, alpha = img.to(device), alpha.to(device)
            x = (images[img] * alpha[:, None, None, None].to(images)).requires_grad_(True)
            taps: dict[int, torch.Tensor] = {}

            def tap(b: int, hidden: torch.Tensor) -> torch.Tensor:
                taps[b] = hidden[:, self.tokens]
                return replace_tokens(hidden, self.tokens, taps[b])

            with torch.enable_grad(), ffn_hooks(self.adapter, tap):
                out = self._objective_sum(x, goal.rows(img))
                grads = self._grad(out, [taps[l] for l in range(depth)], len(img), depth)
            if grad_sum is None:
                grad_sum = [torch.zeros(batch, g.shape[-1], dtype=torch.float64, device=device) for g in grads]
            for l in range(depth):
                grad_sum[l].index_add_(0, img, grads[l].double().sum(dim=1))
        return [stable_topk(g, self.config.topk) for g in grad_sum]


@dataclass
class _Greedy:
    """The greedy path so far: the chosen units per block, the dense step scores S_t and their own
    term, and the running sum of the clean activations at the chosen units (per image and token)."""

    a_path: torch.Tensor  # (B, T), fp64
    path: list[torch.Tensor] = field(default_factory=list)
    step_scores: list[torch.Tensor] = field(default_factory=list)
    step_own: list[torch.Tensor] = field(default_factory=list)

    def choose(self, g_t: torch.Tensor, g_path: torch.Tensor, a_t: torch.Tensor, cfg: DiscoveryConfig) -> None:
        """Score every unit of the next block from its summed gradients g_t (B, T, H) and those of the
        path so far g_path (B, T), and take the K best."""
        a_t = a_t.double()
        scores = ((g_t + g_path[..., None]) * (a_t + self.a_path[..., None])).sum(dim=1) / cfg.steps
        self.path.append(stable_topk(scores, cfg.topk))
        self.step_scores.append(scores)
        self.step_own.append((g_t * a_t).sum(dim=1) / cfg.steps)
        self.a_path += PathFinder._gather_units(a_t, self.path[-1])

    def path_score(self, g_sum: torch.Tensor, steps: int) -> torch.Tensor:
        """JAS of the whole path from the summed path-unit gradients (B, T) of the all-clamped pass."""
        return (g_sum * self.a_path).sum(dim=1) / steps / g_sum.shape[1]


@dataclass(frozen=True)
class _Goal:
    """What F is taken for, per image: the target class and the clean softmax (for kl)."""

    target: torch.Tensor  # (B,)
    clean: torch.Tensor  # (B, classes)

    def rows(self, img: torch.Tensor) -> "_Goal":
        return _Goal(self.target[img], self.clean[img])


def find_paths(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    topk: int = 1,
    steps: int = 20,
    method: str = "jas",
    token_scope: str = "auto",
    label: str = "truth",
    max_rows: int | None = None,
    precision: str = "fp32",
    objective: str = "prob",
) -> list[dict]:
    """Top-K neuron paths of preprocessed ``images`` (B, C, H, W): one record per image.

    Each record has ``path`` ([L][K] unit indices, best first), ``score`` (its JAS),
    ``base_path`` / ``base_score`` (the activation baseline: the K largest clean units per
    layer, scored the same way), ``label``, ``target`` (the class F is taken for), ``pred``
    and ``prob`` (clean softmax probability of the target).
    """
    config = DiscoveryConfig(topk=topk, steps=steps, method=method, token_scope=token_scope, label=label, max_rows=max_rows,
                             precision=precision, objective=objective)
    return PathFinder(model, config).find(images, labels)
