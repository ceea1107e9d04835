"""``vitprune.compress``: one point through the pipeline, measured, saved and shipped; and what it returns."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from ..accuracy import EvalResult, paired_difference
from ..data import ImagePool, materialize, split_holdout
from ..discovery.records import PathRun
from ..discovery.settings import DiscoverySettings
from ..distributed import Dist, get_dist
from ..errors import UserError
from ..export import HUB_CONFIG_FILE, MODEL_CARD_FILE, ONNX_FILE, PROGRAM_FILE
from ..files import atomic_write_json, atomic_write_text, read_json
from ..model.adapter import data_config
from ..model.load import load_model, save_checkpoint
from ..options import CompressOptions
from ..outdir import OutputFolder, check_inputs, output_path
from ..pipeline import Pipeline, needs_paths
from ..progress import LOG, stage
from ..prune.macs import count_macs_params
from ..prune.masks import Mask
from ..recovery import RecoverySettings, recover
from ..reports import CompressReport, Counts, DataSummary, MaskSummary
from .common import (COMPRESS_SETTINGS, Plan, checkpoint_meta, inputs_of, make_options, onnx_metadata, settings_of, spec_of,
                     with_defaults)
from .shipping import PARITY_IMAGES, check_quantize, file_target, fp16_path, int8_path, ship

# what a complete compress result folder holds (model.onnx too, unless --no-export)
RESULT_FILES = (COMPRESS_SETTINGS, "mask.json", "model.safetensors", "vitprune.json", "report.json", "report.md", HUB_CONFIG_FILE,
                MODEL_CARD_FILE)
RECOVERY_STATE = "recovery"  # the folder entry a recovery keeps its resumable state in, until the result is published
# a budget that removes more than this fraction of some block's units or heads is named (one warning line)
DRASTIC = 0.5


@dataclass
class CompressResult:
    """What ``compress`` returns: the pruned (sliced) timm model, its mask, the report, and ways to ship it.

    ``save(folder)`` writes a checkpoint folder as ``vitprune compress --out`` does (and records what ``export_onnx``
    exported); ``export_onnx(path)`` writes the parity-checked ONNX model (and a gated int8 one). Both follow the
    command line's rules: a folder's own files are replaced by the same result, another result needs ``force``, and
    nothing vitprune did not write is ever replaced."""

    model: nn.Module
    mask: Mask
    report: CompressReport
    dense: nn.Module
    meta: dict[str, Any]
    _pipeline: Pipeline
    _evaluation: ImagePool
    _settings: dict[str, Any] = field(default_factory=dict, repr=False)
    _saved: Path | None = field(default=None, repr=False)

    def save(self, folder: str | Path, *, force: bool = False) -> Path:
        """A checkpoint folder (model.safetensors + vitprune.json, mask.json, report.json/.md, compress.json) that
        ``vitprune.load_model(folder)`` reads back. Saving the same result again replaces vitprune's own files; a folder
        holding another result needs ``force``; one holding files vitprune did not write is refused."""
        folder = output_path(folder)
        with OutputFolder(folder, "compress") as out:
            out.claim(COMPRESS_SETTINGS, self._settings, what="compress result", force=force, normalise=with_defaults(CompressOptions))
            stage_dir = out.staging
            report = _write_result(stage_dir, self.model, self.mask, replace(self.report, output=str(folder)), self.meta,
                                   self._settings, recipe=None, parity_images=self.parity_images())
            out.publish()
        self.report, self._saved = report, folder
        return folder

    def parity_images(self):
        return _parity(self._evaluation, self._pipeline)

    def export_onnx(self, path: str | Path, quantize: str | None = None, *, int8_mode: str = "static", max_int8_drop: float = 1.0,
                    latency_rounds: int = 30, force: bool = False, opset: int = 18, provider: str = "CPUExecutionProvider",
                    threads: int = 1, fp16: bool = False, keep_slower_int8: bool = False) -> dict[str, Any]:
        """The pruned model as ONNX at ``path`` (parity-checked with onnxruntime on ``provider`` with ``threads``), with
        ``fp16`` a half-precision ``<stem>.fp16.onnx``, with ``quantize="int8"`` ``<stem>.int8.onnx`` beside it if its
        top-1 is within ``max_int8_drop`` points of fp32's and it is faster (or ``keep_slower_int8``), and the
        onnxruntime latency of dense vs pruned (``latency_rounds``; 0: none) — ``OnnxOptions``, as compress. An existing
        file is replaced only with ``force``, and only if vitprune wrote it. Exported into the folder this result was
        saved to, its report records the export."""
        from ..export.onnx import Runtime

        check_quantize(quantize, int8_mode, max_int8_drop)
        runtime = Runtime(opset, provider, threads).check()
        target, guard = file_target(path, force=force, result=self._settings)
        pipeline = self._pipeline
        metadata = onnx_metadata(self.meta, input_size=list(self.parity_images().shape[1:]),
                                 class_names=list(pipeline.pools.class_names), data_config=data_config(self.dense))
        with guard as folder:
            if folder is not None:
                folder.own(target.name, *([int8_path(target).name] if quantize else []), *([fp16_path(target).name] if fp16 else []))
            shipped = ship(self.model, target, metadata=metadata, parity_images=self.parity_images(), dense=self.dense,
                           quantize=quantize, int8_mode=int8_mode, max_int8_drop=max_int8_drop,
                           evaluation=lambda: materialize(self._evaluation, pipeline.transform),
                           calibration=lambda: pipeline.calibration().images, latency_rounds=latency_rounds,
                           quiet=pipeline.quiet, runtime=runtime, fp16=fp16, keep_slower_int8=keep_slower_int8)
        self.report = replace(self.report, onnx=shipped.onnx, int8=shipped.int8, latency=shipped.latency, fp16=shipped.fp16)
        if self._saved is not None and target.parent.resolve() == self._saved.resolve() and target.name == ONNX_FILE:
            self._update_report(self._saved)  # the saved report says what was exported beside it
        return shipped.to_json()

    def _update_report(self, folder: Path) -> None:
        with OutputFolder(folder, "compress") as out:
            if out.claim(COMPRESS_SETTINGS, self._settings, what="compress result", force=False,
                         normalise=with_defaults(CompressOptions)):
                _write_reports(out.staging, self.report, self.meta, self._settings,
                               files=[e.name for e in folder.iterdir() if not e.name.startswith(".")])
                out.publish()


def _parity(evaluation: ImagePool, pipeline: Pipeline):
    """The held-out images of the ONNX parity check: the first ``PARITY_IMAGES`` of the evaluation pool."""
    return next(evaluation.select(range(min(PARITY_IMAGES, len(evaluation)))).batches(pipeline.transform, PARITY_IMAGES))[1]


def default_output(opts: CompressOptions) -> Path:
    """``exported/<name>``, the name derived from the settings (what the command line writes without --out)."""
    from ..defaults import KEEP_DEFAULT, SPARSITY_DEFAULT

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
        name += f"-ft{opts.finetune_epochs:g}"
    return Path("exported") / name


def compress(model: str | nn.Module = "demo", data: Any = "demo", *, keep_topk: int | None = None, sparsity: float | None = None,
             target_macs: float | None = None, out: str | Path | None = None, force: bool = False, quiet: bool = False,
             recipe: str | None = None, dry_run: bool = False, **options: Any) -> CompressResult | Plan | None:
    """Prune ``model`` to a budget (exactly one of ``keep_topk``, ``sparsity``, ``target_macs``) and measure it.

    Args:
        model: a ``--model`` spec, or a timm ViT in memory (never modified: vitprune works on a copy).
        data: a ``--data`` spec, ``load_data(spec)``, or a ``(calibration, evaluation)`` pair of torch Datasets.
        keep_topk / sparsity / target_macs: the budget (exactly one).
        out: the result folder, written as on the command line: discovery resumes there, the result is published only
            when complete (``recipe``, YAML text, beside it as config.yaml), and a complete result of the same model,
            data and options is returned as it is ("up to date"; ``force`` recomputes it).
        force: replace a different result in ``out`` (it stays until the new one is complete).
        quiet: no stage lines or progress bars.
        dry_run: return the ``Plan`` (stages, images, output) without computing anything.
        options: ``vitprune compress``'s options (``CompressOptions``; ``criterion=None`` / ``compensate=None`` take the
            zoo's best).

    Under torchrun / accelerate launch the work is split over the processes; the main process gets the result, the
    others None.
    """
    opts = make_options(CompressOptions, {**options, "model": spec_of(model), "data": spec_of(data), "keep_topk": keep_topk,
                                          "sparsity": sparsity, "target_macs": target_macs}, "compress")
    opts = opts.resolve().validate()
    t_start = time.time()
    dist = get_dist(opts.device)
    out = output_path(out)
    paths = _paths_folder(opts.paths)
    if paths != opts.paths:
        opts = replace(opts, paths=paths)
    if out is not None:
        check_inputs(out, inputs_of(model, data, opts.paths))
    with stage(f"loading model {spec_of(model)} and data {spec_of(data)}", quiet=quiet or not dist.is_main):
        pipeline = Pipeline(model, data, opts, dist=dist, quiet=quiet)
    point = opts.point
    settings = _discovery_settings(opts, pipeline)
    pipeline.check_point(point, settings, scope=opts.scope, min_keep=opts.min_keep, round_to=opts.round_to)
    identity = pipeline.identity(opts.eval_per_class)
    if dry_run:
        return _plan(opts, pipeline, settings, out)
    if out is None:
        return _compress(opts, pipeline, settings, None, dist, quiet, t_start, recipe, identity)
    with OutputFolder(out, "compress", inputs=inputs_of(model, data, opts.paths), dist=dist) as folder:
        same = folder.claim(COMPRESS_SETTINGS, settings_of(opts, identity), what="compress result", force=force,
                            normalise=with_defaults(CompressOptions))
        if same and folder.complete and _complete(out, opts):
            return _up_to_date(out, opts, pipeline, identity, quiet or not dist.is_main)
        if settings is not None and opts.paths is None:
            folder.workdir("paths")  # registered before discovery writes there
            pipeline.run_folder = lambda _settings: folder.workdir("paths")
        return _compress(opts, pipeline, settings, folder, dist, quiet, t_start, recipe, identity)


def _paths_folder(paths: str | None) -> str | None:
    """``--paths`` naming a compress result folder means its discovery run (``DIR/paths``)."""
    if paths is None:
        return None
    folder = Path(paths)
    if (folder / COMPRESS_SETTINGS).is_file() and (folder / "paths").is_dir():
        return str(folder / "paths")
    return paths


def _complete(out: Path, opts: CompressOptions) -> bool:
    return all((out / name).is_file() for name in (*RESULT_FILES, *((ONNX_FILE,) if opts.export else ())))


def _up_to_date(out: Path, opts: CompressOptions, pipeline: Pipeline, identity: dict, quiet: bool) -> CompressResult:
    """The complete result already in ``out`` (same model, data and options): read back, nothing recomputed."""
    if not quiet:
        LOG.info(f"vitprune: {out} is up to date (the same model, data and options); --force recomputes it")
    report = CompressReport.from_json(read_json(out / "report.json"), str(out / "report.json"))
    mask = Mask.from_json(read_json(out / "mask.json"))
    model = load_model(str(out)).to(pipeline.dist.device)
    evaluation = pipeline.evaluation_pool(opts.eval_per_class)
    return CompressResult(model, mask, report, pipeline.dense, model.vitprune_meta, pipeline, evaluation,
                          settings_of(opts, identity), out)


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


def _plan(opts: CompressOptions, pipeline: Pipeline, settings: DiscoverySettings | None, out: Path | None) -> Plan:
    """The stages ``compress`` would run, with their sizes."""
    from ..criteria import criterion_needs, head_criterion_needs
    from ..prune import COMPENSATIONS

    point, n_cal = opts.point, len(pipeline.calib)
    evaluation = pipeline.evaluation_pool(opts.eval_per_class)
    stages = [f"load model {opts.model} ({pipeline.adapter.depth} blocks, {pipeline.pools.num_classes} classes) and data {opts.data}"]
    if settings is not None:
        if opts.paths is not None:
            stages.append(f"read the discover run {opts.paths} (top-{settings.topk}, m = {settings.steps})")
        else:
            stages.append(f"discovery: top-{settings.topk} {settings.method} paths of {n_cal} calibration images (m = {settings.steps}, "
                          f"token scope {settings.token_scope}, objective {settings.objective})"
                          + (f", resumable in {out / 'paths'}" if out is not None else ""))
    needs = set(criterion_needs(point.criterion, keep=point.budget.keep_topk is not None))
    if needs & {"stats", "gradients"}:
        stages.append(f"statistics: one {'forward+backward' if 'gradients' in needs else 'forward'} pass over {n_cal} calibration images")
    if "heads" in point.prune:
        head_needs = set(head_criterion_needs(point.head_criterion))
        passes = "1 + 20 integrated-gradient" if head_needs & {"head_ig", "head_path_ig"} else "1"
        stages.append(f"head statistics ({point.head_criterion}): {passes} passes over {n_cal} calibration images")
    stages.append(f"mask: rank by {point.criterion}" + (f" and heads by {point.head_criterion}" if "heads" in point.prune else "")
                  + f", budget {point.budget.describe()}, allocation {opts.scope}")
    comp_needs = set(COMPENSATIONS.entry(point.compensate).meta.get("needs", ()))
    stages.append(f"slice and compensate ({point.compensate}" + (f", least squares on {n_cal} calibration images, block by block"
                                                                if "calibration" in comp_needs else "") + ")")
    stages.append(f"evaluate dense and pruned on {len(evaluation)} held-out images")
    if opts.finetune_epochs:
        stages.append(f"recover: {opts.finetune_epochs:g} epoch(s) of distillation from the dense model, checked on "
                      f"{opts.finetune_selection_per_class} held-out images per class")
    if out is not None:
        stages.append(f"save the checkpoint, mask and reports in {out}")
        if opts.export:
            stages.append(f"export ONNX (parity on {min(PARITY_IMAGES, len(evaluation))} images)"
                          + (f", int8 ({opts.int8_mode}) gated on {len(evaluation)} images" if opts.quantize else "")
                          + f", onnxruntime latency ({opts.latency_rounds} rounds)")
    details = {"calibration_images": n_cal, "evaluation_images": len(evaluation), "options": settings_of(opts)}
    return Plan("compress", str(out) if out is not None else None, stages, details)


def _compress(opts: CompressOptions, pipeline: Pipeline, settings: DiscoverySettings | None, folder: OutputFolder | None,
              dist: Dist, quiet: bool, t_start: float, recipe: str | None, identity: dict) -> CompressResult | None:
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
        LOG.warning(f"blocks {recon.underdetermined} have fewer calibration tokens than kept units; the least-squares fit is "
                    "underdetermined there and the ridge keeps it close to the plain slice (raise --per-class for a better fit)")

    pruned = done.pruned.model
    evaluation = pipeline.evaluation_pool(opts.eval_per_class)
    macs_dense, params_dense = count_macs_params(pipeline.dense)
    macs_pruned, params_pruned = count_macs_params(pruned)
    if not quiet:
        _warn_drastic(opts, mask, macs_pruned / macs_dense)
    with pipeline.stage(f"evaluating dense and pruned on {len(evaluation)} held-out images", "evaluation_s"):
        results = pipeline.evaluate_pool({"dense": pipeline.dense, "pruned": pruned}, evaluation)
    finetune = (_recover(opts, pipeline, pruned, evaluation, results, dist, folder.workdir(RECOVERY_STATE) if folder is not None else None)
                if opts.finetune_epochs else None)
    if not dist.is_main:
        return None

    meta = checkpoint_meta(pipeline.dense, mask, compensate=opts.compensate, finetune_epochs=opts.finetune_epochs, data=opts.data,
                           class_names=list(pipeline.pools.class_names))
    run = pipeline.runs.get(settings) if settings is not None else None
    report = CompressReport(
        options=settings_of(opts), output=str(folder.path) if folder is not None else None, model=pipeline.source,
        data=DataSummary(pipeline.pools.spec, list(pipeline.pools.class_names), len(pipeline.calib), len(evaluation),
                         pipeline.overlap(evaluation, run), identity.get("data_digest")),
        mask=MaskSummary(mask.criterion, mask.kept_counts, list(mask.widths), mask.sparsity, mask.block_sparsity,
                         *((mask.heads.criterion, mask.heads.kept_counts, list(mask.heads.widths)) if mask.heads else ())),
        critical_units={str(c): units for c, units in done.critical.items()} if done.critical else None,
        compensation={"mode": opts.compensate, "reconstruction": recon.to_json() if recon else None},
        params=Counts(params_dense, params_pruned, params_pruned / params_dense),
        macs=Counts(macs_dense, macs_pruned, macs_pruned / macs_dense, opts.target_macs),
        accuracy=results, finetune=finetune, timings={}, discovery=_discovery_summary(settings, run),
        comparison=paired_difference(results["dense"], results["pruned"]),
    )
    settings_file = settings_of(opts, identity)
    if folder is not None:
        stage_dir = folder.staging
        with pipeline.stage(f"saving the checkpoint (safetensors, torch.export program, config.json), mask and reports in "
                            f"{folder.path}", "save_s"):
            report.program = _write_checkpoint(stage_dir, pruned, mask, meta, parity_images=_parity(evaluation, pipeline),
                                               verify=str(pipeline.source.get("spec", "")).startswith("<in-memory"))
        if opts.export:
            t0 = time.time()
            shipped = ship(pruned, stage_dir / ONNX_FILE, metadata=_onnx_meta(meta, pipeline, evaluation),
                           parity_images=_parity(evaluation, pipeline), dense=pipeline.dense, quantize=opts.quantize,
                           int8_mode=opts.int8_mode, max_int8_drop=opts.max_int8_drop,
                           evaluation=lambda: materialize(evaluation, pipeline.transform),
                           calibration=lambda: pipeline.calibration().images, latency_rounds=opts.latency_rounds, quiet=quiet,
                           runtime=opts.runtime, fp16=opts.fp16, keep_slower_int8=opts.keep_slower_int8)
            pruned.to(dist.device)
            pipeline.dense.to(dist.device)
            pipeline.timings["export_s"] = time.time() - t0
            report = replace(report, onnx=shipped.onnx, int8=shipped.int8, latency=shipped.latency, fp16=shipped.fp16)
    report.timings = {**pipeline.timings, "total_s": time.time() - t_start}
    if folder is not None:
        _write_result(folder.staging, None, mask, report, meta, settings_file, recipe=recipe)  # the checkpoint is there
        folder.publish([e.name for e in folder.staging.iterdir() if not e.name.startswith(".")])
        if opts.finetune_epochs:
            folder.discard(RECOVERY_STATE)  # the recovery's resumable state: the result holds what it made
    return CompressResult(pruned, mask, report, pipeline.dense, meta, pipeline, evaluation, settings_file,
                          folder.path if folder is not None else None)


def _onnx_meta(meta: dict, pipeline: Pipeline, evaluation: ImagePool) -> dict:
    return onnx_metadata(meta, input_size=list(_parity(evaluation, pipeline).shape[1:]), class_names=list(pipeline.pools.class_names),
                         data_config=data_config(pipeline.dense))


def _write_checkpoint(folder: Path, model: nn.Module, mask: Mask, meta: dict, *, parity_images, verify: bool) -> dict:
    """The checkpoint (model.safetensors + vitprune.json), mask.json, the torch-only program (model.pt2, parity-checked)
    and config.json (timm's Hub layout, checked by rebuilding from the folder); returns what the program export did."""
    from ..errors import ExportError
    from ..export.hub import write_hub_files
    from ..export.program import export_program

    atomic_write_json(folder / "mask.json", mask.to_json())
    save_checkpoint(model, folder, meta, verify=verify)
    try:
        program = export_program(model, folder / PROGRAM_FILE, parity_images=parity_images)
    except ExportError as exc:  # the checkpoint and the ONNX model still ship; the report says why there is no program
        LOG.warning(f"vitprune: no {PROGRAM_FILE}: {exc}")
        program = {"file": None, "error": str(exc)}
    return {**program, **write_hub_files(folder, model, meta, parity_images)}


def _write_reports(folder: Path, report: CompressReport, meta: dict, settings: dict, *, files: list[str]) -> None:
    """report.json, report.md and the model card (README.md) of a result whose other files are ``files``."""
    from ..export.hub import model_card
    from ..options import command_line

    atomic_write_json(folder / "report.json", report.to_json())
    atomic_write_text(folder / "report.md", report.markdown())
    command = command_line("compress", CompressOptions, {k: v for k, v in settings.items() if k in report.options})
    if str(report.model.get("spec", "")).startswith("<"):
        command = "# vitprune.compress(model, data, ...) on an in-memory model, with the options of:\n" + command
    card = model_card(report.to_json(), meta, command=command, files=sorted({*files, "report.json", "report.md"}),
                      timm_rebuild=bool((report.program or {}).get("timm_rebuild")))
    atomic_write_text(folder / MODEL_CARD_FILE, card)


def _write_result(folder: Path, model: nn.Module | None, mask: Mask, report: CompressReport, meta: dict, settings: dict,
                  *, recipe: str | None, parity_images=None) -> CompressReport:
    """A compress result's files in ``folder`` (the checkpoint too when ``model`` is given); the settings file last.
    Returns the report as written (with what the program export did)."""
    if model is not None:
        report = replace(report, program=_write_checkpoint(folder, model, mask, meta, parity_images=parity_images,
                                                           verify=str(meta["source_model"].get("spec", "")).startswith("<in-memory")))
    _write_reports(folder, report, meta, settings, files=[e.name for e in folder.iterdir() if not e.name.startswith(".")])
    if recipe is not None:
        atomic_write_text(folder / "config.yaml", recipe)
    atomic_write_json(folder / COMPRESS_SETTINGS, settings)
    return report


def _warn_drastic(opts: CompressOptions, mask: Mask, macs_ratio: float) -> None:
    """One warning line when a per-block budget removes more than half of some block's units or heads: the heads and
    zoo studies lose most there, and ``--target-macs`` spends the same MACs where they cost least."""
    if opts.target_macs is not None:
        return
    worst = {"MLP units": max(mask.block_sparsity)}
    if mask.heads is not None:
        worst["attention heads"] = max(1 - k / w for k, w in zip(mask.heads.kept_counts, mask.heads.widths))
    drastic = {k: v for k, v in worst.items() if v > DRASTIC}
    if not drastic:
        return
    what = " and ".join(f"{100 * v:.0f}% of some block's {k}" for k, v in drastic.items())
    budget = f"--keep-topk {opts.keep_topk}" if opts.keep_topk is not None else f"--sparsity {opts.sparsity:g}"
    study = "eval/results/heads/summary.md" if "attention heads" in drastic else "eval/results/zoo/summary.md"
    LOG.warning(f"{budget} removes up to {what}; one-shot accuracy falls fastest there ({study}). "
                f"--target-macs {macs_ratio:.2f} --prune mlp,heads reaches the same MACs with one ranking of units and heads "
                "by score per MAC")


def _discovery_summary(settings: DiscoverySettings | None, run: PathRun | None) -> dict | None:
    """The discovery settings the records behind the mask were made with, and where they are."""
    if settings is None:
        return None
    return {**settings.to_json(), "run": str(run.folder) if run is not None and run.folder is not None else None,
            "images": len(run.records) if run is not None else None,
            # what this compress's own discovery cost (None when the records were reused: --paths, a finished run)
            "cost": run.cost if run is not None else None}


def recovery_settings(opts: Any) -> RecoverySettings:
    """The recovery of compress's or evaluate's --finetune-* options."""
    seed = opts.seed if isinstance(opts.seed, int) else 0
    return RecoverySettings(epochs=float(opts.finetune_epochs), lr=opts.finetune_lr, features=opts.finetune_features, seed=seed)


def recovery_pools(opts: Any, pipeline: Pipeline) -> tuple[ImagePool, ImagePool]:
    """(training, selection) images of a recovery: calibration-pool images, the last --finetune-selection-per-class of
    each class held out to pick its best moment; an evaluate sweep's own selection images (the last
    --selection-per-class) are used by neither, so that they still choose among recovered models fairly."""
    return split_holdout(pipeline.pools.calibration, opts.finetune_selection_per_class, opts.finetune_per_class, opts.classes,
                         num_classes=pipeline.pools.num_classes, reserve=getattr(opts, "selection_per_class", None) or 0)


def _recover(opts: CompressOptions, pipeline: Pipeline, pruned: nn.Module, evaluation: ImagePool, results: dict[str, EvalResult],
             dist: Dist, state: Path | None) -> dict:
    """Recovery of the pruned model (``vitprune.recovery``); replaces ``results['pruned']`` by the recovered top-1 and
    keeps the one-shot one in the report."""
    settings = recovery_settings(opts)
    train, held = recovery_pools(opts, pipeline)
    with pipeline.stage(f"recovery: {settings.epochs:g} epoch(s) of distillation from the dense model on {len(train)} images, "
                        f"the best of its checks on {len(held)} held-out images kept", "finetune_s"):
        recovered = recover(pruned, pipeline.dense, train, pipeline.transform, settings,
                            selection=pipeline.images(held, ("recovery-selection", opts.finetune_selection_per_class)),
                            state=state, quiet=pipeline.quiet)
        pruned.to(dist.device).eval()
        after = pipeline.accuracy({"recovered": pruned}, evaluation.batches(pipeline.transform, 256, shard=dist),
                                  len(evaluation) // dist.world)["recovered"]
    finetune = {"epochs": settings.epochs, "images": len(train), "history": recovered.history, "best": recovered.best,
                "settings": recovered.settings, "seconds": recovered.seconds, "resumed_at_step": recovered.resumed_at_step,
                "after": after.to_json(), "before": results["pruned"].to_json()}
    results["pruned"] = after
    return finetune


__all__ = ["compress", "CompressResult", "default_output", "RESULT_FILES"]
