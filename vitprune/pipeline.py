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
from .model.load import channel_consistent, describe_model, fingerprint, load_model, model_fingerprint
from .options import CalibrationOptions, Point
from .prune import COMPENSATIONS
from .prune.compensate import CalibrationSet, CompensationInputs, Pruned, calibration_set, load_compensation
from .defaults import HEAD_DEFAULT
from .prune.macs import count_macs_params, unit_macs
from .progress import stage
from .prune.masks import Allocation, Mask, check_sparsity, from_budget, from_keep_sets, keep_label, macs_floor


def resolve_model(model: str | nn.Module, arch: str | None = None, model_args: dict | None = None, seed: int = 0) -> nn.Module:
    """A spec (everything ``--model`` takes; ``seed`` draws a ``random:`` model's weights) or an in-memory timm
    VisionTransformer, in eval mode."""
    if isinstance(model, (str, Path)):
        return load_model(str(model), arch=arch, model_args=model_args, seed=seed)
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be a spec string or a timm VisionTransformer (got {type(model).__name__})")
    params = list(model.parameters())
    if any(p.is_meta for p in params):
        raise UserError("the model's weights are on the meta device (created without storage); load its weights first")
    adapter_for(model)  # refuses what vitprune cannot handle, with one line
    source = getattr(model, "vitprune_source", None)
    meta = getattr(model, "vitprune_meta", {})
    copy = _copy(model)  # the caller's model is never modified (mode, device, dtype, attributes)
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in copy.parameters()):
        copy.float()  # half-precision weights: work in fp32 (--precision sets the forwards' precision)
    channel_consistent(copy)
    copy.vitprune_source = source or describe_model(copy)
    copy.vitprune_meta = meta
    # the weights as they are now: a model edited in memory since load_model is another model (never its load-time hash)
    copy.vitprune_fingerprint = fingerprint(copy)
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
    mask: Mask
    pruned: Pruned
    critical: dict[int, list[list[int]]] | None
    seconds: float


class Pipeline:
    """One dense model on one data source; the stages of compression, each computed once."""

    def __init__(self, model: str | nn.Module, data: Any, opts: CalibrationOptions, *, dist: Dist, quiet: bool = False,
                 run_folder: Callable[[DiscoverySettings], Path | None] = lambda settings: None) -> None:
        self.opts, self.dist, self.quiet = opts, dist, quiet or not dist.is_main
        seed = getattr(opts, "seed", 0)
        self.dense = resolve_model(model, opts.arch, opts.model_args, seed=seed[0] if isinstance(seed, tuple) else seed)
        if isinstance(data, (str, Path)) and isinstance(getattr(opts, "data", None), str):
            data = opts.data  # the same spec, with any hf: options written in (api.common.with_data_options)
        self.pools = resolve_data(data, adapter_for(self.dense).num_classes)
        check_pairing(self.pools, adapter_for(self.dense))
        specialize = getattr(opts, "specialize", None)
        if specialize:  # a model of these classes only: the dense model on their logits, the data of their images
            self.pools = self.pools.restricted(tuple(specialize))  # first: it names a class out of range
            self.dense = adapter_for(self.dense).restrict_classes(tuple(specialize))
        self.fingerprint = model_fingerprint(self.dense)
        self.dense.to(dist.device)
        self.adapter = adapter_for(self.dense)
        self.transform = model_transform(self.dense)
        self.run_folder = run_folder
        self.point_quiet = False  # a sweep sets it: its points print one line each, not their stages
        self.timings: dict[str, float] = {}
        self.runs: dict[DiscoverySettings, PathRun] = {}
        self._unit_costs: dict[str, list[float]] = {}
        self._total_macs: int | None = None
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

    def unit_costs(self, kind: str) -> list[float]:
        """MACs of one unit of each site of ``kind`` (SITE_KINDS), counted once."""
        if kind not in self._unit_costs:
            self._unit_costs[kind] = unit_macs(self.dense, kind)
        return self._unit_costs[kind]

    def total_macs(self) -> int:
        """MACs of the dense model, counted once."""
        if self._total_macs is None:
            self._total_macs = count_macs_params(self.dense)[0]
        return self._total_macs

    def widths(self, kind: str) -> list[int]:
        return [site.width for site in self.adapter.sites(kind)]

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

    @staticmethod
    def criterion_of(point: Point, kind: str) -> str:
        """The criterion that ranks ``kind``'s units at ``point`` (the MLPs' ``--criterion``, the heads' ``--head-criterion``)."""
        return point.criterion if kind == "mlp" else (point.head_criterion or HEAD_DEFAULT["criterion"])

    def kind_scores(self, kind: str, point: Point, settings: DiscoverySettings | None) -> list[torch.Tensor]:
        """One score per unit of every site of ``kind`` by the point's criterion for that kind (``settings``: the point's
        discovery, for the criteria reading its paths), from what the criterion declared it needs."""
        if kind == "mlp":
            criterion = load_criterion(point.criterion)
            inputs = self.criterion_inputs(point, settings, keep=False)
            return checked_scores(point.criterion, criterion.scores(inputs), inputs.sites)
        name = self.criterion_of(point, kind)
        needs = set(head_criterion_needs(name))
        if "head_path_ig" in needs and settings is None:
            raise ValueError(f"head criterion {name} needs the point's discovery settings")
        stats = (self.head_stats(ig="head_ig" in needs, paths=settings if "head_path_ig" in needs else None)
                 if needs & {"head_stats", "head_ig", "head_path_ig"} else None)
        return head_scores(name, stats, self.adapter.sites(kind), point.seed, model=self.dense, adapter=self.adapter)

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
        for kind in point.prune:
            self.adapter.sites(kind)  # refuses sites it cannot slice (attention it cannot split by head), before any work
        if budget.target_macs is not None:
            kinds = point.prune
            lowest = macs_floor(self.total_macs(), {k: self.unit_costs(k) for k in kinds}, {k: self.widths(k) for k in kinds},
                                Allocation(scope, min_keep, round_to))
            if budget.target_macs < lowest:
                heads = "heads" in kinds
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

    def dense_key(self, pool: ImagePool) -> str | None:
        """The evaluation cache's key of the dense model on ``pool`` (None under several processes: each scores its share)."""
        from .evalcache import cache_key
        from .model.adapter import data_config

        return cache_key(self.fingerprint, pool.digest(), data_config(self.dense), self.opts.precision) if self.dist.world == 1 else None

    def evaluate_pool(self, models: dict[str, nn.Module], pool: ImagePool, desc: str = "evaluate") -> dict[str, EvalResult]:
        """Accuracy of ``models`` on ``pool``; the dense model's comes from the evaluation cache when it scored these
        images before (``vitprune.evalcache``), and is kept there otherwise."""
        from . import evalcache

        key = self.dense_key(pool) if any(m is self.dense for m in models.values()) else None
        cached = evalcache.load(key) if key else None
        todo = {n: m for n, m in models.items() if cached is None or m is not self.dense}
        out = (self.accuracy(todo, pool.batches(self.transform, evalcache.BATCH, shard=self.dist), len(pool) // self.dist.world, desc)
               if todo else {})
        for name, model in models.items():
            if model is self.dense and cached is not None:
                out[name] = cached
            elif model is self.dense and key:
                evalcache.store(key, out[name])
        return {name: out[name] for name in models}

    def dense_score(self, pool: ImagePool, images: torch.Tensor, labels: torch.Tensor) -> EvalResult:
        """The dense model on ``pool``'s images, preprocessed already (``images``): from the cache, or scored and kept."""
        from . import evalcache
        from .data import tensor_batches

        key = self.dense_key(pool)
        result = evalcache.load(key) if key else None
        if result is None:
            result = self.accuracy({"dense": self.dense}, tensor_batches(images, labels, evalcache.BATCH), len(images))["dense"]
            if key:
                evalcache.store(key, result)
        return result

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
             ) -> tuple[Mask, dict[int, list[list[int]]] | None]:
        """The mask of a point over every site kind it prunes, and for a keep-topk budget the per-class units it is
        the union of."""
        budget, widths = point.budget, self.adapter.hidden_widths
        if budget.keep_topk is not None:
            inputs = self.criterion_inputs(point, settings, keep=True)
            critical = load_criterion(point.criterion).class_units(inputs, budget.keep_topk)
            mask = from_keep_sets(widths, union_keep_sets(critical, len(widths)), keep_label(point.criterion, budget.keep_topk))
            return mask, critical
        kinds = point.prune
        scores = {kind: self.kind_scores(kind, point, settings) for kind in kinds}
        macs = budget.target_macs is not None
        return from_budget(scores, budget, Allocation(scope, min_keep, round_to),
                           costs={k: self.unit_costs(k) for k in kinds} if macs else None,
                           total_macs=self.total_macs() if macs else None,
                           criteria={k: self.criterion_of(point, k) for k in kinds}), None

    def prune(self, mask: Mask, compensate: str, options: dict[str, Any]) -> Pruned:
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
