"""The compression pipeline, written once: load -> paths / statistics -> scores -> mask -> slice -> compensate -> evaluate.

A ``Pipeline`` holds one dense model on one data source. Each stage runs on demand, once, and is
kept: the discovery run of each discovery setting, the activation statistics, the preprocessed
calibration images, the evaluation images. ``compress`` runs one ``Point`` through it;
``evaluate`` loops over many, sharing everything they have in common. Export and the reports are
the callers' (``vitprune.api``); this module writes only the discovery runs it is given a folder for.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .accuracy import EvalResult, evaluate_models
from .criteria import CRITERIA, criterion_needs, head_criterion_needs
from .criteria.aggregate import union_keep_sets
from .criteria.base import CriterionInputs, checked_scores, load_criterion
from .criteria.heads import HEAD_STEPS, HeadStats, PathCondition, collect_head_stats, head_scores
from .criteria.stats import ActivationStats, collect_stats
from .data import DataPools, ImagePool, TensorPool, load_data, materialize, model_transform, select_holdout_per_class, select_per_class
from .discovery.provenance import check_run
from .discovery.records import PathRun, load_run
from .discovery.run import discover
from .discovery.settings import DiscoverySettings
from .distributed import Dist
from .errors import UserError
from .model.adapter import FamilyAdapter, adapter_for
from .model.load import channel_consistent, describe_model, load_model, model_fingerprint
from .options import CalibrationOptions, Point
from .prune import COMPENSATIONS
from .prune.compensate import CalibrationSet, CompensationInputs, Pruned, calibration_set, load_compensation
from .defaults import HEAD_DEFAULT
from .prune.macs import head_unit_macs, mlp_unit_macs
from .progress import stage
from .prune.masks import (NeuronMask, check_sparsity, from_keep_sets, from_macs, from_scores, heads_from_scores, joint_from_macs,
                          keep_label)


def resolve_model(model: str | nn.Module, arch: str | None = None, model_args: dict | None = None) -> nn.Module:
    """A spec (everything ``--model`` takes) or an in-memory timm VisionTransformer, in eval mode."""
    if isinstance(model, (str, Path)):
        return load_model(str(model), arch=arch, model_args=model_args)
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be a spec string or a timm VisionTransformer (got {type(model).__name__})")
    params = list(model.parameters())
    if any(p.is_meta for p in params):
        raise UserError("the model's weights are on the meta device (created without storage); load its weights first")
    adapter_for(model)  # refuses what vitprune cannot handle, with one line
    source = getattr(model, "vitprune_source", None)
    meta = getattr(model, "vitprune_meta", {})
    fingerprint = getattr(model, "vitprune_fingerprint", None)
    copy = _copy(model)  # the caller's model is never modified (mode, device, dtype, attributes)
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in copy.parameters()):
        copy.float()  # half-precision weights: work in fp32 (--precision sets the forwards' precision)
        fingerprint = None
    channel_consistent(copy)
    copy.vitprune_source = source or describe_model(copy)
    copy.vitprune_meta = meta
    if fingerprint is not None:
        copy.vitprune_fingerprint = fingerprint
    return copy.eval()


def _copy(model: nn.Module) -> nn.Module:
    import copy

    try:
        return copy.deepcopy(model)
    except Exception as exc:  # a module holding something that cannot be copied (a lock, a file handle)
        raise UserError(f"the model cannot be copied ({type(exc).__name__}: {exc}); vitprune works on a copy so that yours "
                        "is never changed: pass a plain timm model") from exc


def resolve_data(data: Any, num_classes: int) -> DataPools:
    """A data spec, the ``DataPools`` of ``load_data``, or a pair ``(calibration, evaluation)`` of torch Datasets
    yielding ``(image_tensor, int_label)`` already preprocessed for the model."""
    if isinstance(data, (str, Path)):
        return load_data(str(data))
    if isinstance(data, DataPools):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(hasattr(d, "__getitem__") and hasattr(d, "__len__") for d in data):
        return DataPools.from_datasets(data[0], data[1], tuple(str(c) for c in range(num_classes)))
    raise UserError(f"data must be a spec string, vitprune.load_data(...) or a (calibration, evaluation) pair of torch "
                    f"Datasets (got {type(data).__name__})")


def check_pairing(pools: DataPools, adapter: FamilyAdapter) -> None:
    """The data's classes and images fit the model: one line naming the mismatch."""
    if adapter.num_classes < 2:
        raise UserError(f"the model has {adapter.num_classes} class: its softmax is 1 whatever the input, so every attribution "
                        "and accuracy is trivial; vitprune needs a classifier of 2 or more classes")
    if pools.num_classes != adapter.num_classes:
        raise UserError(
            f"the data '{pools.spec}' has {pools.num_classes} classes but the model head has {adapter.num_classes}; "
            "pass data that matches the model, or a model trained on this data (random:NAME: --model-args "
            f"num_classes={pools.num_classes})"
        )
    for name, pool in (("calibration", pools.calibration), ("evaluation", pools.evaluation)):
        if not isinstance(pool, TensorPool) or not len(pool):
            continue
        labels = pool.labels()
        if labels.min() < 0 or labels.max() >= adapter.num_classes:
            raise UserError(f"the {name} dataset has labels outside 0..{adapter.num_classes - 1}, the model's classes")
        image = next(pool.select([0]).batches(None, 1))[1][0]
        if tuple(image.shape) != adapter.input_size:
            raise UserError(f"the {name} dataset yields images of shape {tuple(image.shape)} but the model takes "
                            f"{adapter.input_size}; preprocess them for the model")


@dataclass
class Compressed:
    """One point through the pipeline: its mask, the per-class units it kept (keep-topk), and the pruned model."""

    point: Point
    mask: NeuronMask
    pruned: Pruned
    critical: dict[int, list[list[int]]] | None
    seconds: float


class Pipeline:
    """One dense model on one data source; the stages of compression, each computed once."""

    def __init__(self, model: str | nn.Module, data: Any, opts: CalibrationOptions, *, dist: Dist, quiet: bool = False,
                 run_folder: Callable[[DiscoverySettings], Path | None] = lambda settings: None) -> None:
        self.opts, self.dist, self.quiet = opts, dist, quiet or not dist.is_main
        self.dense = resolve_model(model, opts.arch, opts.model_args)
        self.fingerprint = model_fingerprint(self.dense)
        self.dense.to(dist.device)
        self.adapter = adapter_for(self.dense)
        self.pools = resolve_data(data, self.adapter.num_classes)
        check_pairing(self.pools, self.adapter)
        self.transform = model_transform(self.dense)
        self.run_folder = run_folder
        self.point_quiet = False  # a sweep sets it: its points print one line each, not their stages
        self.timings: dict[str, float] = {}
        self.runs: dict[DiscoverySettings, PathRun] = {}
        self._unit_macs: tuple[list[float], int] | None = None
        self._head_macs: list[float] | None = None
        self._stats: ActivationStats | None = None
        self._head_stats: HeadStats | None = None
        self._head_path_ig: dict[DiscoverySettings, list[torch.Tensor]] = {}
        self._calibration: CalibrationSet | None = None
        self._images: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._identity: dict[tuple, dict[str, str]] = {}

    @functools.cached_property
    def calib(self) -> ImagePool:
        """The calibration images: the first ``per_class`` of each class of the calibration pool."""
        return select_per_class(self.pools.calibration, self.opts.per_class, self.opts.classes, num_classes=self.pools.num_classes)

    @property
    def source(self) -> dict:
        return self.dense.vitprune_source

    def _timed(self, key: str, start: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.time() - start

    @contextmanager
    def stage(self, name: str, key: str | None = None, *, per_point: bool = False) -> Iterator[None]:
        """A named stage of the run (one line when it starts), its time added to ``timings[key]``. A ``per_point`` stage
        (mask, compensation) is silent while a sweep runs many points (``point_quiet``: the sweep reports each point)."""
        t0 = time.time()
        with stage(name, quiet=self.quiet or (per_point and self.point_quiet)):
            yield
        if key is not None:
            self._timed(key, t0)

    # ------------------------------------------------------------------------------ stages
    def paths(self, settings: DiscoverySettings) -> PathRun:
        """The path records (and dense importance) of ``settings`` on the calibration images: a discovery run
        (resumable in ``run_folder(settings)`` when there is one), checked against this model and data."""
        if settings not in self.runs:
            with self.stage(f"discovery: {settings.method} top-{settings.topk} paths of {len(self.calib)} calibration images "
                            f"(m = {settings.steps}, token scope {settings.token_scope}, objective {settings.objective})",
                            "discovery_s"):
                run = discover(self.dense, settings, self.pools, self.calib, pool="calibration", per_class=self.opts.per_class,
                               classes=self.opts.classes, batch_size=self.opts.batch_size, dist=self.dist,
                               out=self.run_folder(settings), quiet=self.quiet, nested=True)
                self._check(run)
            self.runs[settings] = run
        return self.runs[settings]

    def given_run_settings(self, folder: str | Path, *, given: Any, given_fields: list[str]) -> DiscoverySettings:
        """Load a finished run (``--paths``), check its provenance against this model, data, the discovery options
        given and the classes needed, and return the settings it was made with (what the report states)."""
        run = load_run(Path(folder))
        header = run.header
        if header is not None:
            settings = header.discovery
        else:  # reference .rlt.jsonl files: the settings their records state
            first = run.records[0]
            settings = DiscoverySettings(method=first.method or "jas", topk=first.topk or len(first.path[0]),
                                         steps=first.steps or 20, token_scope=first.token_scope or "cls")
        self._check(run, given=given, given_fields=given_fields)
        self.runs[settings] = run
        return settings

    def _check(self, run: PathRun, *, given: Any = None, given_fields: list[str] = ()) -> None:
        needed = self.opts.classes if self.opts.classes is not None else range(self.pools.num_classes)
        check_run(run, fingerprint=self.fingerprint, widths=self.adapter.hidden_widths, data_spec=self.pools.spec,
                  given=given, given_fields=given_fields, classes=needed, evaluation_ids=self.evaluation_ids,
                  data_digest=self._selection_digest)
        if run.importance is not None and list(run.importance.widths) != self.adapter.hidden_widths:
            raise UserError(f"the dense importance in {run.name} is for MLP widths {list(run.importance.widths)}, not this "
                            f"model's {self.adapter.hidden_widths}; pass paths discovered on this model")

    def identity(self, eval_per_class: int | None = None) -> dict[str, str]:
        """What a result made here is identified by, beside its options: the dense weights' fingerprint and a digest of
        the images it reads (the calibration selection and the evaluation images)."""
        import hashlib

        key = ("identity", eval_per_class)
        if key not in self._identity:
            digest = hashlib.sha256()
            for pool in (self.calib, self.evaluation_pool(eval_per_class)):
                digest.update(pool.digest().encode())
            self._identity[key] = {"model_fingerprint": self.fingerprint, "data_digest": digest.hexdigest()}
        return self._identity[key]

    @functools.cached_property
    def evaluation_ids(self) -> list[str]:
        return self.pools.evaluation.ids()

    def _selection_digest(self, header) -> str | None:
        """The content digest of the images a run header names, in the data as it is now (None: not selectable here)."""
        pool = {"calibration": self.pools.calibration, "evaluation": self.pools.evaluation}.get(header.data.pool)
        if pool is None:
            return None
        try:
            return select_per_class(pool, header.data.per_class, header.data.classes, num_classes=self.pools.num_classes).digest()
        except UserError:
            return None

    def overlap(self, evaluation: ImagePool, run: PathRun | None = None) -> int | None:
        """Images used for calibration (the records' images, or the calibration selection) that are also evaluated; None
        when records of unknown provenance say nothing of the images they came from."""
        if run is not None and run.header is None:
            return None
        used = {r.id for r in run.records} if run is not None else set(self.calib.ids())
        return len(used & set(evaluation.ids()))

    def unit_macs(self) -> tuple[list[float], int]:
        """(MACs of one MLP unit per block, MACs of the dense model), counted once."""
        if self._unit_macs is None:
            self._unit_macs = mlp_unit_macs(self.dense)
        return self._unit_macs

    def head_macs(self) -> list[float]:
        """MACs of one attention head per block, counted once."""
        if self._head_macs is None:
            self._head_macs = head_unit_macs(self.dense)
        return self._head_macs

    def head_stats(self, ig: bool = False, paths: DiscoverySettings | None = None) -> HeadStats:
        """Head statistics of the calibration images (``--prune heads``), with the integrated-gradient passes when
        ``ig`` and those conditioned on the discovery run of ``paths`` when given; each part collected once."""
        missing_ig = ig and (self._head_stats is None or self._head_stats.ig is None)
        missing_path = paths is not None and paths not in self._head_path_ig
        if self._head_stats is None or missing_ig or missing_path:
            condition = self._path_condition(paths) if missing_path else None
            what = " and ".join(["output statistics"] + (["integrated gradients"] if missing_ig else [])
                                + (["path-conditioned integrated gradients"] if missing_path else []))
            with self.stage(f"head statistics: {what} of {len(self.calib)} calibration images", "head_statistics_s"):
                stats = collect_head_stats(self.dense, self.calib.batches(self.transform, self.opts.batch_size, shard=self.dist),
                                           ig=missing_ig, condition=condition, steps=HEAD_STEPS,
                                           total=len(self.calib) // self.dist.world, quiet=self.quiet, dist=self.dist,
                                           precision=self.opts.precision)
            if missing_path:
                self._head_path_ig[paths] = stats.path_ig
            if not missing_ig and self._head_stats is not None:
                stats.ig = self._head_stats.ig
            self._head_stats = stats
        return dataclasses.replace(self._head_stats, path_ig=self._head_path_ig.get(paths) if paths is not None else None)

    def _path_condition(self, settings: DiscoverySettings) -> PathCondition:
        """The paths of every calibration image in the run of ``settings`` (the head passes run on those images)."""
        run = self.paths(settings)
        condition = PathCondition.of(run, self.adapter)
        missing = condition.missing(self.calib.ids())
        if missing:
            raise UserError(f"head criterion path needs the discovery path of every calibration image, and {run.name} lacks "
                            f"{len(missing)} of them (e.g. {missing[0]}); pass a run discovered on the same --per-class and "
                            "--classes, or drop --paths")
        return condition

    def head_scores(self, point: Point, settings: DiscoverySettings | None) -> list[torch.Tensor]:
        """One score per head per block by ``point.head_criterion`` (``settings``: the point's discovery, for the
        criteria conditioned on its paths)."""
        name = point.head_criterion or HEAD_DEFAULT["criterion"]
        needs = set(head_criterion_needs(name))
        if "head_path_ig" in needs and settings is None:
            raise ValueError(f"head criterion {name} needs the point's discovery settings")
        stats = (self.head_stats(ig="head_ig" in needs, paths=settings if "head_path_ig" in needs else None)
                 if needs & {"head_stats", "head_ig", "head_path_ig"} else None)
        return head_scores(name, stats, self.adapter.sites("heads"), point.seed)

    def check_point(self, point: Point, settings: DiscoverySettings | None, *, scope: str, min_keep: int, round_to: int) -> None:
        """Every check of a point that needs the model but no expensive work: budgets that options would override,
        path settings the model cannot take, compensations without enough calibration images."""
        widths = self.adapter.hidden_widths
        budget = point.budget
        if settings is not None and settings.topk > min(widths):
            flag = f"--keep-topk {budget.keep_topk}" if budget.keep_topk == settings.topk else f"--topk {settings.topk}"
            raise UserError(f"{flag} asks for more path units per block than the narrowest MLP has ({min(widths)}); lower it")
        if budget.sparsity is not None:
            check_sparsity(widths, budget.sparsity, scope=scope, min_keep=min_keep, round_to=round_to)
        heads = "heads" in point.prune
        if heads:
            self.adapter.sites("heads")  # refuses attention it cannot slice by head, before any work
        if budget.target_macs is not None:
            cost, total = self.unit_macs()
            floor = sum(c * min(min_keep, w) for c, w in zip(cost, widths))
            prunable = sum(c * w for c, w in zip(cost, widths))
            if heads:
                head_cost = self.head_macs()
                floor += sum(head_cost)
                prunable += sum(c * n for c, n in zip(head_cost, self.adapter.head_counts))
            lowest = (total - prunable + floor) / total
            if budget.target_macs < lowest:
                what = "its MLPs and heads (one head per block)" if heads else "its MLPs"
                raise UserError(f"--target-macs {budget.target_macs:g} is below what the model can reach by pruning {what} "
                                f"({lowest:.3f} of its MACs with --min-keep {min_keep}); raise --target-macs"
                                + ("" if heads else " or add heads: --prune mlp,heads"))
        needs = set(COMPENSATIONS.entry(point.compensate).meta.get("needs", ())) if point.compensate in COMPENSATIONS else set()
        if "calibration" in needs and len(self.calib) < 2:
            raise UserError(f"--compensate {point.compensate} needs at least 2 calibration images (got {len(self.calib)}); "
                            "raise --per-class")

    def stats(self, gradients: bool = False) -> ActivationStats:
        """Activation statistics of the calibration images (with the Taylor terms when ``gradients``)."""
        if self._stats is None or (gradients and self._stats.taylor is None):
            what = "activations and gradients" if gradients else "activations"
            with self.stage(f"statistics: MLP unit {what} of {len(self.calib)} calibration images", "statistics_s"):
                self._stats = collect_stats(self.dense, self.calib.batches(self.transform, self.opts.batch_size, shard=self.dist),
                                            gradients=gradients, total=len(self.calib) // self.dist.world, quiet=self.quiet,
                                            dist=self.dist, precision=self.opts.precision)
        return self._stats

    def calibration(self) -> CalibrationSet:
        """This process's preprocessed calibration images (least squares)."""
        if self._calibration is None:
            with self.stage(f"preprocessing {len(self.calib)} calibration images", "preprocess_s"):
                self._calibration = calibration_set(self.calib, self.transform, shard=self.dist)
        return self._calibration

    def evaluation_pool(self, per_class: int | None) -> ImagePool:
        """The evaluation images (never calibration images): ``per_class`` per class, or all."""
        return select_per_class(self.pools.evaluation, per_class, self.opts.classes, num_classes=self.pools.num_classes)

    def selection_pool(self, per_class: int) -> ImagePool:
        """Held-out images of the calibration pool (never the calibration images) for choosing settings."""
        return select_holdout_per_class(self.pools.calibration, per_class, self.opts.classes, num_classes=self.pools.num_classes,
                                        skip=self.opts.per_class)

    def images(self, pool: ImagePool, key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """A pool preprocessed once (this process's share), for scoring many models on it."""
        if key not in self._images:
            with self.stage(f"preprocessing {len(pool)} {key[0]} images", "preprocess_s"):
                self._images[key] = materialize(pool, self.transform, shard=self.dist)
        return self._images[key]

    def accuracy(self, models: dict[str, nn.Module], batches: Iterator, total: int, desc: str = "evaluate") -> dict[str, EvalResult]:
        return evaluate_models(models, batches, class_names=self.pools.class_names, total=total, quiet=self.quiet, desc=desc,
                               dist=self.dist, precision=self.opts.precision)

    # ---------------------------------------------------------------------------- a point
    def discovery_settings(self, point: Point, topk: int, label: str = "truth") -> DiscoverySettings:
        steps = self.opts.steps if self.opts.steps is not None else 20
        return DiscoverySettings(method="jas", topk=topk, steps=steps, token_scope=point.token_scope or "auto",
                                 label=label, objective=point.objective or "prob", precision=self.opts.precision,
                                 max_rows=self.opts.max_rows)

    def criterion_inputs(self, point: Point, settings: DiscoverySettings | None, *, keep: bool) -> CriterionInputs:
        """What ``point.criterion`` declared it needs, computed (or reused) now."""
        needs = set(criterion_needs(point.criterion, keep=keep))
        inputs = CriterionInputs(self.dense, self.adapter, self.adapter.sites("mlp"), seed=point.seed,
                                 options={"aggregation": point.aggregation or "mean"})
        if needs & {"paths", "importance"}:
            if settings is None:
                raise ValueError(f"criterion {point.criterion} needs discovery settings")
            inputs.paths = self.paths(settings)
            if "importance" in needs:
                inputs.paths.require_importance(f"criterion {point.criterion}")
        if needs & {"stats", "gradients"}:
            inputs.stats = self.stats(gradients="gradients" in needs)
        return inputs

    def mask(self, point: Point, settings: DiscoverySettings | None, *, scope: str, min_keep: int, round_to: int
             ) -> tuple[NeuronMask, dict[int, list[list[int]]] | None]:
        """The mask of a point, and for a keep-topk budget the per-class units it is the union of."""
        criterion = load_criterion(point.criterion)
        budget, widths = point.budget, self.adapter.hidden_widths
        inputs = self.criterion_inputs(point, settings, keep=budget.keep_topk is not None)
        if budget.keep_topk is not None:
            critical = criterion.class_units(inputs, budget.keep_topk)
            mask = from_keep_sets(widths, union_keep_sets(critical, len(widths)), keep_label(point.criterion, budget.keep_topk))
            return mask, critical
        scores = checked_scores(point.criterion, criterion.scores(inputs), inputs.sites)
        heads = self.head_scores(point, settings) if "heads" in point.prune else None
        if budget.target_macs is not None:
            cost, total = self.unit_macs()
            prunable = sum(c * int(s.numel()) for c, s in zip(cost, scores))
            if heads is None:
                return from_macs(scores, cost, prunable - (1.0 - budget.target_macs) * total, scope=scope, min_keep=min_keep,
                                 round_to=round_to, criterion=point.criterion), None
            head_cost = self.head_macs()
            prunable += sum(c * int(s.numel()) for c, s in zip(head_cost, heads))
            return joint_from_macs(scores, cost, heads, head_cost, prunable - (1.0 - budget.target_macs) * total, scope=scope,
                                   min_keep=min_keep, round_to=round_to, criterion=point.criterion,
                                   head_criterion=point.head_criterion or ""), None
        mask = from_scores(scores, budget.sparsity, scope=scope, min_keep=min_keep, round_to=round_to, criterion=point.criterion)
        if heads is not None:
            mask = mask.with_heads(heads_from_scores(heads, budget.sparsity, scope=scope, criterion=point.head_criterion or ""))
        return mask, None

    def prune(self, mask: NeuronMask, compensate: str, options: dict[str, Any]) -> Pruned:
        """The sliced model with ``compensate`` applied, on what that compensation declared it needs."""
        needs = set(COMPENSATIONS.entry(compensate).meta.get("needs", ()))
        inputs = CompensationInputs(stats=self.stats() if "stats" in needs else None,
                                    calibration=self.calibration() if "calibration" in needs else None,
                                    options=options, dist=self.dist, precision=self.opts.precision,
                                    quiet=self.quiet or self.point_quiet)
        how = {"none": "slicing", "mean": "slicing with the mean-shift bias"}.get(
            compensate, f"slicing and compensating ({compensate})" if compensate != "lsq" else
            f"slicing and refitting every block's output projection by least squares on {len(self.calib)} calibration images")
        with self.stage(how, "compensation_s", per_point=True):
            result = load_compensation(compensate)(self.dense, mask, inputs)
        if isinstance(result, nn.Module):
            result = Pruned(result)
        if not isinstance(result, Pruned):
            raise TypeError(f"compensation '{compensate}' returned {type(result).__name__}, not a Pruned")
        return result

    def compress(self, point: Point, settings: DiscoverySettings | None, *, scope: str, min_keep: int, round_to: int,
                 options: dict[str, Any]) -> Compressed:
        """Mask, slice and compensate one point."""
        t0 = time.time()
        mask, critical = self.mask(point, settings, scope=scope, min_keep=min_keep, round_to=round_to)
        pruned = self.prune(mask, point.compensate, options)
        return Compressed(point, mask, pruned, critical, time.time() - t0)


def needs_paths(point: Point) -> bool:
    """Whether ``point`` reads a discovery run: its MLP criterion does, or (heads pruned by a budget) its head criterion."""
    keep = point.budget.keep_topk is not None
    if point.criterion != "dense" and set(criterion_needs(point.criterion, keep=keep)) & {"paths", "importance"}:
        return True
    return bool(point.head_criterion and not keep and "head_path_ig" in head_criterion_needs(point.head_criterion))


__all__ = ["Pipeline", "Compressed", "resolve_model", "resolve_data", "check_pairing", "needs_paths", "CRITERIA"]
