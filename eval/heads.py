"""The heads study: FFN-only against FFN + attention heads at MAC budgets, on every bundled zoo model, and the head
criterion default it picks.

    .venv/bin/python eval/heads.py                 # run (resumable) + summarise -> eval/results/heads/
    .venv/bin/python eval/heads.py --summary-only  # re-write summary.{json,md} and the plot from the sweeps

Per model, two `vitprune evaluate` sweeps (subprocesses, one torch thread each, --workers side by side), both with
the compression default's MLP criterion (defaults.SPARSITY_DEFAULT, its discovery variant at the reference's m = 20,
as the results were made before compress moved to m = 4) and least squares:

- ``heads``: --prune mlp,heads at --target-macs 0.6 / 0.45 / 0.35 with --scope global (one ranking of MLP units and
  heads by score per MAC), once per head criterion (ig, taylor, magnitude, weight, random);
- ``ffn``: MLP units only, at the budgets pruning MLPs alone can reach (their floor is computed per model);
- ``heads-per-block``: the ig head criterion with --scope per-block (one head fraction in every block, the MLPs
  spending the rest) at 0.45 / 0.35, against the global allocation;
- ``heads-grid``: the path-conditioned head criterion (``path``, added after the first five were run) beside ig and
  taylor, each with least squares and without compensation (``none``), at 0.6 / 0.5 / 0.45 / 0.35: the criteria x
  compensation grid and the issue's 0.5x budget. Its ig / taylor + lsq points repeat ``heads``'s (the same
  deterministic run: a reproducibility check).

Every point is scored on test images (reported) and on held-out *training* images (never calibration images): the
head-criterion default is the best zoo mean on the latter at the smallest budget. Models: eval/zoo.py's MODELS (which
chose the other defaults) and HELD_OUT (heads8 has 8 heads per block, swiglu gated MLPs and registers).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from zoo import CHOSE_HEADS, HELD_OUT, MODELS, ROOT, folder, load_points, run_job  # noqa: E402

RESULTS = HERE / "results" / "heads"
BUDGETS = (0.6, 0.45, 0.35)
GRID_BUDGETS = (0.6, 0.5, 0.45, 0.35)
HEAD_CRITERIA = ("ig", "taylor", "magnitude", "weight", "random")
GRID_CRITERIA = ("path", "ig", "taylor")  # path: conditioned on the discovery paths (the grid sweep's own)
GRID_COMPENSATIONS = ("none", "lsq")
PER_CLASS = 16  # calibration images per class (the compress default)
EVAL_PER_CLASS = 100  # test images per class that are reported
SELECTION = 50  # held-out training images per class that choose


def ffn_floor(model: str) -> float:
    """The lowest MAC ratio pruning MLPs alone reaches (one unit per block kept)."""
    from vitprune import load_model
    from vitprune.model.adapter import adapter_for
    from vitprune.prune.macs import mlp_unit_macs

    dense = load_model(model)
    cost, total = mlp_unit_macs(dense)
    return (total - sum(c * (w - 1) for c, w in zip(cost, adapter_for(dense).hidden_widths))) / total


def jobs(models: tuple[str, ...]) -> list[tuple[Path, list[str]]]:
    from vitprune.defaults import JAS_DEFAULT, SPARSITY_DEFAULT

    shared = ["--data", "demo", "--per-class", str(PER_CLASS), "--eval-per-class", str(EVAL_PER_CLASS),
              "--selection-per-class", str(SELECTION), "--criteria", SPARSITY_DEFAULT["criterion"],
              "--token-scopes", JAS_DEFAULT["token_scope"], "--objectives", JAS_DEFAULT["objective"], "--steps", "20",
              "--sparsities", "", "--quiet"]
    common = [*shared, "--compensate", SPARSITY_DEFAULT["compensate"]]
    out = []
    for m in models:
        path = RESULTS / folder(m)
        out.append((path / "heads", ["--model", m, *common, "--scope", "global", "--target-macs", ",".join(map(str, BUDGETS)),
                                     "--prune", "mlp,heads", "--head-criteria", ",".join(HEAD_CRITERIA)]))
        reachable = [b for b in BUDGETS if b > ffn_floor(m) + 0.01]
        if reachable:
            out.append((path / "ffn", ["--model", m, *common, "--scope", "global", "--target-macs", ",".join(map(str, reachable))]))
    for m in models:  # the allocation: one head fraction per block (per-block) against one ranking (global), for ig
        out.append((RESULTS / folder(m) / "heads-per-block", ["--model", m, *common, "--scope", "per-block", "--target-macs",
                                                              ",".join(map(str, BUDGETS[1:])), "--prune", "mlp,heads",
                                                              "--head-criteria", "ig"]))
    for m in models:  # the grid: path-conditioned head scores beside ig / taylor, with and without least squares
        out.append((RESULTS / folder(m) / "heads-grid", ["--model", m, *shared, "--compensate", ",".join(GRID_COMPENSATIONS),
                                                         "--scope", "global", "--target-macs", ",".join(map(str, GRID_BUDGETS)),
                                                         "--prune", "mlp,heads", "--head-criteria", ",".join(GRID_CRITERIA)]))
    return out


def _name(p: dict) -> str:
    name = f"heads:{p['head_criterion']}" if p.get("head_criterion") else "ffn-only"
    name += " (per-block)" if p.get("per_block") else ""
    return name + (" (no compensation)" if p["compensate"] == "none" else "")


def summarise(models: tuple[str, ...]) -> dict:
    rows: dict[str, dict] = {}
    repeats: list[float] = []  # |test top-1 difference| of the grid's points that repeat the heads sweep's
    for m in models:
        path = RESULTS / folder(m)
        points = [p for p in load_points(path / "heads") + load_points(path / "ffn") if p["criterion"] != "dense"]
        dense = next((p for p in load_points(path / "heads") if p["criterion"] == "dense"), None)
        if dense is None:
            continue
        entry = {"dense": {"test": dense["top1"], "selection": dense.get("top1_selection")}, "points": {}}
        per_block = [dict(p, per_block=True) for p in load_points(path / "heads-per-block") if p["criterion"] != "dense"]
        grid = [p for p in load_points(path / "heads-grid") if p["criterion"] != "dense"]
        for p in points + per_block + grid:
            cell = {"test": p["top1"], "selection": p.get("top1_selection"), "macs_ratio": p["macs_ratio"],
                    "kept_heads": p.get("kept_heads"), "sparsity": p["sparsity"]}
            old = entry["points"].setdefault(_name(p), {}).get(str(p["target_macs"]))
            if old is not None:
                repeats.append(abs(old["test"] - cell["test"]))
            entry["points"][_name(p)][str(p["target_macs"])] = cell
        rows[m] = entry
    criteria = (*GRID_CRITERIA, *(h for h in HEAD_CRITERIA if h not in GRID_CRITERIA))
    done = [m for m in models if m in rows and m in CHOSE_HEADS and all(  # the means choose: models after the choice do not
        str(b) in rows[m]["points"].get(f"heads:{h}", {}) for h in criteria for b in BUDGETS)]
    means = {}
    for name in names_of(criteria):
        for b in GRID_BUDGETS:
            vals = [rows[m]["points"].get(name, {}).get(str(b)) for m in done]
            if vals and all(vals):
                means.setdefault(name, {})[str(b)] = {k: statistics.mean(v[k] for v in vals) for k in ("test", "selection")}
    smallest = str(min(BUDGETS))
    best = max(criteria, key=lambda h: (means.get(f"heads:{h}", {}).get(smallest, {}).get("selection", -1), -criteria.index(h)))
    per_block = means.get("heads:ig (per-block)", {}).get(smallest, {}).get("selection", -1)
    scope = "per-block" if per_block > means.get("heads:ig", {}).get(smallest, {}).get("selection", -1) else "global"
    default = f"heads:{best}"
    change = {m: {str(b): round((row["points"][default][str(b)]["test"] - row["dense"]["test"]) * 100, 2)
                  for b in GRID_BUDGETS if str(b) in row["points"].get(default, {})} for m, row in rows.items()}
    return {"models": list(rows), "complete": done, "budgets": list(GRID_BUDGETS), "criteria": list(criteria),
            "per_model": rows, "zoo_mean": means, "head_default": {"criterion": best, "scope": scope},
            "default_change_vs_dense": change, "repeated_points_max_abs_test_diff": max(repeats, default=None),
            "chosen_on": f"zoo-mean selection top-1 at {smallest}x MACs with lsq (scope: ig global against ig per-block)",
            "settings": {"per_class": PER_CLASS, "eval_per_class": EVAL_PER_CLASS, "selection_per_class": SELECTION,
                         "scope": "global", "compensate": "lsq, and none in the grid"}}


def names_of(criteria) -> list[str]:
    return ["ffn-only", *(f"heads:{h}" for h in criteria), "heads:ig (per-block)",
            *(f"heads:{h} (no compensation)" for h in GRID_CRITERIA)]


def write(summary: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    names = names_of(summary["criteria"])
    budgets = summary["budgets"]
    lines = ["# Attention heads: FFN-only vs FFN + heads at MAC budgets", "",
             f"One-shot top-1 (%) on {EVAL_PER_CLASS} test images per class (selection: {SELECTION} held-out training images "
             f"per class in brackets), jas-freq + lsq unless marked `no compensation`, --scope global, {PER_CLASS} calibration "
             "images per class. `-`: not run (FFN pruning alone cannot reach the budget; 0.5x only in the grid of "
             f"{', '.join(GRID_CRITERIA)}). Made by `.venv/bin/python eval/heads.py`.", ""]
    for m, row in summary["per_model"].items():
        lines += [f"## {m} (dense {row['dense']['test'] * 100:.2f}%)", "", "| | " + " | ".join(f"{b}x MACs" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for name in names:
            cells = []
            for b in budgets:
                p = row["points"].get(name, {}).get(str(b))
                cells.append(f"{p['test'] * 100:.2f} ({p['selection'] * 100:.2f}; x{p['macs_ratio']:.3f})" if p else "-")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Zoo mean (models with every head point)", "", f"Models: {', '.join(summary['complete'])}", "",
              "| | " + " | ".join(f"{b}x" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for name in names:
        row = summary["zoo_mean"].get(name, {})
        lines.append(f"| {name} | " + " | ".join(f"{row[str(b)]['test'] * 100:.2f} ({row[str(b)]['selection'] * 100:.2f})"
                                                  if str(b) in row else "-" for b in budgets) + " |")
    default = summary["head_default"]["criterion"]
    lines += ["", f"Head criterion default: **{default}**, allocation with heads: **--scope {summary['head_default']['scope']}** "
              f"({summary['chosen_on']}).", "", f"Change of test top-1 against dense (points) with heads:{default} + lsq:", "",
              "| model | " + " | ".join(f"{b}x" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for m, change in summary["default_change_vs_dense"].items():
        lines.append(f"| {m} | " + " | ".join(f"{change[str(b)]:+.1f}" if str(b) in change else "-" for b in budgets) + " |")
    if summary["repeated_points_max_abs_test_diff"] is not None:
        lines += ["", f"The grid's ig / taylor + lsq points repeat the first sweep's: largest test top-1 difference "
                  f"{summary['repeated_points_max_abs_test_diff'] * 100:.2f} points."]
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    plot(summary, [n for n in names if "no compensation" not in n])


def plot(summary: dict, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(summary["per_model"])
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3.2), squeeze=False)
    for ax, m in zip(axes[0], models):
        row = summary["per_model"][m]
        for name in names:
            pts = sorted((p["macs_ratio"], p["test"] * 100) for p in row["points"].get(name, {}).values())
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name, lw=2.2 if name == "ffn-only" else 1.2)
        ax.axhline(row["dense"]["test"] * 100, color="k", ls=":", lw=1)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("MACs (x dense)")
    axes[0][0].set_ylabel("top-1 (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "heads.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join((*HELD_OUT, *MODELS)))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    models = tuple(m for m in args.models.split(",") if m)
    if not args.summary_only:
        with ThreadPoolExecutor(args.workers) as pool:
            for out, seconds, rc in pool.map(lambda job: run_job(*job), jobs(models)):
                print(f"{out.relative_to(ROOT)}: exit {rc} after {seconds:.0f} s", flush=True)
    write(summarise(models))
    print((RESULTS / "summary.md").read_text())


if __name__ == "__main__":
    main()
