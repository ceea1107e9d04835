"""``analyze scores``: the joint attribution score of each method's paths, side by side.

A jas run's records carry the JAS of the greedy path (``score``) and of the activation
baseline (``base_score``); an influence-pattern run's ``score`` is the JAS of its IP path.
Comparisons are paired by image id, so they only count images present in both runs.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_write_json
from .runs import default_out, load_runs, method_sources, write_csv

SCORE_KEY = {"path": "score", "base_path": "base_score"}


def method_scores(paths: Sequence[str | Path]) -> dict[str, dict[str, float]]:
    """method -> {image id: JAS of that method's path}."""
    runs = load_runs(paths)
    out = {}
    for method, (run, key) in method_sources(runs).items():
        values = {r.id: getattr(r, SCORE_KEY[key]) for r in run.records}
        if any(v is None for v in values.values()):
            raise UserError(f"{run.folder} has {method} paths without a score; rerun 'vitprune discover'")
        out[method] = {i: float(v) for i, v in values.items()}
    return out


def _fraction_greater(a: dict[str, float], b: dict[str, float]) -> tuple[float | None, int]:
    common = sorted(set(a) & set(b))
    if not common:
        return None, 0
    return float(np.mean([a[i] > b[i] for i in common])), len(common)


def compare_scores(paths: Sequence[str | Path], out: str | Path | None = None) -> dict:
    """Table of mean/median JAS per method and paired win rates; writes scores.json/csv and scores.png."""
    from .plots import score_distribution

    scores = method_scores(paths)
    out = Path(out) if out else default_out(load_runs(paths[:1])[0], "scores")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for method, values in scores.items():
        v = np.asarray(list(values.values()), dtype=float)
        rows.append({"method": method, "n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
                     "std": float(v.std()), "min": float(v.min()), "max": float(v.max())})
    comparisons = []
    pairs = [("jas", "activation"), ("jas", "influence-pattern"), ("influence-pattern", "activation")]
    for a, b in pairs:
        if a in scores and b in scores:
            frac, n = _fraction_greater(scores[a], scores[b])
            comparisons.append({"comparison": f"{a} > {b}", "fraction": frac, "n_pairs": n})
    for row in rows:
        for c in comparisons:
            if c["comparison"].startswith(f"{row['method']} >"):
                row[f"frac_gt_{c['comparison'].split(' > ')[1]}"] = c["fraction"]
    figure = score_distribution({m: list(v.values()) for m, v in scores.items()}, out / "scores.png",
                                "JAS of each method's paths")
    report = {"paths": [str(p) for p in paths], "methods": rows, "comparisons": comparisons, "figures": [Path(figure).name]}
    atomic_write_json(out / "scores.json", report)
    columns = ["method", "n", "mean", "median", "std", "min", "max",
               "frac_gt_activation", "frac_gt_influence-pattern"]
    write_csv(out / "scores.csv", rows, columns)
    report["out"] = str(out)
    return report


__all__ = ["compare_scores", "method_scores"]
