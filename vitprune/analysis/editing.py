"""``analyze manipulate``: test-time edits of path units and what they do to the true-class probability.

As in the reference (neuronpath spec section 7), an edit multiplies the post-activation MLP
units of a path (the input of ``fc2``) at every path layer at once, on the run's token scope:
``remove`` x0, ``enhance`` x2, ``keep-only`` zeroes (a random fraction of) every *other* unit.
Edits are a per-row multiplicative mask in a forward pre-hook, so each image can carry its own
path. Two modes: per-image paths (in-sample, every image edited with its own path) and
class-level paths (the per-slot mode over a class's records, evaluated on held-out images).

"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..discovery.records import PathRecord, PathRun
from ..errors import UserError
from ..files import atomic_write_json
from ..model.adapter import FamilyAdapter, adapter_for
from ..model.hooks import ffn_hooks
from .runs import METHODS, check_paths, default_out, load_run_data, load_run_model, load_runs, method_sources, resolve_spec, write_csv

OPERATIONS = ("remove", "enhance", "keep-only")
FACTORS = {"remove": 0.0, "enhance": 2.0}
MODES = ("per-image", "class")


# ---------------------------------------------------------------------------------- edits
def edit_masks(paths: torch.Tensor, widths: Sequence[int], operation: str, *, keep_fraction: float = 1.0,
               generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Per-block (B, H) multiplicative masks for paths shaped (B, L, K).

    keep-only zeroes exactly round(p * n_other) of each row's non-path units, chosen uniformly
    at random with ``generator``; path units are never touched (p = 0: no-op, p = 1: all others).
    """
    if operation not in OPERATIONS:
        raise UserError(f"unknown edit operation '{operation}'; use one of {', '.join(OPERATIONS)}")
    if not 0.0 <= keep_fraction <= 1.0:
        raise UserError(f"--keep-fraction must be in [0, 1] (got {keep_fraction})")
    paths = torch.as_tensor(paths, dtype=torch.long)
    rows = paths.shape[0]
    masks = []
    for layer, width in enumerate(widths):
        idx = paths[:, layer, :]
        mask = torch.ones(rows, width)
        if operation in FACTORS:
            masks.append(mask.scatter_(1, idx, FACTORS[operation]))
            continue
        kept = torch.zeros(rows, width, dtype=torch.bool).scatter_(1, idx, True)
        n_zero = torch.round(keep_fraction * (~kept).sum(1).double()).long()
        draw = torch.rand(rows, width, generator=generator)
        draw[kept] = 2.0  # path units sort last: never among the zeroed
        rank = torch.empty(rows, width, dtype=torch.long).scatter_(
            1, draw.argsort(1), torch.arange(width).expand(rows, width).contiguous())
        mask[rank < n_zero[:, None]] = 0.0
        masks.append(mask)
    return masks


@contextmanager
def apply_masks(adapter: FamilyAdapter, masks: Sequence[torch.Tensor], tokens: slice) -> Iterator[None]:
    """Multiply the fc2 input of block b at ``tokens`` by ``masks[b]`` (one row per image)."""

    def edit(b: int, hidden: torch.Tensor) -> torch.Tensor:
        m = masks[b].to(device=hidden.device, dtype=hidden.dtype)
        out = hidden.clone()
        out[:, tokens] = hidden[:, tokens] * m[:, None, :]
        return out

    with ffn_hooks(adapter, edit, range(len(masks))):
        yield


@torch.no_grad()
def edited_logits(model: nn.Module, images: torch.Tensor, paths: torch.Tensor, operation: str, *,
                  token_scope: str = "auto", keep_fraction: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logits of ``model`` with each image's path (B, L, K) edited by ``operation`` at ``token_scope``."""
    adapter = adapter_for(model)
    paths = torch.as_tensor(paths, dtype=torch.long)
    if paths.dim() == 2:
        paths = paths[None].expand(images.shape[0], -1, -1)
    masks = edit_masks(paths, adapter.hidden_widths, operation, keep_fraction=keep_fraction, generator=generator)
    with apply_masks(adapter, masks, adapter.token_slice(token_scope)):
        return model(images)


def class_mode_paths(records: Sequence[PathRecord], key: str) -> dict[int, list[list[int]]]:
    """Per class (true label), per layer, per rank slot: the most frequent unit (ties -> smallest index)."""
    from scipy import stats

    by_class: dict[int, list] = {}
    for rec in records:
        by_class.setdefault(rec.label, []).append(getattr(rec, key))
    out = {}
    for cls, paths in sorted(by_class.items()):
        arr = np.asarray(paths, dtype=np.int64)  # (n, L, K)
        out[cls] = stats.mode(arr, axis=0, keepdims=False).mode.astype(int).tolist()
    return out


# --------------------------------------------------------------------------------- metrics
class _Tally:
    """Per-image rows of one (mode, method, operation): label, p_edit/p_clean, clean/edited correctness."""

    def __init__(self) -> None:
        self.labels: list[int] = []
        self.ratios: list[float] = []
        self.clean_ok: list[bool] = []
        self.edit_ok: list[bool] = []

    def add(self, labels: torch.Tensor, clean_logp: torch.Tensor, edit_logp: torch.Tensor) -> None:
        lab = labels[:, None]
        ratio = (edit_logp.gather(1, lab) - clean_logp.gather(1, lab)).exp().squeeze(1)  # stable p_edit / p_clean
        self.labels += labels.tolist()
        self.ratios += ratio.tolist()
        self.clean_ok += (clean_logp.argmax(1) == labels).tolist()
        self.edit_ok += (edit_logp.argmax(1) == labels).tolist()

    def summary(self, class_names: Sequence[str]) -> dict:
        labels, ratios = np.asarray(self.labels), np.asarray(self.ratios, dtype=float)
        clean, edit = np.asarray(self.clean_ok, dtype=float), np.asarray(self.edit_ok, dtype=float)
        per_class = {}
        for c in sorted(set(self.labels)):
            sel = labels == c
            per_class[str(c)] = {"class_name": class_names[c] if c < len(class_names) else str(c), "n": int(sel.sum()),
                                 "prob_ratio": float(ratios[sel].mean()), "top1_clean": float(clean[sel].mean()),
                                 "top1_edited": float(edit[sel].mean())}
        class_ratio = np.asarray([v["prob_ratio"] for v in per_class.values()])
        return {
            "n_images": int(labels.size), "n_classes": len(per_class),
            "prob_ratio_mean": float(class_ratio.mean()), "prob_ratio_median": float(np.median(class_ratio)),
            "prob_deviation_pct": float((class_ratio.mean() - 1.0) * 100.0),
            "top1_clean": float(clean.mean()), "top1_edited": float(edit.mean()),
            "acc_deviation": float(edit.mean() - clean.mean()), "per_class": per_class,
        }


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double(), dim=1).cpu()


# ------------------------------------------------------------------------------ experiment
def manipulate(paths: Sequence[str | Path], out: str | Path | None = None, *, model: str | None = None,
               data: str | None = None, device: str = "auto", modes: Sequence[str] = MODES,
               operations: Sequence[str] = OPERATIONS, keep_fraction: float = 1.0, eval_per_class: int | None = 10,
               batch_size: int = 64, seed: int = 0, quiet: bool = False) -> dict:
    """Edit each method's paths and measure probability and accuracy deviation; writes manipulate.* into ``out``."""
    from ..data import model_transform, select_per_class
    from ..progress import progress_bar
    from .plots import deviation_boxplot

    for m in modes:
        if m not in MODES:
            raise UserError(f"unknown --mode '{m}'; use per-image, class or both")
    for op in operations:
        if op not in OPERATIONS:
            raise UserError(f"unknown operation '{op}'; use one of {', '.join(OPERATIONS)}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1 (got {batch_size})")
    if eval_per_class is not None and eval_per_class < 1:
        raise UserError(f"--eval-per-class must be >= 1 (got {eval_per_class})")
    if not 0.0 <= keep_fraction <= 1.0:
        raise UserError(f"--keep-fraction must be in [0, 1] (got {keep_fraction})")
    runs = load_runs(paths)
    sources = method_sources(runs)
    net = load_run_model(runs, model, device)
    dev = next(net.parameters()).device
    adapter = adapter_for(net)
    widths = adapter.hidden_widths
    for method, (run, key) in sources.items():
        check_paths(run.records, key, widths, run.folder)
    data_spec, pools = load_run_data(runs, data, adapter.num_classes)
    names = list(pools.class_names)
    transform = model_transform(net)
    out = Path(out) if out else default_out(runs[0], "manipulate")
    out.mkdir(parents=True, exist_ok=True)
    tallies: dict[tuple[str, str, str], _Tally] = {}

    def evaluate(dataset, row_paths, method_list, mode: str, run: PathRun, desc: str) -> None:
        """One clean forward per batch, then one edited forward per (method, operation)."""
        tokens = adapter.token_slice(run.token_scope)
        gens = {(m, op): torch.Generator().manual_seed(seed) for m in method_list for op in operations}
        with progress_bar(total=len(dataset), desc=desc, unit="img", disable=quiet) as bar:
            for ids, images, labels in dataset.batches(transform, batch_size):
                images = images.to(dev)
                with torch.no_grad():
                    clean = _log_probs(net(images))
                for m in method_list:
                    rows = [row_paths[m](i, int(y)) for i, y in zip(ids, labels)]
                    have = [r is not None for r in rows]
                    if not any(have):
                        continue
                    sel = torch.as_tensor(have)
                    p = torch.as_tensor([r for r in rows if r is not None], dtype=torch.long)
                    for op in operations:
                        masks = edit_masks(p, widths, op, keep_fraction=keep_fraction, generator=gens[(m, op)])
                        with torch.no_grad(), apply_masks(adapter, masks, tokens):
                            edited = _log_probs(net(images[sel.to(dev)]))
                        tallies.setdefault((mode, m, op), _Tally()).add(labels[sel], clean[sel], edited)
                bar.update(len(ids))

    by_run: dict[Path, list[str]] = {}
    for method, (run, _) in sources.items():
        by_run.setdefault(run.folder, []).append(method)
    run_of = {r.folder: r for r in runs}
    for folder, method_list in by_run.items():
        run = run_of[folder]
        if run.header is None:
            raise UserError(f"{folder} has no vitprune run header (imported reference files?); "
                            "edits need the run's image selection: run 'vitprune discover' to get a run folder")
        sel = run.header.data
        run_pool = pools.calibration if sel.pool == "calibration" else pools.evaluation
        if "per-image" in modes:
            selected = select_per_class(run_pool, sel.per_class, sel.classes, num_classes=pools.num_classes)
            index = {i: n for n, i in enumerate(selected.ids())}
            missing = [r.id for r in run.records if r.id not in index]
            if missing:
                raise UserError(f"{len(missing)} images of {folder} (e.g. '{missing[0]}') are not in '{data_spec}' as the run "
                                "selected them; pass the --data the run was made with")
            dataset = selected.select(sorted(index[r.id] for r in run.records))
            lookup = {m: {r.id: getattr(r, sources[m][1]) for r in run.records} for m in method_list}
            row_paths = {m: (lambda i, y, _t=lookup[m]: _t.get(i)) for m in method_list}
            evaluate(dataset, row_paths, method_list, "per-image", run, f"edit per-image ({folder.name})")
        if "class" in modes:
            class_paths = {m: class_mode_paths(run.records, sources[m][1]) for m in method_list}
            classes = sorted({c for cp in class_paths.values() for c in cp})
            held_out = pools.evaluation if sel.pool == "calibration" else pools.calibration
            dataset = select_per_class(held_out, eval_per_class, classes, num_classes=pools.num_classes)
            row_paths = {m: (lambda i, y, _t=class_paths[m]: _t.get(y)) for m in method_list}
            evaluate(dataset, row_paths, method_list, "class", run, f"edit class-level ({folder.name})")

    results = []
    for (mode, method, op), tally in tallies.items():
        results.append({"mode": mode, "method": method, "operation": op, "token_scope": sources[method][0].token_scope,
                        "run": str(sources[method][0].folder), **tally.summary(names)})
    results.sort(key=lambda r: (MODES.index(r["mode"]), OPERATIONS.index(r["operation"]), METHODS.index(r["method"])))
    report = {
        "settings": {"paths": [str(r.folder) for r in runs], "model": resolve_spec(runs, "model", model), "data": data_spec,
                     "modes": list(modes), "operations": list(operations), "keep_fraction": keep_fraction,
                     "eval_per_class": eval_per_class, "seed": seed},
        "results": results,
    }
    summary_cols = ["mode", "method", "operation", "token_scope", "n_images", "n_classes", "prob_ratio_mean",
                    "prob_ratio_median", "prob_deviation_pct", "top1_clean", "top1_edited", "acc_deviation"]
    write_csv(out / "manipulate.csv", results, summary_cols)
    per_class_rows = [{"mode": r["mode"], "method": r["method"], "operation": r["operation"], "class": c, **v}
                      for r in results for c, v in r["per_class"].items()]
    write_csv(out / "manipulate_per_class.csv", per_class_rows,
              ["mode", "method", "operation", "class", "class_name", "n", "prob_ratio", "top1_clean", "top1_edited"])
    figures = []
    for mode in modes:
        panels: dict[str, dict[str, list[float]]] = {}
        for r in results:
            if r["mode"] == mode:
                panels.setdefault(r["operation"], {})[r["method"]] = [v["prob_ratio"] for v in r["per_class"].values()]
        if panels:
            title = f"{mode} paths: true-class probability deviation over classes"
            if "keep-only" in panels:
                title += f" (keep-only p = {keep_fraction:g})"
            figures.append(deviation_boxplot(panels, out / f"manipulate_{mode}.png", title).name)
    report["figures"] = figures
    atomic_write_json(out / "manipulate.json", report)
    report["out"] = str(out)
    return report


__all__ = ["manipulate", "edited_logits", "edit_masks", "apply_masks", "class_mode_paths", "OPERATIONS", "FACTORS", "MODES"]
