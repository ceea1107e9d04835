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
from contextlib import nullcontext
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
from .data import data_location
from .model.adapter import data_config
from .model.load import model_location, save_checkpoint
from .options import CompressOptions, DiscoverOptions, EvaluateOptions, Point, option_fields
from .outdir import OutputFolder, check_inputs, is_vitprune_folder
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


# compress options whose default became None ("not given"; --paths then takes the run's own setting)
_NONE_DEFAULTS = {"steps": 20, "label": "truth"}


def _with_defaults(cls: type):
    """Settings of an older run with the options it did not know at their defaults (the same run as before they existed)."""
    defaults = json.loads(json.dumps(option_fields(cls)))

    def normalise(old: dict) -> dict:
        if not isinstance(old, dict):
            return old
        old = {**defaults, **old}
        for key, value in _NONE_DEFAULTS.items():
            if defaults.get(key, 0) is None and old.get(key) == value:
                old[key] = None
        return old

    return normalise


def _inputs(model: Any, data: Any, *more: Any) -> list[Path]:
    """The files and folders a run reads: an output must not equal, contain or lie inside any of them."""
    found = [model_location(model) if isinstance(model, (str, Path)) else None,
             data_location(data) if isinstance(data, (str, Path)) else None, *more]
    return [Path(p) for p in found if p]


def checkpoint_meta(dense: nn.Module, mask: NeuronMask, *, compensate: str, finetune_epochs: int, data: str) -> dict[str, Any]:
    """What a pruned checkpoint records: how to rebuild it (timm architecture, arguments, MLP widths), its data
    configuration and where it came from."""
    from .model.adapter import pretrained_config

    source = dense.vitprune_source
    return {"arch": source["arch"], "model_args": source.get("model_args", source.get("model_kwargs", {})),
            "pretrained_cfg": pretrained_config(dense),
            "source_model": source, "mlp_hidden": mask.kept_counts, "kept": [list(k) for k in mask.kept],
            **({"attn_heads": mask.heads.kept_counts, "kept_heads": [list(k) for k in mask.heads.kept]} if mask.heads else {}),
            "criterion": mask.criterion, "sparsity": mask.sparsity, "compensate": compensate, "finetune_epochs": finetune_epochs,
            "data": data, "vitprune_version": __version__}


def onnx_metadata(meta: dict[str, Any], *, input_size: list[int], class_names: list[str], data_config: dict) -> dict[str, Any]:
    """The metadata every exported ONNX model carries (one place: compress, the result API and ``vitprune export``):
    where it came from, what was kept, and what a user needs to feed it (input size, mean, std, class names)."""
    keep = ("mean", "std", "interpolation", "crop_pct", "crop_mode")
    return {"source_model": (meta.get("source_model") or {}).get("spec", ""), "criterion": meta.get("criterion", ""),
            "kept_units": meta.get("mlp_hidden"), **({"kept_heads": meta["attn_heads"]} if meta.get("attn_heads") else {}),
            "sparsity": round(meta["sparsity"], 6) if meta.get("sparsity") is not None else None,
            "vitprune_version": __version__, "input_size": list(input_size), "class_names": list(class_names),
            **{k: data_config[k] for k in keep if k in data_config}}


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
        metadata = onnx_metadata(self.meta, input_size=list(parity.shape[1:]), class_names=list(self._pipeline.pools.class_names),
                                 data_config=data_config(self.dense))
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
    if "heads" in opts.prune:
        name += f"-heads-{opts.head_criterion}"
    if opts.faithful_discovery:
        name += "-faithful"
    if opts.finetune_epochs:
        name += f"-ft{opts.finetune_epochs}"
    return Path("exported") / name


def compress(model: str | nn.Module = "demo", data: Any = "demo", *, keep_topk: int | None = None, sparsity: float | None = None,
             target_macs: float | None = None, out: str | Path | None = None, force: bool = False, quiet: bool = False,
             recipe: str | None = None, **options: Any) -> CompressResult | None:
    """Prune ``model`` to a budget (exactly one of ``keep_topk``, ``sparsity``, ``target_macs``) and measure it.

    ``options`` are ``vitprune compress``'s (``CompressOptions``; ``criterion=None`` / ``compensate=None`` take
    the zoo's best). With ``out``, everything lands in that folder as on the command line: discovery resumes
    there, and the result is published only when complete (``recipe``, YAML text, is written beside it as
    config.yaml). Under torchrun / accelerate launch the work is split over the processes; the main process
    gets the result, the others None.
    """
    opts = _options(CompressOptions, {**options, "model": _spec(model), "data": _spec(data), "keep_topk": keep_topk,
                                      "sparsity": sparsity, "target_macs": target_macs}, "compress")
    opts = opts.resolve().validate()
    t_start = time.time()
    dist = get_dist(opts.device)
    out = Path(out) if out is not None else None
    if out is not None:
        check_inputs(out, _inputs(model, data, opts.paths))
    pipeline = Pipeline(model, data, opts, dist=dist, quiet=quiet,
                        run_folder=lambda settings: out / "paths" if out is not None else None)
    point = opts.point
    settings = _discovery_settings(opts, pipeline)
    pipeline.check_point(point, settings, scope=opts.scope, min_keep=opts.min_keep, round_to=opts.round_to)
    if out is None:
        return _compress(opts, pipeline, settings, None, dist, quiet, t_start, recipe)
    with OutputFolder(out, "compress", inputs=_inputs(model, data, opts.paths), dist=dist) as folder:
        folder.claim(COMPRESS_SETTINGS, _settings(opts), what="compress result", force=force,
                     normalise=_with_defaults(CompressOptions))
        if settings is not None and opts.paths is None:
            folder.own("paths")
        return _compress(opts, pipeline, settings, folder, dist, quiet, t_start, recipe)


def _discovery_settings(opts: CompressOptions, pipeline: Pipeline) -> DiscoverySettings | None:
    """What the point's criterion reads: a discovery of these settings, or (``--paths``) the given run's own."""
    point = opts.point
    if not needs_paths(point):
        return None
    if opts.paths is not None:
        given = DiscoverySettings(topk=opts.topk or 1, steps=opts.steps or 20, label=opts.label or "truth",
                                  token_scope=opts.token_scope or "auto", objective=opts.objective or "prob")
        return pipeline.given_run_settings(opts.paths, given=given, given_fields=[
            f for f in ("topk", "steps", "label", "token_scope", "objective") if getattr(opts, f) is not None])
    return pipeline.discovery_settings(point, opts.discovery_topk, opts.label or "truth")


def _compress(opts: CompressOptions, pipeline: Pipeline, settings: DiscoverySettings | None, folder: OutputFolder | None,
              dist: Dist, quiet: bool, t_start: float, recipe: str | None) -> CompressResult | None:
    quiet = quiet or not dist.is_main
    point = opts.point
    keep = point.budget.keep_topk is not None
    done = pipeline.compress(point, settings, scope=opts.scope, min_keep=opts.min_keep, round_to=opts.round_to,
                             options={"lsq_target": opts.lsq_target, "lsq_weighting": opts.lsq_weighting})
    mask = done.mask
    if keep and mask.sparsity == 0.0:
        raise UserError(f"--keep-topk {opts.keep_topk} keeps every unit of every block: nothing to remove; lower K")
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
    stage = folder.staging if folder is not None else None
    if stage is not None:
        atomic_write_json(stage / "mask.json", mask.to_json())
        save_checkpoint(pruned, stage, meta, verify=str(pipeline.source.get("spec", "")).startswith("<in-memory"))
        if opts.export:
            onnx_info, latency, int8 = _export(opts, pipeline, pruned, meta, evaluation, stage)
    timings = {**pipeline.timings, "total_s": time.time() - t_start}
    run = pipeline.runs.get(settings) if settings is not None else None
    report = CompressReport(
        options=_settings(opts), output=str(folder.path) if folder is not None else None, model=pipeline.source,
        data=DataSummary(pipeline.pools.spec, list(pipeline.pools.class_names), len(pipeline.calib), len(evaluation),
                         pipeline.overlap(evaluation, run)),
        mask=MaskSummary(mask.criterion, mask.kept_counts, list(mask.widths), mask.sparsity, mask.block_sparsity,
                         *((mask.heads.criterion, mask.heads.kept_counts, list(mask.heads.widths)) if mask.heads else ())),
        critical_units={str(c): units for c, units in done.critical.items()} if done.critical else None,
        compensation={"mode": opts.compensate, "reconstruction": recon.to_json() if recon else None},
        params=Counts(params_dense, params_pruned, params_pruned / params_dense),
        macs=Counts(macs_dense, macs_pruned, macs_pruned / macs_dense, opts.target_macs),
        accuracy=results, finetune=finetune, onnx=onnx_info, int8=int8.to_json() if int8 else None, latency=latency,
        timings=timings, discovery=_discovery_summary(settings, run),
    )
    if stage is not None:
        atomic_write_json(stage / "report.json", report.to_json())
        atomic_write_text(stage / "report.md", report.markdown())
        if recipe is not None:
            atomic_write_text(stage / "config.yaml", recipe)
        atomic_write_json(stage / COMPRESS_SETTINGS, _settings(opts))
        folder.publish([e.name for e in stage.iterdir() if not e.name.startswith(".")])
    return CompressResult(pruned, mask, report, pipeline.dense, meta, pipeline, evaluation)


def _discovery_summary(settings: DiscoverySettings | None, run: PathRun | None) -> dict | None:
    """The discovery settings the records behind the mask were made with, and where they are."""
    if settings is None:
        return None
    return {**settings.to_json(), "run": str(run.folder) if run is not None and run.folder is not None else None,
            "images": len(run.records) if run is not None else None,
            # what this compress's own discovery cost (None when the records were reused: --paths, a finished run)
            "cost": run.cost if run is not None else None}


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
    metadata = onnx_metadata(meta, input_size=list(parity.shape[1:]), class_names=list(pipeline.pools.class_names),
                             data_config=data_config(pipeline.dense))
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
    dense_onnx = out / ".dense.onnx"  # staged, never published: only for timing
    export_onnx(pipeline.dense, dense_onnx, metadata={"source_model": pipeline.source.get("spec", "")}, parity_images=parity)
    pipeline.dense.to(pipeline.dist.device)
    latency = ort_latency({"dense": dense_onnx, **timed}, tuple(parity.shape[1:]), rounds=opts.latency_rounds)
    dense_onnx.unlink()
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
             quiet: bool = False, recipe: str | None = None, **options: Any) -> EvaluateResult | None:
    """Accuracy vs budget for several criteria and compensations on the same images (``vitprune evaluate``).

    ``options`` are ``EvaluateOptions`` (``criteria=None`` / ``compensate=None``: every registered one). With
    ``out`` the points are appended to ``out/points.jsonl`` as they finish, so an interrupted sweep resumes
    point by point, and results.{csv,json,md} + accuracy_vs_sparsity.png (and ``recipe`` as config.yaml) are
    published at the end.
    """
    opts = _options(EvaluateOptions, {**options, "model": _spec(model), "data": _spec(data)}, "evaluate").resolve().validate()
    dist = get_dist(opts.device)
    out = Path(out) if out is not None else None
    if out is not None:
        check_inputs(out, _inputs(model, data))
    holder: dict[str, OutputFolder] = {}

    def run_dir(settings: DiscoverySettings) -> Path | None:
        if out is None:
            return None
        name = run_folder(settings.token_scope, settings.objective, settings.topk)
        holder["folder"].own(name)
        return out / name

    pipeline = Pipeline(model, data, opts, dist=dist, quiet=quiet, run_folder=run_dir)
    for point in opts.points():
        if point.criterion != "dense":
            pipeline.check_point(point, _sweep_settings(opts, pipeline, point), scope=opts.scope, min_keep=opts.min_keep,
                                 round_to=opts.round_to)
    settings = {**_settings(opts), "format": SWEEP_FORMAT}
    title = f"{opts.model} on {opts.data}"
    if out is None:
        points = _sweep(opts, pipeline, opts.points(), None, dist, quiet, None)
        return EvaluateResult(points, settings, title)
    with OutputFolder(out, "evaluate", inputs=_inputs(model, data), dist=dist) as folder:
        holder["folder"] = folder
        if not folder.claim(SWEEP_SETTINGS, settings, what="sweep", force=force, normalise=_with_defaults(EvaluateOptions)):
            folder.write_settings(SWEEP_SETTINGS, settings)
        folder.own(POINTS)
        sink = JsonlAppender(out / POINTS) if dist.is_main else None  # drops a torn last line before the others read
        dist.barrier()
        try:
            rows = list(sink.records) if sink else (read_jsonl(out / POINTS) if (out / POINTS).exists() else [])
            points = [SweepPoint.from_json(r, f"{out / POINTS}") for r in rows]
            done = {p.key for p in points}
            todo = [p for p in opts.points() if _key(p) not in done]
            if todo:
                points += _sweep(opts, pipeline, todo, sink, dist, quiet, folder.staging if dist.is_main else None)
        finally:
            if sink:
                sink.close()
        dist.barrier()
        order = {_key(p): i for i, p in enumerate(opts.points())}
        points = sorted((p for p in points if p.key in order), key=lambda p: order[p.key])
        result = EvaluateResult(points, settings, title)
        if dist.is_main:
            result.save(folder.staging)
            if recipe is not None:
                atomic_write_text(folder.staging / "config.yaml", recipe)
            folder.publish([e.name for e in folder.staging.iterdir() if not e.name.startswith(".")])
        return result


def _sweep_settings(opts: EvaluateOptions, pipeline: Pipeline, p: Point) -> DiscoverySettings | None:
    """The discovery behind a point of the sweep: K = its keep-topk, else --topk."""
    if not needs_paths(p):
        return None
    return pipeline.discovery_settings(p, p.budget.keep_topk or opts.topk)


def _key(p: Point) -> str:
    return point_key({"criterion": p.criterion, "compensate": p.compensate, "seed": p.seed, "target": p.budget.sparsity,
                      "keep_topk": p.budget.keep_topk, "target_macs": p.budget.target_macs, "token_scope": p.token_scope,
                      "objective": p.objective, "aggregation": p.aggregation, "head_criterion": p.head_criterion})


def _sweep(opts: EvaluateOptions, pipeline: Pipeline, todo: list[Point], sink: JsonlAppender | None, dist: Dist,
           quiet: bool, scratch: Path | None) -> list[SweepPoint]:
    """Every point of ``todo``; what the points share (discovery runs, statistics, calibration and evaluation
    images) is computed first, once. ``scratch``: where latency ONNX files go (the run's staging folder)."""
    from .criteria import criterion_needs
    from .prune import COMPENSATIONS

    quiet = quiet or not dist.is_main

    def settings_of(p: Point) -> DiscoverySettings | None:
        return _sweep_settings(opts, pipeline, p)

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
    with (nullcontext(scratch) if scratch is not None else tempfile.TemporaryDirectory(prefix="vitprune-sweep-")) as tmp:
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
                dense_onnx = dense_onnx or _onnx(pipeline.dense, Path(tmp) / ".dense.onnx", images[:8])
                point_onnx = _onnx(model, Path(tmp) / ".point.onnx", images[:8])
                extra.update(_latency(dense_onnx, point_onnx, images))
                point_onnx.unlink()
            mask = done.mask if done else None
            top1, prob = res.top1, res.mean_true_prob
            if "top1_recovered" in extra:
                top1, prob = extra.pop("top1_recovered"), extra.pop("prob_recovered")
            point = SweepPoint(criterion=p.criterion, compensate=p.compensate, seed=p.seed, target=p.budget.sparsity,
                               keep_topk=p.budget.keep_topk, target_macs=p.budget.target_macs, token_scope=p.token_scope,
                               objective=p.objective, aggregation=p.aggregation, sparsity=mask.sparsity if mask else 0.0,
                               kept=mask.kept_counts if mask else widths, top1=top1, mean_true_prob=prob, compensation_s=seconds,
                               macs=macs, params=params, macs_ratio=macs / macs_dense, params_ratio=params / params_dense,
                               head_criterion=p.head_criterion,
                               kept_heads=mask.heads.kept_counts if mask is not None and mask.heads else None, **extra)
            if sink:
                sink.append([point.to_json()])
            new.append(point)
            if not quiet:
                label = p.criterion + (f"[{','.join(v for v in (p.token_scope, p.objective, p.aggregation) if v)}]"
                                       if p.token_scope else "") + ("" if p.compensate == "none" else f" + {p.compensate}") + (
                    f" + heads:{p.head_criterion}" if p.head_criterion else "")
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
    if out is not None:
        check_inputs(out, _inputs(model, data))
    run = run_discovery(pipeline.dense, settings, pipeline.pools, selected, pool=opts.pool, per_class=opts.per_class,
                        classes=opts.classes, batch_size=opts.batch_size, dist=dist, out=Path(out) if out is not None else None,
                        resume=resume, force=force, quiet=quiet or not dist.is_main, inputs=tuple(_inputs(model, data)))
    return run if dist.is_main else None


# ------------------------------------------------------------------------- export and convert
def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None, *, data: str | None = None, force: bool = False,
                      quantize: str | None = None, int8_mode: str = "static", max_int8_drop: float = 1.0,
                      per_class: int | None = 16, eval_per_class: int | None = None) -> dict[str, Any]:
    """ONNX of a vitprune checkpoint folder (parity-checked on held-out images of ``data``, default: the data it
    was pruned on; its classes must be the model's), and with ``quantize="int8"`` the gated int8 model beside it.

    ``out`` (default ``CHECKPOINT/model.onnx``) never replaces a file vitprune did not write: an existing file is
    replaced with ``force`` only if it is vitprune's (listed in its folder's manifest, or an ONNX model vitprune
    produced); never a file the export reads."""
    import math

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
    if not (isinstance(max_int8_drop, (int, float)) and math.isfinite(max_int8_drop) and max_int8_drop >= 0):
        raise UserError(f"--max-int8-drop must be a number of points >= 0 (got {max_int8_drop})")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; pass --out FILE.onnx")
    if out.suffix.lower() != ".onnx":
        raise UserError(f"--out {out} must name an .onnx file")
    for read in (ckpt / name for name in ("model.safetensors", "vitprune.json", "config.json", "pytorch_model.bin")):
        if out.resolve() == read.resolve() or (int8 is not None and int8.resolve() == read.resolve()):
            raise UserError(f"--out {out} would overwrite {read}, which the export reads; choose another --out")
    check_inputs(out, [data_location(data)] if data else [], )
    inside = out.resolve().parent == ckpt.resolve()
    with (OutputFolder(ckpt, "compress") if inside and is_vitprune_folder(ckpt) else nullcontext()) as folder:
        for target in filter(None, (out, int8)):
            _check_replace(target, force, folder)
        model = load_model(str(ckpt))
        meta = model.vitprune_meta
        data = data or meta.get("data")
        if not data:
            raise UserError("pass --data with held-out images for the onnxruntime parity check")
        pipeline = Pipeline(model, data, CompressOptions(model=str(ckpt), data=data), dist=get_dist("cpu"), quiet=True)
        held_out = select_per_class(pipeline.pools.evaluation, 2, None, num_classes=pipeline.pools.num_classes)
        images = next(held_out.batches(pipeline.transform, 16))[1]
        metadata = onnx_metadata({**meta, "source_model": meta.get("source_model") or {"spec": str(ckpt)}},
                                 input_size=list(images.shape[1:]), class_names=list(pipeline.pools.class_names),
                                 data_config=data_config(pipeline.dense))
        if folder is not None:
            folder.own(*(t.name for t in filter(None, (out, int8))))
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


def _check_replace(target: Path, force: bool, folder: OutputFolder | None) -> None:
    """An existing file is replaced only with ``force``, and only if vitprune wrote it."""
    if not target.exists() and not target.is_symlink():
        return
    if not force:
        raise UserError(f"{target} exists; pass --force to replace it")
    owned = folder is not None and target.name in folder.owned_names()
    if not owned and not _vitprune_onnx(target):
        raise UserError(f"{target} exists and is not an ONNX model vitprune wrote; it is never replaced, even with --force: "
                        "choose another --out")


def _vitprune_onnx(path: Path) -> bool:
    try:
        import onnx

        return path.is_file() and onnx.load(str(path), load_external_data=False).producer_name == "vitprune"
    except Exception:
        return False


def convert_run(src: str | Path, dst: str | Path, *, prefix: str | None = None, force: bool = False) -> str:
    """Path records between a vitprune run folder and the reference code's ``{prefix}-{label}.rlt.jsonl`` files."""
    from .discovery.records import CONFIG, PATHS, load_run, write_records, write_reference

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UserError(f"{src} is not a folder; pass a run folder or a folder of *.rlt.jsonl files")
    check_inputs(dst, [src])
    run = load_run(src)
    settings = {"command": "convert", "source": str(src.resolve()), "prefix": prefix, "to": "reference" if (src / PATHS).is_file() else "run"}
    with OutputFolder(dst, "convert") as folder:
        folder.claim("convert.json", settings, what="conversion", force=True if force else False)
        stage = folder.staging
        if (src / PATHS).is_file():
            header = run.header
            args_json = {"ig_total_step": header.discovery.steps if header else None, "topK": header.discovery.topk if header else None,
                         "model_type": header.model.spec if header else None, "dataset": header.data.spec if header else None,
                         "vitprune": header.to_json() if header else None}
            files = write_reference(run.records, stage, prefix=prefix or "imgnet_all", args=args_json)
            message = f"wrote {len(files)} reference files to {dst}"
        else:
            write_records(stage / PATHS, run.records)
            atomic_write_json(stage / CONFIG, {"command": "convert", "source": str(src), "num_images": len(run.records)})
            message = f"wrote {len(run.records)} records to {dst / PATHS}"
        atomic_write_json(stage / "convert.json", settings)
        folder.publish()
        return message


__all__ = ["compress", "evaluate", "discover", "export_checkpoint", "convert_run", "CompressResult", "EvaluateResult", "default_output", "checkpoint_meta",
           "onnx_metadata", "run_folder", "COMPRESS_SETTINGS", "SWEEP_SETTINGS", "POINTS"]
