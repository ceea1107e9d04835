"""``vitprune evaluate``: accuracy vs FFN sparsity for many criteria on the same images and budget.

Expensive parts run once and are reused by every point: one discovery run per token scope
(all jas points and all keep-topk points read it), activation statistics (one pass over the
calibration images), and the evaluation images (preprocessed once). Points are appended to
``points.jsonl`` as they finish, so an interrupted sweep resumes point by point.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path


from . import __version__
from .adapter import ViTAdapter
from .aggregate import class_critical_units, union_keep_sets
from .criteria import unit_scores
from .data import iterate_batches, load_data, materialize, model_transform, select_per_class, tensor_batches, torch_loader
from .discover import DiscoverOptions, check_pairing, run_discover
from .distributed import get_dist
from .errors import UserError
from .evaluate import evaluate_models
from .masks import from_keep_sets, from_scores
from .options import SWEEP_CRITERIA, CalibrationOptions, shared_fields
from .models import load_model
from .records import JsonlAppender, atomic_write_json, atomic_write_text, check_output_dir, load_run_records, read_jsonl
from .slicing import compensation_shift, count_macs_params, slice_mlps
from .stats import collect_stats

SETTINGS = "sweep.json"
POINTS = "points.jsonl"


@dataclass(frozen=True)
class SweepOptions(CalibrationOptions):
    sparsities: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
    criteria: tuple[str, ...] = SWEEP_CRITERIA
    keep_topk: tuple[int, ...] = (1, 5, 20)
    compensate: tuple[bool, ...] = (False, True)
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_per_class: int | None = None
    topk: int = 5  # discovery K of the run behind every jas / jas-all budget point
    scope: str = "per-block"
    min_keep: int = 1
    finetune_epochs: int = 0
    finetune_per_class: int | None = None
    finetune_lr: float = 1e-4
    latency: bool = False



def points_of(opts: SweepOptions) -> list[dict]:
    """Every (criterion, budget, seed, compensation) point of the sweep, in a fixed order."""
    pts = [{"criterion": "dense", "compensate": False, "seed": 0, "target": 0.0, "keep_topk": None}]
    for crit in opts.criteria:
        for comp in opts.compensate:
            if crit == "keep-topk":
                pts += [{"criterion": crit, "compensate": comp, "seed": 0, "target": None, "keep_topk": k} for k in opts.keep_topk]
                continue
            for s in opts.sparsities:
                for seed in opts.seeds if crit == "random" else (0,):
                    pts.append({"criterion": crit, "compensate": comp, "seed": seed, "target": s, "keep_topk": None})
    return pts


def point_key(p: dict) -> str:
    return json.dumps({k: p[k] for k in ("criterion", "compensate", "seed", "target", "keep_topk")}, sort_keys=True)


def validate(opts: SweepOptions) -> None:
    for c in opts.criteria:
        if c not in SWEEP_CRITERIA:
            raise UserError(f"--criteria: unknown '{c}'; choose from {', '.join(SWEEP_CRITERIA)}")
    for s in opts.sparsities:
        if not 0.0 <= s < 1.0:
            raise UserError(f"--sparsities must be in [0, 1) (got {s})")
    if any(k < 1 for k in opts.keep_topk):
        raise UserError("--keep-topk values must be >= 1")
    if not opts.seeds:
        raise UserError("--seeds needs at least one seed")


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
    check_output_dir(out, SETTINGS, settings, what="sweep", force=force)
    dist.barrier()
    if dist.is_main:
        if force and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / SETTINGS, settings)

    calib = select_per_class(pools.calibration, opts.per_class, opts.classes, num_classes=pools.num_classes)
    evaluation = select_per_class(pools.evaluation, opts.eval_per_class, opts.classes, num_classes=pools.num_classes)
    sink = JsonlAppender(out / POINTS) if dist.is_main else None  # drops a torn last line before the others read
    dist.barrier()
    try:
        rows = sink.records if sink else (read_jsonl(out / POINTS) if (out / POINTS).exists() else [])
        done = {point_key(r) for r in rows}
        todo = [p for p in points_of(opts) if point_key(p) not in done]
        if todo:
            rows = rows + _run_points(opts, todo, sink, out, dense, adapter, pools, transform, calib, evaluation, quiet, dist)
    finally:
        if sink:
            sink.close()
    dist.barrier()
    order = {point_key(p): i for i, p in enumerate(points_of(opts))}
    rows.sort(key=lambda r: order[point_key(r)])
    if dist.is_main:
        write_outputs(rows, out, opts, pools)
    return rows


def _run_points(opts, todo, sink, out, dense, adapter, pools, transform, calib, evaluation, quiet, dist) -> list[dict]:
    # discovery runs, each shared by all the points that need it: (token scope, K)
    needed = {("auto", p["keep_topk"]) for p in todo if p["criterion"] == "keep-topk"}
    needed |= {("auto" if p["criterion"] == "jas" else "all", opts.topk) for p in todo if p["criterion"] in ("jas", "jas-all")}
    records: dict[tuple[str, int], list[dict]] = {}
    for scope, k in sorted(needed):
        dopts = shared_fields(opts, DiscoverOptions, topk=k, token_scope=scope)
        folder = out / f"paths-{'cls' if scope == 'auto' else scope}-top{k}"
        run_discover(dopts, folder, resume=True, quiet=quiet, dist=dist)
        records[(scope, k)] = load_run_records(folder)
    stats = collect_stats(dense, iterate_batches(calib, transform, opts.batch_size, shard=dist), total=len(calib) // dist.world,
                          quiet=quiet, dist=dist)
    images, labels = materialize(evaluation, transform, shard=dist)  # this process's share of the evaluation images
    macs_dense, params_dense = count_macs_params(dense)
    dense_onnx = None
    new_rows = []
    tmp = Path(tempfile.mkdtemp(prefix="vitprune-sweep-"))
    try:
        for p in todo:
            row = dict(p)
            if p["criterion"] == "dense":
                model = dense
                mask = None
            else:
                if p["criterion"] == "keep-topk":
                    critical = class_critical_units(records[("auto", p["keep_topk"])], adapter.depth, p["keep_topk"])
                    mask = from_keep_sets(adapter.hidden_widths, union_keep_sets(critical, adapter.depth), "keep-topk")
                else:
                    crit = "jas" if p["criterion"] == "jas-all" else p["criterion"]
                    run = records.get(("auto" if p["criterion"] == "jas" else "all", opts.topk))
                    scores = unit_scores(crit, dense, stats=stats, records=run, seed=p["seed"])
                    mask = from_scores(scores, p["target"], scope=opts.scope, min_keep=opts.min_keep, criterion=p["criterion"])
                shift = compensation_shift(dense, mask, stats.mean) if p["compensate"] else None
                model = slice_mlps(dense, mask, bias_shift=shift)
            res = evaluate_models({"m": model}, tensor_batches(images, labels, 512), class_names=pools.class_names,
                                  total=len(images), quiet=True, dist=dist, precision=opts.precision)["m"]
            row.update(sparsity=mask.sparsity if mask else 0.0, kept=mask.kept_counts if mask else adapter.hidden_widths,
                       top1=res.top1, mean_true_prob=res.mean_true_prob)
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
                print(f"  {p['criterion']:<10} comp={int(p['compensate'])} seed={p['seed']} "
                      f"sparsity={row['sparsity']:.3f} top-1={row['top1']:.4f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return new_rows


# ----------------------------------------------------------------------------------- outputs
CSV_COLUMNS = ("criterion", "compensate", "seed", "target", "keep_topk", "sparsity", "kept", "params", "params_ratio",
               "macs", "macs_ratio", "top1", "mean_true_prob", "top1_oneshot", "mean_true_prob_oneshot", "finetune_epochs",
               "ort_b1_ms", "ort_b1_dense_ms")


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


def summarize(rows: list[dict]) -> list[dict]:
    """Average random seeds: one line per (criterion, compensate, budget) with mean and spread."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["criterion"], r["compensate"], r["target"], r["keep_topk"]), []).append(r)
    out = []
    for (crit, comp, target, k), rs in groups.items():
        top1 = [r["top1"] for r in rs]
        out.append({"criterion": crit, "compensate": comp, "target": target, "keep_topk": k,
                    "sparsity": statistics.mean(r["sparsity"] for r in rs), "macs_ratio": statistics.mean(r["macs_ratio"] for r in rs),
                    "top1": statistics.mean(top1), "top1_min": min(top1), "top1_max": max(top1), "n": len(rs),
                    "mean_true_prob": statistics.mean(r["mean_true_prob"] for r in rs),
                    "top1_oneshot": statistics.mean(r["top1_oneshot"] for r in rs) if "top1_oneshot" in rs[0] else None})
    return out


def label(s: dict) -> str:
    name = s["criterion"] if s["criterion"] != "keep-topk" else "keep-topk"
    return name + (" + comp" if s["compensate"] else "")


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
        budget = f"K={s['keep_topk']}" if s["keep_topk"] else f"{s['target']:.2f}"
        spread = f"{100 * s['top1_min']:.2f}..{100 * s['top1_max']:.2f}" if s["n"] > 1 else ""
        line = (f"| {s['criterion']} | {'yes' if s['compensate'] else 'no'} | {budget} | {s['sparsity']:.3f} | "
                f"{s['macs_ratio']:.3f} | {100 * s['top1']:.2f}% | {spread} | {s['mean_true_prob']:.4f} |")
        if has_ft:
            line += f" {100 * s['top1_oneshot']:.2f}% |" if s["top1_oneshot"] is not None else " |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str = "") -> None:
    """Left: one-shot top-1 vs sparsity with MACs on a twin axis; right: top-1 after recovery, or the
    mean true-class probability when the sweep has no recovery. Solid: one-shot, dashed: + compensation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    recovered = any(s["top1_oneshot"] is not None for s in summary)
    dense = next((s for s in summary if s["criterion"] == "dense"), None)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5.5))
    lines: dict[str, list[dict]] = {}
    for s in summary:
        if s["criterion"] != "dense":
            lines.setdefault(label(s), []).append(s)
    cmap = plt.get_cmap("tab10")
    names = sorted({k.replace(" + comp", "") for k in lines})
    oneshot = "top1_oneshot" if recovered else "top1"
    for key, pts in sorted(lines.items()):
        pts.sort(key=lambda s: s["sparsity"])
        color = cmap(names.index(key.replace(" + comp", "")) % 10)
        style = "--" if key.endswith("+ comp") else "-"
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
