"""``vitprune compress``: critical neurons -> mask -> physically sliced MLPs -> accuracy -> ONNX.

Everything lands in one output folder (``exported/<name>/`` by default):
  paths/            the discovery run (resumable), unless --paths reuses one
  mask.json         kept units per block
  model.safetensors + vitprune.json   the pruned checkpoint (``load_model(folder)`` rebuilds it)
  model.onnx        the compact ONNX model (parity-checked with onnxruntime)
  report.json / report.md             accuracy dense vs pruned, params, MACs, latency
"""
from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from . import __version__
from .adapter import ViTAdapter
from .aggregate import check_records_fit, class_critical_units, union_keep_sets
from .criteria import NEEDS_STATS, PATH_CRITERIA, unit_scores
from .defaults import JAS_DEFAULT, KEEP_DEFAULT, LSQ_DEFAULT, PER_CLASS_DEFAULT, SPARSITY_DEFAULT
from .data import iterate_batches, load_data, model_transform, select_per_class, torch_loader
from .discover import DiscoverOptions, check_pairing, run_discover
from .distributed import get_dist
from .errors import UserError
from .evaluate import evaluate_models
from .export import export_onnx, ort_latency
from .importance import require_importance
from .locks import output_lock
from .masks import from_keep_sets, from_scores, mask_for_macs
from .models import load_model, save_checkpoint
from .options import COMPENSATIONS, CRITERIA, JAS_AGGREGATIONS, MASK_SCOPES, OBJECTIVES, TOKEN_SCOPES, CalibrationOptions, check_choice, shared_fields
from .quantize import INT8_FILE, INT8_MODES, MAX_DROP_DEFAULT, Int8Result
from .reconstruct import calibration_set, prune
from .records import atomic_write_json, atomic_write_text, check_output_dir, load_run_records
from .slicing import count_macs_params
from .stats import collect_stats

SETTINGS = "compress.json"
OUTPUTS = ("mask.json", "model.safetensors", "vitprune.json", "model.onnx", "report.json", "report.md")


@dataclass(frozen=True)
class CompressOptions(CalibrationOptions):
    per_class: int | None = PER_CLASS_DEFAULT
    keep_topk: int | None = None
    sparsity: float | None = None
    target_macs: float | None = None  # fraction of the dense model's MACs
    criterion: str | None = None  # None: the zoo's best (defaults.SPARSITY_DEFAULT / KEEP_DEFAULT)
    scope: str = "per-block"
    min_keep: int = 1
    round_to: int = 1
    compensate: str | None = None  # none | mean | lsq; None: the zoo's best
    paths: str | None = None
    topk: int | None = None  # discovery K; defaults to keep_topk, else 5
    token_scope: str | None = None  # discovery settings of the path criteria; None: defaults.JAS_DEFAULT
    objective: str | None = None
    jas_aggregation: str | None = None
    lsq_target: str = LSQ_DEFAULT["target"]
    lsq_weighting: str = LSQ_DEFAULT["weighting"]
    label: str = "truth"
    eval_per_class: int | None = None
    finetune_epochs: int = 0
    finetune_lr: float = 1e-4
    finetune_per_class: int | None = None
    export: bool = True
    quantize: str | None = None  # int8: also write model.int8.onnx, gated by accuracy
    int8_mode: str = "static"
    max_int8_drop: float = MAX_DROP_DEFAULT  # points of top-1
    latency_rounds: int = 30
    seed: int = 0

    @property
    def discovery_topk(self) -> int:
        return self.topk or self.keep_topk or 5


def resolve_defaults(opts: CompressOptions) -> CompressOptions:
    """Fill what is left unset with the zoo's best: criterion and compensation (for --keep-topk or
    --sparsity) and the discovery settings of the path criteria."""
    best = KEEP_DEFAULT if opts.keep_topk is not None else SPARSITY_DEFAULT
    return replace(opts, criterion=opts.criterion or best["criterion"],
                   compensate=opts.compensate if opts.compensate is not None else best["compensate"],
                   token_scope=opts.token_scope or JAS_DEFAULT["token_scope"], objective=opts.objective or JAS_DEFAULT["objective"],
                   jas_aggregation=opts.jas_aggregation or JAS_DEFAULT["aggregation"])


def default_name(opts: CompressOptions) -> str:
    model = Path(opts.model).name.split(".")[0] if opts.model not in ("demo",) else "demo"
    model = model.replace("random:", "random-")
    best = KEEP_DEFAULT if opts.keep_topk is not None else SPARSITY_DEFAULT
    if opts.keep_topk is not None:
        name = f"{model}-keep-top{opts.keep_topk}" + (f"-{opts.criterion}" if opts.criterion != best["criterion"] else "")
    else:
        budget = f"s{opts.sparsity:.2f}" if opts.sparsity is not None else f"m{opts.target_macs:.2f}"
        name = f"{model}-{opts.criterion}-{budget}"
    if opts.compensate != best["compensate"]:
        name += f"-{opts.compensate}"
    if opts.finetune_epochs:
        name += f"-ft{opts.finetune_epochs}"
    return name


def validate(opts: CompressOptions) -> None:
    if sum(x is not None for x in (opts.keep_topk, opts.sparsity, opts.target_macs)) != 1:
        raise UserError("pass exactly one of --keep-topk K (path-defined units), --sparsity S or --target-macs R (a budget)")
    if opts.target_macs is not None and not (math.isfinite(opts.target_macs) and 0.0 < opts.target_macs < 1.0):
        raise UserError(f"--target-macs is a fraction of the dense model's MACs in (0, 1) (got {opts.target_macs})")
    if opts.keep_topk is not None and opts.keep_topk < 1:
        raise UserError(f"--keep-topk must be >= 1 (got {opts.keep_topk})")
    if opts.sparsity is not None and not 0.0 <= opts.sparsity < 1.0:
        raise UserError(f"--sparsity must be in [0, 1) (got {opts.sparsity})")
    check_choice("--criterion", opts.criterion, CRITERIA)
    check_choice("--compensate", opts.compensate, COMPENSATIONS)
    check_choice("--token-scope", opts.token_scope, TOKEN_SCOPES)
    check_choice("--objective", opts.objective, OBJECTIVES)
    check_choice("--jas-aggregation", opts.jas_aggregation, JAS_AGGREGATIONS)
    if opts.keep_topk is not None and opts.criterion not in PATH_CRITERIA:
        raise UserError(f"--keep-topk keeps path units: --criterion must be {' or '.join(PATH_CRITERIA)} (got '{opts.criterion}')")
    if opts.finetune_epochs < 0:
        raise UserError(f"--finetune-epochs must be >= 0 (got {opts.finetune_epochs})")
    if opts.eval_per_class is not None and opts.eval_per_class < 1:
        raise UserError(f"--eval-per-class must be >= 1 (got {opts.eval_per_class})")
    if opts.finetune_per_class is not None and opts.finetune_per_class < 1:
        raise UserError(f"--finetune-per-class must be >= 1 (got {opts.finetune_per_class})")
    if not (math.isfinite(opts.finetune_lr) and opts.finetune_lr > 0):
        raise UserError(f"--finetune-lr must be a positive number (got {opts.finetune_lr})")
    for flag, value in (("--batch-size", opts.batch_size), ("--min-keep", opts.min_keep), ("--round-to", opts.round_to),
                        ("--latency-rounds", opts.latency_rounds)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1 (got {value})")
    check_choice("--scope", opts.scope, MASK_SCOPES)
    if opts.quantize is not None:
        check_choice("--quantize", opts.quantize, ("int8",))
        check_choice("--int8-mode", opts.int8_mode, INT8_MODES)
        if not opts.export:
            raise UserError("--quantize int8 quantizes the ONNX export: drop --no-export")
    if not (math.isfinite(opts.max_int8_drop) and opts.max_int8_drop >= 0):
        raise UserError(f"--max-int8-drop must be a number of points >= 0 (got {opts.max_int8_drop})")


def _start_out(out: Path, settings: dict, force: bool) -> None:
    """(Re)create the output folder that ``check_output_dir`` accepted and write its settings."""
    if force and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SETTINGS, settings)


def run_compress(opts: CompressOptions, out: Path | None = None, *, force: bool = False, quiet: bool = False) -> dict | None:
    """Run the whole pipeline; returns the report (also written to ``out``) on the main process.

    Under ``torchrun``/``accelerate launch``, discovery, statistics, evaluation and recovery are
    split over the processes; the main process writes every file.
    """
    opts = resolve_defaults(opts)
    validate(opts)
    t_start = time.time()
    out = Path(out) if out else Path("exported") / default_name(opts)
    dist = get_dist(opts.device)
    device = dist.device
    quiet = quiet or not dist.is_main
    dense = load_model(opts.model, arch=opts.arch).to(device)
    adapter = ViTAdapter(dense)
    pools = load_data(opts.data)
    check_pairing(pools, adapter.num_classes)
    transform = model_transform(dense)
    calib = select_per_class(pools.calibration, opts.per_class, opts.classes, num_classes=pools.num_classes)
    settings = {**asdict(opts), "classes": list(opts.classes) if opts.classes else None, "vitprune_version": __version__}
    with output_lock(out, "compress", dist):
        check_output_dir(out, SETTINGS, settings, what="compress result", force=force)
        dist.barrier()
        if dist.is_main:
            _start_out(out, settings, force)
        dist.barrier()
        timings: dict[str, float] = {}

        # 1. critical neurons: discovery (resumable, inside the output folder) or reuse
        records, importance = None, None
        if opts.criterion in PATH_CRITERIA:
            t0 = time.time()
            run = Path(opts.paths) if opts.paths else out / "paths"
            if not opts.paths:
                dopts = shared_fields(opts, DiscoverOptions, topk=opts.discovery_topk, method="jas")
                run_discover(dopts, run, resume=True, quiet=quiet, dist=dist)
            records = load_run_records(run)
            check_records_fit(records, adapter.hidden_widths, str(run))
            if opts.criterion == "jas":
                importance = require_importance(run, "--criterion jas")[0]
                if list(importance.widths) != adapter.hidden_widths:
                    raise UserError(f"the dense importance in {run} is for MLP widths {list(importance.widths)}, not this model's "
                                    f"{adapter.hidden_widths}; pass paths discovered on this model")
            timings["discovery_s"] = time.time() - t0

        # 2. statistics (activation/taylor/variance/wanda, the jas-freq fallback, mean-shift) and calibration images (lsq)
        stats, calibration = None, None
        if opts.compensate == "mean" or (opts.keep_topk is None and opts.criterion in NEEDS_STATS):
            t0 = time.time()
            stats = collect_stats(dense, iterate_batches(calib, transform, opts.batch_size, shard=dist), total=len(calib) // dist.world,
                                  quiet=quiet, dist=dist)
            timings["statistics_s"] = time.time() - t0
        if opts.compensate == "lsq":
            calibration = calibration_set(calib, transform, shard=dist)

        # 3. mask
        widths = adapter.hidden_widths
        critical = None
        if opts.keep_topk is not None:
            if opts.criterion == "jas":
                critical = importance.class_topk(opts.keep_topk, opts.jas_aggregation)
            else:
                critical = class_critical_units(records, adapter.depth, opts.keep_topk)
            mask = from_keep_sets(widths, union_keep_sets(critical, adapter.depth),
                                  criterion=f"{opts.criterion}-keep-top{opts.keep_topk}")
            if mask.sparsity == 0.0:
                raise UserError(f"--keep-topk {opts.keep_topk} keeps every unit of every block: nothing to remove; lower K")
        else:
            scores = unit_scores(opts.criterion, dense, stats=stats, records=records, importance=importance,
                                 aggregation=opts.jas_aggregation, seed=opts.seed)
            if opts.sparsity is not None:
                mask = from_scores(scores, opts.sparsity, scope=opts.scope, min_keep=opts.min_keep, round_to=opts.round_to,
                                   criterion=opts.criterion)
            else:
                mask = mask_for_macs(dense, scores, opts.target_macs, scope=opts.scope, min_keep=opts.min_keep,
                                     round_to=opts.round_to, criterion=opts.criterion)
        if dist.is_main:
            atomic_write_json(out / "mask.json", mask.to_json())

        # 4. slice + compensation (least squares: block by block on the calibration images)
        t0 = time.time()
        pruned, recon = prune(dense, mask, opts.compensate, means=stats.mean if stats else None, calibration=calibration,
                              lsq_target=opts.lsq_target, lsq_weighting=opts.lsq_weighting, dist=dist)
        timings["compensation_s"] = time.time() - t0
        if recon is not None and recon.underdetermined and not quiet:
            print(f"vitprune: note: blocks {recon.underdetermined} have fewer calibration tokens than kept units; the least-squares "
                  "fit is underdetermined there and the ridge keeps it close to the plain slice (raise --per-class for a "
                  "better fit)", file=sys.stderr)

        # 5. evaluation pool (never the calibration images), dense vs pruned
        evaluation = select_per_class(pools.evaluation, opts.eval_per_class, opts.classes, num_classes=pools.num_classes)
        t0 = time.time()
        results = evaluate_models({"dense": dense, "pruned": pruned}, iterate_batches(evaluation, transform, 256, shard=dist),
                                  class_names=pools.class_names, total=len(evaluation) // dist.world, quiet=quiet, dist=dist,
                                  precision=opts.precision)
        timings["evaluation_s"] = time.time() - t0

        # 6. optional recovery
        finetune = None
        if opts.finetune_epochs:
            from .finetune import distill

            t0 = time.time()
            train = select_per_class(pools.calibration, opts.finetune_per_class, opts.classes, num_classes=pools.num_classes)
            history = distill(pruned, dense, torch_loader(train, transform, 128, shuffle=True, seed=opts.seed),
                              epochs=opts.finetune_epochs, lr=opts.finetune_lr, seed=opts.seed, quiet=quiet)
            pruned = pruned.to(device).eval()
            after = evaluate_models({"recovered": pruned}, iterate_batches(evaluation, transform, 256, shard=dist),
                                    class_names=pools.class_names, total=len(evaluation) // dist.world, quiet=quiet,
                                    dist=dist, precision=opts.precision)["recovered"]
            finetune = {"epochs": opts.finetune_epochs, "images": len(train), "history": history, "after": after.to_json(),
                        "before": results["pruned"].to_json()}
            results["pruned"] = after
            timings["finetune_s"] = time.time() - t0

        if not dist.is_main:
            return None

        # 7. checkpoint (main process only from here on)
        source = dense.vitprune_source
        meta = {"arch": source["arch"], "model_kwargs": source.get("model_kwargs", {}),
                "data_config": _data_config(dense), "source_model": source, "mlp_hidden": mask.kept_counts,
                "kept": [list(k) for k in mask.kept], "criterion": mask.criterion, "sparsity": mask.sparsity,
                "compensate": opts.compensate, "finetune_epochs": opts.finetune_epochs, "data": opts.data,
                "vitprune_version": __version__}
        save_checkpoint(pruned.cpu(), out, meta)
        pruned.to(device)
        macs_dense, params_dense = count_macs_params(dense)
        macs_pruned, params_pruned = count_macs_params(pruned)

        # 8. ONNX (+ int8) + latency
        onnx_info, latency, int8 = None, None, None
        if opts.export:
            t0 = time.time()
            parity = next(iterate_batches(evaluation.select(range(min(16, len(evaluation)))), transform, 16))[1]
            onnx_meta = {"source_model": source["spec"], "criterion": mask.criterion, "kept_units": mask.kept_counts,
                         "sparsity": round(mask.sparsity, 6), "vitprune_version": __version__,
                         "input_size": list(parity.shape[1:]), "class_names": list(pools.class_names)}
            onnx_info = export_onnx(pruned, out / "model.onnx", metadata=onnx_meta, parity_images=parity)
            timings["export_s"] = time.time() - t0
            if opts.quantize:
                t0 = time.time()
                int8 = _int8(opts, out, onnx_meta, calib, evaluation, transform, calibration)
                timings["int8_s"] = time.time() - t0
            timed = {"pruned": out / "model.onnx", **({"pruned_int8": out / INT8_FILE} if int8 and int8.written else {})}
            with tempfile.TemporaryDirectory() as tmp:
                export_onnx(dense, Path(tmp) / "dense.onnx", metadata={"source_model": source["spec"]}, parity_images=parity)
                latency = ort_latency({"dense": Path(tmp) / "dense.onnx", **timed}, tuple(parity.shape[1:]),
                                      rounds=opts.latency_rounds)

        timings["total_s"] = time.time() - t_start
        report = {
            "vitprune_version": __version__,
            "options": settings,
            "output": str(out),
            "model": source,
            "data": {"spec": opts.data, "classes": list(pools.class_names), "calibration_images": len(calib),
                     "evaluation_images": len(evaluation), "overlap": 0},
            "mask": {"criterion": mask.criterion, "kept_counts": mask.kept_counts, "widths": list(mask.widths),
                     "sparsity": mask.sparsity, "block_sparsity": mask.block_sparsity},
            "critical_units": {str(c): units for c, units in critical.items()} if critical else None,
            "compensation": {"mode": opts.compensate, "reconstruction": recon.to_json() if recon else None},
            "params": {"dense": params_dense, "pruned": params_pruned, "ratio": params_pruned / params_dense},
            "macs": {"dense": macs_dense, "pruned": macs_pruned, "ratio": macs_pruned / macs_dense, "target": opts.target_macs},
            "accuracy": {k: v.to_json() for k, v in results.items()},
            "finetune": finetune,
            "onnx": onnx_info,
            "int8": int8.to_json() if int8 else None,
            "latency": latency,
            "timings": timings,
        }
        atomic_write_json(out / "report.json", report)
        atomic_write_text(out / "report.md", render_report(report))
        return report


def _int8(opts: CompressOptions, out: Path, meta: dict, calib, evaluation, transform, calibration) -> "Int8Result":
    """model.int8.onnx from model.onnx, calibrated on the calibration images, kept only if its top-1 on the
    evaluation images is within --max-int8-drop points of the fp32 export's."""
    from .data import materialize
    from .quantize import quantize_gated

    images, labels = materialize(evaluation, transform)
    cal = calibration.images if calibration is not None else (materialize(calib, transform)[0] if opts.int8_mode == "static" else None)
    result = quantize_gated(out / "model.onnx", out / INT8_FILE, mode=opts.int8_mode, calibration=cal, images=images,
                            labels=labels, metadata=meta, max_drop=opts.max_int8_drop)
    if not result.written:
        (out / INT8_FILE).unlink(missing_ok=True)  # never a stale int8 model beside a new fp32 one
    return result


def _data_config(model) -> dict:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    keep = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if k in keep}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def render_report(r: dict) -> str:
    acc, m = r["accuracy"], r["mask"]
    lines = [
        f"# vitprune compress report: `{r['output']}`",
        "",
        f"- model: `{r['model']['spec']}` ({r['model']['arch']}); data: `{r['data']['spec']}`",
        f"- criterion: {m['criterion']}; compensation: {r['compensation']['mode']}; "
        f"calibration images: {r['data']['calibration_images']}; "
        f"evaluation images: {r['data']['evaluation_images']} (disjoint from calibration)",
        f"- FFN sparsity: {_pct(m['sparsity'])} ({sum(m['kept_counts'])} of {sum(m['widths'])} hidden units kept)"
        + (f"; MAC target {r['macs']['target']:.3f} of dense, achieved {r['macs']['ratio']:.4f}" if r["macs"].get("target") else ""),
        "",
        "| | dense | pruned | ratio |",
        "|---|---|---|---|",
        f"| params | {r['params']['dense']:,} | {r['params']['pruned']:,} | {r['params']['ratio']:.3f} |",
        f"| MACs / image | {r['macs']['dense']:,} | {r['macs']['pruned']:,} | {r['macs']['ratio']:.3f} |",
        f"| top-1 | {_pct(acc['dense']['top1'])} | {_pct(acc['pruned']['top1'])} | |",
        f"| mean true-class prob. | {acc['dense']['mean_true_prob']:.4f} | {acc['pruned']['mean_true_prob']:.4f} | |",
    ]
    if r.get("latency"):
        for key in ("batch1", "batch8"):
            d, p = r["latency"][key]["dense"], r["latency"][key]["pruned"]
            lines.append(f"| ORT CPU latency, {key.replace('batch', 'batch ')} (median ms, {r['latency']['threads']} thread) | "
                         f"{d['median_ms']:.3f} | {p['median_ms']:.3f} | {p['median_ms'] / d['median_ms']:.3f} |")
    lines += ["", "## Kept units per block", "", "| block | kept | of | sparsity |", "|---|---|---|---|"]
    lines += [f"| {b} | {k} | {w} | {_pct(s)} |" for b, (k, w, s) in enumerate(zip(m["kept_counts"], m["widths"], m["block_sparsity"]))]
    if r.get("finetune"):
        f = r["finetune"]
        lines += ["", f"## Recovery: {f['epochs']} epoch(s) of distillation on {f['images']} training images", "",
                  f"top-1 before {_pct(f['before']['top1'])} -> after {_pct(f['after']['top1'])}"]
    lines += ["", "## Per class", "", "| class | name | n | dense top-1 | pruned top-1 | dense prob. | pruned prob. |",
              "|---|---|---|---|---|---|---|"]
    for d, p in zip(acc["dense"]["per_class"], acc["pruned"]["per_class"]):
        if d["n"]:
            lines.append(f"| {d['class']} | {d['name']} | {d['n']} | {_pct(d['top1'])} | {_pct(p['top1'])} | "
                         f"{d['mean_true_prob']:.4f} | {p['mean_true_prob']:.4f} |")
    if r.get("onnx"):
        lines += ["", f"ONNX: `model.onnx`, {r['onnx']['bytes']:,} bytes, opset {r['onnx']['opset']}, "
                  f"onnxruntime parity max |diff| {r['onnx']['parity_max_abs']:.2e} on {r['onnx']['parity_images']} held-out images."]
    if r.get("int8"):
        lines += ["", *_int8_lines(r)]
    return "\n".join(lines) + "\n"


def _int8_lines(r: dict) -> list[str]:
    q = r["int8"]
    lines = [f"## int8 ({q['mode']} quantization, onnxruntime)", "",
             f"top-1 on {q['images']} evaluation images in onnxruntime: fp32 {_pct(q['top1_fp32'])}, int8 {_pct(q['top1_int8'])} "
             f"({q['drop_points']:+.2f} points lost)."]
    if not q["written"]:
        return [*lines, "", f"**Not written:** {q['reason']}."]
    lines += ["", "| | pruned fp32 (`model.onnx`) | pruned int8 (`model.int8.onnx`) |", "|---|---|---|",
              f"| size on disk | {r['onnx']['bytes']:,} bytes | {q['bytes']:,} bytes |",
              f"| top-1 (onnxruntime) | {_pct(q['top1_fp32'])} | {_pct(q['top1_int8'])} |"]
    lat = r.get("latency") or {}
    for key in ("batch1", "batch8"):
        if key in lat and "pruned_int8" in lat[key]:
            d = lat[key]["dense"]["median_ms"]
            lines.append(f"| ORT CPU latency, {key.replace('batch', 'batch ')} (median ms; x dense fp32) | "
                         f"{lat[key]['pruned']['median_ms']:.3f} (x{d / lat[key]['pruned']['median_ms']:.2f}) | "
                         f"{lat[key]['pruned_int8']['median_ms']:.3f} (x{d / lat[key]['pruned_int8']['median_ms']:.2f}) |")
    return lines


def headline(r: dict) -> str:
    acc, m = r["accuracy"], r["mask"]
    int8 = r.get("int8") or {}
    files = ["model.safetensors", *(["model.onnx"] if r.get("onnx") else []), *([INT8_FILE] if int8.get("written") else []),
             "mask.json", "report.json", "report.md"]
    parts = [
        f"wrote {r['output']}/ ({', '.join(files)})",
        f"FFN sparsity {_pct(m['sparsity'])}: kept {m['kept_counts']} of {m['widths']}",
        f"params {r['params']['dense']:,} -> {r['params']['pruned']:,}; MACs {r['macs']['dense']:,} -> {r['macs']['pruned']:,} "
        f"(x{r['macs']['ratio']:.3f})",
        f"top-1 {_pct(acc['dense']['top1'])} -> {_pct(acc['pruned']['top1'])} on {r['data']['evaluation_images']} held-out images",
    ]
    if r.get("latency"):
        d, p = r["latency"]["batch1"]["dense"]["median_ms"], r["latency"]["batch1"]["pruned"]["median_ms"]
        d8, p8 = r["latency"]["batch8"]["dense"]["median_ms"], r["latency"]["batch8"]["pruned"]["median_ms"]
        parts.append(f"ORT CPU latency batch 1: {d:.3f} -> {p:.3f} ms; batch 8: {d8:.3f} -> {p8:.3f} ms")
    if int8.get("written"):
        lat = r["latency"]
        parts.append(f"int8 ({int8['mode']}): top-1 {_pct(int8['top1_int8'])} (fp32 ONNX {_pct(int8['top1_fp32'])}), "
                     f"{int8['bytes']:,} bytes; ORT CPU latency batch 1: {lat['batch1']['pruned_int8']['median_ms']:.3f} ms, "
                     f"batch 8: {lat['batch8']['pruned_int8']['median_ms']:.3f} ms")
    return "\n".join(parts)


__all__ = ["CompressOptions", "run_compress", "default_name", "headline", "render_report"]
