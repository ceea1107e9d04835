"""Options of every command, as frozen dataclasses with their checks (torch-free, so ``--help`` is instant).

The command line and the Python API build the same dataclasses (``vitprune.compress(..., **options)``
takes the CLI's options as keyword arguments with the same defaults), so a rule is written once.
Choices that can be extended (criteria, compensations, discovery methods) come from their
registries; the fixed ones are listed here.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, ClassVar, TypeVar

from .defaults import (DISCOVERY_DEFAULT, FAITHFUL_DISCOVERY, HEAD_DEFAULT, JAS_DEFAULT, KEEP_DEFAULT, LSQ_DEFAULT,
                       PER_CLASS_DEFAULT, RECOVERY_DEFAULT, SPARSITY_DEFAULT)
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

# evaluate's option names before one vocabulary (vitprune 0.1): the API, recipes and old sweep.json files still take them
LEGACY_NAMES = {"sparsities": "sparsity", "criteria": "criterion", "seeds": "seed", "token_scopes": "token_scope",
                "objectives": "objective", "aggregations": "jas_aggregation", "jas_aggregations": "jas_aggregation",
                "head_criteria": "head_criterion"}


def opt(default: Any = None, help: str = "", *, group: str | None = None, choices: Any = None, default_text: str | None = None,
        kind: str | None = None, flag: str | None = None, aliases: Sequence[str] = (), metavar: str | None = None,
        required: bool = False) -> Any:
    """A dataclass field that is also a command-line option: ``vitprune.app.cli`` builds argparse from these, so a
    default is declared once. ``choices`` (a sequence, or a callable returning one, for the registries), ``kind``
    (how the text is read when the annotation does not say: ``classes``, ``model_args``, ``paths``, ``no`` for
    ``--no-X`` of a True default), ``default_text`` (the default as --help states it when the value alone does not
    say it), ``flag`` (default ``--field-name``) and its ``aliases``."""
    meta = {"help": help, "group": group, "choices": choices, "default_text": default_text, "kind": kind, "flag": flag,
            "aliases": tuple(aliases), "metavar": metavar, "required": required}
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------- option text (command line, recipes, API)
def parse_classes(text: str | None) -> tuple[int, ...] | None:
    """'0,3,5-7' -> (0, 3, 5, 6, 7)."""
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            if hi and int(hi) < int(lo):
                raise ValueError(part)
            out += range(int(lo), int(hi) + 1) if hi else [int(lo)]
    except ValueError as exc:
        raise UserError(f"--classes takes ids like 0,3,5-7 (got '{text}')") from exc
    return tuple(sorted(set(out)))


def parse_model_args(text: str | None) -> dict | None:
    """``'global_pool=avg,fc_norm=false,img_size=96'`` -> keyword arguments for ``timm.create_model`` (YAML values;
    ``[a, b]`` lists may hold commas)."""
    import yaml

    if not text:
        return None
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += 1 if ch in "[(" else -1 if ch in "])" else 0
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    out: dict = {}
    for part in (p.strip() for p in parts if p.strip()):
        key, eq, value = part.partition("=")
        if not eq or not key.strip().isidentifier():
            raise UserError(f"--model-args takes key=value pairs like global_pool=avg,img_size=96 (got '{part}')")
        try:
            out[key.strip()] = yaml.safe_load(value.strip())
        except yaml.YAMLError as exc:
            raise UserError(f"--model-args: cannot read the value of {key.strip()} ('{value.strip()}')") from exc
    return out


def floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise UserError(f"{flag} takes comma-separated numbers (got '{text}')") from exc


def ints(text: str, flag: str) -> tuple[int, ...]:
    values = floats(text, flag)
    if any(not math.isfinite(v) or v != int(v) for v in values):
        raise UserError(f"{flag} takes comma-separated whole numbers (got '{text}')")
    return tuple(int(v) for v in values)


def names(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())



_LIST_KINDS = {"tuple[float, ...]": "floats", "tuple[int, ...]": "ints", "tuple[str, ...]": "names"}
_SCALAR_KINDS = ("int", "float", "str", "bool")


def field_kind(f: Any) -> str:
    """How an option field's value is read from text and checked: its ``kind`` metadata, else from its annotation
    (``int``, ``float``, ``str``, ``bool``, ``floats``, ``ints``, ``names``)."""
    if f.metadata.get("kind"):
        return f.metadata["kind"]
    annotation = str(f.type).replace(" | None", "").strip()
    if annotation in _LIST_KINDS:
        return _LIST_KINDS[annotation]
    if annotation in _SCALAR_KINDS:
        return annotation
    raise TypeError(f"option {f.name}: no reading for annotation {f.type!r}; give it kind=")


def coerce(cls: type, given: dict[str, Any]) -> dict[str, Any]:
    """The API's keyword arguments checked against the option fields' types, with the command line's text forms
    accepted too (``criterion="jas,wanda"``, ``classes="0-2"``, ``model_args="num_classes=10"``, a single value for a
    list): one UserError naming the argument and the type it takes, never a traceback from deep inside."""
    kinds = {f.name: (f, field_kind(f)) for f in fields(cls) if "help" in f.metadata}
    out = dict(given)
    for name, value in given.items():
        if name not in kinds or value is None:
            continue
        f, kind = kinds[name]
        optional = "None" in str(f.type)
        where = f"{name}="
        if kind in ("floats", "ints", "names", "paths", "path"):
            element = {"floats": (int, float), "ints": (int,), "names": (str,), "paths": (str,), "path": (str,)}[kind]
            if isinstance(value, str) and kind != "names" and kind not in ("paths", "path"):
                value = floats(value, where) if kind == "floats" else ints(value, where)
            elif isinstance(value, str):
                value = names(value) if kind == "names" else (value,)
            elif isinstance(value, os.PathLike):
                value = (str(value),)
            elif not isinstance(value, (list, tuple)):
                value = (value,)
            value = tuple(str(v) if isinstance(v, os.PathLike) else v for v in value)
            bad = [v for v in value if isinstance(v, bool) or not isinstance(v, element)]
            if bad:
                what = {"floats": "numbers", "ints": "whole numbers", "names": "names", "paths": "paths", "path": "a path"}[kind]
                raise UserError(f"{name} takes {what} (one, a sequence, or a comma string like the command line's), not "
                                f"{type(bad[0]).__name__} {bad[0]!r}")
            out[name] = value
        elif kind == "classes":
            if isinstance(value, str):
                value = parse_classes(value)
            elif isinstance(value, int) and not isinstance(value, bool):
                value = (value,)
            if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
                raise UserError(f"classes takes class ids (a sequence of whole numbers, or text like '0,3,5-7'), not {value!r}")
            out[name] = tuple(value)
        elif kind == "model_args":
            if isinstance(value, str):
                value = parse_model_args(value)
            if not isinstance(value, dict):
                raise UserError(f"model_args takes a dict of timm.create_model keyword arguments (or text like "
                                f"'num_classes=10,img_size=96'), not {type(value).__name__}")
            out[name] = value
        elif kind in ("bool", "no"):
            if not isinstance(value, bool):
                raise UserError(f"{name} takes True or False, not {type(value).__name__} {value!r}")
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{name} takes a whole number{' or None' if optional else ''}, not {type(value).__name__} {value!r}")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{name} takes a number{' or None' if optional else ''}, not {type(value).__name__} {value!r}")
        elif kind in ("str", "positional"):
            if isinstance(value, os.PathLike):
                out[name] = str(value)
            elif not isinstance(value, str):
                raise UserError(f"{name} takes a string{' or None' if optional else ''}, not {type(value).__name__} {value!r}")
    for name, (f, kind) in kinds.items():
        if name in given and given[name] is None and "None" not in str(f.type):
            raise UserError(f"{name} cannot be None; leave it out for its default ({f.default!r})")
    return out


def renamed(given: dict[str, Any], cls: type) -> dict[str, Any]:
    """``given`` options with a command's old names mapped to the current ones (``cls.legacy_names``: evaluate's plurals)."""
    names = {f.name for f in fields(cls)}
    out = dict(given)
    for old, new in getattr(cls, "legacy_names", {}).items():
        if old in out and old not in names and new in names:
            if new in out:
                raise UserError(f"'{old}' is the old name of '{new}': pass only one of them")
            out[new] = out.pop(old)
    return out


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


def check_positive(flag: str, value: Any) -> None:
    """A finite number > 0, else one UserError naming the flag."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise UserError(f"{flag} must be a positive number (got {value})")


def check_recovery(opts: Any) -> None:
    """The --finetune-* options of compress and evaluate, checked once."""
    ok = isinstance(opts.finetune_epochs, (int, float)) and not isinstance(opts.finetune_epochs, bool)
    if not ok or not math.isfinite(opts.finetune_epochs) or opts.finetune_epochs < 0:
        raise UserError(f"--finetune-epochs must be a number of epochs >= 0 (got {opts.finetune_epochs})")
    check_positive("--finetune-lr", opts.finetune_lr)
    check_count("--finetune-per-class", opts.finetune_per_class, optional=True)
    check_count("--finetune-selection-per-class", opts.finetune_selection_per_class)
    features = opts.finetune_features
    if not (isinstance(features, (int, float)) and not isinstance(features, bool) and math.isfinite(features) and features >= 0):
        raise UserError(f"--finetune-features must be a weight >= 0 (got {features})")


def check_specialize(opts: Any) -> None:
    """--specialize: two or more class ids, and --classes (the calibration classes) not given beside it."""
    if opts.specialize is None:
        return
    classes = tuple(opts.specialize)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise UserError(f"--specialize takes two or more different class ids (got {','.join(map(str, classes))})")
    if opts.classes is not None and tuple(opts.classes) != tuple(sorted(classes)):
        raise UserError("--specialize sets the classes the model keeps, and its calibration classes with them: drop --classes")


def command_line(command: str, cls: type, values: dict[str, Any], always: tuple[str, ...] = ("model", "data")) -> str:
    """The ``vitprune <command> ...`` line that asks for ``values`` (an options dataclass's fields, as a settings file
    holds them): ``always`` and every option that differs from its default, in declaration order, quoted for a POSIX
    shell. The model cards of result folders say with it how they were made."""
    import shlex

    words = ["vitprune", command]
    for f in fields(cls):
        if "help" not in f.metadata or f.name not in values:
            continue
        value = values[f.name]
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        value, default = (tuple(v) if isinstance(v, list) else v for v in (value, default))
        if (value == default and f.name not in always) or value is None:
            continue
        kind, flag = field_kind(f), f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if kind in ("bool", "no"):
            words.append(flag)
        elif kind == "model_args":
            words += [flag, ",".join(f"{k}={v}" for k, v in value.items())]
        elif isinstance(value, tuple):
            words += [flag, ",".join(map(str, value))]
        else:
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return " ".join(shlex.quote(w) for w in words)


def option_fields(cls: type) -> dict[str, Any]:
    """name -> default of an option dataclass (what the API's keyword arguments are)."""
    return {f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            for f in fields(cls)}


MODEL_HELP = "demo | zoo:NAME | random:NAME | timm NAME | checkpoint file | vitprune or timm Hugging Face folder"
DATA_HELP = "demo | fashion-mnist[:DIR] | imagefolder:DIR | hf:NAME"
_MD = "model and data"
_CAL = "calibration images and discovery passes"


def _criteria() -> tuple[str, ...]:
    from .criteria import CRITERIA

    return CRITERIA.names()


def _head_criteria() -> tuple[str, ...]:
    from .criteria import HEAD_CRITERIA

    return HEAD_CRITERIA.names()


def _compensations() -> tuple[str, ...]:
    from .prune import COMPENSATIONS

    return COMPENSATIONS.names()


def _methods() -> tuple[str, ...]:
    from .discovery import DISCOVERY_METHODS

    return DISCOVERY_METHODS.names()


def _site_kinds() -> tuple[str, ...]:
    from .model import SITE_KINDS

    return SITE_KINDS.names()


@dataclass(frozen=True)
class RunOptions:
    """Model, data, device and precision: what every command runs on."""

    model: str = opt("demo", MODEL_HELP, group=_MD)
    arch: str | None = opt(None, "timm architecture of a plain state dict file, with the pretrained tag that names its "
                           "preprocessing (e.g. vit_base_patch16_224.mae)", group=_MD, default_text="none")
    model_args: dict | None = opt(None, "timm.create_model arguments where a state dict differs from --arch (e.g. "
                                  "global_pool=avg,img_size=96), or of a random:NAME model (e.g. num_classes=10)", group=_MD,
                                  kind="model_args", metavar="KEY=VALUE,...", default_text="none")
    data: str = opt("demo", DATA_HELP, group=_MD)
    split: str | None = opt(None, "hf: data: the split calibration images come from", group=_MD, default_text="train")
    eval_split: str | None = opt(None, "hf: data: the split evaluation images come from", group=_MD,
                                 default_text="validation, else test")
    image_column: str | None = opt(None, "hf: data: the image column", group=_MD, default_text="the first Image column")
    label_column: str | None = opt(None, "hf: data: the label column (ClassLabel, or integer class ids)", group=_MD,
                                   default_text="the first ClassLabel column, else 'label'")
    device: str = opt("auto", "auto | cpu | cuda[:N]", group=_MD)
    precision: str = opt("fp32", "model forwards of every stage: discovery, statistics, least squares, evaluation", group=_MD,
                         choices=PRECISIONS)


@dataclass(frozen=True)
class CalibrationOptions(RunOptions):
    """Plus the calibration images and how discovery passes over them."""

    per_class: int | None = opt(PER_CLASS_DEFAULT, "calibration images per class", group=_CAL)
    classes: tuple[int, ...] | None = opt(None, "class ids, e.g. 0,3,5-7", group=_CAL, kind="classes", default_text="all")
    steps: int = opt(20, "interpolation steps m of discovery, alpha = k/m for k < m", group=_CAL,
                     default_text="20, the reference's")
    batch_size: int = opt(16, "images per discovery / statistics batch", group=_CAL)
    max_rows: int | None = opt(None, "scaled rows per discovery forward/backward", group=_CAL,
                               default_text="as many as fit in 80% of the free memory, measured on the first batch")

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

    per_class: int | None = opt(8, "images per class", group=_CAL)
    pool: str = opt("calibration", "which images: the calibration pool, or the evaluation pool (never used for pruning)",
                    group=_CAL, choices=POOLS)
    topk: int = opt(1, "units per layer on each path", group="path discovery")
    method: str = opt("jas", "how paths are found", group="path discovery", choices=_methods)
    token_scope: str = opt("auto", "tokens a unit is scaled at: auto = what the head reads (cls, or patches when "
                           "average-pooled), all = every token, as physical pruning removes it", group="path discovery",
                           choices=TOKEN_SCOPES)
    label: str = opt("truth", "class whose probability is attributed", group="path discovery", choices=LABEL_SOURCES)
    objective: str = opt("prob", "F whose gradient is integrated: prob (the reference), logprob, or kl (minus the divergence "
                         "from the clean output; label-free)", group="path discovery", choices=OBJECTIVES)

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


_BUDGET = "what to keep (exactly one)"
_ALLOC = "ranking and allocation"
_COMP = "compensation"
_DISC = "path discovery (path criteria)"
_EVAL = "evaluation, recovery and export"
_SCOPE_HELP = ("how a budget is spread over blocks: per-block = the same fraction in every block; global = one ranking over "
               "all blocks of scores divided by their block mean (per MAC for --target-macs; with heads one ranking of "
               "units and heads by score per MAC); global-raw = of the raw scores")
_PRUNE_HELP = ("what is pruned, a comma list of site kinds with mlp always in it: mlp (the MLP hidden units) or mlp,heads (also "
               "whole attention heads; --target-macs then spends one budget over both, see --scope)")


_ONNX = "ONNX export"


@dataclass(frozen=True)
class OnnxOptions:
    """How compress and export write and check ONNX: the opset, the onnxruntime provider and threads of the parity
    check, the int8 gate and the latency, a half-precision copy, and the int8 speed gate."""

    opset: int = opt(18, "ONNX opset (torch's exporter writes 18..23)", group=_ONNX)
    provider: str = opt("CPUExecutionProvider", "onnxruntime execution provider of the parity check, the int8 gate and the "
                        "latency (e.g. CUDAExecutionProvider with onnxruntime-gpu)", group=_ONNX)
    threads: int = opt(1, "onnxruntime intra-op threads of the parity check and the latency", group=_ONNX)
    fp16: bool = opt(False, "also write model.fp16.onnx (half precision), kept if its logits are within 0.05 of the fp32 "
                     "model's on the parity images", group=_ONNX)
    keep_slower_int8: bool = opt(False, "keep model.int8.onnx even when it is not faster than fp32 at batch 1 and 8", group=_ONNX)

    @property
    def runtime(self):
        from .export.onnx import Runtime

        return Runtime(self.opset, self.provider, self.threads)


@dataclass(frozen=True)
class CompressOptions(CalibrationOptions, OnnxOptions):
    """``vitprune compress`` / ``vitprune.compress``. None means the zoo's choice (``resolve``)."""

    # budget
    keep_topk: int | None = opt(None, "keep each class's K top path units per layer (union over classes), ranked by --criterion",
                                group=_BUDGET, default_text="none")
    sparsity: float | None = opt(None, "remove this fraction of MLP hidden units (and of heads, with --prune mlp,heads), "
                                 "ranked by --criterion", group=_BUDGET, default_text="none")
    target_macs: float | None = opt(None, "prune to this fraction of the dense model's MACs (e.g. 0.5), ranked by --criterion, "
                                    "allocated by --scope", group=_BUDGET, default_text="none")
    # ranking and allocation
    criterion: str | None = opt(None, "how MLP units are ranked", group=_ALLOC, choices=_criteria,
                                default_text=f"the zoo's best, {SPARSITY_DEFAULT['criterion']} for a budget, "
                                             f"{KEEP_DEFAULT['criterion']} for --keep-topk")
    scope: str | None = opt(None, _SCOPE_HELP, group=_ALLOC, choices=MASK_SCOPES,
                            default_text=f"per-block; with --prune mlp,heads {HEAD_DEFAULT['scope']}, the heads study's choice")
    min_keep: int = opt(1, "units kept in every block at least", group=_ALLOC)
    round_to: int = opt(1, "round kept counts to a multiple of this", group=_ALLOC)
    prune: tuple[str, ...] = opt(("mlp",), _PRUNE_HELP, group=_ALLOC, choices=_site_kinds)
    head_criterion: str | None = opt(None, "with --prune mlp,heads: how heads are ranked", group=_ALLOC, choices=_head_criteria,
                                     default_text=f"the zoo's best, {HEAD_DEFAULT['criterion']}")
    seed: int = opt(0, "seed of the random criteria", group=_ALLOC)
    # compensation
    compensate: str | None = opt(None, "how the pruned model makes up for what was removed", group=_COMP, choices=_compensations,
                                 default_text=f"the zoo's best, {SPARSITY_DEFAULT['compensate']}")
    lsq_target: str = opt(LSQ_DEFAULT["target"], "lsq: reproduce each block's own fc2 output on the pruned inputs (local) or the "
                          "dense model's block output, undoing the drift of earlier blocks (output)", group=_COMP, choices=LSQ_TARGETS)
    lsq_weighting: str = opt(LSQ_DEFAULT["weighting"], "lsq: every token weighs the same (uniform), or the tokens a CLS-pooled "
                             "head reads weigh as much as all others together (readout)", group=_COMP, choices=TOKEN_WEIGHTINGS)
    # discovery
    paths: str | None = opt(None, "reuse a finished discover run (or a folder of reference .rlt.jsonl files)", group=_DISC,
                            default_text="discover here")
    topk: int | None = opt(None, "units per layer on each discovered path", group=_DISC, default_text="--keep-topk, else 5")
    steps: int | None = opt(None, "interpolation steps m, alpha = k/m for k < m", group=_DISC,
                            default_text=f"{DISCOVERY_DEFAULT['steps']}, the cost-quality study's knee; "
                                         f"{FAITHFUL_DISCOVERY['steps']} with --faithful-discovery; with --paths the run's")
    faithful_discovery: bool = opt(False, f"discover with the reference's m = {FAITHFUL_DISCOVERY['steps']} steps instead of the "
                                   "cheaper default (eval/results/cost_quality/summary.md)", group=_DISC)
    token_scope: str | None = opt(None, "tokens a unit is scaled at: auto = what the head reads, all = every token, as "
                                  "physical pruning removes it", group=_DISC, choices=TOKEN_SCOPES,
                                  default_text=f"{JAS_DEFAULT['token_scope']}; with --paths the run's")
    objective: str | None = opt(None, "F whose gradient is integrated: prob, logprob or kl", group=_DISC, choices=OBJECTIVES,
                                default_text=f"{JAS_DEFAULT['objective']}; with --paths the run's")
    jas_aggregation: str | None = opt(None, "how --criterion jas pools the greedy scores S of every unit over images: mean of "
                                      "S, of |S|, of S normalised per image, or |own integrated gradient|; class-balanced",
                                      group=_DISC, choices=JAS_AGGREGATIONS, default_text=JAS_DEFAULT["aggregation"])
    label: str | None = opt(None, "class whose probability is attributed", group=_DISC, choices=LABEL_SOURCES,
                            default_text="truth; with --paths the run's")
    # evaluation, recovery and export
    eval_per_class: int | None = opt(None, "held-out images per class", group=_EVAL, default_text="the whole evaluation pool")
    specialize: tuple[int, ...] | None = opt(None, "make a model for these classes only (e.g. 0,2,5): calibration, discovery, "
                                             "criteria and least squares use their images, the classifier keeps their rows, and "
                                             "the dense model is compared on the same logits and images; outputs in class-id order "
                                             "(with few classes, --per-class 64 reaches smaller budgets: eval/README.md)", group=_BUDGET,
                                             kind="classes", default_text="all classes")
    finetune_epochs: float = opt(0.0, "epochs of recovery by distillation from the dense model (0 = one-shot; a fraction is "
                                 "allowed)", group=_EVAL)
    finetune_lr: float = opt(RECOVERY_DEFAULT["lr"], "peak learning rate of the recovery (AdamW, one-cycle)", group=_EVAL)
    finetune_per_class: int | None = opt(None, "training images per class for recovery", group=_EVAL,
                                         default_text="every calibration-pool image but the selection ones")
    finetune_features: float = opt(RECOVERY_DEFAULT["features"], "weight of distilling the dense model's block outputs too "
                                   "(0: its logits only)", group=_EVAL)
    finetune_selection_per_class: int = opt(RECOVERY_DEFAULT["selection_per_class"], "held-out calibration-pool images per class "
                                            "scored during recovery; its best moment is kept", group=_EVAL)
    export: bool = opt(True, "skip ONNX export and latency", group=_EVAL, kind="no", flag="--no-export")
    quantize: str | None = opt(None, "also write model.int8.onnx (onnxruntime quantization), kept only if its top-1 on the "
                               "evaluation images is within --max-int8-drop points of the fp32 model's", group=_EVAL,
                               choices=("int8",), default_text="none")
    int8_mode: str = opt("static", "static: QDQ, calibrated on the calibration images; dynamic: activation scales at run time",
                         group=_EVAL, choices=INT8_MODES)
    max_int8_drop: float = opt(1.0, "top-1 points int8 may lose against fp32", group=_EVAL)
    latency_rounds: int = opt(30, "interleaved onnxruntime timing rounds at most: timing stops earlier once the medians are "
                              "stable (0: no latency measurement)", group=_EVAL)

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
        check_recovery(self)
        check_specialize(self)
        check_count("--eval-per-class", self.eval_per_class, optional=True)
        check_count("--finetune-per-class", self.finetune_per_class, optional=True)
        for flag, value in (("--min-keep", self.min_keep), ("--round-to", self.round_to)):
            check_count(flag, value)
        check_count("--latency-rounds", self.latency_rounds, minimum=0)
        if self.export:
            self.runtime.check()
        if self.quantize is not None:
            check_choice("--quantize", self.quantize, ("int8",))
            if not self.export:
                raise UserError("--quantize int8 quantizes the ONNX export: drop --no-export")
        check_int8(self.int8_mode, self.max_int8_drop)
        return self


_SWEEP = "what to sweep (comma lists: every combination is one point)"


@dataclass(frozen=True)
class EvaluateOptions(CalibrationOptions):
    """``vitprune evaluate`` / ``vitprune.evaluate``: accuracy vs budget for several criteria on the same images."""

    legacy_names: ClassVar[dict[str, str]] = LEGACY_NAMES
    # what to sweep
    sparsity: tuple[float, ...] = opt((0.25, 0.5, 0.75, 0.9), "FFN sparsities", group=_SWEEP, aliases=("--sparsities",))
    target_macs: tuple[float, ...] = opt((), "MAC budgets as fractions of the dense model's MACs, e.g. 0.5,0.7 (allocated by "
                                         "--scope)", group=_SWEEP, default_text="none")
    keep_topk: tuple[int, ...] = opt((), "K of keep-topk points of the path criteria, e.g. 1,5,20", group=_SWEEP,
                                     default_text="none")
    criterion: tuple[str, ...] | None = opt(None, "criteria", group=_SWEEP, choices=_criteria, aliases=("--criteria",),
                                            default_text="all")
    compensate: tuple[str, ...] | None = opt(None, "compensations", group=_SWEEP, choices=_compensations, default_text="all")
    seed: tuple[int, ...] = opt((0, 1, 2), "seeds of the random criterion", group=_SWEEP, aliases=("--seeds",))
    prune: tuple[str, ...] = opt(("mlp",), _PRUNE_HELP, group=_SWEEP, choices=_site_kinds)
    head_criterion: tuple[str, ...] | None = opt(None, "with --prune mlp,heads: head criteria, every budget point once per head "
                                                 "criterion (keep-topk points prune MLPs only)", group=_SWEEP,
                                                 choices=_head_criteria, aliases=("--head-criteria",),
                                                 default_text=HEAD_DEFAULT["criterion"])
    token_scope: tuple[str, ...] = opt((JAS_DEFAULT["token_scope"],), "discovery token scopes of the path criteria", group=_SWEEP,
                                       choices=TOKEN_SCOPES, aliases=("--token-scopes",))
    objective: tuple[str, ...] = opt((JAS_DEFAULT["objective"],), "discovery objectives of the path criteria", group=_SWEEP,
                                     choices=OBJECTIVES, aliases=("--objectives",))
    jas_aggregation: tuple[str, ...] = opt((JAS_DEFAULT["aggregation"],), "aggregations of criterion jas", group=_SWEEP,
                                           choices=JAS_AGGREGATIONS, aliases=("--jas-aggregations",))
    # allocation and compensation
    scope: str | None = opt(None, _SCOPE_HELP, group=_ALLOC, choices=MASK_SCOPES,
                            default_text=f"per-block; with --prune mlp,heads {HEAD_DEFAULT['scope']}")
    min_keep: int = opt(1, "units kept in every block at least", group=_ALLOC)
    round_to: int = opt(1, "round kept counts to a multiple of this", group=_ALLOC)
    lsq_target: str = opt(LSQ_DEFAULT["target"], "what --compensate lsq fits: local fc2 outputs or the dense block outputs",
                          group=_COMP, choices=LSQ_TARGETS)
    lsq_weighting: str = opt(LSQ_DEFAULT["weighting"], "token weights of the lsq fit", group=_COMP, choices=TOKEN_WEIGHTINGS)
    # discovery of the path criteria
    topk: int = opt(5, "discovery K of the run behind the path-criterion budget points", group=_DISC)
    steps: int = opt(DISCOVERY_DEFAULT["steps"], "interpolation steps m of the path criteria's discovery", group=_DISC,
                     default_text=f"{DISCOVERY_DEFAULT['steps']}, as compress; the reference's: {FAITHFUL_DISCOVERY['steps']}")
    # evaluation
    eval_per_class: int | None = opt(None, "held-out images per class", group=_EVAL, default_text="all")
    selection_per_class: int | None = opt(None, "also score every point on the last N images per class of the calibration pool "
                                          "(never calibration images): choose settings there, report on the evaluation pool",
                                          group=_EVAL, default_text="off")
    specialize: tuple[int, ...] | None = opt(None, "sweep models for these classes only (see compress --specialize)", group=_SWEEP,
                                             kind="classes", default_text="all classes")
    finetune_epochs: float = opt(0.0, "recovery epochs per point (0 = one-shot)", group=_EVAL)
    finetune_per_class: int | None = opt(None, "training images per class for recovery", group=_EVAL,
                                         default_text="every calibration-pool image but the selection ones")
    finetune_lr: float = opt(RECOVERY_DEFAULT["lr"], "peak learning rate of the recovery", group=_EVAL)
    finetune_features: float = opt(RECOVERY_DEFAULT["features"], "weight of distilling the dense model's block outputs too",
                                   group=_EVAL)
    finetune_selection_per_class: int = opt(RECOVERY_DEFAULT["selection_per_class"], "held-out calibration-pool images per class "
                                            "scored during recovery", group=_EVAL)
    latency: bool = opt(False, "ONNX-export every point and time it with onnxruntime", group=_EVAL)

    def resolve(self) -> "EvaluateOptions":
        """Every registered criterion / compensation where none was named; every list without repeats (a value given
        twice is one point, not two that would be merged)."""
        from .criteria import CRITERIA
        from .prune import COMPENSATIONS

        prune = tuple(self.prune.split(",")) if isinstance(self.prune, str) else tuple(self.prune)
        heads = ((tuple(self.head_criterion) if self.head_criterion else (HEAD_DEFAULT["criterion"],)) if "heads" in prune
                 else tuple(self.head_criterion or ()))  # given without heads: validate refuses them
        return replace(self, criterion=_unique(self.criterion if self.criterion is not None else CRITERIA.names()),
                       compensate=_unique(self.compensate if self.compensate is not None else COMPENSATIONS.names()),
                       prune=prune, head_criterion=_unique(heads), scope=self.scope or default_scope(prune),
                       sparsity=_unique(self.sparsity), target_macs=_unique(self.target_macs), keep_topk=_unique(self.keep_topk),
                       seed=_unique(self.seed), token_scope=_unique(self.token_scope), objective=_unique(self.objective),
                       jas_aggregation=_unique(self.jas_aggregation))

    def validate(self) -> "EvaluateOptions":
        from .criteria import CRITERIA, per_class_criteria
        from .prune import COMPENSATIONS

        self.check_calibration()
        for c in self.criterion or ():
            if c not in CRITERIA:
                raise UserError(f"--criterion: unknown '{c}'; choose from {', '.join(CRITERIA.names())}")
        for c in self.compensate or ():
            COMPENSATIONS.check(c)
        for flag, values, choices in (("--token-scope", self.token_scope, TOKEN_SCOPES), ("--objective", self.objective, OBJECTIVES),
                                      ("--jas-aggregation", self.jas_aggregation, JAS_AGGREGATIONS)):
            if not values:
                raise UserError(f"{flag} needs at least one value")
            for v in values:
                check_choice(flag, v, choices)
        for s in self.sparsity:
            check_fraction("--sparsity values", s, low=0.0, high=1.0)
        for r in self.target_macs:
            check_fraction("--target-macs values (fractions of the dense model's MACs)", r, low=0.0, high=1.0, closed_low=False)
        for k in self.keep_topk:
            check_count("--keep-topk values", k)
        if self.keep_topk and not set(self.criterion or ()) & set(per_class_criteria()):
            raise UserError(f"--keep-topk points need a path criterion ({' or '.join(per_class_criteria())}) in --criterion")
        if not self.seed:
            raise UserError("--seed needs at least one seed")
        for s in self.seed:
            check_count("--seed values", s, minimum=0)
        for flag, value in (("--eval-per-class", self.eval_per_class), ("--selection-per-class", self.selection_per_class),
                            ("--finetune-per-class", self.finetune_per_class)):
            check_count(flag, value, optional=True)
        for flag, value in (("--topk", self.topk), ("--min-keep", self.min_keep), ("--round-to", self.round_to), ("--steps", self.steps)):
            check_count(flag, value)
        check_choice("--lsq-target", self.lsq_target, LSQ_TARGETS)
        check_choice("--lsq-weighting", self.lsq_weighting, TOKEN_WEIGHTINGS)
        check_choice("--scope", self.scope, MASK_SCOPES)
        check_prune(self.prune, None, None)
        for c in self.head_criterion or ():
            check_prune(self.prune, c, None)
        check_recovery(self)
        check_specialize(self)
        return self

    def points(self) -> list[Point]:
        """Every (criterion, variant, compensation, budget, seed) point, in a fixed order: the dense model first."""
        from .criteria import CRITERIA

        pts = [Point("dense", Budget(sparsity=0.0), "none")]
        for crit in self.criterion or ():
            meta = CRITERIA.entry(crit).meta
            budgets = [Budget(sparsity=s) for s in self.sparsity] + [Budget(target_macs=r) for r in self.target_macs]
            if meta.get("per_class"):
                budgets += [Budget(keep_topk=k) for k in self.keep_topk]
            for comp in self.compensate or ():
                for var in self._variants(crit, meta):
                    for budget in budgets:
                        for seed in self.seed if crit == "random" else (0,):
                            if budget.keep_topk is None and "heads" in self.prune:
                                pts += [Point(crit, budget, comp, seed, **var, prune=self.prune, head_criterion=h)
                                        for h in self.head_criterion or ()]
                            else:
                                pts.append(Point(crit, budget, comp, seed, **var))
        return pts

    def _variants(self, criterion: str, meta: dict) -> list[dict]:
        """The discovery settings a criterion's points come in (one empty variant for criteria without paths)."""
        needs = set(meta.get("needs", ())) | set(meta.get("keep_needs", ()))
        if not needs & {"paths", "importance"}:
            return [{"token_scope": None, "objective": None, "aggregation": None}]
        aggs = self.jas_aggregation if criterion == "jas" else (None,)
        return [{"token_scope": s, "objective": o, "aggregation": a} for s in self.token_scope for o in self.objective for a in aggs]


_INT8 = "int8"


@dataclass(frozen=True)
class ExportOptions(OnnxOptions):
    """``vitprune export``: ONNX (and a gated int8 model) of a vitprune checkpoint folder."""

    model: str | None = opt(None, "the checkpoint folder (model.safetensors + vitprune.json) to export", group=_MD, required=True,
                            metavar="CHECKPOINT")
    data: str | None = opt(None, "held-out images for the parity check and the int8 gate", group=_MD,
                           default_text="the data it was pruned on")
    quantize: str | None = opt(None, "also write <stem>.int8.onnx, kept only if its top-1 is within --max-int8-drop points of "
                               "fp32's", group=_INT8, choices=("int8",), default_text="none")
    int8_mode: str = opt("static", "static: QDQ, calibrated on calibration images; dynamic: activation scales at run time",
                         group=_INT8, choices=INT8_MODES)
    max_int8_drop: float = opt(1.0, "top-1 points int8 may lose against fp32", group=_INT8)
    per_class: int | None = opt(PER_CLASS_DEFAULT, "calibration images per class for static int8", group=_INT8)
    eval_per_class: int | None = opt(None, "evaluation images per class for the int8 gate", group=_INT8, default_text="all")

    def validate(self) -> "ExportOptions":
        if self.quantize is not None:
            check_choice("--quantize", self.quantize, ("int8",))
        check_int8(self.int8_mode, self.max_int8_drop)
        self.runtime.check()
        check_count("--per-class", self.per_class, optional=True)
        check_count("--eval-per-class", self.eval_per_class, optional=True)
        return self


def check_int8(mode: Any, max_drop: Any) -> None:
    """``--int8-mode`` and ``--max-int8-drop``, checked once for compress, export and the API."""
    check_choice("--int8-mode", mode, INT8_MODES)
    if not (isinstance(max_drop, (int, float)) and not isinstance(max_drop, bool) and math.isfinite(max_drop) and max_drop >= 0):
        raise UserError(f"--max-int8-drop must be a number of points >= 0 (got {max_drop})")


@dataclass(frozen=True)
class ConvertOptions:
    """``vitprune convert``: path records between a vitprune run and the reference code's .rlt.jsonl files."""

    src: str = opt("", "a vitprune run folder (-> reference files) or a folder of *.rlt.jsonl (-> vitprune run)", kind="positional")
    dst: str = opt("", "output folder", kind="positional")
    prefix: str | None = opt(None, "reference file prefix, a plain name (letters, digits, - _ .)",
                             default_text="imgnet_all when writing")


_RUN = "discover runs read"


@dataclass(frozen=True)
class AnalyzeOptions:
    """What every ``vitprune analyze`` command reads: finished discover runs (``paths``)."""

    paths: tuple[str, ...] = opt((), "finished discover run folder", group=_RUN, kind="path", required=True, metavar="RUN_DIR")

    def validate(self) -> "AnalyzeOptions":
        if not self.paths:
            raise UserError("--paths needs a finished discover run folder")
        return self


@dataclass(frozen=True)
class _ModelAnalysis(AnalyzeOptions):
    """Analyses that run the model on images."""

    model: str | None = opt(None, MODEL_HELP, group=_MD, default_text="the run's config.json model")
    data: str | None = opt(None, DATA_HELP, group=_MD, default_text="the run's config.json data")
    device: str = opt("auto", "auto | cpu | cuda[:N]", group=_MD)
    batch_size: int = opt(64, "images per forward", group=_MD)

    def validate(self) -> "_ModelAnalysis":
        super().validate()
        check_count("--batch-size", self.batch_size)
        return self


MANIPULATE_MODES = ("per-image", "class", "both")
EDIT_OPERATIONS = ("remove", "enhance", "keep-only")


@dataclass(frozen=True)
class ManipulateOptions(_ModelAnalysis):
    """``analyze manipulate``: remove / enhance / keep-only the path units; probability and accuracy deviation."""

    paths: tuple[str, ...] = opt((), "finished discover run folder (repeat to compare a jas and an influence-pattern run)",
                                 group=_RUN, kind="paths", required=True, metavar="RUN_DIR")
    mode: str = opt("both", "per-image paths (in-sample) and/or class-level mode paths on held-out images", group="edits",
                    choices=MANIPULATE_MODES)
    ops: tuple[str, ...] = opt(EDIT_OPERATIONS, "edits to apply", group="edits", choices=EDIT_OPERATIONS)
    keep_fraction: float = opt(1.0, "keep-only: fraction of the non-path units to zero, seeded (1 = all)", group="edits")
    eval_per_class: int = opt(10, "held-out images per class, class mode", group="edits")
    seed: int = opt(0, "seed of keep-only's draw", group="edits")

    def validate(self) -> "ManipulateOptions":
        super().validate()
        check_choice("--mode", self.mode, MANIPULATE_MODES)
        if not self.ops:
            raise UserError(f"--ops takes a comma list from {', '.join(EDIT_OPERATIONS)}")
        for op in self.ops:
            check_choice("--ops", op, EDIT_OPERATIONS)
        if not (isinstance(self.keep_fraction, (int, float)) and 0.0 <= self.keep_fraction <= 1.0):
            raise UserError(f"--keep-fraction must be in [0, 1] (got {self.keep_fraction})")
        check_count("--eval-per-class", self.eval_per_class)
        check_count("--seed", self.seed, minimum=0)
        return self


@dataclass(frozen=True)
class ScoresOptions(AnalyzeOptions):
    """``analyze scores``: JAS of jas / activation / influence-pattern paths side by side (read from the records)."""

    paths: tuple[str, ...] = opt((), "finished discover run folder (repeat to compare a jas and an influence-pattern run)",
                                 group=_RUN, kind="paths", required=True, metavar="RUN_DIR")


@dataclass(frozen=True)
class SimilarityOptions(AnalyzeOptions):
    """``analyze similarity``: class similarity of path unit usage, clustering, per-class path figures (no images read)."""

    top: int = opt(5, "most/least similar classes listed per class", group="similarity")
    classes: tuple[int, ...] | None = opt(None, "classes to draw path figures for, e.g. 0,3,5-7", group="similarity",
                                          kind="classes", default_text="all")
    model: str | None = opt(None, "for the MLP widths when the run's config.json lacks them", group=_MD,
                            default_text="the run's config.json model")

    def validate(self) -> "SimilarityOptions":
        super().validate()
        check_count("--top", self.top)
        return self


@dataclass(frozen=True)
class LensOptions(_ModelAnalysis):
    """``analyze lens``: the class-embedding lens (identifiability, attention vs MLP, unit labels)."""

    per_class: int | None = opt(None, "images per class", group="lens", default_text="the run's selection")
    label_topk: int | None = opt(None, "classes per unit label", group="lens", default_text="5, or the class count if smaller")

    def validate(self) -> "LensOptions":
        super().validate()
        check_count("--per-class", self.per_class, optional=True)
        check_count("--label-topk", self.label_topk, optional=True)
        return self


ANALYSES = {"manipulate": ManipulateOptions, "scores": ScoresOptions, "similarity": SimilarityOptions, "lens": LensOptions}


def _unique(values: Sequence[T]) -> tuple[T, ...]:
    """The values in their order, each once."""
    return tuple(dict.fromkeys(values))


__all__ = ["RunOptions", "CalibrationOptions", "DiscoverOptions", "CompressOptions", "EvaluateOptions", "Budget", "Point", "check_prune",
           "check_choice", "check_count", "check_fraction", "check_positive", "option_fields", "opt", "renamed", "LEGACY_NAMES",
           "field_kind", "coerce", "command_line", "check_recovery", "check_specialize", "parse_classes", "parse_model_args", "floats", "ints", "names",
           "ExportOptions", "OnnxOptions", "ConvertOptions", "AnalyzeOptions", "ManipulateOptions", "ScoresOptions", "SimilarityOptions",
           "LensOptions", "ANALYSES", "PRECISIONS", "OBJECTIVES",
           "LABEL_SOURCES", "TOKEN_SCOPES", "MASK_SCOPES", "JAS_AGGREGATIONS", "LSQ_TARGETS", "TOKEN_WEIGHTINGS", "INT8_MODES",
           "POOLS"]
