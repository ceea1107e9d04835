"""``analyze lens``: the class-embedding lens (class_embedding spec sections 1, 2, 5).

Every token at every site is read with the model's own readout, ``head(norm_f(x))``: the
residual stream after block b (``blocks[b]``), and what the attention and MLP sublayers add
to it (the attention's and the MLP's outputs times their layer scale). Sublayer outputs go through the
final norm on their own, as in the paper, so the reading is about direction, not magnitude.
MLP units are labelled as key-value memories: value v_m = fc2.weight[:, m] (times the ls2
gain), scored against the classes with the final-norm gain folded into the head.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..discovery.records import PathRecord
from ..errors import UserError
from ..files import atomic_write_json
from ..model.adapter import FamilyAdapter, Readout, adapter_for
from .runs import check_paths, default_out, load_run_data, load_run_model, load_runs, resolve_spec

SITES = ("resid", "attn", "mlp")


def resolve_readout(model: nn.Module) -> Readout:
    """The model's readout (final norm, pool, head), refusing models whose output is not one readout of the stream."""
    return adapter_for(model).readout()


@contextmanager
def capture_sites(model: nn.Module) -> Iterator[dict[tuple[str, int], torch.Tensor]]:
    """Forward hooks recording (site, block) -> (B, N, d) for resid (the block's output) and attn / mlp (what each
    branch adds to the stream: its module's output times the branch's layer scale); always removed."""
    store: dict[tuple[str, int], torch.Tensor] = {}
    handles = []
    adapter = adapter_for(model)
    try:
        for b, block in enumerate(adapter.blocks):
            modules = {"resid": block, **adapter.branch_modules(b)}
            for site in SITES:
                scale = adapter.branch_scale(b, site) if site != "resid" else None

                def hook(_m, _inp, output, _key=(site, b), _scale=scale):
                    out = output.detach()
                    store[_key] = out if _scale is None else out * _scale.detach()

                handles.append(modules[site].register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


def class_ranks(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rank, true logit): rank = number of classes with a strictly greater logit than the label's."""
    shape = labels.view(-1, *([1] * (logits.dim() - 1)))
    true = logits.gather(-1, shape.expand(*logits.shape[:-1], 1))
    return (logits > true).sum(-1), true.squeeze(-1)


class _Mean:
    """Running per-block mean of a statistic."""

    def __init__(self, depth: int) -> None:
        self.total = np.zeros(depth)
        self.count = np.zeros(depth)

    def add(self, b: int, values: torch.Tensor) -> None:
        self.total[b] += float(values.double().sum())
        self.count[b] += values.numel()

    def values(self) -> list[float | None]:
        return [float(t / c) if c else None for t, c in zip(self.total, self.count)]


@torch.no_grad()
def lens_statistics(model: nn.Module, batches: Iterable[tuple[list[str], torch.Tensor, torch.Tensor]], *,
                    total: int | None = None, quiet: bool = False) -> dict:
    """Identifiability per site/block (CLS, image tokens, pooled readout) and attention-vs-MLP CSCR."""
    from ..progress import progress_bar

    readout = resolve_readout(model)
    depth, num_classes = adapter_for(model).depth, int(readout.head.out_features)
    device = next(model.parameters()).device
    groups = (["cls"] if readout.has_cls else []) + ["image"]
    ident = {(s, g): _Mean(depth) for s in SITES for g in groups}
    top1 = {(s, g): _Mean(depth) for s in SITES for g in groups}
    pooled_ident, pooled_top1 = _Mean(depth), _Mean(depth)
    cscr = {(t, g): _Mean(depth) for t in ("attn", "mlp") for g in groups}
    readout_err = 0.0
    n_images = 0

    def split(x: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = {"image": x[:, readout.num_prefix:]}
        if readout.has_cls:
            parts["cls"] = x[:, 0]
        return parts

    with progress_bar(total=total, desc="lens", unit="img", disable=quiet) as bar:
        for _, images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            with capture_sites(model) as acts:
                logits = model(images).float()
            prev_true = None
            for b in range(depth):
                true_logit = {}
                for site in SITES:
                    rank, true = class_ranks(readout.project(acts[(site, b)]).float(), labels)
                    true_logit[site] = true
                    for g, r in split(rank).items():
                        ident[(site, g)].add(b, 1.0 - r.double() / num_classes)
                        top1[(site, g)].add(b, (r == 0).double())
                if prev_true is not None:
                    for t in ("attn", "mlp"):
                        for g, win in split(true_logit[t] > prev_true).items():
                            cscr[(t, g)].add(b, win.double())
                prev_true = true_logit["resid"]
                if readout.pool != "token":
                    pooled = readout.pooled(acts[("resid", b)]).float()
                    rank, _ = class_ranks(pooled, labels)
                    pooled_ident.add(b, 1.0 - rank.double() / num_classes)
                    pooled_top1.add(b, (rank == 0).double())
            last = acts[("resid", depth - 1)]
            final = readout.pooled(last)
            readout_err = max(readout_err, float((final.float() - logits).abs().max()))
            n_images += len(labels)
            bar.update(len(labels))
    result = {
        "num_images": n_images, "num_classes": num_classes, "depth": depth, "pool": readout.pool,
        "num_prefix_tokens": readout.num_prefix, "token_groups": groups,
        "final_norm": "fc_norm" if readout.pool_uses_fc_norm else "norm",
        "readout_max_abs_error": readout_err,
        "identifiability": {s: {g: ident[(s, g)].values() for g in groups} for s in SITES},
        "top1_rate": {s: {g: top1[(s, g)].values() for g in groups} for s in SITES},
        "cscr": {g: {t: cscr[(t, g)].values() for t in ("attn", "mlp")} for g in groups},
    }
    if readout.pool != "token":
        result["identifiability"]["resid"]["pooled"] = pooled_ident.values()
        result["top1_rate"]["resid"]["pooled"] = pooled_top1.values()
    return result


@torch.no_grad()
def label_units(model: nn.Module, k: int = 5) -> list[dict[str, torch.Tensor]]:
    """Per block, the top-k classes each MLP unit writes: S = (E * gamma_f) @ (v_m - mean(v_m)).

    Centring removes the direction the final LayerNorm subtracts; the head bias is left out
    because it does not depend on the unit. Weights are read, never modified.
    """
    readout = resolve_readout(model)
    adapter = adapter_for(model)
    num_classes = int(readout.head.out_features)
    if not 1 <= k <= num_classes:
        raise UserError(f"--label-topk must be in 1..{num_classes} (got {k})")
    weight = readout.head.weight.detach().float()
    gamma = getattr(readout.norm, "weight", None)
    if gamma is not None:
        weight = weight * gamma.detach().float()
    out = []
    for b in range(adapter.depth):
        values = adapter.mlp_value_vectors(b)  # (d, M): column m is what unit m writes
        if readout.pool == "map":  # an attention pool is no linear map: read each value vector through it, as a token
            scores = readout.project(values.T.to(weight.device)).float().T  # (C, M)
        else:
            scores = weight @ (values - values.mean(0, keepdim=True))  # (C, M)
        top = scores.topk(k, dim=0)
        out.append({"top": top.indices.T.cpu(), "score": top.values.T.cpu()})
    return out


def path_unit_labels(records: Sequence[PathRecord], labels: Sequence[dict[str, torch.Tensor]], num_classes: int) -> dict:
    """For each class's path units in the last third of the blocks: the classes they write (top-1 label)."""
    depth = len(labels)
    first = depth - max(1, depth // 3)
    counts: dict[int, np.ndarray] = {}
    for rec in records:
        cls = rec.target
        row = counts.setdefault(cls, np.zeros(num_classes))
        for layer in range(first, depth):
            for u in rec.path[layer]:
                row[int(labels[layer]["top"][int(u), 0])] += 1
    classes = sorted(counts)
    matrix = np.stack([counts[c] / max(counts[c].sum(), 1) for c in classes]) if classes else np.zeros((0, num_classes))
    return {
        "layers": list(range(first, depth)), "classes": classes, "matrix": matrix,
        "self_fraction": {str(c): float(matrix[i, c]) for i, c in enumerate(classes)},
        "units": {str(c): int(counts[c].sum()) for c in classes}, "chance": 1.0 / num_classes,
    }


def lens_analysis(path: str | Path, out: str | Path | None = None, *, model: str | None = None,
                  data: str | None = None, device: str = "auto", per_class: int | None = None, label_topk: int | None = None,
                  batch_size: int = 64, quiet: bool = False) -> dict:
    """Lens statistics on the run's images and labels of its path units; writes lens.json and PNGs into ``out``."""
    from ..data import model_transform, select_per_class
    from .plots import block_curves, label_heatmap

    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1 (got {batch_size})")
    run = load_runs([path])[0]
    net = load_run_model([run], model, device)
    resolve_readout(net)  # refuses distilled / attention-pool models before any data is read
    adapter = adapter_for(net)
    check_paths(run.records, "path", adapter.hidden_widths, run.folder)
    data_spec, pools = load_run_data([run], data, adapter.num_classes)
    names = list(pools.class_names)
    sel = run.header.data if run.header is not None else None
    pool = pools.evaluation if sel is not None and sel.pool == "evaluation" else pools.calibration
    count = per_class if per_class is not None else (sel.per_class if sel is not None else 5)
    images = select_per_class(pool, count, sel.classes if sel is not None else None, num_classes=pools.num_classes)
    stats = lens_statistics(net, images.batches(model_transform(net), batch_size), total=len(images), quiet=quiet)
    units = label_units(net, label_topk if label_topk is not None else min(5, adapter.num_classes))
    paths = path_unit_labels(run.records, units, adapter.num_classes)
    out = Path(out) if out else default_out(run, "lens")
    out.mkdir(parents=True, exist_ok=True)
    title = f"{Path(resolve_spec([run], 'model', model)).name}"
    figures = [
        (block_curves(stats["identifiability"], out / "lens_identifiability.png", f"class identifiability per site — {title}",
                         ylabel="class identifiability (1 - rank / C)")).name,
        (block_curves(stats["cscr"], out / "lens_cscr.png", f"attention vs MLP class-similarity change rate — {title}",
                         ylabel="P[p_c(sublayer out) > p_c(block input)]", panel_title="{} tokens", width=4.6)).name,
    ]
    if paths["classes"]:
        figures.append((label_heatmap(paths["matrix"], [names[c] for c in paths["classes"]], names,
                                         out / "lens_path_labels.png",
                                         f"classes written by path units of block(s) {', '.join(map(str, paths['layers']))}")).name)
    report = {
        "path": str(run.folder), "model": resolve_spec([run], "model", model), "data": data_spec,
        "images": len(images), **stats,
        "unit_labels": [{"top": u["top"].tolist(), "top1_score": u["score"][:, 0].tolist()} for u in units],
        "path_units": {**paths, "matrix": paths["matrix"].tolist(),
                       "class_names": [names[c] for c in paths["classes"]]},
        "figures": figures,
    }
    atomic_write_json(out / "lens.json", report)
    report["out"] = str(out)
    return report


__all__ = ["lens_analysis", "lens_statistics", "label_units", "resolve_readout", "capture_sites", "path_unit_labels"]
