"""``vitprune evaluate``: accuracy vs FFN sparsity for many criteria on the same images and budget.

Expensive parts run once and are reused by every point: one discovery run per (token scope,
objective, K) (every jas / jas-freq point with those settings reads it, budget and keep-topk
alike), activation statistics (one pass over the calibration images), the calibration images
for least-squares reconstruction, and the evaluation images (each preprocessed once). Points are
appended to ``points.jsonl`` as they finish, so an interrupted sweep resumes point by point.
"""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path


from . import __version__
from .adapter import ViTAdapter
from .aggregate import class_critical_units, union_keep_sets
from .criteria import NEEDS_STATS, PATH_CRITERIA, unit_scores
from .data import (iterate_batches, load_data, materialize, model_transform, select_holdout_per_class, select_per_class,
                   tensor_batches, torch_loader)
from .defaults import JAS_DEFAULT, LSQ_DEFAULT
from .discover import DiscoverOptions, check_pairing, run_discover
from .distributed import get_dist
from .errors import UserError
from .evaluate import evaluate_models
from .importance import require_importance
from .locks import output_lock
from .masks import from_keep_sets, from_scores, mask_for_macs
from .options import COMPENSATIONS, CRITERIA, JAS_AGGREGATIONS, OBJECTIVES, TOKEN_SCOPES, CalibrationOptions, check_choice, shared_fields
from .models import load_model
from .reconstruct import calibration_set, prune
from .records import JsonlAppender, atomic_write_json, atomic_write_text, check_output_dir, load_run_records, read_jsonl
from .slicing import count_macs_params
from .stats import collect_stats

SETTINGS = "sweep.json"
POINTS = "points.jsonl"
KEY_FIELDS = ("criterion", "compensate", "seed", "target", "keep_topk", "target_macs", "token_scope", "objective", "aggregation")


@dataclass(frozen=True)
class SweepOptions(CalibrationOptions):
    sparsities: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
    target_macs: tuple[float, ...] = ()  # budgets as fractions of the dense model's MACs
    criteria: tuple[str, ...] = CRITERIA
    keep_topk: tuple[int, ...] = ()  # keep-topk points of the path criteria (jas, jas-freq)
    compensate: tuple[str, ...] = COMPENSATIONS
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_per_class: int | None = None
    selection_per_class: int | None = None  # also score every point on this many held-out calibration-pool images per class
    topk: int = 5  # discovery K of the runs behind every jas / jas-freq budget point
    token_scopes: tuple[str, ...] = (JAS_DEFAULT["token_scope"],)  # discovery variants of the path criteria
    objectives: tuple[str, ...] = (JAS_DEFAULT["objective"],)
    aggregations: tuple[str, ...] = (JAS_DEFAULT["aggregation"],)  # of jas only
    lsq_target: str = LSQ_DEFAULT["target"]
    lsq_weighting: str = LSQ_DEFAULT["weighting"]
    scope: str = "per-block"
    min_keep: int = 1
    finetune_epochs: int = 0
    finetune_per_class: int | None = None
    finetune_lr: float = 1e-4
    latency: bool = False


def _variants(criterion: str, opts: SweepOptions) -> list[dict]:
    """The discovery settings a criterion's points come in (one empty variant for non-path criteria)."""
    if criterion not in PATH_CRITERIA:
        return [{"token_scope": None, "objective": None, "aggregation": None}]
    aggs = opts.aggregations if criterion == "jas" else (None,)
    return [{"token_scope": s, "objective": o, "aggregation": a} for s in opts.token_scopes for o in opts.objectives for a in aggs]


def points_of(opts: SweepOptions) -> list[dict]:
    """Every (criterion, variant, compensation, budget, seed) point of the sweep, in a fixed order."""
    none = {"token_scope": None, "objective": None, "aggregation": None}
    pts = [{"criterion": "dense", "compensate": "none", "seed": 0, "target": 0.0, "keep_topk": None, "target_macs": None, **none}]
    for crit in opts.criteria:
        budgets = [(s, None, None) for s in opts.sparsities] + [(None, None, r) for r in opts.target_macs]
        if crit in PATH_CRITERIA:
            budgets += [(None, k, None) for k in opts.keep_topk]
        for comp in opts.compensate:
            for var in _variants(crit, opts):
                for target, k, macs in budgets:
                    for seed in opts.seeds if crit == "random" else (0,):
                        pts.append({"criterion": crit, "compensate": comp, "seed": seed, "target": target, "keep_topk": k,
                                    "target_macs": macs, **var})
    return pts


def point_key(p: dict) -> str:
    return json.dumps({k: p.get(k) for k in KEY_FIELDS}, sort_keys=True)


def validate(opts: SweepOptions) -> None:
    for c in opts.criteria:
        if c not in CRITERIA:
            raise UserError(f"--criteria: unknown '{c}'; choose from {', '.join(CRITERIA)}")
    for c in opts.compensate:
        check_choice("--compensate", c, COMPENSATIONS)
    for flag, values, choices in (("--token-scopes", opts.token_scopes, TOKEN_SCOPES), ("--objectives", opts.objectives, OBJECTIVES),
                                  ("--jas-aggregations", opts.aggregations, JAS_AGGREGATIONS)):
        if not values:
            raise UserError(f"{flag} needs at least one value")
        for v in values:
            check_choice(flag, v, choices)
    for s in opts.sparsities:
        if not 0.0 <= s < 1.0:
            raise UserError(f"--sparsities must be in [0, 1) (got {s})")
    for r in opts.target_macs:
        if not 0.0 < r < 1.0:
            raise UserError(f"--target-macs values are fractions of the dense model's MACs in (0, 1) (got {r})")
    if any(k < 1 for k in opts.keep_topk):
        raise UserError("--keep-topk values must be >= 1")
    if opts.keep_topk and not set(opts.criteria) & set(PATH_CRITERIA):
        raise UserError("--keep-topk points need a path criterion (jas or jas-freq) in --criteria")
    if not opts.seeds:
        raise UserError("--seeds needs at least one seed")
    for flag, value in (("--per-class", opts.per_class), ("--eval-per-class", opts.eval_per_class),
                        ("--selection-per-class", opts.selection_per_class), ("--finetune-per-class", opts.finetune_per_class),
                        ("--batch-size", opts.batch_size), ("--topk", opts.topk), ("--min-keep", opts.min_keep)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1 (got {value})")
    if opts.finetune_epochs < 0:
        raise UserError(f"--finetune-epochs must be >= 0 (got {opts.finetune_epochs})")
    if not (math.isfinite(opts.finetune_lr) and opts.finetune_lr > 0):
        raise UserError(f"--finetune-lr must be a positive number (got {opts.finetune_lr})")


def run_sweep(opts: SweepOptions, out: Path, *, force: bool = False, quiet: bool = False) -> list[dict]:
    """Run (or resume) the sweep; under torchrun/accelerate the discovery, statistics, evaluation
    and recovery are split over the processes and the main process writes every file."""
    validate(opts)
    out = Path(out)
    dist = get_dist(opts.device)
    quiet = quiet or not dist.is_main
    dense = load_model(opts.model, arch=opts.arch).to(dist.device)
    adapter = ViTAdapter(dense)
    pools = load_data(opts.data)
    check_pairing(pools, adapter.num_classes)
    transform = model_transform(dense)
    settings = {**asdict(opts), "vitprune_version": __version__}
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back from disk
    calib = select_per_class(pools.calibration, opts.per_class, opts.classes, num_classes=pools.num_classes)
    evaluation = select_per_class(pools.evaluation, opts.eval_per_class, opts.classes, num_classes=pools.num_classes)
    selection = None
    if opts.selection_per_class:
        selection = select_holdout_per_class(pools.calibration, opts.selection_per_class, opts.classes,
                                             num_classes=pools.num_classes, skip=opts.per_class)
    with output_lock(out, "evaluate", dist):
        check_output_dir(out, SETTINGS, settings, what="sweep", force=force)
        dist.barrier()
        if dist.is_main:
            if force and out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / SETTINGS, settings)

        sink = JsonlAppender(out / POINTS) if dist.is_main else None  # drops a torn last line before the others read
        dist.barrier()
        try:
            rows = list(sink.records) if sink else (read_jsonl(out / POINTS) if (out / POINTS).exists() else [])
            done = {point_key(r) for r in rows}
            todo = [p for p in points_of(opts) if point_key(p) not in done]
            if todo:
                rows = rows + _run_points(opts, todo, sink, out, dense, adapter, pools, transform, calib, evaluation, selection, quiet,
                                          dist)
        finally:
            if sink:
                sink.close()
        dist.barrier()
        order = {point_key(p): i for i, p in enumerate(points_of(opts))}
        rows.sort(key=lambda r: order[point_key(r)])
        if dist.is_main:
            write_outputs(rows, out, opts, pools)
        return rows


def run_folder(token_scope: str, objective: str, topk: int) -> str:
    """The sub-folder of the discovery run behind the path points with these settings."""
    return f"paths-{token_scope}-{objective}-top{topk}"


def _run_points(opts, todo, sink, out, dense, adapter, pools, transform, calib, evaluation, selection, quiet, dist) -> list[dict]:
    # discovery runs, each shared by all the points that need it: (token scope, objective, K)
    needed = {(p["token_scope"], p["objective"], p["keep_topk"] or opts.topk) for p in todo if p["criterion"] in PATH_CRITERIA}
    runs: dict[tuple, Path] = {}
    for scope, objective, k in sorted(needed):
        dopts = shared_fields(opts, DiscoverOptions, topk=k, token_scope=scope, objective=objective, method="jas")
        runs[(scope, objective, k)] = out / run_folder(scope, objective, k)
        run_discover(dopts, runs[(scope, objective, k)], resume=True, quiet=quiet, dist=dist)
    records = {key: load_run_records(folder) for key, folder in runs.items()}
    importance = {key: require_importance(folder, "criterion jas")[0] for key, folder in runs.items()
                  if any(p["criterion"] == "jas" for p in todo)}
    stats = None
    if any(p["criterion"] in NEEDS_STATS or p["compensate"] == "mean" for p in todo):
        stats = collect_stats(dense, iterate_batches(calib, transform, opts.batch_size, shard=dist), total=len(calib) // dist.world,
                              quiet=quiet, dist=dist)
    calibration = calibration_set(calib, transform, shard=dist) if any(p["compensate"] == "lsq" for p in todo) else None
    images, labels = materialize(evaluation, transform, shard=dist)  # this process's share of the evaluation images
    held = materialize(selection, transform, shard=dist) if selection is not None else None
    macs_dense, params_dense = count_macs_params(dense)
    dense_onnx = None
    new_rows = []
    tmp = Path(tempfile.mkdtemp(prefix="vitprune-sweep-"))
    try:
        for p in todo:
            row = dict(p)
            mask, recon = None, None
            t0 = time.time()
            if p["criterion"] == "dense":
                model = dense
            else:
                key = (p["token_scope"], p["objective"], p["keep_topk"] or opts.topk)
                if p["keep_topk"] is not None:
                    if p["criterion"] == "jas":
                        critical = importance[key].class_topk(p["keep_topk"], p["aggregation"])
                    else:
                        critical = class_critical_units(records[key], adapter.depth, p["keep_topk"])
                    mask = from_keep_sets(adapter.hidden_widths, union_keep_sets(critical, adapter.depth), p["criterion"])
                else:
                    scores = unit_scores(p["criterion"], dense, stats=stats, records=records.get(key),
                                         importance=importance.get(key), aggregation=p["aggregation"] or "mean", seed=p["seed"])
                    if p.get("target_macs") is not None:
                        mask = mask_for_macs(dense, scores, p["target_macs"], scope=opts.scope, min_keep=opts.min_keep,
                                             criterion=p["criterion"])
                    else:
                        mask = from_scores(scores, p["target"], scope=opts.scope, min_keep=opts.min_keep, criterion=p["criterion"])
                model, recon = prune(dense, mask, p["compensate"], means=stats.mean if stats else None, calibration=calibration,
                                     lsq_target=opts.lsq_target, lsq_weighting=opts.lsq_weighting, dist=dist)
            row["compensation_s"] = round(time.time() - t0, 3)
            res = evaluate_models({"m": model}, tensor_batches(images, labels, 512), class_names=pools.class_names,
                                  total=len(images), quiet=True, dist=dist, precision=opts.precision)["m"]
            row.update(sparsity=mask.sparsity if mask else 0.0, kept=mask.kept_counts if mask else adapter.hidden_widths,
                       top1=res.top1, mean_true_prob=res.mean_true_prob)
            if held is not None:
                row["top1_selection"] = evaluate_models({"m": model}, tensor_batches(*held, 512), class_names=pools.class_names,
                                                        total=len(held[0]), quiet=True, dist=dist, precision=opts.precision)["m"].top1
            if recon is not None:
                row["ridges"] = [f.ridge for f in recon.blocks]
            if opts.finetune_epochs and mask is not None:
                from .finetune import distill

                train = select_per_class(pools.calibration, opts.finetune_per_class, opts.classes, num_classes=pools.num_classes)
                distill(model, dense, torch_loader(train, transform, 128, shuffle=True, seed=p["seed"]),
                        epochs=opts.finetune_epochs, lr=opts.finetune_lr, seed=p["seed"], quiet=True)
                after = evaluate_models({"m": model.eval()}, tensor_batches(images, labels, 512), class_names=pools.class_names,
                                        total=len(images), quiet=True, dist=dist, precision=opts.precision)["m"]
                row.update(top1_oneshot=row["top1"], mean_true_prob_oneshot=row["mean_true_prob"],
                           top1=after.top1, mean_true_prob=after.mean_true_prob, finetune_epochs=opts.finetune_epochs)
            macs, params = count_macs_params(model)
            row.update(macs=macs, params=params, macs_ratio=macs / macs_dense, params_ratio=params / params_dense)
            if opts.latency and dist.is_main:
                from .export import export_onnx, ort_latency

                parity = images[:8]
                if dense_onnx is None:
                    dense_onnx = tmp / "dense.onnx"
                    export_onnx(dense, dense_onnx, metadata={}, parity_images=parity)
                path = tmp / "point.onnx"
                export_onnx(model, path, metadata={}, parity_images=parity)
                lat = ort_latency({"dense": dense_onnx, "point": path}, tuple(images.shape[1:]), batch_sizes=(1,), rounds=20)
                row.update(ort_b1_ms=lat["batch1"]["point"]["median_ms"], ort_b1_dense_ms=lat["batch1"]["dense"]["median_ms"])
            if sink:
                sink.append([row])
            new_rows.append(row)
            if not quiet:
                budget = _budget(p)
                print(f"  {label(p):<32} seed={p['seed']} budget={budget} sparsity={row['sparsity']:.3f} "
                      f"top-1={row['top1']:.4f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return new_rows


# ----------------------------------------------------------------------------------- outputs
CSV_COLUMNS = ("criterion", "token_scope", "objective", "aggregation", "compensate", "seed", "target", "keep_topk", "target_macs",
               "sparsity",
               "kept", "params", "params_ratio",
               "macs", "macs_ratio", "top1", "mean_true_prob", "top1_oneshot", "mean_true_prob_oneshot", "finetune_epochs",
               "ort_b1_ms", "ort_b1_dense_ms", "compensation_s", "top1_selection")


def write_outputs(rows: list[dict], out: Path, opts: SweepOptions, pools) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "kept": json.dumps(r["kept"])})
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_json(out / "results.json", {"settings": json.loads(json.dumps(asdict(opts))), "points": rows})
    atomic_write_text(out / "results.md", render_table(rows))
    plot(rows, out / "accuracy_vs_sparsity.png", title=f"{opts.model} on {opts.data}")


def method(r: dict) -> str:
    """A point's criterion with its discovery variant, e.g. ``jas[all,kl,abs]``."""
    var = [r.get(k) for k in ("token_scope", "objective", "aggregation") if r.get(k) is not None]
    return r["criterion"] + (f"[{','.join(var)}]" if var else "")


def summarize(rows: list[dict]) -> list[dict]:
    """Average random seeds: one line per (method, compensation, budget) with mean and spread."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((method(r), r["compensate"], r["target"], r["keep_topk"], r.get("target_macs")), []).append(r)
    out = []
    for (name, comp, target, k, macs), rs in groups.items():
        top1 = [r["top1"] for r in rs]
        out.append({"criterion": rs[0]["criterion"], "method": name, "compensate": comp, "target": target, "keep_topk": k,
                    "target_macs": macs,
                    "sparsity": statistics.mean(r["sparsity"] for r in rs), "macs_ratio": statistics.mean(r["macs_ratio"] for r in rs),
                    "top1": statistics.mean(top1), "top1_min": min(top1), "top1_max": max(top1), "n": len(rs),
                    "mean_true_prob": statistics.mean(r["mean_true_prob"] for r in rs),
                    "top1_oneshot": statistics.mean(r["top1_oneshot"] for r in rs) if "top1_oneshot" in rs[0] else None,
                    "top1_selection": statistics.mean(r["top1_selection"] for r in rs) if "top1_selection" in rs[0] else None})
    return out


def _budget(p: dict) -> str:
    if p.get("keep_topk"):
        return f"K={p['keep_topk']}"
    return f"{p['target_macs']:.2f} MACs" if p.get("target_macs") is not None else f"{p['target']:.2f}"


def label(s: dict) -> str:
    """Method + compensation, as the plot legend and the progress lines name a point."""
    return method(s) + ("" if s["compensate"] == "none" else f" + {s['compensate']}")


def render_table(rows: list[dict]) -> str:
    summary = summarize(rows)
    has_ft = any(s["top1_oneshot"] is not None for s in summary)
    head = "| criterion | compensate | budget | achieved sparsity | MACs ratio | top-1 | (min..max over seeds) | mean true-class prob. |"
    sep = "|---|---|---|---|---|---|---|---|"
    if has_ft:
        head += " one-shot top-1 |"
        sep += "---|"
    lines = [head, sep]
    for s in summary:
        budget = _budget(s)
        spread = f"{100 * s['top1_min']:.2f}..{100 * s['top1_max']:.2f}" if s["n"] > 1 else ""
        line = (f"| {s['method']} | {s['compensate']} | {budget} | {s['sparsity']:.3f} | "
                f"{s['macs_ratio']:.3f} | {100 * s['top1']:.2f}% | {spread} | {s['mean_true_prob']:.4f} |")
        if has_ft:
            line += f" {100 * s['top1_oneshot']:.2f}% |" if s["top1_oneshot"] is not None else " |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str = "") -> None:
    """Left: one-shot top-1 vs sparsity with MACs on a twin axis; right: top-1 after recovery, or the
    mean true-class probability when the sweep has no recovery. One colour per method (criterion and
    discovery variant, tab20), one line style per compensation: none dotted, mean dashed, lsq solid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    recovered = any(s["top1_oneshot"] is not None for s in summary)
    dense = next((s for s in summary if s["criterion"] == "dense"), None)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5.5))
    lines: dict[tuple[str, str], list[dict]] = {}
    for s in summary:
        if s["criterion"] != "dense":
            lines.setdefault((s["method"], s["compensate"]), []).append(s)
    cmap = plt.get_cmap("tab20")
    names = sorted({name for name, _ in lines})
    styles = {"none": ":", "mean": "--", "lsq": "-"}
    oneshot = "top1_oneshot" if recovered else "top1"
    for (name, comp), pts in sorted(lines.items()):
        pts.sort(key=lambda s: s["sparsity"])
        key = label(pts[0])
        color = cmap(names.index(name) % 20)
        style = styles[comp]
        xs = [s["sparsity"] for s in pts]
        ax.plot(xs, [100 * s[oneshot] for s in pts], style, marker="o", ms=4, color=color, label=key)
        if recovered:
            ax2.plot(xs, [100 * s["top1"] for s in pts], style, marker="o", ms=4, color=color, label=key)
            if any(s["n"] > 1 for s in pts):
                ax2.fill_between(xs, [100 * s["top1_min"] for s in pts], [100 * s["top1_max"] for s in pts], color=color, alpha=0.15)
        else:
            if any(s["n"] > 1 for s in pts):
                ax.fill_between(xs, [100 * s["top1_min"] for s in pts], [100 * s["top1_max"] for s in pts], color=color, alpha=0.15)
            ax2.plot(xs, [s["mean_true_prob"] for s in pts], style, marker="o", ms=4, color=color, label=key)
    if dense:
        ax.axhline(100 * dense["top1"], color="black", lw=1, ls=":", label="dense")
        ax2.axhline(100 * dense["top1"] if recovered else dense["mean_true_prob"], color="black", lw=1, ls=":", label="dense")
    mac_pts = sorted((s["sparsity"], s["macs_ratio"]) for s in summary)
    twin = ax.twinx()
    twin.plot([x for x, _ in mac_pts], [y for _, y in mac_pts], color="grey", lw=3, alpha=0.3)
    twin.set_ylabel("MACs, fraction of dense (grey band)")
    twin.set_ylim(0, 1.05)
    ax.set_xlabel("FFN sparsity (fraction of MLP hidden units removed)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"One-shot — {title}")
    ax2.set_xlabel("FFN sparsity")
    if recovered:
        ax2.set_ylabel("top-1 accuracy (%)")
        ax2.set_title("After recovery (distillation from the dense model)")
    else:
        ax2.set_ylabel("mean true-class probability")
        ax2.set_title("Mean true-class probability")
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


__all__ = ["SweepOptions", "run_sweep", "points_of", "SWEEP_CRITERIA"]
