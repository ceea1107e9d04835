"""A slow, literal implementation of the NeuronPath formulas (spec §3, §4.1), for tests only.

It deliberately shares no code with vitprune: its own hooks, one image at a time, one forward
per interpolation step, and one ``autograd.grad`` call per clamped layer, as the reference does.
Top-K counts all K units of every earlier layer (vitprune's documented fix of the reference).
"""
from __future__ import annotations

import torch


def _clean_acts(model, x, tokens):
    acts = {}
    handles = [
        blk.mlp.fc2.register_forward_pre_hook(lambda mod, args, l=l: acts.__setitem__(l, args[0][0, tokens].detach().clone()))
        for l, blk in enumerate(model.blocks)
    ]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return [acts[l] for l in range(len(model.blocks))], logits[0]


def _objective(logits, label, objective, clean):
    """F of one image: the label's probability, its log, or sum_c p_c log p_c(x) with p the clean softmax."""
    if objective == "prob":
        return logits.softmax(-1)[0, label]
    if objective == "logprob":
        return logits.log_softmax(-1)[0, label]
    return (clean.softmax(-1) * logits.log_softmax(-1)[0]).sum()


def _prob_with_clamps(model, x, label, clamps, tokens, objective="prob", clean=None):
    def make(l):
        def pre(mod, args):
            h = args[0].clone()
            h[0, tokens] = clamps[l]
            return (h,)
        return pre

    handles = [model.blocks[l].mlp.fc2.register_forward_pre_hook(make(l)) for l in clamps]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return _objective(logits, label, objective, clean)


def _scaled_path_clamp(a, units, alpha):
    z = a.clone()
    for u in units:
        z[:, u] = alpha * a[:, u]
    return z.requires_grad_(True)


def _topk(scores, k):
    return sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))[:k]


def literal_path_score(model, x, label, acts, path, m, tokens, objective="prob", clean=None):
    L, T = len(acts), acts[0].shape[0]
    g = torch.zeros(T, dtype=acts[0].dtype)
    for k in range(m):
        clamps = {l: _scaled_path_clamp(acts[l], path[l], k / m) for l in range(L)}
        f = _prob_with_clamps(model, x, label, clamps, tokens, objective, clean)
        for l in range(L):
            (grad,) = torch.autograd.grad(f, clamps[l], retain_graph=True)
            for u in path[l]:
                g = g + grad[:, u]
    a = sum(acts[l][:, u] for l in range(L) for u in path[l])
    return float((g * a).sum() / m / T)


def literal_jas(model, images, labels, *, topk, steps, tokens, objective="prob"):
    """Records {path, score, base_path, base_score, step_scores} per image, computed literally
    (step_scores: the greedy score of every unit of every layer; step_own: its own-term part)."""
    out = []
    L = len(model.blocks)
    for i in range(len(images)):
        x, label = images[i : i + 1], int(labels[i])
        acts, clean = _clean_acts(model, x, tokens)
        path, step_scores, step_own = [], [], []
        for t in range(L):
            g_t = torch.zeros_like(acts[t])
            g_path = torch.zeros(acts[t].shape[0], dtype=acts[t].dtype)
            for k in range(steps):
                alpha = k / steps
                clamps = {l: _scaled_path_clamp(acts[l], path[l], alpha) for l in range(t)}
                clamps[t] = (alpha * acts[t]).requires_grad_(True)
                f = _prob_with_clamps(model, x, label, clamps, tokens, objective, clean)
                for l in range(t + 1):
                    (grad,) = torch.autograd.grad(f, clamps[l], retain_graph=True)
                    if l == t:
                        g_t = g_t + grad
                    else:
                        for u in path[l]:
                            g_path = g_path + grad[:, u]
            a_path = sum((acts[l][:, u] for l in range(t) for u in path[l]), torch.zeros_like(g_path))
            scores = ((g_t + g_path[:, None]) * (acts[t] + a_path[:, None]) / steps).sum(0)
            path.append(_topk(scores, topk))
            step_scores.append(scores)
            step_own.append((g_t * acts[t]).sum(0) / steps)
        base = [_topk(a.sum(0), topk) for a in acts]
        out.append({
            "path": path,
            "score": literal_path_score(model, x, label, acts, path, steps, tokens, objective, clean),
            "base_path": base,
            "base_score": literal_path_score(model, x, label, acts, base, steps, tokens, objective, clean),
            "step_scores": step_scores,
            "step_own": step_own,
        })
    return out


def literal_influence_pattern(model, images, labels, *, topk, steps, tokens):
    """Per image: per layer, the K units with the largest gradient of F averaged over the
    input-scaled copies alpha_k * x and the scope tokens; one autograd.grad per layer."""
    paths = []
    L = len(model.blocks)
    for i in range(len(images)):
        label = int(labels[i])
        total = [0.0] * L
        for k in range(steps):
            x = (images[i : i + 1] * (k / steps)).requires_grad_(True)
            taps = {}

            def make(l):
                def pre(mod, args):
                    taps[l] = args[0][:, tokens]
                    h = args[0].clone()
                    h[:, tokens] = taps[l]
                    return (h,)
                return pre

            handles = [model.blocks[l].mlp.fc2.register_forward_pre_hook(make(l)) for l in range(L)]
            try:
                f = model(x).softmax(-1)[0, label]
            finally:
                for h in handles:
                    h.remove()
            for l in range(L):
                (grad,) = torch.autograd.grad(f, taps[l], retain_graph=True)
                total[l] = total[l] + grad[0].sum(0)
        paths.append([_topk(total[l], topk) for l in range(L)])
    return paths
