"""JAS discovery organised as the NeuronPath reference code does it, for the speed comparison.

The passes follow ``path/joint_attr.py`` (spec ``neuronpath_reference.md`` §3, §10.4): per greedy
step t a clean forward with autograd on (the reference re-reads a_t with one forward per step),
one forward over the m·B k-major scaled rows with the CLS row (or the scope rows) of every layer
l <= t overwritten in place after the activation, and one ``autograd.grad`` call per clamped layer
(``retain_graph=True``); then the path and the activation baseline are scored the same way with
all L layers clamped. It runs on a stock timm ViT through forward pre-hooks on ``mlp.fc2``.

Semantics are vitprune's, so records compare unit by unit: top-K counts all K units of earlier
layers (the reference's top-K scorer counts only the last-listed one; for K = 1 the two agree),
and the target is each image's own label (the reference takes ``y[0]`` for the whole batch; equal
for batches of one class or B = 1).
"""
from __future__ import annotations

import torch
from torch import nn


class ReferenceJAS:
    """``find(images, labels)`` -> one record per image with path, score, base_path, base_score."""

    def __init__(self, model: nn.Module, topk: int, steps: int, tokens: slice) -> None:
        self.model, self.topk, self.m, self.tokens = model, topk, steps, tokens
        self.blocks = list(model.blocks)

    def _run(self, x: torch.Tensor, clamps: dict[int, torch.Tensor] | None = None, read: int | None = None):
        """Logits, with clamps[l] written over the scope rows of block l's hidden units; optionally
        the scope rows of block ``read``'s hidden units (the reference's ``model(x, tgt_layer=t)[2]``)."""
        store = {}

        def make(l):
            def pre(_mod, args):
                h = args[0]
                if clamps is not None and l in clamps:
                    h[:, self.tokens] = clamps[l]  # in place, as the reference's Mlp.forward does
                if l == read:
                    store["h"] = h[:, self.tokens]
                return None

            return pre

        layers = set(clamps or ()) | ({read} if read is not None else set())
        handles = [self.blocks[l].mlp.fc2.register_forward_pre_hook(make(l)) for l in layers]
        try:
            logits = self.model(x)
        finally:
            for h in handles:
                h.remove()
        return logits, store.get("h")

    def _f(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1).gather(1, target[:, None])[:, 0]

    def _path_inputs(self, a: torch.Tensor, units: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Rows k*B + i: a_l[i] with the path units scaled by alpha_k, the rest at their clean value."""
        base = a.repeat(self.m, 1, 1)
        idx = units.repeat(self.m, 1)
        scale = torch.ones_like(base)
        scale.scatter_(2, idx[:, None, :].expand(-1, base.shape[1], -1), alpha[:, None, None].expand(-1, base.shape[1], idx.shape[1]).to(base))
        return (base * scale).requires_grad_(True)

    def _gather(self, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        return x.gather(2, units[:, None, :].expand(-1, x.shape[1], -1)).sum(-1)

    def _score(self, x, target, acts, path, alpha):
        """JAS of a path: all L layers clamped, one autograd.grad per layer."""
        B, L = len(x), len(self.blocks)
        clamps = {l: self._path_inputs(acts[l], path[l], alpha) for l in range(L)}
        f = self._f(self._run(x.repeat(self.m, 1, 1, 1), clamps)[0], target.repeat(self.m))
        g = torch.zeros(B, acts[0].shape[1], dtype=torch.float64)
        for l in range(L):
            (grad,) = torch.autograd.grad(torch.unbind(f), clamps[l], retain_graph=True)
            g += self._gather(grad.double(), path[l].repeat(self.m, 1)).view(self.m, B, -1).sum(0)
        a = sum(self._gather(acts[l].double(), path[l]) for l in range(L))
        return (g * a).sum(1) / self.m / g.shape[1]

    def find(self, images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
        B, L, m = len(images), len(self.blocks), self.m
        alpha = (torch.arange(m * B) // B).double() / m  # k-major rows
        acts, path = [], []
        for t in range(L):
            _, a_t = self._run(images, read=t)  # the reference's per-step clean read, autograd on
            acts.append(a_t.detach().float())
            clamps = {l: self._path_inputs(acts[l], path[l], alpha) for l in range(t)}
            clamps[t] = (acts[t].repeat(m, 1, 1) * alpha[:, None, None].to(acts[t])).requires_grad_(True)
            f = self._f(self._run(images.repeat(m, 1, 1, 1), clamps)[0], labels.repeat(m))
            grads = [torch.autograd.grad(torch.unbind(f), clamps[l], retain_graph=True)[0] for l in range(t + 1)]
            g_t = grads[t].double().view(m, B, *acts[t].shape[1:]).sum(0)
            g_path = sum((self._gather(grads[l].double(), path[l].repeat(m, 1)).view(m, B, -1).sum(0) for l in range(t)),
                         torch.zeros(B, acts[t].shape[1], dtype=torch.float64))
            a_path = sum((self._gather(acts[l].double(), path[l]) for l in range(t)), torch.zeros_like(g_path))
            scores = ((g_t + g_path[..., None]) * (acts[t].double() + a_path[..., None])).sum(1) / m
            path.append(torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, : self.topk])
        base = [torch.sort(a.sum(1), dim=-1, descending=True, stable=True).indices[:, : self.topk] for a in acts]
        score, base_score = self._score(images, labels, acts, path, alpha), self._score(images, labels, acts, base, alpha)
        return [{"path": [p[i].tolist() for p in path], "score": float(score[i]),
                 "base_path": [p[i].tolist() for p in base], "base_score": float(base_score[i])} for i in range(B)]
