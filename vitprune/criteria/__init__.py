"""Pruning criteria: one score per prunable unit (higher = keep), from what each criterion declares it needs.

``CRITERIA`` (torch-free) names every criterion ``--criterion`` offers. Each entry declares ``needs``,
a subset of ``NEEDS``: ``paths`` (the path records of a discovery run), ``importance`` (that run's
dense path importance), ``stats`` (activation statistics over the calibration images, one forward
pass) and ``gradients`` (the same plus first-order Taylor terms, one forward+backward pass).
Criteria with ``per_class`` also build per-class keep sets for ``--keep-topk`` (needing ``keep_needs``).
The pipeline computes only what the chosen criteria need, once, and hands it over as
``vitprune.criteria.base.CriterionInputs``. Register your own with ``register_criterion``.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..registry import Registry

NEEDS = ("paths", "importance", "stats", "gradients")

CRITERIA = Registry("criterion", "--criterion")
_B = "vitprune.criteria.builtin:"
CRITERIA.add("jas", _B + "jas", needs=("importance",), per_class=True, keep_needs=("importance",),
             help="dense path importance: the greedy step's score of every unit, class-balanced (--jas-aggregation)")
CRITERIA.add("jas-freq", _B + "jas_freq", needs=("paths", "stats"), per_class=True, keep_needs=("paths",),
             help="path frequency (ties: summed path score); units on no path rank after them by mean |activation|")
CRITERIA.add("random", _B + "random", needs=(), help="uniform, seeded")
CRITERIA.add("magnitude", _B + "magnitude", needs=(), help="L2 norm of the unit's weights (torch-pruning's group norm)")
CRITERIA.add("activation", _B + "activation", needs=("stats",), help="mean |a| over calibration images and tokens")
CRITERIA.add("taylor", _B + "taylor", needs=("gradients",), help="mean over images of |sum_tokens a * dCE/da|")
CRITERIA.add("variance", _B + "variance", needs=("stats",), help="Var(a) over images and tokens (VBP; pair it with --compensate)")
CRITERIA.add("wanda", _B + "wanda", needs=("stats",), help="||a||_2 * ||output-projection column||_2 (structured Wanda)")

# --prune heads: one score per attention head, from the head statistics (criteria.heads); needs: head_stats (one
# forward+backward per image), head_ig (also the m integrated-gradient passes) and head_path_ig (m passes conditioned on
# the point's discovery paths, which it then needs too)
HEAD_NEEDS = ("head_stats", "head_ig", "head_path_ig")
HEAD_CRITERIA = Registry("head criterion", "--head-criterion")
_H = "vitprune.criteria.heads:"
HEAD_CRITERIA.add("ig", _H + "ig", needs=("head_stats", "head_ig"),
                  help="mean |integrated gradient| of the target probability along the head's output (m = 20 steps)")
HEAD_CRITERIA.add("path", _H + "path", needs=("head_stats", "head_path_ig"),
                  help="the same integrated gradients with the MLP units held clean except the image's path units, scaled "
                       "with the heads (conditioned on the discovery paths)")
HEAD_CRITERIA.add("taylor", _H + "taylor", needs=("head_stats",), help="mean over images of |<head output, dCE/d output>|")
HEAD_CRITERIA.add("magnitude", _H + "magnitude", needs=("head_stats",), help="mean L2 norm of the head's output")
HEAD_CRITERIA.add("weight", _B + "magnitude", needs=(), help="L2 norm of the head's q, k, v rows and proj columns (criterion magnitude)")
HEAD_CRITERIA.add("random", _B + "random", needs=(), help="uniform, seeded")


def register_criterion(name: str, *, needs: Sequence[str] = (), help: str = "", replace: bool = False,
                       per_class: bool = False, keep_needs: Sequence[str] = ()):
    """Register a criterion under ``name``: ``@register_criterion("mine", needs=("stats",))`` above a function
    ``scores(inputs: CriterionInputs) -> list[torch.Tensor]`` (one 1-D score tensor per site, higher = keep),
    or above a ``vitprune.criteria.base.Criterion`` subclass (which may also build per-class keep sets)."""
    unknown = [n for n in (*needs, *keep_needs) if n not in NEEDS]
    if unknown:
        raise ValueError(f"unknown needs {unknown}; a criterion may need {', '.join(NEEDS)}")
    return CRITERIA.register(name, help=help, replace=replace, needs=tuple(needs), per_class=per_class,
                             keep_needs=tuple(keep_needs))


def register_head_criterion(name: str, *, needs: Sequence[str] = (), help: str = "", replace: bool = False):
    """Register a head criterion (``--prune mlp,heads``): ``@register_head_criterion("mine", needs=("head_stats",))`` above
    a function ``scores(inputs) -> list[torch.Tensor]`` — the criterion contract of every site kind: ``inputs.sites`` are
    the head sites (``blocks.N.attn``), one score per head each; ``inputs.stats`` is a
    ``vitprune.criteria.heads.HeadStats``, None unless 'head_stats' is declared; its ``ig`` needs 'head_ig', its
    ``path_ig`` 'head_path_ig'. (vitprune 0.1's ``scores(stats, sites, seed)`` still works.)"""
    unknown = [n for n in needs if n not in HEAD_NEEDS]
    if unknown:
        raise ValueError(f"unknown needs {unknown}; a head criterion may need {', '.join(HEAD_NEEDS)}")
    return HEAD_CRITERIA.register(name, help=help, replace=replace, needs=tuple(needs))


def criterion_needs(name: str, *, keep: bool = False) -> tuple[str, ...]:
    """What criterion ``name`` needs for a budget (``keep=False``) or for per-class keep sets (``keep=True``)."""
    meta = CRITERIA.entry(name).meta
    return tuple(meta.get("keep_needs", ()) if keep else meta.get("needs", ()))


def head_criterion_needs(name: str) -> tuple[str, ...]:
    """What head criterion ``name`` needs."""
    return tuple(HEAD_CRITERIA.entry(name).meta.get("needs", ()))


def per_class_criteria() -> tuple[str, ...]:
    """The criteria that build per-class keep sets (``--keep-topk``)."""
    return tuple(e.name for e in CRITERIA if e.meta.get("per_class"))


__all__ = ["CRITERIA", "HEAD_CRITERIA", "NEEDS", "register_criterion", "register_head_criterion", "criterion_needs", "head_criterion_needs", "HEAD_NEEDS", "per_class_criteria"]
