"""The compression defaults on the held-out zoo models: the models bundled after the defaults were chosen
(eval/zoo.py HELD_OUT: heads8 — 8 heads per block, swiglu — gated MLPs and registers, eva — timm's Eva family in the
DINOv3 layout), measured as compress runs them, against the criteria they were chosen over.

    .venv/bin/python eval/held_out.py                 # run (resumable) + summarise -> eval/results/held_out/
    .venv/bin/python eval/held_out.py --summary-only  # re-write summary.{json,md} from the sweeps

One `vitprune evaluate` sweep per model (a subprocess, one torch thread), at compress's defaults (16 calibration images
per class, discovery at m = 4, least squares output / readout): the default criterion (jas-freq) and jas, and every
baseline (activation, magnitude, taylor, variance, wanda, random with seed 0), with least squares, at 75 / 90% FFN
sparsity per block, and the path criteria's --keep-topk 5 sets. Every point is scored on the 10k test images (reported)
and on 500 held-out *training* images per class (never calibration images): where a model's best criterion on the
latter is not the default, the summary says so — these models chose nothing. The MAC budgets with heads
(--target-macs 0.5 / 0.35 --prune mlp,heads) are eval/heads.py's, on the same models.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from zoo import BASELINES, HELD_OUT, folder, load_points, pct, run_job  # noqa: E402

RESULTS = HERE / "results" / "held_out"
TARGETS = (0.75, 0.9)
KEEP = 5
SELECTION = 500


def job(model: str) -> tuple[Path, list[str]]:
    return RESULTS / folder(model) / "defaults", [
        "--model", model, "--data", "demo", "--selection-per-class", str(SELECTION), "--quiet",
        "--criterion", ",".join(("jas-freq", "jas", *BASELINES)), "--compensate", "lsq", "--seed", "0",
        "--sparsity", ",".join(map(str, TARGETS)), "--keep-topk", str(KEEP)]


def _method(p: dict) -> str:
    return p["criterion"] + (f" keep-top{p['keep_topk']}" if p.get("keep_topk") else "")


def summarise(models: tuple[str, ...]) -> dict:
    from vitprune.defaults import KEEP_DEFAULT, SPARSITY_DEFAULT

    out: dict = {"models": [], "per_model": {}, "targets": list(TARGETS), "keep_topk": KEEP,
                 "default": {"sparsity": SPARSITY_DEFAULT, "keep": KEEP_DEFAULT}}
    for m in models:
        points = load_points(RESULTS / folder(m) / "defaults")
        dense = next((p for p in points if p["criterion"] == "dense"), None)
        if dense is None:
            continue
        rows: dict[str, dict] = {}
        for p in points:
            if p["criterion"] != "dense":
                budget = f"K={p['keep_topk']}" if p.get("keep_topk") else f"{p['target']:.2f}"
                rows.setdefault(_method(p), {})[budget] = {"test": p["top1"], "selection": p["top1_selection"],
                                                           "macs_ratio": p["macs_ratio"], "sparsity": p["sparsity"]}
        budgets = [f"{t:.2f}" for t in TARGETS]
        ranked = sorted((name for name, r in rows.items() if all(b in r for b in budgets)),
                        key=lambda n: -statistics.mean(rows[n][b]["selection"] for b in budgets))
        default = SPARSITY_DEFAULT["criterion"]
        out["models"].append(m)
        out["per_model"][m] = {
            "dense": {"test": dense["top1"], "selection": dense["top1_selection"]}, "points": rows,
            "best_on_selection": ranked[0] if ranked else None, "default_rank_on_selection": ranked.index(default) + 1
            if default in ranked else None,
            "default_change_vs_dense": {b: round(100 * (rows[default][b]["test"] - dense["top1"]), 2) for b in budgets
                                        if b in rows.get(default, {})}}
    return out


def render(s: dict) -> str:
    lines = ["# The defaults on the held-out zoo models (`eval/held_out.py`)", "",
             "One-shot top-1 (%) with least squares on the 10k Fashion-MNIST test images (selection: 500 held-out training "
             f"images per class) at {' / '.join(f'{int(100 * t)}%' for t in s['targets'])} FFN sparsity per block and the "
             f"--keep-topk {s['keep_topk']} sets, at compress's defaults (m = 4, 16 calibration images per class). These "
             "models chose no default; the MAC budgets with heads are in ../heads/summary.md.", ""]
    for m in s["models"]:
        r = s["per_model"][m]
        lines += [f"## {m} (dense {pct(r['dense']['test'])}%)", "",
                  "| criterion | 75% test | 90% test | mean selection | K=5 test |", "|---|---|---|---|---|"]
        order = sorted(r["points"], key=lambda n: -statistics.mean(
            r["points"][n][b]["selection"] for b in ("0.75", "0.90") if b in r["points"][n]) if any(
            b in r["points"][n] for b in ("0.75", "0.90")) else 0)
        for name in order:
            if "keep-top" in name:
                continue
            cell = r["points"][name]
            keep = r["points"].get(f"{name} keep-top{s['keep_topk']}", {}).get(f"K={s['keep_topk']}")
            sel = [cell[b]["selection"] for b in ("0.75", "0.90") if b in cell]
            lines.append(f"| {name}{' (default)' if name == s['default']['sparsity']['criterion'] else ''} | "
                         f"{pct(cell['0.75']['test']) if '0.75' in cell else ''} | {pct(cell['0.90']['test']) if '0.90' in cell else ''} | "
                         f"{pct(statistics.mean(sel)) if sel else ''} | {pct(keep['test']) if keep else ''} |")
        best, rank = r["best_on_selection"], r["default_rank_on_selection"]
        change = ", ".join(f"{b}: {v:+.2f}" for b, v in r["default_change_vs_dense"].items())
        lines += ["", f"Default vs dense (test, points): {change}. Best on the selection images: **{best}**; the default ranks "
                      f"{rank} of {len([n for n in r['points'] if 'keep-top' not in n])}"
                      + ("." if best == s["default"]["sparsity"]["criterion"] else " — on this model another criterion would "
                         "be chosen."), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(HELD_OUT))
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    models = tuple(m for m in args.models.split(",") if m)
    if not args.summary_only:
        for m in models:
            out, args_ = job(m)
            out, seconds, rc = run_job(out, args_)
            print(f"{m}: {seconds:.0f} s, exit {rc}", flush=True)
    summary = summarise(HELD_OUT)  # every held-out model that has run, whichever ran now
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / "summary.md").write_text(render(summary))
    print(f"wrote {RESULTS / 'summary.md'}")


if __name__ == "__main__":
    main()
