"""Options of every command, as frozen dataclasses with their checks (torch-free, so ``--help`` is instant).

The command line and the Python API build the same dataclasses (``vitprune.compress(..., **options)``
takes the CLI's options as keyword arguments with the same defaults), so a rule is written once.
Choices that can be extended (criteria, compensations, discovery methods) come from their
registries; the fixed ones are listed here.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any, TypeVar

from .defaults import (DISCOVERY_DEFAULT, FAITHFUL_DISCOVERY, HEAD_DEFAULT, JAS_DEFAULT, KEEP_DEFAULT, LSQ_DEFAULT,
                       PER_CLASS_DEFAULT, SPARSITY_DEFAULT)
from .errors import UserError

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
OBJECTIVES = ("prob", "logprob", "kl")
LABEL_SOURCES = ("truth", "pred")
TOKEN_SCOPES = ("auto", "cls", "patches", "all")
MASK_SCOPES = ("per-block", "global", "global-raw")
JAS_AGGREGATIONS = ("mean", "abs", "norm", "ig")
LSQ_TARGETS = ("local", "output")
TOKEN_WEIGHTINGS = ("uniform", "readout")
INT8_MODES = ("static", "dynamic")
POOLS = ("calibration", "evaluation")

T = TypeVar("T")


def check_choice(flag: str, value: Any, choices: Sequence[Any]) -> None:
    """A UserError naming the flag and its choices when ``value`` is not one of them."""
    if value not in choices:
        raise UserError(f"{flag} must be one of {', '.join(map(str, choices))} (got '{value}')")


def check_count(flag: str, value: Any, *, minimum: int = 1, optional: bool = False) -> None:
    """A whole number >= ``minimum`` (None allowed when ``optional``), else one UserError naming the flag."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{flag} must be a whole number >= {minimum} (got {value})")


def check_fraction(flag: str, value: Any, *, low: float, high: float, closed_low: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low <= value if closed_low else low < value) and value < high
    if not ok:
        raise UserError(f"{flag} must be in {'[' if closed_low else '('}{low:g}, {high:g}) (got {value})")


def option_fields(cls: type) -> dict[str, Any]:
    """name -> default of an option dataclass (what the API's keyword arguments are)."""
    return {f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            for f in fields(cls)}


def shared_fields(source: Any, target: type[T], **overrides: Any) -> T:
    """``target`` built from the fields it shares with ``source`` (options or parsed arguments), then ``overrides``."""
    names = {f.name for f in fields(target)}  # type: ignore[arg-type]
    values = {n: getattr(source, n) for n in names if hasattr(source, n)}
    return target(**{**values, **overrides})


@dataclass(frozen=True)
class RunOptions:
    """Model, data, device and precision: what every command runs on."""

    model: str = "demo"
    arch: str | None = None
    model_args: dict | None = None  # timm.create_model keyword arguments of a plain state dict (--model-args)
    data: str = "demo"
    device: str = "auto"
    precision: str = "fp32"


@dataclass(frozen=True)
class CalibrationOptions(RunOptions):
    """Plus the calibration images and how discovery passes over them."""

    per_class: int | None = PER_CLASS_DEFAULT
    classes: tuple[int, ...] | None = None
    steps: int = 20
    batch_size: int = 16
    max_rows: int | None = None

    def check_calibration(self) -> None:
        check_choice("--precision", self.precision, PRECISIONS)
        check_count("--per-class", self.per_class, optional=True)
        check_count("--batch-size", self.batch_size)
        check_count("--max-rows", self.max_rows, optional=True)
        if self.classes is not None and not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in self.classes):
            raise UserError(f"--classes takes class ids >= 0 (got {list(self.classes)})")


@dataclass(frozen=True)
class DiscoverOptions(CalibrationOptions):
    """``vitprune discover``: the reference's settings by default."""

    per_class: int | None = 8
    pool: str = "calibration"
    topk: int = 1
    method: str = "jas"
    token_scope: str = "auto"
    label: str = "truth"
    objective: str = "prob"

    def validate(self) -> "DiscoverOptions":
        self.check_calibration()
        check_choice("--pool", self.pool, POOLS)
        return self


@dataclass(frozen=True)
class Budget:
    """How much to keep: exactly one of per-class keep sets (``keep_topk``), a fraction of units removed
    (``sparsity``) or a fraction of the dense model's MACs (``target_macs``)."""

    keep_topk: int | None = None
    sparsity: float | None = None
    target_macs: float | None = None

    def check(self) -> "Budget":
        if sum(x is not None for x in (self.keep_topk, self.sparsity, self.target_macs)) != 1:
            raise UserError("pass exactly one of --keep-topk K (path-defined units), --sparsity S or --target-macs R (a budget)")
        if self.keep_topk is not None:
            check_count("--keep-topk", self.keep_topk)
        if self.sparsity is not None:
            check_fraction("--sparsity", self.sparsity, low=0.0, high=1.0)
        if self.target_macs is not None:
            check_fraction("--target-macs (a fraction of the dense model's MACs)", self.target_macs, low=0.0, high=1.0,
                           closed_low=False)
        return self

    def describe(self) -> str:
        if self.keep_topk is not None:
            return f"K={self.keep_topk}"
        return f"{self.target_macs:.2f} MACs" if self.target_macs is not None else f"{self.sparsity:.2f}"


@dataclass(frozen=True)
class Point:
    """One compression setting: a criterion (with its discovery variant, for path criteria), a budget,
    a compensation and a seed. ``criterion == "dense"`` is the unpruned model."""

    criterion: str
    budget: Budget = Budget()
    compensate: str = "none"
    seed: int = 0
    token_scope: str | None = None
    objective: str | None = None
    aggregation: str | None = None
    prune: tuple[str, ...] = ("mlp",)  # the site kinds pruned (SITE_KINDS): mlp, or mlp and heads
    head_criterion: str | None = None  # with heads: the head criterion (HEAD_CRITERIA)


def default_scope(prune: tuple[str, ...]) -> str:
    """The budget allocation when --scope is not given: per-block for MLP units (the zoo's), and with heads the heads
    study's winner (one ranking of units and heads by score per MAC beats one fraction per block there)."""
    return HEAD_DEFAULT["scope"] if "heads" in prune else "per-block"


def check_prune(prune: Any, head_criterion: str | None, keep_topk: Any) -> tuple[str, ...]:
    """``--prune``: site kinds, the MLPs always among them; heads need a budget (no per-class head sets) and a head criterion."""
    from .criteria import HEAD_CRITERIA
    from .model import SITE_KINDS

    kinds = tuple(prune.split(",")) if isinstance(prune, str) else tuple(prune)
    for kind in kinds:
        if kind not in SITE_KINDS:
            raise UserError(f"--prune: unknown site kind '{kind}'; choose from {', '.join(SITE_KINDS.names())}")
    if "mlp" not in kinds or len(set(kinds)) != len(kinds):
        raise UserError(f"--prune takes mlp or mlp,heads (got {','.join(kinds)})")
    if "heads" not in kinds and head_criterion is not None:
        raise UserError(f"--head-criterion {head_criterion} ranks attention heads, which are pruned only with --prune mlp,heads; "
                        "add it, or drop --head-criterion")
    if "heads" in kinds:
        if keep_topk:
            raise UserError("--keep-topk keeps per-class path units, which heads have none of: prune heads with --sparsity "
                            "or --target-macs, or drop heads from --prune")
        if head_criterion is not None:
            HEAD_CRITERIA.check(head_criterion)
    return kinds


@dataclass(frozen=True)
class CompressOptions(CalibrationOptions):
    """``vitprune compress`` / ``vitprune.compress``. None means the zoo's choice (``resolve``)."""

    keep_topk: int | None = None
    sparsity: float | None = None
    target_macs: float | None = None  # fraction of the dense model's MACs
    criterion: str | None = None  # None: the zoo's best (defaults.SPARSITY_DEFAULT / KEEP_DEFAULT)
    scope: str | None = None  # None: per-block, or with heads pruned the heads study's allocation (defaults.HEAD_DEFAULT)
    min_keep: int = 1
    round_to: int = 1
    compensate: str | None = None  # None: the zoo's best
    paths: str | None = None
    topk: int | None = None  # discovery K; defaults to keep_topk, else 5
    steps: int | None = None  # discovery settings: None = DISCOVERY_DEFAULT (FAITHFUL_DISCOVERY with faithful_discovery), or with --paths the run's own
    faithful_discovery: bool = False  # discover with the reference's m = 20 (defaults.FAITHFUL_DISCOVERY), not the cheaper default
    token_scope: str | None = None  # None: defaults.JAS_DEFAULT, or with --paths the run's own
    objective: str | None = None
    jas_aggregation: str | None = None
    lsq_target: str = LSQ_DEFAULT["target"]
    lsq_weighting: str = LSQ_DEFAULT["weighting"]
    label: str | None = None  # None: truth, or with --paths the run's own
    eval_per_class: int | None = None
    finetune_epochs: int = 0
    finetune_lr: float = 1e-4
    finetune_per_class: int | None = None
    export: bool = True
    quantize: str | None = None  # int8: also write model.int8.onnx, gated by accuracy
    int8_mode: str = "static"
    max_int8_drop: float = 1.0  # points of top-1
    latency_rounds: int = 30
    seed: int = 0
    prune: tuple[str, ...] = ("mlp",)  # site kinds: mlp, or mlp,heads
    head_criterion: str | None = None  # None: the zoo's best (defaults.HEAD_DEFAULT) when heads are pruned

    @property
    def budget(self) -> Budget:
        return Budget(self.keep_topk, self.sparsity, self.target_macs)

    @property
    def discovery_topk(self) -> int:
        return self.topk or self.keep_topk or 5

    @property
    def point(self) -> Point:
        return Point(self.criterion or "", self.budget, self.compensate or "none", self.seed, self.token_scope, self.objective,
                     self.jas_aggregation, tuple(self.prune), self.head_criterion)

    def resolve(self) -> "CompressOptions":
        """Fill what is left unset with the zoo's best: criterion and compensation (for --keep-topk or
        --sparsity) and the discovery settings of the path criteria."""
        best = KEEP_DEFAULT if self.keep_topk is not None else SPARSITY_DEFAULT
        scope = self.token_scope or (JAS_DEFAULT["token_scope"] if self.paths is None else None)
        objective = self.objective or (JAS_DEFAULT["objective"] if self.paths is None else None)
        prune = tuple(self.prune.split(",")) if isinstance(self.prune, str) else tuple(self.prune)
        head = self.head_criterion or (HEAD_DEFAULT["criterion"] if "heads" in prune else None)
        if self.faithful_discovery and self.paths is not None:
            raise UserError("--faithful-discovery sets how compress discovers paths; with --paths the run's own settings "
                            "apply: drop one of them")
        discovery = FAITHFUL_DISCOVERY if self.faithful_discovery else DISCOVERY_DEFAULT
        if self.faithful_discovery and self.steps is not None and self.steps != discovery["steps"]:
            raise UserError(f"--faithful-discovery runs the reference's m = {discovery['steps']} steps, not --steps {self.steps}: "
                            "drop one of them")
        steps = self.steps if self.steps is not None or self.paths is not None else discovery["steps"]
        return replace(self, criterion=self.criterion or best["criterion"], steps=steps,
                       compensate=self.compensate if self.compensate is not None else best["compensate"],
                       token_scope=scope, objective=objective, jas_aggregation=self.jas_aggregation or JAS_DEFAULT["aggregation"],
                       prune=prune, head_criterion=head, scope=self.scope or default_scope(prune))

    def validate(self) -> "CompressOptions":
        """Every check that needs no model or data (call after ``resolve``)."""
        from .criteria import CRITERIA, per_class_criteria
        from .prune import COMPENSATIONS

        self.check_calibration()
        self.budget.check()
        CRITERIA.check(self.criterion)
        COMPENSATIONS.check(self.compensate)
        for flag, value, choices in (("--token-scope", self.token_scope, TOKEN_SCOPES), ("--objective", self.objective, OBJECTIVES),
                                     ("--label", self.label, LABEL_SOURCES)):
            if value is not None:
                check_choice(flag, value, choices)
        check_choice("--jas-aggregation", self.jas_aggregation, JAS_AGGREGATIONS)
        check_choice("--lsq-target", self.lsq_target, LSQ_TARGETS)
        check_choice("--lsq-weighting", self.lsq_weighting, TOKEN_WEIGHTINGS)
        check_choice("--scope", self.scope, MASK_SCOPES)
        check_prune(self.prune, self.head_criterion, self.keep_topk)
        if self.keep_topk is not None and self.criterion not in per_class_criteria():
            raise UserError(f"--keep-topk keeps path units: --criterion must be {' or '.join(per_class_criteria())} "
                            f"(got '{self.criterion}')")
        check_count("--topk", self.topk, optional=True)
        check_count("--steps", self.steps, optional=True)
        check_count("--finetune-epochs", self.finetune_epochs, minimum=0)
        check_count("--eval-per-class", self.eval_per_class, optional=True)
        check_count("--finetune-per-class", self.finetune_per_class, optional=True)
        if not (isinstance(self.finetune_lr, (int, float)) and math.isfinite(self.finetune_lr) and self.finetune_lr > 0):
            raise UserError(f"--finetune-lr must be a positive number (got {self.finetune_lr})")
        for flag, value in (("--min-keep", self.min_keep), ("--round-to", self.round_to), ("--latency-rounds", self.latency_rounds)):
            check_count(flag, value)
        if self.quantize is not None:
            check_choice("--quantize", self.quantize, ("int8",))
            check_choice("--int8-mode", self.int8_mode, INT8_MODES)
            if not self.export:
                raise UserError("--quantize int8 quantizes the ONNX export: drop --no-export")
        if not (isinstance(self.max_int8_drop, (int, float)) and math.isfinite(self.max_int8_drop) and self.max_int8_drop >= 0):
            raise UserError(f"--max-int8-drop must be a number of points >= 0 (got {self.max_int8_drop})")
        return self


@dataclass(frozen=True)
class EvaluateOptions(CalibrationOptions):
    """``vitprune evaluate`` / ``vitprune.evaluate``: accuracy vs budget for several criteria on the same images."""

    sparsities: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
    target_macs: tuple[float, ...] = ()  # budgets as fractions of the dense model's MACs
    criteria: tuple[str, ...] | None = None  # None: every registered criterion
    keep_topk: tuple[int, ...] = ()  # keep-topk points of the per-class (path) criteria
    compensate: tuple[str, ...] | None = None  # None: every registered compensation
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_per_class: int | None = None
    selection_per_class: int | None = None  # also score every point on this many held-out calibration-pool images per class
    topk: int = 5  # discovery K of the runs behind every path-criterion budget point
    steps: int = DISCOVERY_DEFAULT["steps"]  # integrated-gradient steps of those runs (the cost-quality study's default)
    token_scopes: tuple[str, ...] = (JAS_DEFAULT["token_scope"],)  # discovery variants of the path criteria
    objectives: tuple[str, ...] = (JAS_DEFAULT["objective"],)
    aggregations: tuple[str, ...] = (JAS_DEFAULT["aggregation"],)  # of jas only
    lsq_target: str = LSQ_DEFAULT["target"]
    lsq_weighting: str = LSQ_DEFAULT["weighting"]
    scope: str | None = None  # None: per-block, or with heads pruned the heads study's allocation
    min_keep: int = 1
    round_to: int = 1
    finetune_epochs: int = 0
    finetune_per_class: int | None = None
    finetune_lr: float = 1e-4
    latency: bool = False
    prune: tuple[str, ...] = ("mlp",)  # site kinds: mlp, or mlp,heads
    head_criteria: tuple[str, ...] | None = None  # with heads: every budget point once per head criterion (None: the default)

    def resolve(self) -> "EvaluateOptions":
        """Every registered criterion / compensation where none was named."""
        from .criteria import CRITERIA
        from .prune import COMPENSATIONS

        prune = tuple(self.prune.split(",")) if isinstance(self.prune, str) else tuple(self.prune)
        heads = ((tuple(self.head_criteria) if self.head_criteria else (HEAD_DEFAULT["criterion"],)) if "heads" in prune
                 else tuple(self.head_criteria or ()))  # given without heads: validate refuses them
        return replace(self, criteria=tuple(self.criteria) if self.criteria is not None else CRITERIA.names(),
                       compensate=tuple(self.compensate) if self.compensate is not None else COMPENSATIONS.names(),
                       prune=prune, head_criteria=heads, scope=self.scope or default_scope(prune))

    def validate(self) -> "EvaluateOptions":
        from .criteria import CRITERIA, per_class_criteria
        from .prune import COMPENSATIONS

        self.check_calibration()
        for c in self.criteria or ():
            if c not in CRITERIA:
                raise UserError(f"--criteria: unknown '{c}'; choose from {', '.join(CRITERIA.names())}")
        for c in self.compensate or ():
            COMPENSATIONS.check(c)
        for flag, values, choices in (("--token-scopes", self.token_scopes, TOKEN_SCOPES), ("--objectives", self.objectives, OBJECTIVES),
                                      ("--jas-aggregations", self.aggregations, JAS_AGGREGATIONS)):
            if not values:
                raise UserError(f"{flag} needs at least one value")
            for v in values:
                check_choice(flag, v, choices)
        for s in self.sparsities:
            check_fraction("--sparsities", s, low=0.0, high=1.0)
        for r in self.target_macs:
            check_fraction("--target-macs values (fractions of the dense model's MACs)", r, low=0.0, high=1.0, closed_low=False)
        for k in self.keep_topk:
            check_count("--keep-topk values", k)
        if self.keep_topk and not set(self.criteria or ()) & set(per_class_criteria()):
            raise UserError(f"--keep-topk points need a path criterion ({' or '.join(per_class_criteria())}) in --criteria")
        if not self.seeds:
            raise UserError("--seeds needs at least one seed")
        for flag, value in (("--eval-per-class", self.eval_per_class), ("--selection-per-class", self.selection_per_class),
                            ("--finetune-per-class", self.finetune_per_class)):
            check_count(flag, value, optional=True)
        for flag, value in (("--topk", self.topk), ("--min-keep", self.min_keep), ("--round-to", self.round_to), ("--steps", self.steps)):
            check_count(flag, value)
        check_choice("--lsq-target", self.lsq_target, LSQ_TARGETS)
        check_choice("--lsq-weighting", self.lsq_weighting, TOKEN_WEIGHTINGS)
        check_choice("--scope", self.scope, MASK_SCOPES)
        check_prune(self.prune, None, None)
        for c in self.head_criteria or ():
            check_prune(self.prune, c, None)
        check_count("--finetune-epochs", self.finetune_epochs, minimum=0)
        if not (isinstance(self.finetune_lr, (int, float)) and math.isfinite(self.finetune_lr) and self.finetune_lr > 0):
            raise UserError(f"--finetune-lr must be a positive number (got {self.finetune_lr})")
        return self

    def points(self) -> list[Point]:
        """Every (criterion, variant, compensation, budget, seed) point, in a fixed order: the dense model first."""
        from .criteria import CRITERIA

        pts = [Point("dense", Budget(sparsity=0.0), "none")]
        for crit in self.criteria or ():
            meta = CRITERIA.entry(crit).meta
            budgets = [Budget(sparsity=s) for s in self.sparsities] + [Budget(target_macs=r) for r in self.target_macs]
            if meta.get("per_class"):
                budgets += [Budget(keep_topk=k) for k in self.keep_topk]
            for comp in self.compensate or ():
                for var in self._variants(crit, meta):
                    for budget in budgets:
                        for seed in self.seeds if crit == "random" else (0,):
                            if budget.keep_topk is None and "heads" in self.prune:
                                pts += [Point(crit, budget, comp, seed, **var, prune=self.prune, head_criterion=h)
                                        for h in self.head_criteria or ()]
                            else:
                                pts.append(Point(crit, budget, comp, seed, **var))
        return pts

    def _variants(self, criterion: str, meta: dict) -> list[dict]:
        """The discovery settings a criterion's points come in (one empty variant for criteria without paths)."""
        needs = set(meta.get("needs", ())) | set(meta.get("keep_needs", ()))
        if not needs & {"paths", "importance"}:
            return [{"token_scope": None, "objective": None, "aggregation": None}]
        aggs = self.aggregations if criterion == "jas" else (None,)
        return [{"token_scope": s, "objective": o, "aggregation": a} for s in self.token_scopes for o in self.objectives for a in aggs]


__all__ = ["RunOptions", "CalibrationOptions", "DiscoverOptions", "CompressOptions", "EvaluateOptions", "Budget", "Point", "check_prune",
           "check_choice", "check_count", "check_fraction", "shared_fields", "option_fields", "PRECISIONS", "OBJECTIVES",
           "LABEL_SOURCES", "TOKEN_SCOPES", "MASK_SCOPES", "JAS_AGGREGATIONS", "LSQ_TARGETS", "TOKEN_WEIGHTINGS", "INT8_MODES",
           "POOLS"]
