"""Figures of the analyses, drawn on bare ``matplotlib.figure.Figure`` objects (Agg, no pyplot state).

Every figure is saved to a temporary name and renamed, so a reader never sees half a PNG.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

CHANCE_STYLE = dict(color="grey", lw=1, ls="--")


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    """Atomic PNG write: temp file in the same folder, then ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, dpi=dpi, format="png")
    os.replace(tmp, path)
    return path


def deviation_boxplot(data: Mapping[str, Mapping[str, Sequence[float]]], path: Path, title: str) -> Path:
    """Paper-style panels: one per operation, one box per method, y = (ratio - 1) * 100 % over classes.

    ``data[operation][method]`` holds the per-class mean probability ratios.
    """
    ops = list(data)
    fig = new_figure(max(4.0, 3.6 * len(ops)), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(ops), squeeze=False)[0])
    for ax, op in zip(axes, ops):
        methods = list(data[op])
        values = [(np.asarray(data[op][m], dtype=float) - 1.0) * 100.0 for m in methods]
        ax.boxplot(values, showfliers=True)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=15)
        ax.axhline(0.0, **CHANCE_STYLE)
        ax.set_title(op)
        ax.set_ylabel("probability deviation (%)")
    fig.suptitle(title)
    return save_png(fig, path)


def score_distribution(scores: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """Violin (with an inner box) of the JAS of each method's paths."""
    methods = [m for m in scores if len(scores[m])]
    fig = new_figure(max(4.0, 1.8 * len(methods) + 2), 4.2)
    ax = fig.subplots()
    values = [np.asarray(scores[m], dtype=float) for m in methods]
    for pos, v in enumerate(values, start=1):
        if v.size > 1 and np.ptp(v) > 0:
            ax.violinplot([v], positions=[pos], showextrema=False)
    ax.boxplot(values, widths=0.15, showfliers=True)
    ax.set_xticks(range(1, len(methods) + 1), methods)
    ax.set_ylabel("joint attribution score of the path")
    ax.set_title(title)
    return save_png(fig, path)


def similarity_heatmap(sim: np.ndarray, names: Sequence[str], order: Sequence[int], linkage: np.ndarray | None,
                       path: Path, title: str) -> Path:
    """Cosine similarity ordered by the dendrogram (drawn above the heatmap when there is one)."""
    from scipy.cluster.hierarchy import dendrogram

    n = len(names)
    size = min(20.0, 3.0 + 0.25 * n)
    fig = new_figure(size + 1.5, size + (1.5 if linkage is not None else 0.0))
    if linkage is not None:
        top, ax = fig.subplots(2, 1, gridspec_kw={"height_ratios": [1, 4]})
        dendrogram(linkage, ax=top, no_labels=True, color_threshold=0, above_threshold_color="black")
        top.set_xlim(0, 10 * n)  # scipy puts leaf i at x = 10 i + 5: aligned with heatmap column i
        top.set_axis_off()
        axes = [top]
    else:
        ax = fig.subplots()
        axes = []
    ordered = sim[np.ix_(order, order)]
    im = ax.imshow(ordered, vmin=min(0.0, float(ordered.min())), vmax=1.0, cmap="viridis", aspect="auto")
    labels = [names[i] for i in order]
    fontsize = max(3, min(9, int(300 / max(n, 1))))
    ax.set_xticks(range(n), labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), labels, fontsize=fontsize)
    fig.colorbar(im, ax=[*axes, ax], label="cosine similarity of unit-usage frequencies")
    ax.set_title(title)
    return save_png(fig, path)


def path_violin(values: Sequence[np.ndarray], modes: Sequence[float], path: Path, title: str) -> Path:
    """Paper Figure 4: per layer, the violin of normalised path unit indices and a dashed line through the modes."""
    depth = len(values)
    fig = new_figure(max(5.0, 0.55 * depth + 2), 4.0)
    ax = fig.subplots()
    for layer, v in enumerate(values):
        if v.size > 1 and np.ptp(v) > 0:
            ax.violinplot([v], positions=[layer], showextrema=False, widths=0.8)
        else:  # a degenerate layer (one distinct unit) has no density to draw
            ax.scatter(np.full(v.size, layer), v, s=12, color="tab:blue", alpha=0.6)
    ax.plot(range(depth), modes, ls="--", color="green", marker="o", ms=3, label="preferred path selection")
    ax.set_xticks(range(depth), [str(l) for l in range(depth)])
    ax.set_xlabel("layer")
    ax.set_ylabel("unit index / MLP width")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    return save_png(fig, path)


def block_curves(
    curves: Mapping[str, Mapping[str, Sequence[float | None]]], path: Path, title: str, *, ylabel: str,
    panel_title: str = "{}", width: float = 4.2,
) -> Path:
    """One panel per outer key, one line per inner key, value vs block (1-based); chance level 0.5 dotted."""
    panels = list(curves)
    fig = new_figure(width * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        for name, ys in curves[panel].items():
            xs = [b + 1 for b, y in enumerate(ys) if y is not None]
            if xs:
                ax.plot(xs, [y for y in ys if y is not None], marker="o", ms=3, label=name)
        ax.axhline(0.5, **CHANCE_STYLE)
        ax.set_ylim(0.0, 1.02)
        ax.set_xticks(range(1, max(len(ys) for ys in curves[panel].values()) + 1))
        ax.set_xlabel("block")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title.format(panel))
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_png(fig, path)


def label_heatmap(matrix: np.ndarray, row_names: Sequence[str], col_names: Sequence[str], path: Path, title: str) -> Path:
    """Rows: the class whose paths are read; columns: the class each path unit writes (top-1 label)."""
    rows, cols = matrix.shape
    fig = new_figure(min(22.0, 3.0 + 0.3 * cols), min(22.0, 2.5 + 0.3 * rows))
    ax = fig.subplots()
    im = ax.imshow(matrix, vmin=0.0, vmax=max(1e-12, float(matrix.max())), cmap="magma", aspect="auto")
    fs_c, fs_r = max(3, min(9, int(300 / max(cols, 1)))), max(3, min(9, int(300 / max(rows, 1))))
    ax.set_xticks(range(cols), col_names, rotation=90, fontsize=fs_c)
    ax.set_yticks(range(rows), row_names, fontsize=fs_r)
    ax.set_xlabel("class written by the path unit (top-1 label)")
    ax.set_ylabel("class of the path")
    fig.colorbar(im, ax=ax, label="fraction of the class's path units")
    ax.set_title(title)
    return save_png(fig, path)
