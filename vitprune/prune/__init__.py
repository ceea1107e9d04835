"""Pruning: masks (which units survive), physical slicing, MAC counts, and compensation of what was removed.

``COMPENSATIONS`` (torch-free) names every ``--compensate`` choice. Each is a function
``(dense, mask, inputs: vitprune.prune.compensate.CompensationInputs) -> Pruned`` that returns the
sliced model; it declares ``needs``, a subset of ``("stats", "calibration")``: activation statistics
of the calibration images, or the preprocessed calibration images themselves.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..registry import Registry

COMPENSATION_NEEDS = ("stats", "calibration")

COMPENSATIONS = Registry("compensation", "--compensate")
COMPENSATIONS.add("none", "vitprune.prune.compensate:plain_slice", needs=(), help="the plain slice")
COMPENSATIONS.add("mean", "vitprune.prune.compensate:mean_shift", needs=("stats",),
                  help="fold the removed units' mean activation into the output projection's bias (VBP / FLAP)")
COMPENSATIONS.add("lsq", "vitprune.prune.compensate:least_squares", needs=("calibration",),
                  help="refit each block's output projection on the kept units by least squares, block after block, "
                       "ridge chosen on held-out calibration images")


def register_compensation(name: str, *, needs: Sequence[str] = (), help: str = "", replace: bool = False):
    """Register ``fn(dense, mask, inputs) -> Pruned`` as ``--compensate NAME``."""
    unknown = [n for n in needs if n not in COMPENSATION_NEEDS]
    if unknown:
        raise ValueError(f"unknown needs {unknown}; a compensation may need {', '.join(COMPENSATION_NEEDS)}")
    return COMPENSATIONS.register(name, help=help, replace=replace, needs=tuple(needs))


__all__ = ["COMPENSATIONS", "COMPENSATION_NEEDS", "register_compensation"]
