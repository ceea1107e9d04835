"""Option choices and the option fields every command shares.

One spelling for the command line (which stays free of torch so that ``--help`` is instant) and
for the library's checks and option dataclasses.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from .errors import UserError

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
METHODS = ("jas", "influence-pattern")
OBJECTIVES = ("prob", "logprob", "kl")
LABEL_SOURCES = ("truth", "pred")
TOKEN_SCOPES = ("auto", "cls", "patches", "all")
MASK_SCOPES = ("per-block", "global", "global-raw")
CRITERIA = ("jas", "jas-freq", "random", "magnitude", "activation", "taylor", "variance", "wanda")
COMPENSATIONS = ("none", "mean", "lsq")
JAS_AGGREGATIONS = ("mean", "abs", "norm", "ig")
LSQ_TARGETS = ("local", "output")
TOKEN_WEIGHTINGS = ("uniform", "readout")

T = TypeVar("T")


def check_choice(flag: str, value: Any, choices: Sequence[Any]) -> None:
    """A UserError naming the flag and its choices when ``value`` is not one of them."""
    if value not in choices:
        raise UserError(f"{flag} must be one of {', '.join(map(str, choices))} (got '{value}')")


@dataclass(frozen=True)
class RunOptions:
    """Model, data, device and precision: what every command runs on."""

    model: str = "demo"
    arch: str | None = None
    data: str = "demo"
    device: str = "auto"
    precision: str = "fp32"


@dataclass(frozen=True)
class CalibrationOptions(RunOptions):
    """Plus the calibration images and how discovery passes over them."""

    per_class: int | None = 16
    classes: tuple[int, ...] | None = None
    steps: int = 20
    batch_size: int = 16
    max_rows: int | None = None


def shared_fields(source: Any, target: type[T], **overrides: Any) -> T:
    """``target`` built from the fields it shares with ``source`` (options or parsed arguments), then ``overrides``."""
    names = {f.name for f in fields(target)}  # type: ignore[arg-type]
    values = {n: getattr(source, n) for n in names if hasattr(source, n)}
    return target(**{**values, **overrides})
