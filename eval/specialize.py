"""Class-specialisation study (issue 29): how small a model for k of the 10 classes can get, one-shot, per criterion.

    .venv/bin/python eval/specialize.py                 # run (resumable) + summarise -> eval/results/specialize/
    .venv/bin/python eval/specialize.py --summary-only  # re-write summary.{json,md} and specialize.png
    .venv/bin/python eval/specialize.py --models demo --subsets 0,2,6
    .venv/bin/python eval/specialize.py --recovery      # the 3-class subsets at 0.2x + 1 epoch of recovery

One `vitprune evaluate --specialize S` sweep per (model, subset): the model keeps the classifier rows of S, and
calibration, discovery, the criteria and least squares see only S's images (16 per class). Points: the path criterion
(compress's default, jas-freq) and the best class-agnostic baselines of the zoo study (wanda, taylor), all with lsq and
the default head criterion (``--prune mlp,heads``, global allocation), and the path criterion again with 64
calibration images per class (``jas-freq@64``: a specialist's few classes make that no larger a calibration set than
the full model's), at MAC budgets from 0.35x down to 0.1x (those a model can reach: one unit and one head per
block is its floor, e.g. 0.134x for demo).
Every point is scored on S's test images (1000 per class, reported) and on 500 held-out training images per class of
S (the choice of the smallest budget is made there). The dense reference is the same model restricted to S's logits
on the same images.

With ``--recovery``: every 3-class subset at the target budget (0.2x), jas-freq + lsq, then one epoch of compress's
default recovery (distillation from the dense model on S's training images less the selection ones) — what a short
recovery adds where one-shot misses the target.

For each (model, subset, criterion): the smallest budget whose selection top-1 stays within 1 point of the dense
model's selection top-1 (``smallest``), and its test top-1; also the smallest budget by the test images themselves,
for reference. Subsets: similar classes (the tops T-shirt / pullover / coat / shirt, the shoes sandal / sneaker / ankle
boot) and dissimilar ones, 2, 3 and 5 classes.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from zoo import HELD_OUT, MODELS, folder, load_points, run_job  # noqa: E402

RESULTS = HERE / "results" / "specialize"
# Fashion-MNIST: 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot
SUBSETS = {
    (0, 6): "similar",  # T-shirt / shirt
    (1, 9): "dissimilar",  # trouser / ankle boot
    (5, 7): "similar",  # sandal / sneaker
    (0, 2, 6): "similar",  # T-shirt / pullover / shirt
    (1, 5, 8): "dissimilar",  # trouser / sandal / bag
    (5, 7, 9): "similar",  # the shoes
    (0, 2, 3, 4, 6): "similar",  # the tops and the dress
    (1, 3, 5, 8, 9): "dissimilar",
}
CRITERIA = ("jas-freq", "wanda", "taylor")
WIDE = 64  # calibration images per class of the second path-criterion sweep
METHODS = (*CRITERIA, f"jas-freq@{WIDE}")  # the columns of the summary
BUDGETS = (0.35, 0.3, 0.25, 0.2, 0.175, 0.15, 0.125, 0.1)  # those above a model's floor (floor())
SELECTION = 500
TOLERANCE = 0.01  # one point of top-1
TARGET = {"classes": 3, "macs": 0.2}  # the target: a 3-class specialist at <= 0.2x MACs within 1 point


def name(subset: tuple[int, ...]) -> str:
    return "classes-" + "-".join(map(str, subset))


def floor(model: str) -> float:
    """The lowest MAC fraction ``--prune mlp,heads`` can reach on ``model`` (one unit and one head per block)."""
    import vitprune
    from vitprune.model.adapter import adapter_for
    from vitprune.prune.macs import count_macs_params, unit_macs
    from vitprune.prune.masks import Allocation, macs_floor

    dense = vitprune.load_model(model)
    adapter = adapter_for(dense)
    kinds = ("mlp", "heads")
    return macs_floor(count_macs_params(dense)[0], {k: unit_macs(dense, k) for k in kinds},
                      {k: [s.width for s in adapter.sites(k)] for k in kinds}, Allocation())


def budgets(model: str) -> tuple[float, ...]:
    lowest = floor(model)
    return tuple(b for b in BUDGETS if b >= lowest + 0.005)


def jobs(model: str, subset: tuple[int, ...], reachable: tuple[float, ...]) -> list[tuple[Path, list[str]]]:
    """The sweep of the criteria at compress's 16 calibration images per class, and the path criterion's with 64 (a
    specialist has few classes: more images per class cost no more than the full model's calibration set)."""
    base = ["--model", model, "--data", "demo", "--specialize", ",".join(map(str, subset)), "--selection-per-class",
            str(SELECTION), "--quiet", "--seed", "0", "--compensate", "lsq", "--prune", "mlp,heads", "--sparsity", "",
            "--target-macs", ",".join(map(str, reachable))]
    return [(RESULTS / folder(model) / name(subset), [*base, "--criterion", ",".join(CRITERIA)]),
            (RESULTS / folder(model) / f"{name(subset)}-pc{WIDE}", [*base, "--criterion", CRITERIA[0], "--per-class", str(WIDE)])]


def recovery_job(model: str, subset: tuple[int, ...]) -> tuple[Path, list[str]]:
    """The path criterion at the target budget, then one epoch of the default recovery."""
    return (RESULTS / folder(model) / f"{name(subset)}-recovered",
            ["--model", model, "--data", "demo", "--specialize", ",".join(map(str, subset)), "--selection-per-class",
             str(SELECTION), "--quiet", "--seed", "0", "--compensate", "lsq", "--prune", "mlp,heads", "--sparsity", "",
             "--target-macs", str(TARGET["macs"]), "--criterion", CRITERIA[0], "--finetune-epochs", "1"])


def smallest(points: list[dict], dense: dict, key: str) -> dict | None:
    """The point of the smallest MAC budget whose ``key`` top-1 is within TOLERANCE of the dense model's."""
    ok = [p for p in points if p[key] >= dense[key] - TOLERANCE - 1e-12]
    return min(ok, key=lambda p: p["target_macs"]) if ok else None


def summarise(models: tuple[str, ...]) -> dict:
    out: dict = {"models": [], "criteria": list(METHODS), "budgets": list(BUDGETS), "tolerance": TOLERANCE, "per_model": {},
                 "machine": f"{platform.machine()} CPU, 1 torch thread (2 shared cores)"}
    for m in models:
        rows = {}
        for subset, kind in SUBSETS.items():
            points = load_points(RESULTS / folder(m) / name(subset))
            points += [{**p, "criterion": f"{p['criterion']}@{WIDE}"} for p in load_points(RESULTS / folder(m) / f"{name(subset)}-pc{WIDE}")
                       if p["criterion"] != "dense"]
            dense = next((p for p in points if p["criterion"] == "dense"), None)
            if dense is None:
                continue
            dense = {"test": dense["top1"], "selection": dense["top1_selection"]}
            per = {}
            for c in METHODS:
                pts = [{"target_macs": p["target_macs"], "macs_ratio": p["macs_ratio"], "test": p["top1"],
                        "selection": p["top1_selection"], "worst_class_drop": p.get("worst_class_drop"),
                        "ci95": p.get("top1_diff_ci95")}
                       for p in points if p["criterion"] == c and p.get("target_macs") is not None]
                if not pts:
                    continue
                by_sel, by_test = smallest(pts, dense, "selection"), smallest(pts, dense, "test")
                per[c] = {"points": sorted(pts, key=lambda p: -p["target_macs"]), "smallest": by_sel,
                          "smallest_by_test": by_test["target_macs"] if by_test else None}
            if per:
                rows[name(subset)] = {"classes": list(subset), "kind": kind, "dense": dense, "criteria": per}
                rec = next((p for p in load_points(RESULTS / folder(m) / f"{name(subset)}-recovered") if p["criterion"] != "dense"), None)
                if rec is not None:
                    rows[name(subset)]["recovered"] = {
                        "target_macs": rec["target_macs"], "oneshot": rec["top1_oneshot"], "test": rec["top1"],
                        "selection": rec["top1_selection"], "ci95": rec.get("top1_diff_ci95"), "seconds": rec.get("recovery_s"),
                        "within": rec["top1_selection"] >= dense["selection"] - TOLERANCE - 1e-12}
        if rows:
            out["models"].append(m)
            out["per_model"][m] = rows
    wins = {c: 0 for c in METHODS}
    cells = 0
    for rows in out["per_model"].values():
        for r in rows.values():
            budgets = {c: (r["criteria"][c]["smallest"] or {}).get("target_macs", 1.0) for c in METHODS if c in r["criteria"]}
            if len(budgets) == len(METHODS):
                cells += 1
                best = min(budgets.values())
                for c, b in budgets.items():
                    wins[c] += b == best
    out["smallest_budget_wins"] = {"cells": cells, **wins}
    target = []
    for m, rows in out["per_model"].items():
        for r in rows.values():
            if len(r["classes"]) == TARGET["classes"] and "jas-freq" in r["criteria"]:
                s = r["criteria"]["jas-freq"]["smallest"]
                target.append({"model": m, "classes": r["classes"], "smallest": s["target_macs"] if s else None,
                               "met": bool(s and s["target_macs"] <= TARGET["macs"] + 1e-9)})
    out["target"] = {**TARGET, "cases": target}
    out["mean_smallest"] = {c: statistics.mean((r["criteria"][c]["smallest"] or {}).get("target_macs", 1.0)
                                               for rows in out["per_model"].values() for r in rows.values() if c in r["criteria"])
                            for c in METHODS if any(c in r["criteria"] for rows in out["per_model"].values() for r in rows.values())}
    return out


def render(s: dict) -> str:
    lines = ["# Class-specialised models (`eval/specialize.py`)", "",
             f"Made by `.venv/bin/python eval/specialize.py` on {s['machine']}. One-shot `--specialize S --prune mlp,heads "
             "--target-macs R` (lsq, head criterion ig, 16 calibration images per class of S). Per subset and criterion: the "
             f"smallest MAC budget of {', '.join(f'{b:g}' for b in s['budgets'])} whose top-1 on 500 held-out training images "
             f"per class stays within {100 * s['tolerance']:g} point of the dense model restricted to S (chosen there), with its "
             "test top-1 (1000 images per class) and in brackets the smallest budget the test images themselves would give.", ""]
    w = s["smallest_budget_wins"]
    if w["cells"]:
        lines += [f"Smallest budget reached (ties count for each): " + ", ".join(f"{c} {w[c]} of {w['cells']}" for c in s["criteria"])
                  + "; mean smallest budget (a subset that no budget of the sweep keeps within the tolerance counts as 1.0x, "
                  "the dense model): " + ", ".join(f"{c} {v:.3f}x" for c, v in s["mean_smallest"].items()) + ".", ""]
    cases = s["target"]["cases"]
    if cases:
        met = sum(c["met"] for c in cases)
        lines += [f"Target (a {s['target']['classes']}-class specialist at <= {s['target']['macs']}x MACs within 1 point, one-shot, "
                  f"jas-freq): met in {met} of {len(cases)} (model, subset) cases.", ""]
    recovered = [(m, r) for m, rows in s["per_model"].items() for r in rows.values() if r.get("recovered")]
    if recovered:
        lines += [f"## {s['target']['classes']}-class specialists at {s['target']['macs']}x MACs, one-shot and after one epoch of "
                  "the default recovery (jas-freq + lsq)", "",
                  "| model | classes | kind | dense test [sel.] | one-shot test | recovered test [sel.] | vs dense (95% CI) | "
                  "within 1 point (sel.) | recovery s |", "|---|---|---|---|---|---|---|---|---|"]
        for m, r in recovered:
            x = r["recovered"]
            ci = f" ({100 * x['ci95'][0]:+.2f} .. {100 * x['ci95'][1]:+.2f})" if x.get("ci95") else ""
            lines.append(f"| {m} | {','.join(map(str, r['classes']))} | {r['kind']} | {100 * r['dense']['test']:.2f} "
                         f"[{100 * r['dense']['selection']:.2f}] | {100 * x['oneshot']:.2f} | {100 * x['test']:.2f} "
                         f"[{100 * x['selection']:.2f}] | {100 * (x['test'] - r['dense']['test']):+.2f}{ci} | "
                         f"{'yes' if x['within'] else 'no'} | {round(x['seconds']) if x.get('seconds') else ''} |")
        lines += ["", f"Met after recovery (selection images): {sum(r['recovered']['within'] for _, r in recovered)} of "
                  f"{len(recovered)}.", ""]
    for m, rows in s["per_model"].items():
        lines += [f"## {m}", "", "| classes | kind | dense test [sel.] | " + " | ".join(s["criteria"]) + " |",
                  "|---|---|---|" + "---|" * len(s["criteria"])]
        for r in rows.values():
            cells = []
            for c in s["criteria"]:
                x = r["criteria"].get(c)
                if x is None:
                    cells.append("")
                elif x["smallest"] is None:
                    cells.append(f"none ({x['smallest_by_test'] or 'none'})")
                else:
                    p = x["smallest"]
                    cells.append(f"**{p['target_macs']:g}x** {100 * p['test']:.2f} ({x['smallest_by_test'] or 'none'})")
            lines.append(f"| {','.join(map(str, r['classes']))} | {r['kind']} | {100 * r['dense']['test']:.2f} "
                         f"[{100 * r['dense']['selection']:.2f}] | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not s["models"]:
        return
    fig, axes = plt.subplots(1, len(s["models"]), figsize=(4.5 * len(s["models"]), 4), squeeze=False)
    for ax, m in zip(axes[0], s["models"]):
        for i, c in enumerate(s["criteria"]):
            drops = {}
            for r in s["per_model"][m].values():
                x = r["criteria"].get(c)
                for p in (x or {}).get("points", []):
                    drops.setdefault(p["target_macs"], []).append(100 * (p["test"] - r["dense"]["test"]))
            xs = sorted(drops)
            ax.plot(xs, [statistics.mean(drops[x]) for x in xs], marker="o", color=f"C{i}", label=c)
        ax.axhline(-100 * s["tolerance"], color="red", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("MACs, fraction of dense")
        ax.set_ylabel("test top-1 vs dense on S (points), mean over subsets")
        ax.set_title(m)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join((*MODELS, *HELD_OUT)))
    ap.add_argument("--subsets", default=None, help="e.g. 0,2,6;1,9 (default: all of SUBSETS)")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--recovery", action="store_true", help="run the recovery stage (3-class subsets at the target budget)")
    args = ap.parse_args()
    models = tuple(args.models.split(","))
    subsets = [tuple(map(int, s.split(","))) for s in args.subsets.split(";")] if args.subsets else list(SUBSETS)
    if args.recovery and not args.summary_only:
        for m in models:
            for subset in (s for s in subsets if len(s) == TARGET["classes"]):
                out, seconds, rc = run_job(*recovery_job(m, subset))
                print(f"{m} {out.name}: exit {rc} after {seconds:.0f} s", flush=True)
    elif not args.summary_only:
        for m in models:
            reachable = budgets(m)
            for subset in subsets:
                for out, args_ in jobs(m, subset, reachable):
                    _, seconds, rc = run_job(out, args_)
                    print(f"{m} {out.name}: exit {rc} after {seconds:.0f} s", flush=True)
    from vitprune.files import atomic_write_json, atomic_write_text

    s = summarise((*MODELS, *HELD_OUT))
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "summary.json", s)
    atomic_write_text(RESULTS / "summary.md", render(s))
    plot(s, RESULTS / "specialize.png")
    print(f"wrote {RESULTS / 'summary.md'}")


if __name__ == "__main__":
    main()
