"""The Python API: ``compress``, ``evaluate`` and ``discover`` on any timm ViT, and what they return.

Every function takes the command line's options as keyword arguments, with the same defaults
(``vitprune.options``), and a model (a spec string, or an in-memory timm ``VisionTransformer``) and
data (a spec string, ``load_data(spec)``, or a ``(calibration, evaluation)`` pair of torch Datasets
yielding ``(image_tensor, int_label)`` preprocessed for the model). Without ``out`` nothing is
written: results come back in memory, and ``CompressResult.save`` / ``.export_onnx`` write them on
request. With ``out`` a run writes its folder as the command line does (resumable discovery, one
writer at a time, ``--force`` to replace another result). The command line is a thin layer over these.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from . import __version__
from .accuracy import EvalResult
from .data import DataPools, ImagePool, materialize, select_per_class, tensor_batches
from .discovery.records import PathRun
from .discovery.run import discover as run_discovery
from .discovery.settings import DiscoverySettings
from .distributed import Dist, get_dist
from .errors import UserError
from .export import INT8_FILE, ONNX_FILE
from .files import JsonlAppender, atomic_write_json, atomic_write_text, read_jsonl
from .model.load import save_checkpoint
from .options import CompressOptions, DiscoverOptions, EvaluateOptions, Point, option_fields
from .outdir import check_output_dir, output_lock, start_output_dir
from .pipeline import Compressed, Pipeline, needs_paths
from .prune.macs import count_macs_params
from .prune.masks import NeuronMask
from .reports import (SWEEP_FORMAT, CompressReport, Counts, DataSummary, MaskSummary, SweepPoint, point_key, render_table,
                      write_sweep_outputs)

COMPRESS_SETTINGS = "compress.json"
SWEEP_SETTINGS = "sweep.json"
POINTS = "points.jsonl"


# ------------------------------------------------------------------------------------ options
def _options(cls: type, given: dict[str, Any], what: str) -> Any:
    known = option_fields(cls)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TypeError(f"{what}() got unknown option(s) {', '.join(unknown)}; it takes {', '.join(sorted(known))}")
    return cls(**given)


def _spec(obj: Any) -> str:
    """How a model or data argument is named in settings and reports."""
    if isinstance(obj, (str, Path)):
        return str(obj)
    if isinstance(obj, DataPools):
        return obj.spec
    if isinstance(obj, nn.Module):
        return getattr(obj, "vitprune_source", {}).get("spec") or f"<in-memory {type(obj).__name__}>"
    if isinstance(obj, (tuple, list)):
        return f"<datasets {'+'.join(type(d).__name__ for d in obj)}>"
    return f"<{type(obj).__name__}>"


def _settings(opts: Any) -> dict[str, Any]:
    """Options as they are written to (and compared with) a settings file."""
    return json.loads(json.dumps({**asdict(opts), "vitprune_version": __version__}))


def _with_defaults(cls: type):
    """Settings of an older run with the options it did not know at their defaults (the same run as before they existed)."""
    defaults = json.loads(json.dumps(option_fields(cls)))

    def normalise(old: dict) -> dict:
        return {**defaults, **old} if isinstance(old, dict) else old

    return normalise


def checkpoint_meta(dense: nn.Module, mask: NeuronMask, *, compensate: str, finetune_epochs: int, data: str) -> dict[str, Any]:
    """What a pruned checkpoint records: how to rebuild it (timm architecture, arguments, MLP widths), its data
    configuration and where it came from."""
    from .model.adapter import data_config

    source = dense.vitprune_source
    return {"arch": source["arch"], "model_kwargs": source.get("model_kwargs", {}), "data_config": data_config(dense),
            "source_model": source, "mlp_hidden": mask.kept_counts, "kept": [list(k) for k in mask.kept],
            "criterion": mask.criterion, "sparsity": mask.sparsity, "compensate": compensate, "finetune_epochs": finetune_epochs,
            "data": data, "vitprune_version": __version__}


def onnx_metadata(meta: dict[str, Any], *, input_size: list[int], class_names: list[str]) -> dict[str, Any]:
    """The metadata every exported ONNX model carries (one place: compress, the result API and ``vitprune export``)."""
    return {"source_model": (meta.get("source_model") or {}).get("spec", ""), "criterion": meta.get("criterion", ""),
            "kept_units": meta.get("mlp_hidden"), "sparsity": round(meta["sparsity"], 6) if meta.get("sparsity") is not None else None,
            "vitprune_version": __version__, "input_size": list(input_size), "class_names": list(class_names)}


# ----------------------------------------------------------------------------------- compress
@dataclass
class CompressResult:
    """What ``compress`` returns: the pruned (sliced) timm model, its mask, the report, and ways to ship it."""

    model: nn.Module
    mask: NeuronMask
    report: CompressReport
    dense: nn.Module
    meta: dict[str, Any]
    _pipeline: Pipeline
    _evaluation: ImagePool

    def save(self, folder: str | Path, *, force: bool = False) -> Path:
        """A checkpoint folder (model.safetensors + vitprune.json, mask.json, report.json/.md) that
        ``vitprune.load_model(folder)`` reads back; an existing non-empty folder needs ``force``."""
        folder = Path(folder)
        if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not force)):
            raise UserError(f"{folder} exists and is not empty; pass force=True to write into it, or another folder")
        verify = str(self.meta["source_model"].get("spec", "")).startswith("<in-memory")
        save_checkpoint(self.model, folder, self.meta, verify=verify)
        atomic_write_json(folder / "mask.json", self.mask.to_json())
        atomic_write_json(folder / "report.json", self.report.to_json())
        atomic_write_text(folder / "report.md", self.report.markdown())
        return folder

    def parity_images(self):
        return next(self._evaluation.select(range(min(16, len(self._evaluation)))).batches(self._pipeline.transform, 16))[1]

    def export_onnx(self, path: str | Path, quantize: str | None = None, *, int8_mode: str = "static",
                    max_int8_drop: float = 1.0) -> dict[str, Any]:
        """Write the pruned model as ONNX at ``path`` (parity-checked with onnxruntime) and, with ``quantize="int8"``,
        ``<stem>.int8.onnx`` beside it if its top-1 is within ``max_int8_drop`` points of fp32's."""
        from .export.onnx import export_onnx

        path = Path(path)
        parity = self.parity_images()
        metadata = onnx_metadata(self.meta, input_size=list(parity.shape[1:]), class_names=list(self._pipeline.pools.class_names))
        info = {"onnx": export_onnx(self.model, path, metadata=metadata, parity_images=parity)}
        if quantize is not None:
            if quantize != "int8":
                raise UserError(f"quantize must be None or 'int8' (got {quantize!r})")
            cal = self._pipeline.calibration().images if int8_mode == "static" else None
            info["int8"] = _int8(path, path.with_name(f"{path.stem}.int8.onnx"), metadata, self._evaluation, self._pipeline,
                                 mode=int8_mode, calibration=cal, max_drop=max_int8_drop).to_json()
        return info


def _int8(fp32: Path, out: Path, metadata: dict, evaluation: ImagePool, pipeline: Pipeline, *, mode: str, calibration,
          max_drop: float):
    """The int8 model of ``fp32``, kept only if its top-1 on the evaluation images is within ``max_drop`` points."""
    from .export.quantize import quantize_gated

    images, labels = materialize(evaluation, pipeline.transform)
    if mode == "static" and calibration is None:
        calibration = materialize(pipeline.calib, pipeline.transform)[0]
    result = quantize_gated(fp32, out, mode=mode, calibration=calibration, images=images, labels=labels, metadata=metadata,
                            max_drop=max_drop)
    if not result.written:
        out.unlink(missing_ok=True)  # never a stale int8 model beside a new fp32 one
    return result


def default_output(opts: CompressOptions) -> Path:
    """``exported/<name>``, the name derived from the settings (what the command line writes without --out)."""
    from .defaults import KEEP_DEFAULT, SPARSITY_DEFAULT

    model = Path(opts.model).name.split(".")[0] if opts.model != "demo" else "demo"
    model = model.replace("random:", "random-").replace("zoo:", "zoo-")
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
    return Path("exported") / name


def compress(model: str | nn.Module = "demo", data: Any = "demo", *, keep_topk: int | None = None, sparsity: float | None = None,
             target_macs: float | None = None, out: str | Path | None = None, force: bool = False, quiet: bool = False,
             **options: Any) -> CompressResult | None:
    """Prune ``model`` to a budget (exactly one of ``keep_topk``, ``sparsity``, ``target_macs``) and measure it.

    ``options`` are ``vitprune compress``'s (``CompressOptions``; ``criterion=None`` / ``compensate=None`` take
    the zoo's best). With ``out``, everything lands in that folder as on the command line (discovery resumes
    there). Under torchrun / accelerate launch the work is split over the processes; the main process gets
    the result, the others None.
    """
    opts = _options(CompressOptions, {**options, "model": _spec(model), "data": _spec(data), "keep_topk": keep_topk,
                                      "sparsity": sparsity, "target_macs": target_macs}, "compress")
    opts = opts.resolve().validate()
    t_start = time.time()
    dist = get_dist(opts.device)
    out = Path(out) if out is not None else None
    pipeline = Pipeline(model, data, opts, dist=dist, quiet=quiet, paths=opts.paths,
                        run_folder=lambda settings: out / "paths" if out is not None else None)
    if out is None:
        return _compress(opts, pipeline, None, dist, quiet, t_start)
    settings = _settings(opts)
    with output_lock(out, "compress", dist):
        check_output_dir(out, COMPRESS_SETTINGS, settings, what="compress result", force=force,
                         normalise=_with_defaults(CompressOptions))
        dist.barrier()
        if dist.is_main:
            start_output_dir(out, COMPRESS_SETTINGS, settings, force=force)
        dist.barrier()
        return _compress(opts, pipeline, out, dist, quiet, t_start)


def _compress(opts: CompressOptions, pipeline: Pipeline, out: Path | None, dist: Dist, quiet: bool, t_start: float
              ) -> CompressResult | None:
    quiet = quiet or not dist.is_main
    point = opts.point
    keep = point.budget.keep_topk is not None
    settings = pipeline.discovery_settings(point, opts.discovery_topk, opts.label) if needs_paths(point.criterion, keep) else None
    done = pipeline.compress(point, settings, scope=opts.scope, min_keep=opts.min_keep, round_to=opts.round_to,
                             options={"lsq_target": opts.lsq_target, "lsq_weighting": opts.lsq_weighting})
    mask = done.mask
    if keep and mask.sparsity == 0.0:
        raise UserError(f"--keep-topk {opts.keep_topk} keeps every unit of every block: nothing to remove; lower K")
    if out is not None and dist.is_main:
        atomic_write_json(out / "mask.json", mask.to_json())
    recon = done.pruned.reconstruction
    if recon is not None and recon.underdetermined and not quiet:
        print(f"vitprune: note: blocks {recon.underdetermined} have fewer calibration tokens than kept units; the least-squares "
              "fit is underdetermined there and the ridge keeps it close to the plain slice (raise --per-class for a "
              "better fit)", file=sys.stderr)

    # evaluation pool (never the calibration images), dense vs pruned
    pruned = done.pruned.model
    evaluation = pipeline.evaluation_pool(opts.eval_per_class)
    t0 = time.time()
    results = pipeline.accuracy({"dense": pipeline.dense, "pruned": pruned},
                                evaluation.batches(pipeline.transform, 256, shard=dist), len(evaluation) // dist.world)
    pipeline.timings["evaluation_s"] = time.time() - t0
    finetune = _recover(opts, pipeline, pruned, evaluation, results, dist) if opts.finetune_epochs else None
    if not dist.is_main:
        return None

    meta = checkpoint_meta(pipeline.dense, mask, compensate=opts.compensate, finetune_epochs=opts.finetune_epochs, data=opts.data)
    macs_dense, params_dense = count_macs_params(pipeline.dense)
    macs_pruned, params_pruned = count_macs_params(pruned)
    onnx_info, latency, int8 = None, None, None
    if out is not None:
        save_checkpoint(pruned, out, meta, verify=str(pipeline.source.get("spec", "")).startswith("<in-memory"))
        if opts.export:
            onnx_info, latency, int8 = _export(opts, pipeline, pruned, meta, evaluation, out)
    timings = {**pipeline.timings, "total_s": time.time() - t_start}
    report = CompressReport(
        options=_settings(opts), output=str(out) if out is not None else None, model=pipeline.source,
        data=DataSummary(pipeline.pools.spec, list(pipeline.pools.class_names), len(pipeline.calib), len(evaluation), 0),
        mask=MaskSummary(mask.criterion, mask.kept_counts, list(mask.widths), mask.sparsity, mask.block_sparsity),
        critical_units={str(c): units for c, units in done.critical.items()} if done.critical else None,
        compensation={"mode": opts.compensate, "reconstruction": recon.to_json() if recon else None},
        params=Counts(params_dense, params_pruned, params_pruned / params_dense),
        macs=Counts(macs_dense, macs_pruned, macs_pruned / macs_dense, opts.target_macs),
        accuracy=results, finetune=finetune, onnx=onnx_info, int8=int8.to_json() if int8 else None, latency=latency,
        timings=timings,
    )
    if out is not None:
        atomic_write_json(out / "report.json", report.to_json())
        atomic_write_text(out / "report.md", report.markdown())
    return CompressResult(pruned, mask, report, pipeline.dense, meta, pipeline, evaluation)


def _recover(opts: CompressOptions, pipeline: Pipeline, pruned: nn.Module, evaluation: ImagePool, results: dict[str, EvalResult],
             dist: Dist) -> dict:
    """Distillation from the dense model on the calibration pool; replaces ``results['pruned']`` by the recovered top-1."""
    from .finetune import distill

    t0 = time.time()
    train = select_per_class(pipeline.pools.calibration, opts.finetune_per_class, opts.classes, num_classes=pipeline.pools.num_classes)
    history = distill(pruned, pipeline.dense, train.torch_loader(pipeline.transform, 128, shuffle=True, seed=opts.seed),
                      epochs=opts.finetune_epochs, lr=opts.finetune_lr, seed=opts.seed, quiet=pipeline.quiet)
    pruned.to(dist.device).eval()
    after = pipeline.accuracy({"recovered": pruned}, evaluation.batches(pipeline.transform, 256, shard=dist),
                              len(evaluation) // dist.world)["recovered"]
    finetune = {"epochs": opts.finetune_epochs, "images": len(train), "history": history, "after": after.to_json(),
                "before": results["pruned"].to_json()}
    results["pruned"] = after
    pipeline.timings["finetune_s"] = time.time() - t0
    return finetune


def _export(opts: CompressOptions, pipeline: Pipeline, pruned: nn.Module, meta: dict, evaluation: ImagePool, out: Path):
    """model.onnx (+ model.int8.onnx) in ``out`` and the onnxruntime latency of dense vs pruned."""
    from .export.onnx import export_onnx, ort_latency

    t0 = time.time()
    parity = next(evaluation.select(range(min(16, len(evaluation)))).batches(pipeline.transform, 16))[1]
    metadata = onnx_metadata(meta, input_size=list(parity.shape[1:]), class_names=list(pipeline.pools.class_names))
    onnx_info = export_onnx(pruned, out / ONNX_FILE, metadata=metadata, parity_images=parity)
    pruned.to(pipeline.dist.device)
    pipeline.timings["export_s"] = time.time() - t0
    int8 = None
    if opts.quantize:
        t0 = time.time()
        cal = pipeline.calibration().images if opts.int8_mode == "static" else None
        int8 = _int8(out / ONNX_FILE, out / INT8_FILE, metadata, evaluation, pipeline, mode=opts.int8_mode, calibration=cal,
                     max_drop=opts.max_int8_drop)
        pipeline.timings["int8_s"] = time.time() - t0
    timed = {"pruned": out / ONNX_FILE, **({"pruned_int8": out / INT8_FILE} if int8 and int8.written else {})}
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(pipeline.dense, Path(tmp) / "dense.onnx", metadata={"source_model": pipeline.source.get("spec", "")},
                    parity_images=parity)
        pipeline.dense.to(pipeline.dist.device)
        latency = ort_latency({"dense": Path(tmp) / "dense.onnx", **timed}, tuple(parity.shape[1:]), rounds=opts.latency_rounds)
    return onnx_info, latency, int8


# ----------------------------------------------------------------------------------- evaluate
@dataclass
class EvaluateResult:
    """The points of a sweep, in the sweep's order (the dense model first)."""

    points: list[SweepPoint]
    settings: dict[str, Any]
    title: str

    def table(self) -> str:
        """The Markdown table of results.md (random seeds averaged)."""
        return render_table([p.to_json() for p in self.points])

    def save(self, folder: str | Path) -> Path:
        """results.csv, results.json, results.md and accuracy_vs_sparsity.png in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_sweep_outputs(self.points, folder, self.settings, self.title)
        return folder


def run_folder(token_scope: str, objective: str, topk: int) -> str:
    """The sub-folder of a sweep holding the discovery run behind the path points with these settings."""
    return f"paths-{token_scope}-{objective}-top{topk}"


def evaluate(model: str | nn.Module = "demo", data: Any = "demo", *, out: str | Path | None = None, force: bool = False,
             quiet: bool = False, **options: Any) -> EvaluateResult | None:
    """Accuracy vs budget for several criteria and compensations on the same images (``vitprune evaluate``).

    ``options`` are ``EvaluateOptions`` (``criteria=None`` / ``compensate=None``: every registered one). With
    ``out`` the points are appended to ``out/points.jsonl`` as they finish, so an interrupted sweep resumes
    point by point, and results.{csv,json,md} + accuracy_vs_sparsity.png are written at the end.
    """
    opts = _options(EvaluateOptions, {**options, "model": _spec(model), "data": _spec(data)}, "evaluate").resolve().validate()
    dist = get_dist(opts.device)
    out = Path(out) if out is not None else None

    def folder(settings: DiscoverySettings) -> Path | None:
        return out / run_folder(settings.token_scope, settings.objective, settings.topk) if out is not None else None

    pipeline = Pipeline(model, data, opts, dist=dist, quiet=quiet, run_folder=folder)
    settings = {**_settings(opts), "format": SWEEP_FORMAT}
    title = f"{opts.model} on {opts.data}"
    if out is None:
        points = _sweep(opts, pipeline, opts.points(), None, dist, quiet)
        return EvaluateResult(points, settings, title)
    with output_lock(out, "evaluate", dist):
        check_output_dir(out, SWEEP_SETTINGS, settings, what="sweep", force=force, normalise=_with_defaults(EvaluateOptions))
        dist.barrier()
        if dist.is_main:
            start_output_dir(out, SWEEP_SETTINGS, settings, force=force)
        sink = JsonlAppender(out / POINTS) if dist.is_main else None  # drops a torn last line before the others read
        dist.barrier()
        try:
            rows = list(sink.records) if sink else (read_jsonl(out / POINTS) if (out / POINTS).exists() else [])
            points = [SweepPoint.from_json(r, f"{out / POINTS}") for r in rows]
            done = {p.key for p in points}
            todo = [p for p in opts.points() if _key(p) not in done]
            if todo:
                points += _sweep(opts, pipeline, todo, sink, dist, quiet)
        finally:
            if sink:
                sink.close()
        dist.barrier()
        order = {_key(p): i for i, p in enumerate(opts.points())}
        points = sorted((p for p in points if p.key in order), key=lambda p: order[p.key])
        result = EvaluateResult(points, settings, title)
        if dist.is_main:
            result.save(out)
        return result


def _key(p: Point) -> str:
    return point_key({"criterion": p.criterion, "compensate": p.compensate, "seed": p.seed, "target": p.budget.sparsity,
                      "keep_topk": p.budget.keep_topk, "target_macs": p.budget.target_macs, "token_scope": p.token_scope,
                      "objective": p.objective, "aggregation": p.aggregation})


def _sweep(opts: EvaluateOptions, pipeline: Pipeline, todo: list[Point], sink: JsonlAppender | None, dist: Dist,
           quiet: bool) -> list[SweepPoint]:
    """Every point of ``todo``; what the points share (discovery runs, statistics, calibration and evaluation
    images) is computed first, once."""
    from .criteria import criterion_needs
    from .prune import COMPENSATIONS

    quiet = quiet or not dist.is_main

    def settings_of(p: Point) -> DiscoverySettings | None:
        keep = p.budget.keep_topk is not None
        if p.criterion == "dense" or not needs_paths(p.criterion, keep):
            return None
        return pipeline.discovery_settings(p, p.budget.keep_topk or opts.topk)

    for s in sorted({s for s in map(settings_of, todo) if s is not None}, key=lambda s: (s.token_scope, s.objective, s.topk)):
        pipeline.paths(s)
    needs = {n for p in todo if p.criterion != "dense" for n in criterion_needs(p.criterion, keep=p.budget.keep_topk is not None)}
    needs |= {n for p in todo if p.criterion != "dense" for n in COMPENSATIONS.entry(p.compensate).meta.get("needs", ())}
    if needs & {"stats", "gradients"}:
        pipeline.stats(gradients="gradients" in needs)
    if "calibration" in needs:
        pipeline.calibration()
    evaluation = pipeline.evaluation_pool(opts.eval_per_class)
    images, labels = pipeline.images(evaluation, ("evaluation", opts.eval_per_class))
    held = (pipeline.images(pipeline.selection_pool(opts.selection_per_class), ("selection", opts.selection_per_class))
            if opts.selection_per_class else None)
    macs_dense, params_dense = count_macs_params(pipeline.dense)
    widths = pipeline.adapter.hidden_widths
    new: list[SweepPoint] = []
    dense_onnx = None
    with tempfile.TemporaryDirectory(prefix="vitprune-sweep-") as tmp:
        for p in todo:
            t0 = time.time()
            done: Compressed | None = None
            if p.criterion == "dense":
                model = pipeline.dense
            else:
                done = pipeline.compress(p, settings_of(p), scope=opts.scope, min_keep=opts.min_keep, round_to=opts.round_to,
                                         options={"lsq_target": opts.lsq_target, "lsq_weighting": opts.lsq_weighting})
                model = done.pruned.model
            seconds = round(time.time() - t0, 3)
            res = _score(pipeline, model, images, labels)
            extra: dict[str, Any] = {}
            if held is not None:
                extra["top1_selection"] = _score(pipeline, model, *held).top1
            recon = done.pruned.reconstruction if done else None
            if recon is not None:
                extra["ridges"] = [f.ridge for f in recon.blocks]
            if opts.finetune_epochs and done is not None:
                extra.update(_sweep_recovery(opts, pipeline, model, images, labels, res, p.seed))
            macs, params = count_macs_params(model)
            if opts.latency and dist.is_main:
                dense_onnx = dense_onnx or _onnx(pipeline.dense, Path(tmp) / "dense.onnx", images[:8])
                extra.update(_latency(dense_onnx, _onnx(model, Path(tmp) / "point.onnx", images[:8]), images))
            mask = done.mask if done else None
            top1, prob = res.top1, res.mean_true_prob
            if "top1_recovered" in extra:
                top1, prob = extra.pop("top1_recovered"), extra.pop("prob_recovered")
            point = SweepPoint(criterion=p.criterion, compensate=p.compensate, seed=p.seed, target=p.budget.sparsity,
                               keep_topk=p.budget.keep_topk, target_macs=p.budget.target_macs, token_scope=p.token_scope,
                               objective=p.objective, aggregation=p.aggregation, sparsity=mask.sparsity if mask else 0.0,
                               kept=mask.kept_counts if mask else widths, top1=top1, mean_true_prob=prob, compensation_s=seconds,
                               macs=macs, params=params, macs_ratio=macs / macs_dense, params_ratio=params / params_dense, **extra)
            if sink:
                sink.append([point.to_json()])
            new.append(point)
            if not quiet:
                label = p.criterion + (f"[{','.join(v for v in (p.token_scope, p.objective, p.aggregation) if v)}]"
                                       if p.token_scope else "") + ("" if p.compensate == "none" else f" + {p.compensate}")
                print(f"  {label:<32} seed={p.seed} budget={p.budget.describe()} sparsity={point.sparsity:.3f} "
                      f"top-1={point.top1:.4f}", flush=True)
    return new


def _score(pipeline: Pipeline, model: nn.Module, images, labels) -> EvalResult:
    from .accuracy import evaluate_models

    return evaluate_models({"m": model}, tensor_batches(images, labels, 512), class_names=pipeline.pools.class_names,
                           total=len(images), quiet=True, dist=pipeline.dist, precision=pipeline.opts.precision)["m"]


def _sweep_recovery(opts: EvaluateOptions, pipeline: Pipeline, model: nn.Module, images, labels, before: EvalResult, seed: int
                    ) -> dict[str, Any]:
    from .finetune import distill

    train = select_per_class(pipeline.pools.calibration, opts.finetune_per_class, opts.classes, num_classes=pipeline.pools.num_classes)
    distill(model, pipeline.dense, train.torch_loader(pipeline.transform, 128, shuffle=True, seed=seed),
            epochs=opts.finetune_epochs, lr=opts.finetune_lr, seed=seed, quiet=True)
    after = _score(pipeline, model.eval(), images, labels)
    return {"top1_oneshot": before.top1, "mean_true_prob_oneshot": before.mean_true_prob, "finetune_epochs": opts.finetune_epochs,
            "top1_recovered": after.top1, "prob_recovered": after.mean_true_prob}


def _onnx(model: nn.Module, path: Path, parity) -> Path:
    from .export.onnx import export_onnx

    device = next(model.parameters()).device
    export_onnx(model, path, metadata={}, parity_images=parity)
    model.to(device)
    return path


def _latency(dense: Path, point: Path, images) -> dict[str, float]:
    from .export.onnx import ort_latency

    lat = ort_latency({"dense": dense, "point": point}, tuple(images.shape[1:]), batch_sizes=(1,), rounds=20)
    return {"ort_b1_ms": lat["batch1"]["point"]["median_ms"], "ort_b1_dense_ms": lat["batch1"]["dense"]["median_ms"]}


# ----------------------------------------------------------------------------------- discover
def discover(model: str | nn.Module = "demo", data: Any = "demo", *, out: str | Path | None = None, resume: bool = False,
             force: bool = False, quiet: bool = False, **options: Any) -> PathRun | None:
    """Top-K paths (``method``) of every selected image (``DiscoverOptions``: the reference's settings by default).

    With ``out`` the run is resumable there (``resume=True`` continues it); returns the finished run on the
    main process (None on the others under torchrun / accelerate launch).
    """
    opts = _options(DiscoverOptions, {**options, "model": _spec(model), "data": _spec(data)}, "discover").validate()
    settings = DiscoverySettings(method=opts.method, topk=opts.topk, steps=opts.steps, token_scope=opts.token_scope,
                                 label=opts.label, objective=opts.objective, precision=opts.precision, max_rows=opts.max_rows).check()
    dist = get_dist(opts.device)
    pipeline = Pipeline(model, data, opts, dist=dist, quiet=quiet)
    pool = pipeline.pools.calibration if opts.pool == "calibration" else pipeline.pools.evaluation
    selected = select_per_class(pool, opts.per_class, opts.classes, num_classes=pipeline.pools.num_classes)
    run = run_discovery(pipeline.dense, settings, pipeline.pools, selected, pool=opts.pool, per_class=opts.per_class,
                        classes=opts.classes, batch_size=opts.batch_size, dist=dist, out=Path(out) if out is not None else None,
                        resume=resume, force=force, quiet=quiet or not dist.is_main)
    return run if dist.is_main else None


# ------------------------------------------------------------------------- export and convert
def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None, *, data: str | None = None, force: bool = False,
                      quantize: str | None = None, int8_mode: str = "static", max_int8_drop: float = 1.0,
                      per_class: int | None = 16, eval_per_class: int | None = None) -> dict[str, Any]:
    """ONNX of a vitprune checkpoint folder (parity-checked on held-out images of ``data``, default: the data it
    was pruned on), and with ``quantize="int8"`` the gated int8 model beside it."""
    import math
    from contextlib import nullcontext

    from .data import model_transform
    from .export.onnx import export_onnx
    from .model.load import load_model
    from .options import INT8_MODES, check_choice

    ckpt = Path(checkpoint)
    out = Path(out) if out is not None else ckpt / ONNX_FILE
    int8 = out.with_name(f"{out.stem}.int8.onnx") if quantize else None
    if quantize is not None:
        check_choice("--quantize", quantize, ("int8",))
        check_choice("--int8-mode", int8_mode, INT8_MODES)
    if out.is_dir():
        raise UserError(f"{out} is a folder; pass --out FILE.onnx")
    for target in filter(None, (out, int8)):
        if target.exists() and not force:
            raise UserError(f"{target} exists; pass --force to replace it")
    if not (isinstance(max_int8_drop, (int, float)) and math.isfinite(max_int8_drop) and max_int8_drop >= 0):
        raise UserError(f"--max-int8-drop must be a number of points >= 0 (got {max_int8_drop})")
    # the checkpoint folder is read (and by default written): no compress may be writing it meanwhile
    with output_lock(ckpt, "export"), (output_lock(out, "export") if out.parent.absolute() != ckpt.absolute() else nullcontext()):
        model = load_model(str(ckpt))
        meta = model.vitprune_meta
        data = data or meta.get("data")
        if not data:
            raise UserError("pass --data with held-out images for the onnxruntime parity check")
        pipeline = Pipeline(model, data, CompressOptions(model=str(ckpt), data=data), dist=get_dist("cpu"), quiet=True)
        held_out = select_per_class(pipeline.pools.evaluation, 2, None, num_classes=pipeline.pools.num_classes)
        images = next(held_out.batches(pipeline.transform, 16))[1]
        metadata = onnx_metadata({**meta, "source_model": meta.get("source_model") or {"spec": str(ckpt)}},
                                 input_size=list(images.shape[1:]), class_names=list(pipeline.pools.class_names))
        result: dict[str, Any] = {"out": str(out), "onnx": export_onnx(model, out, parity_images=images, metadata=metadata)}
        if int8 is not None:
            evaluation = pipeline.evaluation_pool(eval_per_class)
            calibration = (materialize(select_per_class(pipeline.pools.calibration, per_class, None,
                                                        num_classes=pipeline.pools.num_classes), model_transform(model))[0]
                           if int8_mode == "static" else None)
            result["int8_path"] = str(int8)
            result["int8"] = _int8(out, int8, metadata, evaluation, pipeline, mode=int8_mode, calibration=calibration,
                                   max_drop=max_int8_drop).to_json()
        return result


def convert_run(src: str | Path, dst: str | Path, *, prefix: str | None = None, force: bool = False) -> str:
    """Path records between a vitprune run folder and the reference code's ``{prefix}-{label}.rlt.jsonl`` files."""
    from .discovery.records import CONFIG, PATHS, load_run, write_records, write_reference

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UserError(f"{src} is not a folder; pass a run folder or a folder of *.rlt.jsonl files")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not force:
        raise UserError(f"{dst} is not empty; pass --force to write into it")
    run = load_run(src)
    if (src / PATHS).is_file():
        header = run.header
        args_json = {"ig_total_step": header.discovery.steps if header else None, "topK": header.discovery.topk if header else None,
                     "model_type": header.model.spec if header else None, "dataset": header.data.spec if header else None,
                     "vitprune": header.to_json() if header else None}
        files = write_reference(run.records, dst, prefix=prefix or "imgnet_all", args=args_json)
        return f"wrote {len(files)} reference files to {dst}"
    dst.mkdir(parents=True, exist_ok=True)
    write_records(dst / PATHS, run.records)
    atomic_write_json(dst / CONFIG, {"command": "convert", "source": str(src), "num_images": len(run.records)})
    return f"wrote {len(run.records)} records to {dst / PATHS}"


__all__ = ["compress", "evaluate", "discover", "export_checkpoint", "convert_run", "CompressResult", "EvaluateResult", "default_output", "checkpoint_meta",
           "onnx_metadata", "run_folder", "COMPRESS_SETTINGS", "SWEEP_SETTINGS", "POINTS"]
