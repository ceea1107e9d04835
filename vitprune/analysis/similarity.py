"""``analyze similarity``: which classes route through the same units (neuronpath spec section 8).

Per class (by the attributed ``target``), count how often each (layer, unit) appears on its
paths; compare classes by the cosine of those flattened count vectors, cluster them
(average linkage on 1 - cosine), and draw the paper's Figure 4 (per-layer violins of
normalised unit indices with a dashed line through each layer's density mode).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..discovery.records import PathRecord, PathRun
from ..errors import UserError
from ..files import atomic_write_json
from .runs import check_paths, default_out, load_runs, write_csv


def unit_frequency(records: Sequence[PathRecord], widths: Sequence[int]) -> tuple[list[int], np.ndarray]:
    """(classes, counts) with counts[i] = flattened per-layer unit usage of class classes[i]'s paths."""
    offsets = np.concatenate([[0], np.cumsum(widths)])
    classes = sorted({r.target for r in records})
    row = {c: i for i, c in enumerate(classes)}
    freq = np.zeros((len(classes), int(offsets[-1])), dtype=np.float64)
    for rec in records:
        i = row[rec.target]
        for layer, units in enumerate(rec.path):
            np.add.at(freq[i], offsets[layer] + np.asarray(units, dtype=np.int64), 1.0)
    return classes, freq


def cosine_matrix(freq: np.ndarray) -> np.ndarray:
    """Symmetric cosine similarity with an exact unit diagonal (a class is identical to itself)."""
    norms = np.linalg.norm(freq, axis=1, keepdims=True)
    unit = freq / np.where(norms == 0, 1.0, norms)
    sim = unit @ unit.T
    sim = np.clip((sim + sim.T) / 2.0, -1.0, 1.0)
    np.fill_diagonal(sim, 1.0)
    return sim


def neighbours(sim: np.ndarray, names: Sequence[str], top: int) -> list[dict]:
    """Per class the ``top`` most and least similar other classes, as (name, cosine)."""
    out = []
    n = len(names)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        most = sorted(others, key=lambda j: (-sim[i, j], j))
        least = sorted(others, key=lambda j: (sim[i, j], j))
        out.append({
            "class_name": names[i],
            "most_similar": [[names[j], float(sim[i, j])] for j in most[:top]],
            "least_similar": [[names[j], float(sim[i, j])] for j in least[:top]],
        })
    return out


def cluster_order(sim: np.ndarray) -> tuple[list[int], np.ndarray | None]:
    """Dendrogram leaf order of average-linkage clustering on 1 - cosine (identity order for < 2 classes)."""
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    if len(sim) < 2:
        return list(range(len(sim))), None
    dist = np.clip(1.0 - sim, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    link = linkage(squareform(dist, checks=False), method="average")
    return [int(i) for i in dendrogram(link, no_plot=True)["leaves"]], link


def preferred_position(values: np.ndarray, grid: int = 1000) -> float:
    """Mode of a gaussian_kde of the values on [0, 1]; the median when the KDE fails (e.g. all equal)."""
    from scipy.stats import gaussian_kde

    values = np.asarray(values, dtype=float)
    try:
        kde = gaussian_kde(values)
        xs = np.linspace(0.0, 1.0, grid)
        density = kde(xs)
        if not np.all(np.isfinite(density)):
            raise ValueError("non-finite density")
        return float(xs[int(np.argmax(density))])
    except (np.linalg.LinAlgError, ValueError):
        return float(np.median(values))


def normalised_indices(records: Sequence[PathRecord], widths: Sequence[int], cls: int) -> list[np.ndarray]:
    """Per layer, the path unit indices of class ``cls`` divided by that layer's MLP width."""
    rows = [r.path for r in records if r.target == cls]
    return [np.asarray([u for p in rows for u in p[layer]], dtype=float) / widths[layer] for layer in range(len(widths))]


def class_similarity(records: Sequence[PathRecord], widths: Sequence[int], class_names: Sequence[str] | None = None,
                     top: int = 5) -> dict:
    """Frequency vectors, the cosine matrix, nearest/farthest neighbours and the clustering of the path classes."""
    classes, freq = unit_frequency(records, widths)
    names = [class_names[c] if class_names and c < len(class_names) else str(c) for c in classes]
    sim = cosine_matrix(freq)
    order, link = cluster_order(sim)
    return {"classes": classes, "class_names": names, "frequency": freq, "similarity": sim,
            "neighbours": neighbours(sim, names, top), "order": order, "linkage": link}


def _widths(run: PathRun, model: str | None) -> list[int]:
    """MLP widths: the run header's, else from the model (--model)."""
    if run.header is not None and run.header.model.widths and not model:
        return list(run.header.model.widths)
    if not model:
        raise UserError(f"{run.folder} does not record the MLP widths; pass --model to normalise unit indices")
    from ..model.adapter import FamilyAdapter, adapter_for
    from ..model.load import load_model

    return adapter_for(load_model(model)).hidden_widths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "class"


def run_similarity(path: str | Path, out: str | Path | None = None, *, top: int = 5,
                   classes: Sequence[int] | None = None, model: str | None = None, quiet: bool = False) -> dict:
    """Similarity analysis of one run; writes similarity.json/csv, neighbours.csv, the heatmap and Figure 4 PNGs."""
    from ..progress import progress_bar
    from .plots import path_violin, similarity_heatmap

    if top < 1:
        raise UserError(f"--top must be >= 1 (got {top})")
    run = load_runs([path])[0]
    widths = _widths(run, model)
    check_paths(run.records, "path", widths, run.folder)
    result = class_similarity(run.records, widths, run.header.data.class_names if run.header else None, top)
    out = Path(out) if out else default_out(run, "similarity")
    out.mkdir(parents=True, exist_ok=True)
    names, sim = result["class_names"], result["similarity"]
    figures = [(similarity_heatmap(sim, names, result["order"], result["linkage"], out / "similarity_heatmap.png",
                                      f"class similarity of path unit usage ({run.method})")).name]
    wanted = list(result["classes"]) if classes is None else sorted(set(classes))
    unknown = [c for c in wanted if c not in result["classes"]]
    if unknown:
        raise UserError(f"classes {unknown} have no paths in {run.folder}; choose among {result['classes']}")
    preferred = {}
    with progress_bar(total=len(wanted), desc="figure 4", unit="class", disable=quiet) as bar:
        for cls in wanted:
            values = normalised_indices(run.records, widths, cls)
            modes = [preferred_position(v) for v in values]
            name = names[result["classes"].index(cls)]
            preferred[str(cls)] = modes
            figures.append((path_violin(values, modes, out / f"paths_{cls}_{_slug(name)}.png",
                                           f"class {cls} ({name}): path units per layer")).name)
            bar.update(1)
    report = {
        "path": str(run.folder), "method": run.method, "widths": widths, "classes": result["classes"],
        "class_names": names, "similarity": sim.tolist(), "neighbours": result["neighbours"],
        "cluster_order": result["order"],
        "linkage": result["linkage"].tolist() if result["linkage"] is not None else None,
        "preferred_position": preferred, "figures": figures,
    }
    atomic_write_json(out / "similarity.json", report)
    write_csv(out / "similarity.csv", [{"class": n, **{m: f"{sim[i, j]:.6f}" for j, m in enumerate(names)}}
                                       for i, n in enumerate(names)], ["class", *names])
    write_csv(out / "neighbours.csv",
              [{"class": nb["class_name"], "kind": kind, "rank": k + 1, "other": o, "cosine": c}
               for nb in result["neighbours"] for kind in ("most_similar", "least_similar")
               for k, (o, c) in enumerate(nb[kind])],
              ["class", "kind", "rank", "other", "cosine"])
    report["out"] = str(out)
    return report


__all__ = ["class_similarity", "run_similarity", "unit_frequency", "cosine_matrix", "preferred_position"]
