"""``vitprune.evaluate``: accuracy vs budget for many points on the same images, sharing every stage they have in common."""
from __future__ import annotations

import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..accuracy import EvalResult, evaluate_models, paired_difference
from ..data import tensor_batches
from ..discovery.settings import DiscoverySettings
from ..distributed import Dist, get_dist
from ..files import JsonlAppender, atomic_write_text, read_jsonl
from ..options import EvaluateOptions, Point
from ..outdir import OutputFolder, check_inputs, output_path
from ..pipeline import Compressed, Pipeline, needs_paths
from ..progress import LOG, stage
from ..prune.macs import count_macs_params
from ..reports import SWEEP_FORMAT, SweepPoint, label, point_key, render_table, write_sweep_outputs
from .common import POINTS, SWEEP_SETTINGS, Plan, inputs_of, make_options, settings_of, spec_of, with_defaults

SWEEP_OUTPUTS = ("results.csv", "results.json", "results.md", "accuracy_vs_sparsity.png")


@dataclass
class EvaluateResult:
    """The points of a sweep, in the sweep's order (the dense model first)."""

    points: list[SweepPoint]
    settings: dict[str, Any]
    title: str

    def table(self) -> str:
        """The Markdown table of results.md (random seeds averaged)."""
        return render_table([p.to_json() for p in self.points])

    def summary(self) -> list[dict[str, Any]]:
        """One small record per point (``--json``): its setting and what it measured."""
        keep = ("criterion", "token_scope", "objective", "aggregation", "head_criterion", "compensate", "seed", "target",
                "keep_topk", "target_macs", "sparsity", "macs_ratio", "top1", "top1_selection", "top1_oneshot")
        return [{k: v for k, v in p.to_json().items() if k in keep} for p in self.points]

    def save(self, folder: str | Path, *, force: bool = False) -> Path:
        """results.csv, results.json, results.md and accuracy_vs_sparsity.png in ``folder``, under the command line's
        rules: the same sweep replaces its own files, another sweep needs ``force``, nothing of yours is replaced."""
        folder = output_path(folder)
        with OutputFolder(folder, "evaluate") as out:
            out.claim(SWEEP_SETTINGS, self.settings, what="sweep", force=force, normalise=with_defaults(EvaluateOptions))
            write_sweep_outputs(self.points, out.staging, self.settings, self.title)
            from ..files import atomic_write_json

            atomic_write_json(out.staging / SWEEP_SETTINGS, self.settings)
            out.publish()
        return folder


def run_folder(token_scope: str, objective: str, topk: int) -> str:
    """The sub-folder of a sweep holding the discovery run behind the path points with these settings."""
    return f"paths-{token_scope}-{objective}-top{topk}"


def evaluate(model: str | nn.Module = "demo", data: Any = "demo", *, out: str | Path | None = None, force: bool = False,
             quiet: bool = False, recipe: str | None = None, dry_run: bool = False, **options: Any) -> EvaluateResult | Plan | None:
    """Accuracy vs budget for several criteria and compensations on the same images (``vitprune evaluate``).

    Args:
        model / data: as for ``compress``.
        out: the sweep folder: points are appended to ``out/points.jsonl`` as they finish, so an interrupted sweep resumes
            point by point; results.{csv,json,md} + accuracy_vs_sparsity.png (and ``recipe`` as config.yaml) are published
            at the end. A different sweep there needs ``force`` (it stays until the new one is complete).
        dry_run: return the ``Plan`` (points x images, an estimate) without computing anything.
        options: ``EvaluateOptions`` (``criterion=None`` / ``compensate=None``: every registered one; lists as
            sequences or comma strings).
    """
    opts = make_options(EvaluateOptions, {**options, "model": spec_of(model), "data": spec_of(data)}, "evaluate").resolve().validate()
    dist = get_dist(opts.device)
    out = output_path(out)
    if out is not None:
        check_inputs(out, inputs_of(model, data))
    with stage(f"loading model {spec_of(model)} and data {spec_of(data)}", quiet=quiet or not dist.is_main):
        pipeline = Pipeline(model, data, opts, dist=dist, quiet=quiet)
    points = opts.points()
    for point in points:
        if point.criterion != "dense":
            pipeline.check_point(point, _sweep_settings(opts, pipeline, point), scope=opts.scope, min_keep=opts.min_keep,
                                 round_to=opts.round_to)
    identity = pipeline.identity(opts.eval_per_class)
    settings = {**settings_of(opts, identity), "format": SWEEP_FORMAT}
    title = f"{opts.model} on {opts.data}"
    if dry_run:
        return _plan(opts, pipeline, points, out)
    if out is None:
        return EvaluateResult(_sweep(opts, pipeline, points, None, dist, quiet, None, identity), settings, title)
    with OutputFolder(out, "evaluate", inputs=inputs_of(model, data), dist=dist) as folder:
        same = folder.claim(SWEEP_SETTINGS, settings, what="sweep", force=force, normalise=with_defaults(EvaluateOptions))
        if not same:
            folder.write_settings(SWEEP_SETTINGS, settings)
        pipeline.run_folder = lambda s: folder.workdir(run_folder(s.token_scope, s.objective, s.topk))
        points_file = folder.workdir(POINTS)
        sink = JsonlAppender(points_file) if dist.is_main else None  # drops a torn last line before the others read
        dist.barrier()
        try:
            rows = list(sink.records) if sink else (read_jsonl(points_file) if points_file.exists() else [])
            done_points = [SweepPoint.from_json(r, f"{points_file}") for r in rows]
            done = {p.key for p in done_points}
            todo = [p for p in points if _key(p) not in done]
            if done and not quiet and dist.is_main:
                LOG.info(f"vitprune: {len(done_points)} of {len(points)} points already in {points_file}"
                         + (": up to date" if not todo else "; resuming"))
            if todo:
                done_points += _sweep(opts, pipeline, todo, sink, dist, quiet, folder.staging if dist.is_main else None, identity)
        finally:
            if sink:
                sink.close()
        dist.barrier()
        order = {_key(p): i for i, p in enumerate(points)}
        ordered = sorted((p for p in done_points if p.key in order), key=lambda p: order[p.key])
        result = EvaluateResult(ordered, settings, title)
        if dist.is_main:
            stage_dir = folder.staging
            write_sweep_outputs(result.points, stage_dir, settings, title)
            if recipe is not None:
                atomic_write_text(stage_dir / "config.yaml", recipe)
            folder.publish([e.name for e in stage_dir.iterdir() if not e.name.startswith(".")])
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


def _point_label(p: Point) -> str:
    return label({"criterion": p.criterion, "token_scope": p.token_scope, "objective": p.objective, "aggregation": p.aggregation,
                  "head_criterion": p.head_criterion, "compensate": p.compensate})


def _plan(opts: EvaluateOptions, pipeline: Pipeline, points: list[Point], out: Path | None) -> Plan:
    """Points x images and an estimate of the evaluation time from the dense model's measured forward rate."""
    import torch

    evaluation = pipeline.evaluation_pool(opts.eval_per_class)
    n_eval = len(evaluation)
    n_sel = (opts.selection_per_class or 0) * len(opts.classes or range(pipeline.pools.num_classes))
    runs = sorted({s for s in (_sweep_settings(opts, pipeline, p) for p in points) if s is not None},
                  key=lambda s: (s.token_scope, s.objective, s.topk))
    sample = next(evaluation.select(range(min(64, n_eval))).batches(pipeline.transform, 64))[1]
    with torch.inference_mode():
        pipeline.dense(sample[:2])
        t0 = time.perf_counter()
        pipeline.dense(sample)
        rate = len(sample) / max(time.perf_counter() - t0, 1e-9)
    forwards = len(points) * (n_eval + n_sel)
    stages = [f"load model {opts.model} and data {opts.data}"]
    stages += [f"discovery: top-{s.topk} paths of {len(pipeline.calib)} calibration images (m = {s.steps}, token scope "
               f"{s.token_scope}, objective {s.objective})" for s in runs]
    stages.append(f"{len(points)} points (the dense model first), each scored on {n_eval} evaluation images"
                  + (f" and {n_sel} selection images" if n_sel else ""))
    stages.append(f"estimate of the scoring: {forwards} image forwards at {rate:.0f} images/s (the dense model, measured now) "
                  f"= {forwards / rate / 60:.1f} min, plus discovery, statistics and compensation")
    details = {"points": len(points), "evaluation_images": n_eval, "selection_images": n_sel, "discovery_runs": len(runs),
               "dense_images_per_s": rate, "estimated_scoring_s": forwards / rate,
               "labels": [f"{_point_label(p)} @ {p.budget.describe()}" for p in points]}
    return Plan("evaluate", str(out) if out is not None else None, stages, details)


def _sweep(opts: EvaluateOptions, pipeline: Pipeline, todo: list[Point], sink: JsonlAppender | None, dist: Dist,
           quiet: bool, scratch: Path | None, identity: dict) -> list[SweepPoint]:
    """Every point of ``todo``; what the points share (discovery runs, statistics, calibration and evaluation
    images) is computed first, once. ``scratch``: where latency ONNX files go (the run's staging folder)."""
    from ..criteria import criterion_needs
    from ..prune import COMPENSATIONS

    quiet = quiet or not dist.is_main

    def settings_of_point(p: Point) -> DiscoverySettings | None:
        return _sweep_settings(opts, pipeline, p)

    for s in sorted({s for s in map(settings_of_point, todo) if s is not None}, key=lambda s: (s.token_scope, s.objective, s.topk)):
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
    pipeline.point_quiet = True
    dense_result: EvalResult | None = None  # the dense model's per-image hits, which every point is compared with
    start = time.time()
    if not quiet:
        LOG.info(f"vitprune: {len(todo)} points on {len(images)} evaluation images" + (f" (+ {len(held[0])} selection images)"
                                                                                      if held is not None else ""))
    try:
        with (nullcontext(scratch) if scratch is not None else tempfile.TemporaryDirectory(prefix="vitprune-sweep-")) as tmp:
            for k, p in enumerate(todo, 1):
                t0 = time.time()
                done: Compressed | None = None
                if p.criterion == "dense":
                    model = pipeline.dense
                else:
                    done = pipeline.compress(p, settings_of_point(p), scope=opts.scope, min_keep=opts.min_keep,
                                             round_to=opts.round_to,
                                             options={"lsq_target": opts.lsq_target, "lsq_weighting": opts.lsq_weighting})
                    model = done.pruned.model
                seconds = round(time.time() - t0, 3)
                if p.criterion == "dense":
                    res = dense_result = pipeline.dense_score(evaluation, images, labels)
                else:
                    res = _score(pipeline, model, images, labels)
                extra: dict[str, Any] = {}
                recon = done.pruned.reconstruction if done else None
                if recon is not None:
                    extra["ridges"] = [f.ridge for f in recon.blocks]
                if opts.finetune_epochs and done is not None:
                    if held is not None:
                        extra["top1_selection_oneshot"] = _score(pipeline, model, *held).top1
                    extra.update(_sweep_recovery(opts, pipeline, model, images, labels, res, p.seed))
                if held is not None:  # after any recovery: the selection images choose among recovered models too
                    extra["top1_selection"] = _score(pipeline, model, *held).top1
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
                    res = extra.pop("recovered_result")
                if done is not None:
                    dense_result = dense_result or pipeline.dense_score(evaluation, images, labels)
                    diff = paired_difference(dense_result, res)
                    extra["top1_diff_ci95"] = diff.get("ci95")
                    extra["worst_class_drop"] = diff["worst_class"]["diff"] if diff["worst_class"] else None
                point = SweepPoint(criterion=p.criterion, compensate=p.compensate, seed=p.seed, target=p.budget.sparsity,
                                   keep_topk=p.budget.keep_topk, target_macs=p.budget.target_macs, token_scope=p.token_scope,
                                   objective=p.objective, aggregation=p.aggregation, sparsity=mask.sparsity if mask else 0.0,
                                   kept=mask.kept_counts if mask else widths, top1=top1, mean_true_prob=prob, compensation_s=seconds,
                                   macs=macs, params=params, macs_ratio=macs / macs_dense, params_ratio=params / params_dense,
                                   head_criterion=p.head_criterion,
                                   kept_heads=mask.heads.kept_counts if mask is not None and mask.heads else None,
                                   model_fingerprint=identity.get("model_fingerprint"), data_digest=identity.get("data_digest"),
                                   **extra)
                if sink:
                    sink.append([point.to_json()])
                new.append(point)
                if not quiet:
                    elapsed = time.time() - start
                    eta = elapsed / k * (len(todo) - k)
                    LOG.info(f"point {k}/{len(todo)}  {_point_label(p):<36} seed={p.seed} budget={p.budget.describe():<10} "
                             f"sparsity={point.sparsity:.3f} MACs x{point.macs_ratio:.3f} top-1={100 * point.top1:.2f}%  "
                             f"[{_clock(elapsed)} elapsed, ETA {_clock(eta)}]")
    finally:
        pipeline.point_quiet = False
    return new


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60:02d}:{seconds % 60:02d}"


def _score(pipeline: Pipeline, model: nn.Module, images, labels) -> EvalResult:
    return evaluate_models({"m": model}, tensor_batches(images, labels, 256), class_names=pipeline.pools.class_names,
                           total=len(images), quiet=True, dist=pipeline.dist, precision=pipeline.opts.precision)["m"]


def _sweep_recovery(opts: EvaluateOptions, pipeline: Pipeline, model: nn.Module, images, labels, before: EvalResult, seed: int
                    ) -> dict[str, Any]:
    from ..recovery import recover
    from ._compress import recovery_pools, recovery_settings

    train, held = recovery_pools(opts, pipeline)
    settings = recovery_settings(opts)
    settings = type(settings)(**{**settings.__dict__, "seed": seed})
    result = recover(model, pipeline.dense, train, pipeline.transform, settings,
                     selection=pipeline.images(held, ("recovery-selection", opts.finetune_selection_per_class)), quiet=True)
    after = _score(pipeline, model.eval(), images, labels)
    return {"top1_oneshot": before.top1, "mean_true_prob_oneshot": before.mean_true_prob, "finetune_epochs": opts.finetune_epochs,
            "top1_recovered": after.top1, "prob_recovered": after.mean_true_prob, "recovered_result": after,
            "recovery_best_epoch": (result.best or {}).get("epoch"),
            "recovery_s": round(result.seconds, 1)}


def _onnx(model: nn.Module, path: Path, parity) -> Path:
    from ..export.onnx import export_onnx

    device = next(model.parameters()).device
    export_onnx(model, path, metadata={}, parity_images=parity)
    model.to(device)
    return path


def _latency(dense: Path, point: Path, images) -> dict[str, float]:
    from ..export.onnx import ort_latency

    lat = ort_latency({"dense": dense, "point": point}, tuple(images.shape[1:]), batch_sizes=(1,), rounds=20)
    return {"ort_b1_ms": lat["batch1"]["point"]["median_ms"], "ort_b1_dense_ms": lat["batch1"]["dense"]["median_ms"]}


__all__ = ["evaluate", "EvaluateResult", "run_folder", "SWEEP_OUTPUTS"]
