"""Compensations (registry ``vitprune.prune.COMPENSATIONS``): a mask -> the sliced model, with what was removed made up for."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data import ImagePool
from ..defaults import LSQ_DEFAULT
from . import COMPENSATIONS
from .lsq import Reconstruction, heldout_positions, reconstruct
from .masks import Mask
from .slicing import compensation_shift, slice_sites


@dataclass(frozen=True)
class CalibrationSet:
    """This process's preprocessed calibration images and which of them choose the ridge."""

    images: torch.Tensor
    heldout: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)


def calibration_set(pool: ImagePool, transform, batch_size: int = 64, *, shard=None) -> CalibrationSet:
    """Preprocess the calibration pool once; the held-out flags follow each image's position in the
    whole selection, so they are the same however the images are spread over processes."""
    held = heldout_positions(len(pool))
    n_batches = (len(pool) + batch_size - 1) // batch_size
    mine = range(n_batches) if shard is None else shard.mine(n_batches)
    images, flags = [], []
    for k, (_, x, _) in zip(mine, pool.batches(transform, batch_size, shard=shard)):
        images.append(x)
        flags.append(held[k * batch_size : k * batch_size + len(x)])
    if not images:
        return CalibrationSet(torch.empty(0), torch.empty(0, dtype=torch.bool))
    return CalibrationSet(torch.cat(images), torch.cat(flags))


@dataclass
class CompensationInputs:
    """What a compensation may read: ``stats`` (declared need 'stats'), ``calibration`` ('calibration'),
    its options (``lsq_target``, ``lsq_weighting``), the process layout and the precision."""

    stats: Any = None  # vitprune.criteria.stats.ActivationStats
    calibration: CalibrationSet | None = None
    options: dict[str, Any] = field(default_factory=dict)
    dist: Any = None
    precision: str = "fp32"
    quiet: bool = True  # no progress bars


@dataclass
class Pruned:
    """A sliced model and, for least squares, what each block's fit found."""

    model: nn.Module
    reconstruction: Reconstruction | None = None


def plain_slice(dense: nn.Module, mask: Mask, inputs: CompensationInputs) -> Pruned:
    return Pruned(slice_sites(dense, mask))


def mean_shift(dense: nn.Module, mask: Mask, inputs: CompensationInputs) -> Pruned:
    if inputs.stats is None:
        raise ValueError("mean-shift compensation needs the activation statistics")
    return Pruned(slice_sites(dense, mask, bias_shift=compensation_shift(dense, mask, inputs.stats.mean)))


def least_squares(dense: nn.Module, mask: Mask, inputs: CompensationInputs) -> Pruned:
    if inputs.calibration is None:
        raise ValueError("lsq compensation needs the calibration images")
    model, recon = reconstruct(dense, mask, inputs.calibration.images, inputs.calibration.heldout,
                               target=inputs.options.get("lsq_target", LSQ_DEFAULT["target"]),
                               weighting=inputs.options.get("lsq_weighting", LSQ_DEFAULT["weighting"]),
                               dist=inputs.dist, precision=inputs.precision, quiet=inputs.quiet)
    return Pruned(model, recon)


def load_compensation(name: str) -> Callable[[nn.Module, Mask, CompensationInputs], Pruned]:
    fn = COMPENSATIONS.load(name)
    if not callable(fn) or inspect.isclass(fn):
        raise TypeError(f"compensation '{name}' must be a function (dense, mask, inputs) -> Pruned")
    return fn


__all__ = ["CalibrationSet", "calibration_set", "CompensationInputs", "Pruned", "plain_slice", "mean_shift", "least_squares",
           "load_compensation"]
